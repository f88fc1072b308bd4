"""Image backbones: any timm model as a pooled-feature extractor, plus the study's small plain CNN.

The original study compared a plain CNN, ResNet and EfficientNet-B4. ResNet and EfficientNet come from timm; the
plain CNN is registered here as the timm model `skin_fusion_small_cnn`, so every baseline is a timm name and one code
path builds them all.
"""

from __future__ import annotations

import difflib

import timm
import torch
from timm.models import generate_default_cfgs, register_model
from torch import nn

SMALL_CNN_NAME = "skin_fusion_small_cnn"


class SmallCNN(nn.Module):
    """A plain convolutional network: conv-BN-ReLU-max-pool stages, global average pooling, linear classifier.

    Follows timm's interface (`forward_features`, `forward_head(pre_logits=...)`, `num_features`,
    `reset_classifier`) so SkinFusion treats it like any other backbone.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, widths: tuple[int, ...] = (32, 64, 128, 256),
                 drop_rate: float = 0.0, **kwargs) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        channels = in_chans
        for width in widths:
            stages += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.features = nn.Sequential(*stages)
        self.num_features = channels
        self.drop_rate = drop_rate
        self.num_classes = num_classes
        self.classifier: nn.Module = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = nn.functional.dropout(x.mean(dim=(2, 3)), p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs({
    f"{SMALL_CNN_NAME}.untrained": {
        "input_size": (3, 224, 224), "pool_size": (14, 14), "crop_pct": 0.875, "interpolation": "bilinear",
        "mean": timm.data.IMAGENET_DEFAULT_MEAN, "std": timm.data.IMAGENET_DEFAULT_STD, "num_classes": 1000,
        "first_conv": "features.0", "classifier": "classifier",
    },
})


@register_model
def skin_fusion_small_cnn(pretrained: bool = False, **kwargs) -> SmallCNN:
    """The original study's plain CNN baseline (no pretrained weights exist)."""
    if pretrained:
        raise ValueError(f"`{SMALL_CNN_NAME}` has no pretrained weights; set backbone_weights='none'.")
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    return SmallCNN(**kwargs)


def check_backbone_name(name: str) -> None:
    """Raise a `ValueError` with close matches when timm has no model called `name`."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean {close}?" if close else ""
    raise ValueError(
        f"timm has no model named '{name}'.{hint} See `timm.list_models('efficientnet*')` for names "
        f"(`{SMALL_CNN_NAME}` is the plain CNN baseline)."
    )


def create_backbone(name: str, drop_rate: float = 0.0) -> nn.Module:
    """A randomly initialised timm model that returns pooled features (`num_classes=0`); never downloads."""
    check_backbone_name(name)
    return timm.create_model(name, pretrained=False, num_classes=0, drop_rate=drop_rate)


def check_stage_split(backbone: nn.Module, stage: int) -> None:
    """Raise a `ValueError` unless `backbone` can be cut before its stage `stage` (timm EfficientNet-style layout)."""
    if not all(hasattr(backbone, name) for name in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        raise ValueError(
            f"{type(backbone).__name__} has no conv_stem / blocks / conv_head layout, so it cannot be cut into cached "
            "early stages and trained last stages; use a timm EfficientNet or MobileNet backbone, or train it on "
            "pixels (--cache_image_features False)."
        )
    if not 0 < stage < len(backbone.blocks):
        raise ValueError(
            f"stage {stage} is not a cut inside the {len(backbone.blocks)} stages of {type(backbone).__name__}: "
            f"train between 1 and {len(backbone.blocks) - 1} last stages on cached feature maps."
        )


def early_stage_maps(backbone: nn.Module, pixel_values: torch.Tensor, stage: int) -> torch.Tensor:
    """The feature map that enters stage `stage` of `backbone`: its stem and earlier stages, on normalised images."""
    check_stage_split(backbone, stage)
    hidden = backbone.bn1(backbone.conv_stem(pixel_values))
    return backbone.blocks[:stage](hidden)


def late_stage_features(backbone: nn.Module, feature_maps: torch.Tensor, stage: int) -> torch.Tensor:
    """The pooled features of `backbone` from the maps `early_stage_maps(..., stage)` gave: the remaining stages, the
    head convolution and the pooling (`forward_features` then `forward_head(pre_logits=True)`, continued)."""
    check_stage_split(backbone, stage)
    hidden = backbone.blocks[stage:](feature_maps.to(backbone.conv_head.weight.dtype))
    return backbone.forward_head(backbone.bn2(backbone.conv_head(hidden)), pre_logits=True)
