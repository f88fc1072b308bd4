"""Grad-CAM heatmaps (Selvaraju et al., 2017) for any classifier with a convolutional image backbone.

Grad-CAM weights each channel of a convolutional feature map by the spatial mean of the class score's gradient with
respect to it, sums the channels and keeps the positive part: where the map is high, the features that raised the
class score were found. The feature map is cut from the graph of the layers before it, so the one backward pass runs
through the layers after the target only and computes no parameter gradient: `requires_grad` flags are irrelevant
(a frozen model works) and left untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image
from timm.layers import SelectAdaptivePool2d
from torch import nn

# Modules that turn a feature map into a vector: where a network's convolutional part ends.
GLOBAL_POOL_TYPES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, SelectAdaptivePool2d)


@dataclass
class GradCamResult:
    """A Grad-CAM heatmap with the logits of the forward pass that produced it.

    Args:
        heatmap: float32 array of the model input's height x width, in [0, 1]; 1 marks the strongest evidence.
            All zeros when nothing in the image raised the class score.
        logits: detached logits of shape (1, num_labels), from the same forward (eval mode) as the heatmap.
        class_index: the class the heatmap explains.
    """

    heatmap: np.ndarray
    logits: torch.Tensor
    class_index: int


def find_last_conv_layer(module: nn.Module) -> nn.Module:
    """The last convolutional stage of the image backbone inside `module`, the usual Grad-CAM target.

    Starting at `module`, take the last child that contains an `nn.Conv2d` and comes before the global pooling
    (timm MobileNetV3 registers a `conv_head` after its pooling). Descend into it while it holds a network with its
    own global pooling (the timm backbone inside a fusion model); otherwise it is the answer. This gives `conv_head`
    for timm EfficientNets, `layer4` for ResNets, `stages` for ConvNeXts, and for a plain CNN its last `nn.Conv2d`
    (or the `nn.Sequential` holding its convolutions, whose output is the feature map the pooling sees).

    Raises:
        ValueError: `module` has no `nn.Conv2d`, or its last convolution is followed by attention (a ViT's patch
            embedding): there is no final convolutional feature map to explain.
    """
    if not any(isinstance(m, nn.Conv2d) for m in module.modules()):
        raise ValueError(
            f"Grad-CAM needs a convolutional backbone, and {type(module).__name__} has no nn.Conv2d (a metadata-only "
            "or transformer model?). Use a CNN backbone such as efficientnet_b0 or resnet50."
        )
    scope, layer = module, module
    while not isinstance(layer, nn.Conv2d):
        children = list(layer.children())
        pool_positions = [i for i, child in enumerate(children) if _is_global_pool(child)]
        before_pool = children[: pool_positions[0]] if pool_positions else children
        candidates = [child for child in before_pool if _contains_conv(child)]
        if not candidates:  # the only convolutions come after the pooling: treat the pooling as absent
            candidates = [child for child in children if _contains_conv(child)]
        scope, layer = layer, candidates[-1]
        if not any(_is_network(m) for m in layer.modules()):
            break
    _refuse_attention_after(layer, scope)
    return layer


def _contains_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def _is_network(module: nn.Module) -> bool:
    """Whether `module` is a whole CNN: it has timm's `forward_features`, or a global pooling child after a
    convolutional one (squeeze-and-excitation modules pool before their convolutions, so their blocks do not count).
    """
    if hasattr(module, "forward_features"):
        return True
    seen_conv = False
    for child in module.children():
        if seen_conv and _is_global_pool(child):
            return True
        seen_conv = seen_conv or _contains_conv(child)
    return False


def _is_global_pool(module: nn.Module) -> bool:
    """A global pooling module, or a head that holds one and no convolution."""
    has_pool = any(isinstance(m, GLOBAL_POOL_TYPES) for m in module.modules())
    return has_pool and not _contains_conv(module)


def _refuse_attention_after(layer: nn.Module, scope: nn.Module) -> None:
    """Raise if attention runs after `layer`'s last convolution within `scope` (registration order)."""
    named = list(scope.named_modules())
    last_conv = [m for m in layer.modules() if isinstance(m, nn.Conv2d)][-1]
    start = next(i for i, (_, m) in enumerate(named) if m is last_conv)
    for name, later in named[start + 1 :]:
        if isinstance(later, nn.MultiheadAttention) or type(later).__name__.endswith("Attention"):
            raise ValueError(
                f"Grad-CAM needs a convolutional backbone, but the last convolution of {type(scope).__name__} is "
                f"followed by attention ('{name}', {type(later).__name__}): a transformer's tokens are not a "
                "convolutional feature map. Use a CNN backbone, or pass grad_cam a target_layer whose output is "
                "(1, channels, height, width) if you know one."
            )


