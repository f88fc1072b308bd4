"""SkinFusion processor: image transforms from the backbone's timm data config, plus the fitted metadata encoder.

Saved as `preprocessor_config.json` beside the model weights, so a saved or pushed model carries everything that
turns a dermoscopy image and a patient record into model inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from torchvision import transforms
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from .metadata_encoding import MetadataEncoder

_INTERPOLATIONS = {
    "nearest": transforms.InterpolationMode.NEAREST,
    "bilinear": transforms.InterpolationMode.BILINEAR,
    "bicubic": transforms.InterpolationMode.BICUBIC,
}


def backbone_image_settings(backbone: str, image_size: int) -> dict[str, Any]:
    """Resize, crop, interpolation and normalisation from timm's pretrained config for `backbone` at `image_size`."""
    pretrained_cfg = timm.models.get_pretrained_cfg(backbone)
    data_config = timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else {})
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    return {
        "image_size": int(image_size),
        "resize_size": int(round(image_size / crop_pct)),
        "interpolation": data_config.get("interpolation", "bicubic"),
        "image_mean": [float(v) for v in data_config["mean"]],
        "image_std": [float(v) for v in data_config["std"]],
    }


class SkinFusionProcessor(BaseImageProcessor):
    r"""
    Turns images and metadata rows into `pixel_values` and `metadata` tensors for `SkinFusionForImageClassification`.

    Args:
        image_size (`int`): side of the square model input.
        resize_size (`int`): evaluation resize of the shorter side before the centre crop (`image_size / crop_pct`).
        interpolation (`str`): `bilinear` or `bicubic`, from the backbone's timm config.
        image_mean, image_std (`list[float]`): normalisation, from the backbone's timm config.
        train_scale (`list[float]`): area range of the training random-resized crop.
        rotation_degrees (`float`): maximum training rotation (lesions have no canonical orientation).
        color_jitter (`float`): brightness / contrast / saturation jitter strength in training.
        metadata_encoder (`dict`, *optional*): a fitted `MetadataEncoder.to_dict()`; `None` for image-only models.
    """

    model_input_names = ["pixel_values", "metadata"]

    def __init__(
        self,
        image_size: int = 380,
        resize_size: int | None = None,
        interpolation: str = "bicubic",
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
        train_scale: Sequence[float] = (0.6, 1.0),
        rotation_degrees: float = 180.0,
        color_jitter: float = 0.2,
        metadata_encoder: Mapping[str, Any] | MetadataEncoder | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation={interpolation!r} is not supported; use one of {list(_INTERPOLATIONS)}.")
        self.image_size = int(image_size)
        self.resize_size = int(resize_size or image_size)
        self.interpolation = interpolation
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.train_scale = [float(v) for v in train_scale]
        self.rotation_degrees = float(rotation_degrees)
        self.color_jitter = float(color_jitter)
        if isinstance(metadata_encoder, MetadataEncoder):
            metadata_encoder = metadata_encoder.to_dict()
        self.metadata_encoder = dict(metadata_encoder) if metadata_encoder is not None else None

    @classmethod
    def for_backbone(
        cls, backbone: str, image_size: int, metadata_encoder: MetadataEncoder | None = None, **kwargs
    ) -> SkinFusionProcessor:
        """A processor whose image settings follow `backbone`'s timm data config at `image_size`."""
        return cls(**backbone_image_settings(backbone, image_size), metadata_encoder=metadata_encoder, **kwargs)

    # ----------------------------------------------------------------------------------------------------- images
    def eval_steps(self) -> list[Callable[[Image.Image], Image.Image]]:
        """Resize and centre crop (PIL in, PIL out): deterministic."""
        return [
            transforms.Resize(self.resize_size, interpolation=_INTERPOLATIONS[self.interpolation]),
            transforms.CenterCrop(self.image_size),
        ]

    def train_steps(self) -> list[Callable[[Image.Image], Image.Image]]:
        """Random resized crop, flips, rotation and colour jitter (PIL in, PIL out)."""
        jitter = self.color_jitter
        return [
            transforms.RandomResizedCrop(
                self.image_size, scale=tuple(self.train_scale), interpolation=_INTERPOLATIONS[self.interpolation]
            ),
            transforms.RandomHorizontalFlip(),
            transforms.RandomVerticalFlip(),
            transforms.RandomRotation(self.rotation_degrees, interpolation=_INTERPOLATIONS["bilinear"]),
            transforms.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=jitter / 10),
        ]

    def eval_transform(self) -> transforms.Compose:
        """One image to a normalised tensor: resize, centre crop, normalise."""
        return transforms.Compose([*self.eval_steps(), transforms.ToTensor(),
                                   transforms.Normalize(self.image_mean, self.image_std)])

    def train_transform(self) -> transforms.Compose:
        """One image to a normalised tensor: random resized crop, flips, rotation, colour jitter, normalise."""
        return transforms.Compose([*self.train_steps(), transforms.ToTensor(),
                                   transforms.Normalize(self.image_mean, self.image_std)])

    def preprocess(self, images: Image.Image | Sequence[Image.Image], training: bool = False, **kwargs) -> BatchFeature:
        """`pixel_values` only (the image-processor API that transformers' pipelines call)."""
        return BatchFeature(data={"pixel_values": self.preprocess_images(images, training=training)})

    def preprocess_images(self, images: Image.Image | Sequence[Image.Image], training: bool = False) -> torch.Tensor:
        """A `(batch, 3, image_size, image_size)` float tensor from PIL images (converted to RGB).

        Equal to stacking `train_transform()` / `eval_transform()` of each image, but the conversion to float and the
        normalisation run once on the whole batch: per image they are tiny multi-threaded torch operations, and on a
        busy CPU waking torch's threads for each costs several times the work (see bench/training_throughput.py).
        """
        if isinstance(images, Image.Image):
            images = [images]
        steps = transforms.Compose(self.train_steps() if training else self.eval_steps())
        pixels = torch.from_numpy(np.stack([np.asarray(steps(image.convert("RGB"))) for image in images]))
        return self.normalize_batch(pixels.permute(0, 3, 1, 2))

    def normalize_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """`uint8` images `(batch, 3, height, width)` to normalised floats, exactly as `ToTensor` + `Normalize`."""
        mean = torch.tensor(self.image_mean).view(1, -1, 1, 1)
        std = torch.tensor(self.image_std).view(1, -1, 1, 1)
        return pixels.float().div_(255).sub_(mean).div_(std).contiguous()

    # --------------------------------------------------------------------------------------------------- metadata
    @property
    def encoder(self) -> MetadataEncoder | None:
        """The fitted metadata encoder, or `None` for an image-only model; built once from `metadata_encoder` (the
        dict that is saved), and again only if that dict is replaced."""
        if self.metadata_encoder is None:
            return None
        if self.__dict__.get("_encoder_source") is not self.metadata_encoder:
            self._encoder = MetadataEncoder.from_dict(self.metadata_encoder)
            self._encoder_source = self.metadata_encoder
        return self._encoder

    def to_dict(self) -> dict[str, Any]:
        """The saved settings: every attribute but the encoder built from `metadata_encoder`."""
        output = super().to_dict()
        output.pop("_encoder", None)
        output.pop("_encoder_source", None)
        return output

    def metadata_schema(self) -> dict[str, Any]:
        """`numeric_features` and `categorical_features` for `SkinFusionConfig`, from the fitted encoder."""
        encoder = self.encoder
        if encoder is None:
            return {"numeric_features": [], "categorical_features": {}}
        return {"numeric_features": encoder.numeric_columns, "categorical_features": encoder.vocabularies}

    def encode_metadata(self, rows: Any) -> torch.Tensor:
        """A `(batch, metadata_dim)` float tensor from metadata rows (a DataFrame, a dict, dicts, or a column batch)."""
        encoder = self.encoder
        if encoder is None:
            raise ValueError("This processor has no fitted metadata encoder (an image-only model takes no metadata).")
        return torch.from_numpy(encoder.transform(rows))

    # ------------------------------------------------------------------------------------------------------ both
    def __call__(
        self,
        images: Image.Image | Sequence[Image.Image] | None = None,
        metadata: Any = None,
        training: bool = False,
        **kwargs,
    ) -> BatchFeature:
        """Model inputs from images and/or metadata rows (`metadata=[{}]` means "nothing recorded")."""
        data: dict[str, torch.Tensor] = {}
        if images is not None:
            data["pixel_values"] = self.preprocess_images(images, training=training)
        if metadata is not None and self.metadata_encoder is not None:
            data["metadata"] = self.encode_metadata(metadata)
        if "pixel_values" in data and "metadata" in data and len(data["pixel_values"]) != len(data["metadata"]):
            raise ValueError(
                f"Got {len(data['pixel_values'])} images but {len(data['metadata'])} metadata rows; pass one metadata "
                "row per image (an empty dict for an unknown one)."
            )
        return BatchFeature(data=data)

    def dataset_transform(
        self, training: bool, use_images: bool = True, use_metadata: bool = True, label_column: str = "label",
        withhold_metadata: bool = False,
    ) -> Callable[[dict[str, list]], dict[str, Any]]:
        """A `datasets.Dataset.set_transform` function: a batch of rows to `pixel_values`, `metadata`, `labels`;
        with `withhold_metadata` every row's metadata is encoded as "nothing recorded"."""

        def transform(batch: dict[str, list]) -> dict[str, Any]:
            inputs: dict[str, Any] = {"labels": batch[label_column]}
            if use_images:
                inputs["pixel_values"] = self.preprocess_images(batch["image"], training=training)
            if use_metadata and self.metadata_encoder is not None:
                rows = [{}] * len(batch[label_column]) if withhold_metadata else {
                    c: batch[c] for c in self.encoder.columns}
                inputs["metadata"] = self.encode_metadata(rows)
            return inputs

        return transform

    def check_matches(self, config: Any) -> None:
        """Raise if this processor's metadata encoding does not fit the model `config` (a SkinFusionConfig)."""
        schema = self.metadata_schema()
        if not config.uses_metadata:
            return
        if (schema["numeric_features"], schema["categorical_features"]) != (
            list(config.numeric_features), dict(config.categorical_features)
        ):
            raise ValueError(
                "The processor's metadata encoder does not match the model's metadata schema; load the processor "
                "saved beside the model, or build the config from `processor.metadata_schema()`."
            )

