"""The one explicit step that puts pretrained weights into a SkinFusion backbone.

Building a model (`from_config`, `from_pretrained`) never downloads anything. Training calls
`load_backbone_weights(model)` once, before the first step; weights that cannot be had raise an error that says
what to do instead, never a silent random initialisation.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from torch import nn

from ..modeling.modeling_skin_fusion import SkinFusionForImageClassification
from .lite_weights import has_lite_weights, load_lite_state_dict


def load_backbone_weights(model: SkinFusionForImageClassification) -> str:
    """Load the weights named by `model.config.backbone_weights` into the backbone; returns a provenance string."""
    config = model.config
    backbone = model.skin_fusion.backbone
    if config.backbone_weights == "none" or backbone is None:
        return "random initialisation"
    if config.backbone_weights == "lite":
        state_dict, provenance = _lite_state_dict(config.backbone)
    elif config.backbone_weights == "file":
        state_dict, provenance = _file_state_dict(config.backbone_weights_file, backbone), config.backbone_weights_file
    else:
        state_dict, provenance = _hub_state_dict(config.backbone), f"timm/{config.backbone} (Hugging Face Hub)"
    _load_strict(backbone, state_dict, provenance)
    return provenance


def _lite_state_dict(name: str) -> tuple[dict[str, torch.Tensor], str]:
    if not has_lite_weights(name):
        raise ValueError(
            f"backbone_weights='lite' holds ImageNet weights for tf_efficientnet_lite0/1/2 only, not '{name}'. "
            "Use backbone='tf_efficientnet_lite0' (or lite1, lite2), or backbone_weights='hub' / 'file'."
        )
    return load_lite_state_dict(name, include_classifier=False), f"{name} ImageNet weights (offline Lite package)"


def _file_state_dict(path: str | None, backbone: nn.Module) -> dict[str, torch.Tensor]:
    if not path or not Path(path).is_file():
        raise FileNotFoundError(
            f"backbone_weights_file={path!r} does not exist; pass the path of a .safetensors or .pth state dict."
        )
    if path.endswith(".safetensors"):
        state_dict = load_file(path)
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        state_dict = state_dict.get("state_dict", state_dict)
    # A checkpoint of the full timm classifier carries its head; the pooled-feature backbone has none.
    classifier = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier") or ""
    return {k: v for k, v in state_dict.items() if not (classifier and k.startswith(f"{classifier}."))}


def _hub_state_dict(name: str) -> dict[str, torch.Tensor]:
    try:
        pretrained = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as error:  # timm raises several types (offline, 404, no weights): all mean "not available"
        raise RuntimeError(
            f"Could not get pretrained weights for '{name}' from the Hugging Face Hub: {error}. Without a network, "
            "use backbone='tf_efficientnet_lite0' with backbone_weights='lite', or backbone_weights='file'."
        ) from error
    return pretrained.state_dict()


def _load_strict(backbone: nn.Module, state_dict: dict[str, torch.Tensor], provenance: str) -> None:
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"The weights from {provenance} do not fit the backbone: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(mismatched)} of another shape "
            f"(e.g. {mismatched[:3]}). Use weights saved from the same timm model name."
        )
    backbone.load_state_dict(state_dict, strict=True)
