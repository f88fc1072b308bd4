"""Grad-CAM: the target layer rule, the heatmap's shape and meaning, and a model left exactly as it was found."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from skin_fusion.serving.explain import GradCamResult, find_last_conv_layer, grad_cam, overlay_heatmap
from tests.helpers import TINY_SIZE, tiny_model


@pytest.fixture(scope="module")
def efficientnet() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_efficientnet", num_classes=3).eval()


def image_inputs(height: int = 64, width: int = 96, seed: int = 0) -> dict[str, torch.Tensor]:
    return {"x": torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(seed))}


def name_of(model: nn.Module, layer: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is layer)


class PlainCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 2)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv2(torch.relu(self.conv1(pixel_values))))
        return self.fc(self.pool(features).flatten(1))


class FusionModel(nn.Module):
    """Like SkinFusion: a timm backbone called through forward_features (optionally frozen under no_grad), a
    metadata MLP, a head; returns an ImageClassifierOutput."""

    main_input_name = "pixel_values"

    def __init__(self, frozen_backbone: bool = False) -> None:
        super().__init__()
        self.backbone = timm.create_model("test_efficientnet", num_classes=0)
        self.metadata_mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.classifier = nn.Linear(self.backbone.num_features + 8, 3)
        self.frozen_backbone = frozen_backbone

    def forward(self, pixel_values: torch.Tensor, metadata: torch.Tensor) -> ImageClassifierOutput:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_backbone):
            image_features = self.backbone.forward_head(self.backbone.forward_features(pixel_values))
        fused = torch.cat([image_features, self.metadata_mlp(metadata)], dim=-1)
        return ImageClassifierOutput(logits=self.classifier(fused))


def fusion_inputs(height: int = 64, width: int = 64) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(1, 3, height, width), "metadata": torch.randn(1, 4)}


# find_last_conv_layer


def test_target_for_efficientnet_is_conv_head(efficientnet):
    assert find_last_conv_layer(efficientnet) is efficientnet.conv_head


def test_target_for_resnet_is_layer4():
    model = timm.create_model("resnet10t", num_classes=3)
    assert find_last_conv_layer(model) is model.layer4


def test_target_for_mobilenetv3_ignores_the_conv_head_after_pooling():
    model = timm.create_model("mobilenetv3_small_050", num_classes=3)
    assert find_last_conv_layer(model) is model.blocks


def test_target_for_plain_cnn_is_its_last_conv():
    model = PlainCNN()
    assert find_last_conv_layer(model) is model.conv2


def test_target_inside_a_fusion_model_is_the_backbones_conv_head():
    model = FusionModel()
    assert find_last_conv_layer(model) is model.backbone.conv_head


def test_metadata_only_model_is_refused():
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    with pytest.raises(ValueError, match="Grad-CAM needs a convolutional backbone.*no nn.Conv2d"):
        find_last_conv_layer(model)


def test_vision_transformer_is_refused():
    model = timm.create_model("test_vit", num_classes=3)
    with pytest.raises(ValueError, match="Grad-CAM needs a convolutional backbone.*followed by attention"):
        find_last_conv_layer(model)


# grad_cam: shape, range, logits


def test_heatmap_has_the_input_height_and_width_and_lies_in_0_1(efficientnet):
    result = grad_cam(efficientnet, image_inputs(64, 96), efficientnet.conv_head)
    assert isinstance(result, GradCamResult)
    assert result.heatmap.shape == (64, 96) and result.heatmap.dtype == np.float32
    assert result.heatmap.min() >= 0.0 and result.heatmap.max() == pytest.approx(1.0)


def test_logits_are_those_of_a_plain_eval_forward_and_the_default_class_is_the_argmax(efficientnet):
    inputs = image_inputs()
    result = grad_cam(efficientnet, inputs, efficientnet.conv_head)
    with torch.no_grad():
        expected = efficientnet(**inputs)
    torch.testing.assert_close(result.logits, expected)
    assert result.class_index == int(expected.argmax()) and not result.logits.requires_grad


def test_heatmap_matches_textbook_grad_cam_with_a_full_backward(efficientnet):
    inputs = image_inputs()
    kept = {}
    handle = efficientnet.conv_head.register_forward_hook(lambda module, args, output: kept.update(map=output))
    logits = efficientnet(**inputs)
    handle.remove()
    class_index = int(logits.argmax())
    (gradient,) = torch.autograd.grad(logits[0, class_index], kept["map"])
    cam = torch.relu((gradient.mean(dim=(2, 3), keepdim=True) * kept["map"]).sum(dim=1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=(64, 96), mode="bilinear", align_corners=False)[0, 0]
    expected = (cam / cam.max()).detach().numpy()
    result = grad_cam(efficientnet, inputs, efficientnet.conv_head)
    assert result.class_index == class_index
    np.testing.assert_allclose(result.heatmap, expected, atol=1e-5)


def test_explicit_class_index_is_explained(efficientnet):
    inputs = image_inputs()
    results = [grad_cam(efficientnet, inputs, efficientnet.conv_head, class_index=c) for c in range(3)]
    assert [result.class_index for result in results] == [0, 1, 2]
    assert len({result.heatmap.tobytes() for result in results}) > 1


def test_resnet_heatmap_has_the_input_size():
    model = timm.create_model("resnet10t", num_classes=3)
    result = grad_cam(model, image_inputs(80, 64), find_last_conv_layer(model))
    assert result.heatmap.shape == (80, 64) and 0.0 <= result.heatmap.min() <= result.heatmap.max() <= 1.0


def test_model_output_with_logits_and_extra_inputs_are_accepted():
    model = FusionModel()
    inputs = fusion_inputs(64, 80)
    result = grad_cam(model, inputs, model.backbone.conv_head)
    assert result.heatmap.shape == (64, 80) and result.logits.shape == (1, 3)


def test_backbone_run_under_no_grad_inside_the_model_gives_the_same_heatmap():
    model, inputs = FusionModel(), fusion_inputs()
    trainable = grad_cam(model, inputs, model.backbone.conv_head)
    model.frozen_backbone = True
    frozen = grad_cam(model, inputs, model.backbone.conv_head)
    assert trainable.heatmap.any()
    np.testing.assert_allclose(frozen.heatmap, trainable.heatmap, atol=1e-6)


def test_skin_fusion_model_is_explained_through_its_backbone():
    model = tiny_model("fusion")
    inputs = {
        "pixel_values": torch.randn(1, 3, TINY_SIZE, TINY_SIZE),
        "metadata": torch.randn(1, model.config.metadata_dim),
    }
    target = find_last_conv_layer(model)
    assert target is model.skin_fusion.backbone.conv_head
    assert grad_cam(model, inputs, target).heatmap.shape == (TINY_SIZE, TINY_SIZE)


def test_caller_under_no_grad_or_inference_mode_still_gets_a_heatmap(efficientnet):
    inputs = image_inputs()
    reference = grad_cam(efficientnet, inputs, efficientnet.conv_head).heatmap
    with torch.no_grad():
        assert np.allclose(grad_cam(efficientnet, inputs, efficientnet.conv_head).heatmap, reference)
    with torch.inference_mode():
        inference_inputs = {"x": inputs["x"].clone()}  # an inference tensor, as a processor would make here
        assert np.allclose(grad_cam(efficientnet, inference_inputs, efficientnet.conv_head).heatmap, reference)


# grad_cam leaves the model as it found it


def test_hooks_are_removed_and_train_mode_is_restored_per_module():
    model = timm.create_model("test_efficientnet", num_classes=3).train()
    model.blocks.eval()  # a mixed state, as with a frozen part
    grad_cam(model, image_inputs(), model.conv_head)
    assert all(not module._forward_hooks for module in model.modules())
    assert model.training and model.conv_head.training and not model.blocks.training and not model.blocks[0].training


def test_eval_mode_is_used_so_batch_norm_statistics_do_not_change():
    model = timm.create_model("test_efficientnet", num_classes=3).train()
    before = model.bn2.running_mean.clone()
    grad_cam(model, image_inputs(), model.conv_head)
    torch.testing.assert_close(model.bn2.running_mean, before)


def test_requires_grad_flags_are_untouched_and_no_parameter_gradient_is_stored():
    model = timm.create_model("test_efficientnet", num_classes=3)
    model.blocks.requires_grad_(False)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    grad_cam(model, image_inputs(), model.conv_head)
    assert flags == {name: p.requires_grad for name, p in model.named_parameters()}
    assert all(p.grad is None for p in model.parameters())


def test_model_without_trainable_parameters_gives_the_same_heatmap():
    model, inputs = timm.create_model("test_efficientnet", num_classes=3), image_inputs()
    trainable = grad_cam(model, inputs, model.conv_head).heatmap
    frozen = grad_cam(model.requires_grad_(False), inputs, model.conv_head).heatmap
    np.testing.assert_allclose(frozen, trainable, atol=1e-6)


def test_hooks_and_mode_are_restored_after_an_error():
    model = timm.create_model("test_efficientnet", num_classes=3).train()
    with pytest.raises(ValueError, match="Grad-CAM needs a convolutional feature map"):
        grad_cam(model, image_inputs(), model.global_pool)  # outputs (1, C), not a feature map
    assert not model.global_pool._forward_hooks and model.training and model.bn2.training


# grad_cam refusals


def test_batch_of_two_is_refused(efficientnet):
    with pytest.raises(ValueError, match="one image at a time.*batch size 2"):
        grad_cam(efficientnet, {"x": torch.randn(2, 3, 64, 64)}, efficientnet.conv_head)


def test_layer_outside_the_model_is_refused(efficientnet):
    with pytest.raises(ValueError, match="ran 0 times"):
        grad_cam(efficientnet, image_inputs(), nn.Conv2d(3, 3, 1))


def test_class_index_out_of_range_is_refused(efficientnet):
    with pytest.raises(ValueError, match="class_index 3 is out of range for 3 classes"):
        grad_cam(efficientnet, image_inputs(), efficientnet.conv_head, class_index=3)


# Grad-CAM localises


class RedBlueDetector(nn.Module):
    """Class 0 = "red present", class 1 = "blue present": fixed 4x4 stride-4 colour detectors, ReLU, average pool."""

    main_input_name = "pixel_values"

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, kernel_size=4, stride=4, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0] = torch.tensor([1.0, -1.0, -1.0])[:, None, None] / 16  # red minus green, blue
            self.conv.weight[1] = torch.tensor([-1.0, -1.0, 1.0])[:, None, None] / 16  # blue minus red, green

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(pixel_values)).mean(dim=(2, 3))


QUADRANTS = {"top-left": (0, 0), "top-right": (0, 32), "bottom-left": (32, 0), "bottom-right": (32, 32)}


def quadrant_mass(heatmap: np.ndarray, name: str) -> float:
    top, left = QUADRANTS[name]
    return float(heatmap[top : top + 32, left : left + 32].sum() / heatmap.sum())


@pytest.mark.parametrize("red_at, blue_at", [("top-left", "bottom-right"), ("bottom-left", "top-right")])
def test_heatmap_marks_the_patch_that_raised_the_explained_class(red_at, blue_at):
    image = torch.zeros(1, 3, 64, 64)
    for quadrant, channel in ((red_at, 0), (blue_at, 2)):
        top, left = QUADRANTS[quadrant]
        image[0, channel, top + 8 : top + 24, left + 8 : left + 24] = 1.0
    model = RedBlueDetector()
    red = grad_cam(model, {"pixel_values": image}, model.conv, class_index=0).heatmap
    blue = grad_cam(model, {"pixel_values": image}, model.conv, class_index=1).heatmap
    assert quadrant_mass(red, red_at) > 0.9 and quadrant_mass(blue, blue_at) > 0.9
    (red_top, red_left), (blue_top, blue_left) = QUADRANTS[red_at], QUADRANTS[blue_at]
    assert red[red_top + 16, red_left + 16] == pytest.approx(1.0) and red[blue_top + 16, blue_left + 16] == 0.0


# overlay_heatmap


def test_overlay_is_an_rgb_image_of_the_image_size():
    image = Image.new("RGB", (120, 90), (128, 128, 128))
    overlay = overlay_heatmap(image, np.random.default_rng(0).random((64, 64)))
    assert overlay.mode == "RGB" and overlay.size == (120, 90)


def test_overlay_alpha_blends_the_colormap_over_the_image():
    image = Image.new("RGB", (40, 40), (0, 0, 0))
    heatmap = np.zeros((40, 40), np.float32)
    heatmap[:, 20:] = 1.0
    plain = np.asarray(overlay_heatmap(image, heatmap, alpha=0.0))
    full = np.asarray(overlay_heatmap(image, heatmap, alpha=1.0)).astype(int)
    assert not plain.any()
    assert full[20, 35, 0] > 100 and full[20, 35, 2] == 0  # jet: hot is red
    assert full[20, 2, 2] > 100 and full[20, 2, 0] == 0  # cold is blue


def test_overlay_refuses_a_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        overlay_heatmap(Image.new("RGB", (8, 8)), np.zeros((8, 8)), alpha=1.5)
