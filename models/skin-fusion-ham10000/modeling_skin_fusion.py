"""SkinFusion model: timm image backbone + metadata MLP, concatenated, classified by one or two dense layers."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

from .backbones import create_backbone, late_stage_features
from .configuration_skin_fusion import SkinFusionConfig


def dense_stack(in_features: int, widths: list[int], dropout: float) -> nn.Sequential:
    """Dropout -> Linear -> ReLU for each width (the study's dense blocks)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Dropout(dropout), nn.Linear(in_features, width), nn.ReLU(inplace=True)]
        in_features = width
    return nn.Sequential(*layers)


class MetadataMasking(nn.Module):
    """In training, replaces each metadata field (probability `field_probability`) or a whole row (probability
    `row_probability`) by its "not recorded" encoding; in evaluation it passes the metadata through.

    A model that only ever saw complete rows has never learned what "not recorded" means, and classifies a visitor who
    leaves the form empty as if the imputed typical patient were real.
    """

    def __init__(self, field_widths: list[int], missing_row: list[float], field_probability: float,
                 row_probability: float) -> None:
        super().__init__()
        self.field_probability, self.row_probability = field_probability, row_probability
        # Which field each encoded column belongs to: a field is dropped as a whole (value and missing flag together).
        # Plain lists, not buffers: they follow from the config and are never loaded from weights.
        self.field_of_column = [index for index, width in enumerate(field_widths) for _ in range(width)]
        self.missing_row = list(missing_row)

    def forward(self, metadata: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return metadata
        rows, device = metadata.shape[0], metadata.device
        dropped = torch.rand(rows, self.field_of_column[-1] + 1, device=device) < self.field_probability
        dropped |= torch.rand(rows, 1, device=device) < self.row_probability
        columns_dropped = dropped[:, torch.tensor(self.field_of_column, device=device)]
        missing_row = torch.tensor(self.missing_row, dtype=metadata.dtype, device=device)
        return torch.where(columns_dropped, missing_row, metadata)


class SkinFusionPreTrainedModel(PreTrainedModel):
    config_class = SkinFusionConfig
    config: SkinFusionConfig
    base_model_prefix = "skin_fusion"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # Trainer must not pass its loss kwargs (num_items_in_batch) to forward.
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        # Only the metadata MLP and the head are ours; timm initialised (or pretrained weights set) the backbone.
        # PyTorch's fan-in scaled init, not transformers' N(0, 0.02): these are small ReLU MLPs without
        # normalisation, where a 0.02 scale shrinks the signal at every layer and stalls early training.
        if isinstance(module, nn.Linear):
            module.reset_parameters()


class SkinFusionModel(SkinFusionPreTrainedModel):
    """Encoder: pooled backbone features and/or metadata-MLP features, concatenated (`pooler_output`)."""

    def __init__(self, config: SkinFusionConfig) -> None:
        super().__init__(config)
        self.backbone = create_backbone(config.backbone) if config.uses_image else None
        if self.backbone is not None:
            # timm has initialised these modules: keep transformers' post_init from re-initialising them.
            for module in self.backbone.modules():
                module._is_hf_initialized = True
        self.metadata_mlp = (
            dense_stack(config.metadata_dim, config.metadata_hidden_sizes, 0.0) if config.uses_metadata else None
        )
        masking = config.uses_metadata and (config.metadata_dropout > 0 or config.metadata_row_dropout > 0)
        self.metadata_masking = MetadataMasking(
            config.metadata_field_widths, config.missing_metadata, config.metadata_dropout, config.metadata_row_dropout
        ) if masking else None
        # A frozen backbone runs without autograd and keeps its batch-norm statistics (see `freeze_backbone`).
        self.backbone_frozen = False
        # The backbone stage that `feature_maps` inputs enter (set while training the last stages on cached maps of
        # the earlier ones; see `skin_fusion.data.feature_cache`). Not part of the saved model: pixels run it all.
        self.feature_map_stage: int | None = None
        self.post_init()

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Freeze or unfreeze the backbone for the first fine-tuning phase.

        Freezing stops gradients inside `forward` instead of flipping `requires_grad`: DistributedDataParallel fixes
        the set of trainable parameters when it wraps the model, so a backbone unfrozen later would never be
        synchronised across processes.
        """
        self.backbone_frozen = frozen
        self.train(self.training)

    def train(self, mode: bool = True) -> SkinFusionModel:
        super().train(mode)
        if self.backbone is not None and self.backbone_frozen:
            self.backbone.eval()  # pretrained batch-norm statistics stay as they are while frozen
        return self

    @property
    def image_features_dim(self) -> int:
        return self.backbone.num_features if self.backbone is not None else 0

    @property
    def metadata_features_dim(self) -> int:
        return self.config.metadata_hidden_sizes[-1] if self.metadata_mlp is not None else 0

    def check_image_inputs(self, pixel_values: torch.Tensor | None, image_features: torch.Tensor | None,
                           feature_maps: torch.Tensor | None = None) -> None:
        """Raise a `ValueError` that says the fix unless exactly one image input of the right shape is given."""
        given = [name for name, value in (("pixel_values", pixel_values), ("image_features", image_features),
                                          ("feature_maps", feature_maps)) if value is not None]
        if len(given) > 1:
            raise ValueError(
                f"Pass one image input, not {' and '.join(given)}: `image_features` (pooled) and `feature_maps` (an "
                "early stage's output) are cached forms of those same images (see `skin_fusion.data.feature_cache`), "
                "used instead of running the backbone on `pixel_values`."
            )
        if not given:
            raise ValueError(
                f"modality={self.config.modality!r} needs `pixel_values` (run the image through SkinFusionProcessor) "
                "or cached `image_features` (see `skin_fusion.data.feature_cache`); or use modality='metadata'."
            )
        width = self.backbone.num_features
        if image_features is not None and (image_features.ndim != 2 or image_features.shape[-1] != width):
            raise ValueError(
                f"image_features has shape {tuple(image_features.shape)} but backbone {self.config.backbone!r} pools "
                f"(batch, {width}); extract them from this model's backbone with "
                "`skin_fusion.data.feature_cache.add_image_features`."
            )
        if feature_maps is not None and self.feature_map_stage is None:
            raise ValueError(
                "feature_maps were given but `feature_map_stage` is not set: set it to the backbone stage the maps "
                "enter (the `stage` they were cached for with `skin_fusion.data.feature_cache.add_image_features`)."
            )

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        metadata: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        feature_maps: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch, 3, image_size, image_size)`, *optional*):
                Normalised images from `SkinFusionProcessor`; the image models need these or `image_features`.
            metadata (`torch.FloatTensor` of shape `(batch, config.metadata_dim)`):
                Encoded metadata from `SkinFusionProcessor` (missing values already imputed and flagged);
                required unless `modality="image"`.
            image_features (`torch.FloatTensor` of shape `(batch, backbone.num_features)`, *optional*):
                The backbone's pooled features of the images (`forward_head(..., pre_logits=True)`), cached by
                `skin_fusion.data.feature_cache`; used instead of running the backbone on `pixel_values`.
            feature_maps (`torch.Tensor` of shape `(batch, channels, height, width)`, *optional*):
                The maps that enter backbone stage `self.feature_map_stage` (cached by
                `skin_fusion.data.feature_cache`); the remaining stages run on them, so they can be trained.

        Returns:
            `BaseModelOutputWithPooling` whose `pooler_output` is the fused feature vector and whose
            `last_hidden_state` is the backbone's last feature map (`None` for the metadata-only model and when
            `image_features` were given).
        """
        features: list[torch.Tensor] = []
        feature_map = None
        if self.backbone is not None:
            self.check_image_inputs(pixel_values, image_features, feature_maps)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
                if feature_maps is not None:
                    image_features = late_stage_features(self.backbone, feature_maps, self.feature_map_stage)
                elif image_features is None:
                    feature_map = self.backbone.forward_features(pixel_values)
                    image_features = self.backbone.forward_head(feature_map, pre_logits=True)
            features.append(image_features)
        if self.metadata_mlp is not None:
            if metadata is None:
                raise ValueError(
                    f"modality={self.config.modality!r} needs `metadata`; SkinFusionProcessor encodes it, and rows "
                    "with nothing recorded are valid (pass `metadata=[{}]` to the processor)."
                )
            if metadata.shape[-1] != self.config.metadata_dim:
                raise ValueError(
                    f"metadata has {metadata.shape[-1]} columns but this model expects {self.config.metadata_dim}; "
                    "encode it with the processor saved beside this model."
                )
            if self.metadata_masking is not None:
                metadata = self.metadata_masking(metadata)
            features.append(self.metadata_mlp(metadata))
        return BaseModelOutputWithPooling(last_hidden_state=feature_map, pooler_output=torch.cat(features, dim=-1))


class SkinFusionForImageClassification(SkinFusionPreTrainedModel):
    """SkinFusion encoder with a dense classification head; logits are divided by `config.temperature`."""

    def __init__(self, config: SkinFusionConfig) -> None:
        super().__init__(config)
        self.skin_fusion = SkinFusionModel(config)
        fused_dim = self.skin_fusion.image_features_dim + self.skin_fusion.metadata_features_dim
        self.head = dense_stack(fused_dim, config.head_hidden_sizes, config.dropout)
        head_out = config.head_hidden_sizes[-1] if config.head_hidden_sizes else fused_dim
        self.classifier = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(head_out, config.num_labels))
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        metadata: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        feature_maps: torch.Tensor | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        r"""
        Args:
            pixel_values, metadata, image_features, feature_maps: see `SkinFusionModel.forward` (give
                `pixel_values`, or cached `image_features` or `feature_maps`).
            labels (`torch.LongTensor` of shape `(batch,)`, *optional*):
                Class indices; when given, the (class-weighted) cross-entropy loss is returned.

        Returns:
            `ImageClassifierOutput` with `logits` (temperature-scaled) and `loss` when `labels` are given.
        """
        encoded = self.skin_fusion(pixel_values=pixel_values, metadata=metadata, image_features=image_features,
                                   feature_maps=feature_maps)
        logits = self.classifier(self.head(encoded.pooler_output)) / self.config.temperature
        loss = None
        if labels is not None:
            weight = None
            if self.config.class_weights is not None:
                weight = torch.tensor(self.config.class_weights, dtype=logits.dtype, device=logits.device)
            loss = nn.functional.cross_entropy(logits, labels.long(), weight=weight,
                                               label_smoothing=self.config.label_smoothing)
        return ImageClassifierOutput(loss=loss, logits=logits)

    def predicted_classes(self, logits: torch.Tensor) -> torch.Tensor:
        """The predicted class of each row of (calibrated) `logits`: the arg-max after `config.decision_offsets`."""
        return predicted_classes(logits, self.config.decision_offsets)


def predicted_classes(logits: torch.Tensor, decision_offsets: list[float] | None) -> torch.Tensor:
    """Arg-max of log-softmax(`logits`) + `decision_offsets` (post-hoc logit adjustment); plain arg-max without."""
    if decision_offsets is None:
        return logits.argmax(-1)
    offsets = torch.tensor(decision_offsets, dtype=logits.dtype, device=logits.device)
    return (logits.log_softmax(-1) + offsets).argmax(-1)
