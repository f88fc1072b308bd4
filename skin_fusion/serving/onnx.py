"""The whole SkinFusion classifier as one ONNX graph, and an ONNX Runtime session that serves it.

The graph takes the inputs of the model's modality (`pixel_values` `(batch, 3, H, W)` and/or `metadata`
`(batch, metadata_dim)`, float32, any batch size) and returns `logits` `(batch, num_labels)`, already divided by
`config.temperature`: `softmax(logits)` are the calibrated probabilities. The processor stays in Python; run images
and metadata through the `SkinFusionProcessor` saved beside the model first.

    python -m skin_fusion.serving.onnx outputs/skin-fusion            # writes outputs/skin-fusion/model.onnx

```python
from skin_fusion.serving.onnx import OnnxSkinFusion

session = OnnxSkinFusion.from_pretrained("outputs/skin-fusion")
logits = session(pixel_values=inputs["pixel_values"], metadata=inputs["metadata"])   # numpy (batch, num_labels)
```
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..files import DEFAULT_OUTPUT_DIR, MAKE_MODEL_HINT, ONNX_FILE
from ..modeling.configuration_skin_fusion import SkinFusionConfig
from ..modeling.modeling_skin_fusion import SkinFusionForImageClassification
from ..threads import thread_count

# Opset 18 is the exporter's native opset (no version conversion) and ONNX Runtime >= 1.14 runs it.
DEFAULT_OPSET = 18
# ONNX Runtime fuses and reorders float32 operations, so logits differ from PyTorch's in the last bits (about 1e-6
# for EfficientNet-B4); a difference above this means a wrong graph, not rounding.
ATOL = 1e-4
RTOL = 1e-4
INSTALL_HINT = "pip install onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.31.1 (pinned in requirements.txt)"


class OnnxMismatchError(RuntimeError):
    """ONNX Runtime's logits differ from PyTorch's by more than the tolerance: the exported graph is wrong."""


def input_names(config: SkinFusionConfig) -> list[str]:
    """The graph inputs of a model with this config, in order: `pixel_values` and/or `metadata`."""
    return [name for name, used in (("pixel_values", config.uses_image), ("metadata", config.uses_metadata)) if used]


def _onnxruntime() -> Any:
    """The `onnxruntime` module, or an ImportError that says how to install it."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"ONNX Runtime is not installed; {INSTALL_HINT}.") from error
    return onnxruntime


def _check_exporter_installed() -> None:
    """torch's ONNX exporter needs `onnx` and `onnxscript`; say how to install them instead of failing deep inside."""
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError as error:
            raise ImportError(f"Exporting to ONNX needs the `{module}` package; {INSTALL_HINT}.") from error