def grad_cam(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    target_layer: nn.Module,
    class_index: int | Callable[[torch.Tensor], int] | None = None,
) -> GradCamResult:
    """Grad-CAM of one image for one class, from a single forward and a single backward pass.

    The model runs in eval mode (dropout off, batch-norm running statistics) and every module's train/eval flag is
    restored afterwards; the hook on `target_layer` is always removed.

    Args:
        model: called as `model(**inputs)`; returns a tensor of logits or an output with `.logits`.
        inputs: a batch of one, e.g. `{"pixel_values": (1, 3, H, W), "metadata": (1, F)}`. The image is
            `inputs[model.main_input_name]` if the model names one, else the only 4-D tensor.
        target_layer: a module of `model` that outputs a (1, C, h, w) feature map, e.g. from `find_last_conv_layer`.
        class_index: the class to explain, or a function of the (1, num_labels) logits that picks it (e.g. the
            model's decision rule); default the arg-max class.

    Returns:
        A `GradCamResult` with the heatmap at the image's H x W and the logits of the same forward.
    """
    image = _image_tensor(model, inputs)
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] != 1:
            raise ValueError(
                f"grad_cam explains one image at a time, but inputs['{name}'] has batch size {value.shape[0]}. "
                "Pass one example, e.g. {k: v[i : i + 1] for k, v in inputs.items()}."
            )
    activations: list[torch.Tensor] = []

    def keep_activation(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(
                f"Grad-CAM needs a convolutional feature map (1, channels, height, width) from target_layer "
                f"{type(module).__name__}, but it returned {shape}. Pick a convolutional layer "
                "(see find_last_conv_layer)."
            )
        # A leaf from here on: the backward stops at the feature map instead of running through the backbone.
        activation = output.detach().requires_grad_(True)
        activations.append(activation)
        # A model may run its frozen backbone under no_grad; the layers after the target must still record a graph.
        # The model's own grad-mode context restores its mode when it exits.
        torch.set_grad_enabled(True)
        return activation.clone()  # later in-place ops (ReLU(inplace=True)) must not modify the kept leaf

    training_flags = {module: module.training for module in model.modules()}
    handle = target_layer.register_forward_hook(keep_activation)
    try:
        model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            # Tensors made under torch.inference_mode cannot enter an autograd graph; a clone outside it can.
            inputs = {
                name: value.clone() if isinstance(value, torch.Tensor) and value.is_inference() else value
                for name, value in inputs.items()
            }
            # Layers before the target still record a graph when their parameters require grad, but the backward
            # stops at the feature map and never visits it: keeping none of its saved tensors makes the forward
            # nearly as cheap as under no_grad, without touching the model's requires_grad flags.
            with torch.autograd.graph.saved_tensors_hooks(
                lambda tensor: tensor if activations else None, lambda saved: saved
            ):
                outputs = model(**inputs)
    finally:
        handle.remove()
        for module, training in training_flags.items():
            module.training = training

    if len(activations) != 1:
        raise ValueError(
            f"target_layer {type(target_layer).__name__} ran {len(activations)} times in one forward; Grad-CAM needs "
            "a layer of this model that runs exactly once (see find_last_conv_layer)."
        )
    logits = _logits_of(outputs)
    if class_index is None:
        class_index = int(logits[0].argmax())
    elif callable(class_index):
        class_index = int(class_index(logits.detach()))
    if not 0 <= class_index < logits.shape[-1]:
        raise ValueError(f"class_index {class_index} is out of range for {logits.shape[-1]} classes.")
    with torch.inference_mode(False), torch.enable_grad():
        score = logits[0, class_index]
    if not score.requires_grad:
        raise ValueError(f"The class score does not depend on target_layer {type(target_layer).__name__}'s output.")
    (gradient,) = torch.autograd.grad(score, activations[0])

    with torch.no_grad():
        activation, gradient = activations[0].float(), gradient.float()
        weights = gradient.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * activation).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)[0, 0]
        # Divide by the peak rather than min-max stretch: a nearly uniform map stays nearly uniform.
        peak = float(cam.max())
        heatmap = (cam / peak if peak > 0 else torch.zeros_like(cam)).numpy().astype(np.float32)
    return GradCamResult(heatmap=heatmap, logits=logits.detach(), class_index=class_index)


def _image_tensor(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    main_input_name = getattr(model, "main_input_name", None)
    if main_input_name in inputs:
        return inputs[main_input_name]
    images = [value for value in inputs.values() if isinstance(value, torch.Tensor) and value.ndim == 4]
    if len(images) != 1:
        raise ValueError(
            f"Cannot tell which input is the image: found {len(images)} 4-D tensors in {sorted(inputs)}. Set "
            "`main_input_name` on the model (e.g. 'pixel_values')."
        )
    return images[0]


def _logits_of(outputs: object) -> torch.Tensor:
    logits = getattr(outputs, "logits", outputs)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(
            "The model must return a (1, num_labels) logits tensor or an output with `.logits`, "
            f"not {type(logits).__name__}."
        )
    return logits


def overlay_heatmap(
    image: Image.Image, heatmap: np.ndarray, alpha: float = 0.45, colormap: str = "jet"
) -> Image.Image:
    """Blend a colour-mapped heatmap (values in [0, 1], any size) over `image`, resized to the image.

    The heatmap covers what the model saw: if the processor cropped the image, overlay it on the cropped image.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (height, width), not shape {heatmap.shape}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}.")
    rgb = image.convert("RGB")
    resized = Image.fromarray(np.clip(heatmap, 0.0, 1.0)).resize(rgb.size, Image.Resampling.BILINEAR)
    colours = colormaps[colormap](np.asarray(resized))[..., :3]
    blended = (1.0 - alpha) * (np.asarray(rgb, dtype=np.float32) / 255.0) + alpha * colours
    return Image.fromarray(np.rint(blended * 255.0).astype(np.uint8))
