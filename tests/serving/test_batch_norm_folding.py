"""Batch norms folded into the convolutions for serving: same logits, no batch norm left, refused when unsafe."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from skin_fusion.serving.batch_norm_folding import conv_batch_norm_pairs, fold_batch_norms
from tests.helpers import TINY_BACKBONE, TINY_SIZE


def randomised_statistics(model: nn.Module) -> nn.Module:
    """Batch norms with statistics and affines far from the identity, so that a wrong fold shows."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(torch.rand(channels, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(channels, generator=generator) - 0.5)
    return model.eval()


@pytest.mark.parametrize("name", [TINY_BACKBONE, "resnet10t", "skin_fusion_small_cnn"])
def test_folding_keeps_the_output_and_leaves_no_batch_norm(name):
    model = randomised_statistics(timm.create_model(name, pretrained=False, num_classes=0))
    pixels = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert batch_norms > 0 and len(conv_batch_norm_pairs(model, lambda m: m(pixels))) == batch_norms
    folded = fold_batch_norms(model, lambda m: m(pixels))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is left as it was
    other_pixels = torch.randn(3, 3, TINY_SIZE, TINY_SIZE)  # not the images the pairs were found on
    with torch.inference_mode():
        torch.testing.assert_close(folded(other_pixels), model(other_pixels), rtol=0, atol=1e-4)


class SharedConvOutput(nn.Module):
    """A convolution whose output feeds a batch norm and, unnormalised, the sum after it: folding would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.conv(x)
        return self.norm(hidden) + hidden


def test_folding_is_refused_when_a_convolution_output_is_used_twice():
    model = randomised_statistics(SharedConvOutput())
    pixels = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="serve it unfolded"):
        fold_batch_norms(model, lambda m: m(pixels))