def load_model(model_dir: str | Path) -> SkinFusionForImageClassification:
    """A saved SkinFusion model in eval mode; FileNotFoundError with the fix when `model_dir` holds none."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"No model directory at '{model_dir}'. {MAKE_MODEL_HINT}, or pass its path.")
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"'{model_dir}' is not a SkinFusion model directory (no config.json). Pass the directory that "
            f"`python train.py` wrote ({DEFAULT_OUTPUT_DIR} by default). {MAKE_MODEL_HINT}."
        )
    return SkinFusionForImageClassification.from_pretrained(model_dir).eval()


def random_inputs(config: SkinFusionConfig, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 model inputs of `config`'s modality (standard normal, like normalised pixels and metadata)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {"pixel_values": (batch_size, 3, config.image_size, config.image_size),
              "metadata": (batch_size, config.metadata_dim)}
    return {name: torch.randn(shapes[name], generator=generator) for name in input_names(config)}


class _LogitsOnly(nn.Module):
    """The classifier as a function from its input tensors to its temperature-scaled logits (what ONNX exports)."""

    def __init__(self, model: SkinFusionForImageClassification) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor | None = None, metadata: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, metadata=metadata).logits


def export_onnx(
    model_dir_or_model: str | Path | SkinFusionForImageClassification,
    output_path: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    check_batch_sizes: tuple[int, ...] = (1, 3),
) -> Path:
    """Export a SkinFusion classifier to one self-contained `.onnx` file with a dynamic batch dimension, then check it.

    Args:
        model_dir_or_model: a saved model directory or a `SkinFusionForImageClassification` (its train/eval mode is
            restored afterwards).
        output_path: where to write; defaults to `model_dir/model.onnx` (required when a model object is passed).
        opset: ONNX opset version.
        check_batch_sizes: batch sizes at which ONNX Runtime's logits must equal PyTorch's (see `check_onnx`).

    Returns:
        The path of the written `.onnx` file.

    Raises:
        FileNotFoundError: no SkinFusion model in the directory.
        ImportError: `onnx`, `onnxscript` or `onnxruntime` is not installed.
        OnnxMismatchError: ONNX Runtime's logits differ from PyTorch's by more than `ATOL` + `RTOL` * |logits|.
    """
    if isinstance(model_dir_or_model, SkinFusionForImageClassification):
        model = model_dir_or_model
        if output_path is None:
            raise ValueError("Pass `output_path` when exporting a model object (there is no model directory).")
    else:
        model = load_model(model_dir_or_model)
        output_path = output_path or Path(model_dir_or_model) / ONNX_FILE
    _check_exporter_installed()
    _onnxruntime()
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)

    was_training = model.training
    model.eval()
    try:
        # Batch 2, not 1: torch.export specialises a dimension whose example size is 1.
        example = random_inputs(model.config, batch_size=2)
        batch = torch.export.Dim("batch")
        with warnings.catch_warnings():
            # Both inputs share the one `batch` dimension; the exporter says so for the second one.
            warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*")
            torch.onnx.export(
                _LogitsOnly(model).eval(), (), output_path, kwargs=example, input_names=list(example),
                output_names=["logits"], dynamic_shapes={name: {0: batch} for name in example},
                opset_version=opset, dynamo=True, external_data=False, verbose=False,
            )
        check_onnx(model, output_path, check_batch_sizes)
    finally:
        model.train(was_training)
    return output_path


def check_onnx(
    model: SkinFusionForImageClassification,
    onnx_path_or_session: str | Path | OnnxSkinFusion,
    batch_sizes: tuple[int, ...] = (1, 3),
) -> float:
    """Max absolute logit difference between ONNX Runtime and PyTorch on random batches; raises if not all close."""
    session = onnx_path_or_session if isinstance(onnx_path_or_session, OnnxSkinFusion) \
        else OnnxSkinFusion(onnx_path_or_session)
    onnx_path = session.path
    worst = 0.0
    for batch_size in batch_sizes:
        inputs = random_inputs(model.config, batch_size, seed=batch_size)
        with torch.inference_mode():
            expected = model(**inputs).logits.numpy()
        actual = session(**inputs)
        worst = max(worst, float(np.abs(actual - expected).max()))
        if actual.shape != expected.shape or not np.allclose(actual, expected, atol=ATOL, rtol=RTOL):
            raise OnnxMismatchError(
                f"ONNX Runtime's logits from {onnx_path} differ from PyTorch's at batch {batch_size}: max |diff| "
                f"{worst:.2e} (tolerance {ATOL:g} + {RTOL:g}·|logits|), shapes {actual.shape} vs {expected.shape}. "
                "The export is wrong; report it with the model's config.json."
            )
    return worst


class OnnxSkinFusion:
    """An ONNX Runtime session on an exported SkinFusion graph: `session(pixel_values, metadata) -> logits` (numpy).

    Args:
        onnx_path: the `.onnx` file `export_onnx` wrote.
        num_threads: ONNX Runtime's intra-op threads; default: the thread policy's `thread_count()`.
        spin: let idle intra-op threads busy-wait for the next operator. Off by default: the spinning threads keep
            cores busy after each call, which slows PyTorch in the same process (preprocessing, Grad-CAM) and other
            processes on a shared CPU; on this 2-core machine under load it also made ONNX Runtime itself slower.
    """

    def __init__(self, onnx_path: str | Path, num_threads: int | None = None, spin: bool = False) -> None:
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise FileNotFoundError(
                f"No ONNX model at '{onnx_path}'. Export one with `python -m skin_fusion.serving.onnx MODEL_DIR`."
            )
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or thread_count()
        # One operator at a time, each over all intra-op threads: a CNN graph is a chain, parallel branches are rare.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
        self.path = onnx_path
        self.num_threads = options.intra_op_num_threads
        self.input_names = [node.name for node in self.session.get_inputs()]

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, num_threads: int | None = None, spin: bool = False
    ) -> OnnxSkinFusion:
        """The session on `model_dir/model.onnx` (written by `python -m skin_fusion.serving.onnx model_dir`)."""
        if not Path(model_dir).is_dir():
            raise FileNotFoundError(f"No model directory at '{model_dir}'. {MAKE_MODEL_HINT}, then export it.")
        return cls(Path(model_dir) / ONNX_FILE, num_threads=num_threads, spin=spin)

    def __call__(
        self, pixel_values: torch.Tensor | np.ndarray | None = None, metadata: torch.Tensor | np.ndarray | None = None
    ) -> np.ndarray:
        """Temperature-scaled logits `(batch, num_labels)` from the processor's tensors (torch or numpy)."""
        given = {"pixel_values": pixel_values, "metadata": metadata}
        feed = {}
        for name in self.input_names:
            if given[name] is None:
                raise ValueError(f"This model needs `{name}` (its inputs are {self.input_names}); run the inputs "
                                 "through the SkinFusionProcessor saved beside the model.")
            feed[name] = _as_float32_array(given[name])
        return self.session.run(["logits"], feed)[0]


