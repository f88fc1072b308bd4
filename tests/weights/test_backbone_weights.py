"""The explicit pretrained-weights step: offline Lite weights through the project, files, and clear refusals."""

import pytest
import torch
from safetensors.torch import save_file
from skimage.data import coffee
from PIL import Image

from skin_fusion import SkinFusionConfig, SkinFusionForImageClassification, SkinFusionProcessor
from skin_fusion.weights.backbone_weights import load_backbone_weights
from skin_fusion.weights.lite_weights import load_lite_state_dict

ESPRESSO = 967


def lite0_image_model() -> SkinFusionForImageClassification:
    config = SkinFusionConfig(
        backbone="tf_efficientnet_lite0", image_size=224, modality="image", backbone_weights="lite",
        numeric_features=[], categorical_features={},
    )
    return SkinFusionForImageClassification(config).eval()


def test_offline_lite0_weights_through_the_project_recognise_espresso():
    model = lite0_image_model()
    assert "offline Lite package" in load_backbone_weights(model)
    processor = SkinFusionProcessor.for_backbone("tf_efficientnet_lite0", 224)
    pixel_values = processor(images=[Image.fromarray(coffee())])["pixel_values"]
    with torch.inference_mode():
        features = model.skin_fusion(pixel_values=pixel_values).pooler_output
    # The backbone has no ImageNet head; apply the package's own classifier to the project's pooled features.
    full = load_lite_state_dict("tf_efficientnet_lite0")
    imagenet_logits = features @ full["classifier.weight"].T + full["classifier.bias"]
    assert imagenet_logits.argmax(-1).item() == ESPRESSO


def test_building_a_model_loads_no_weights_until_asked():
    model = lite0_image_model()
    before = model.skin_fusion.backbone.conv_stem.weight.clone()
    assert not torch.equal(before, load_lite_state_dict("tf_efficientnet_lite0")["conv_stem.weight"])


def test_weights_from_a_file_load_strictly(tmp_path):
    source = lite0_image_model()
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in source.skin_fusion.backbone.state_dict().items()}, str(path))
    target = SkinFusionForImageClassification(
        SkinFusionConfig.from_dict({**source.config.to_dict(), "backbone_weights": "file",
                                    "backbone_weights_file": str(path)})
    )
    load_backbone_weights(target)
    assert torch.equal(target.skin_fusion.backbone.conv_stem.weight, source.skin_fusion.backbone.conv_stem.weight)


def test_weights_that_cannot_be_had_fail_clearly():
    b4 = SkinFusionForImageClassification(SkinFusionConfig(
        backbone="test_efficientnet", image_size=64, backbone_weights="lite", modality="image"))
    with pytest.raises(ValueError, match="tf_efficientnet_lite0/1/2 only"):
        load_backbone_weights(b4)
    missing = SkinFusionForImageClassification(SkinFusionConfig(
        backbone="test_efficientnet", image_size=64, backbone_weights="file", backbone_weights_file="/nope.pth"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone_weights(missing)


def test_hub_weights_offline_fail_with_the_offline_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = SkinFusionForImageClassification(SkinFusionConfig(
        backbone="resnet10t", image_size=64, backbone_weights="hub", modality="image"))
    with pytest.raises(RuntimeError, match="backbone_weights='lite'"):
        load_backbone_weights(model)


def test_a_file_for_another_backbone_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"conv1.weight": torch.zeros(8, 3, 3, 3)}, str(path))
    model = SkinFusionForImageClassification(SkinFusionConfig(
        backbone="test_efficientnet", image_size=64, backbone_weights="file", backbone_weights_file=str(path),
        modality="image"))
    with pytest.raises(ValueError, match="do not fit the backbone"):
        load_backbone_weights(model)