def onnx_cache_path(path_or_id: str | Path) -> Path:
    """Where the export of `path_or_id` goes: beside a writable local model, else in the user's cache folder."""
    local = Path(path_or_id)
    if local.is_dir() and os.access(local, os.W_OK):
        return local / ONNX_FILE
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "skin_fusion" / "onnx"
    return cache / str(path_or_id).strip("/").replace("/", "--") / ONNX_FILE


def onnx_session_for(
    model: SkinFusionForImageClassification, path_or_id: str | Path, num_threads: int | None = None
) -> OnnxSkinFusion:
    """An ONNX Runtime session that computes `model`'s logits: an existing export that still matches the model (checked
    with `check_onnx`), else a fresh export written to `onnx_cache_path(path_or_id)`."""
    path = onnx_cache_path(path_or_id)
    if path.is_file():
        session = OnnxSkinFusion(path, num_threads=num_threads)
        try:
            check_onnx(model, session, batch_sizes=(1,))
            return session
        except OnnxMismatchError:  # exported from older weights: export again
            pass
    return OnnxSkinFusion(export_onnx(model, path), num_threads=num_threads)


def _as_float32_array(values: torch.Tensor | np.ndarray) -> np.ndarray:
    # C-contiguous: a channels-last tensor's numpy view has permuted strides, which ONNX Runtime would copy anyway.
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.ascontiguousarray(values, dtype=np.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a saved SkinFusion model to ONNX and check it against "
                                                 "PyTorch with ONNX Runtime.")
    parser.add_argument("model_dir", help=f"a directory written by `python train.py` (e.g. {DEFAULT_OUTPUT_DIR})")
    parser.add_argument("--out", default=None, help=f"output file (default: MODEL_DIR/{ONNX_FILE})")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    args = parser.parse_args(argv)
    try:
        path = export_onnx(args.model_dir, args.out, opset=args.opset)
    except (FileNotFoundError, ImportError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"Wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); ONNX Runtime's logits equal PyTorch's within "
          f"atol {ATOL:g} + rtol {RTOL:g}.")


if __name__ == "__main__":
    main()
