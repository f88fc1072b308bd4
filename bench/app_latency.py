"""What the app's predictor costs on top of the bare backbone, on this CPU (batch 1, medians).

    python bench/app_latency.py [--backbones tf_efficientnet_lite0:224 tf_efficientnet_b4:380] [--runs 20] [--threads 2]
    python bench/app_latency.py --model models/skin-fusion-ham10000 --image examples/ham10000/images/ISIC_0024329.jpg

Rows, per backbone (random weights; speed does not depend on their values), or for a saved model (`--model`, on the
image file `--image`, decoded on every call as the app decodes an upload):
  - bare backbone forward: the timm model with the predictor's backbone weights, eval, channels-last, inference mode;
  - bare forward + backward: the same with autograd and a backward from the pooled features (Grad-CAM's yardstick);
  - predictor: `SkinFusionPredictor.predict` on a PIL image of the processor's resize size (decode checks, resize,
    crop, normalisation, metadata encoding, fusion head, softmax) must add at most 10% to the bare forward;
  - predictor (ONNX Runtime): the same call served by `runtime="onnx"` (the whole classifier exported);
  - predictor + Grad-CAM (`explain=True`) must cost at most the bare forward + backward;
  - predictor + TTA (the image and its mirror image), for information.
Writes bench/results/app_latency.{json,md} (app_latency_Nthreads.* for other thread counts). Other processes on the
machine distort 2-thread timings badly (a preempted OpenMP thread stalls the other); the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch
from bench_model import fusion_model
from machine_info import machine_info
from PIL import Image

from skin_fusion.serving.image_io import load_rgb_image
from skin_fusion.serving.predictor import SkinFusionPredictor
from skin_fusion.threads import configure_torch_threads

BENCH = Path(__file__).resolve().parent

RESULTS = Path(__file__).resolve().parent / "results"


def recorded_metadata(predictor: SkinFusionPredictor) -> dict[str, object]:
    """A complete metadata row for the model: age 63 for numbers, each categorical field's first category."""
    choices = predictor.metadata_choices()
    return {name: 63 if name in predictor.numeric_columns else choices[name][0] for name in predictor.metadata_columns}


def interleaved_medians(fns: dict[str, Callable[[], object]], runs: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds of each function; rounds run every function once, so a busy spell hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def saved_model(backbone: str, image_size: int, directory: Path) -> Path:
    """`bench_model.fusion_model` on `backbone` (random weights) saved with its processor."""
    model, processor = fusion_model(backbone, image_size)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def bench_backbone(backbone: str, image_size: int, runs: int, threads: int) -> dict[str, float]:
    """Timings of a fusion model with random weights on `backbone`, on a random image of the processor's size."""
    with tempfile.TemporaryDirectory() as tmp:
        return bench_model(saved_model(backbone, image_size, Path(tmp)), None, runs, threads)


def bench_model(model_dir: Path, image_file: Path | None, runs: int, threads: int) -> dict[str, float]:
    """Timings of the saved model in `model_dir` on `image_file` (a path, decoded on every call), or on a random
    in-memory image of the processor's resize size."""
    configure_torch_threads(threads)
    predictor = SkinFusionPredictor.from_pretrained(model_dir, num_threads=threads)
    with tempfile.TemporaryDirectory() as tmp:  # the export goes to a copy: a committed model stays as it is
        copy = Path(tmp) / "model"
        shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("*.onnx", "runs", "image-only"))
        onnx_predictor = SkinFusionPredictor.from_pretrained(copy, num_threads=threads, runtime="onnx")
    backbone, image_size = predictor.config.backbone, predictor.config.image_size
    bare = timm.create_model(backbone, pretrained=False, num_classes=0)
    bare.load_state_dict(predictor.model.skin_fusion.backbone.state_dict())
    bare = bare.eval().to(memory_format=torch.channels_last)
    pixels = torch.randn(1, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    side = predictor.processor.resize_size
    image = image_file if image_file is not None else Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))

    def bare_forward() -> None:
        with torch.inference_mode():
            bare(pixels)

    def bare_forward_backward() -> None:
        bare.zero_grad(set_to_none=True)
        bare(pixels).sum().backward()

    metadata = recorded_metadata(predictor)
    prepared = {"pixel_values": predictor.processor.preprocess_images(load_rgb_image(image)).contiguous(
        memory_format=torch.channels_last), "metadata": predictor.encode_metadata(metadata)[0]}

    def model_forward() -> None:
        with torch.inference_mode():
            predictor.inference_model(**prepared)

    timings = interleaved_medians({
        "bare_forward_ms": bare_forward,
        "model_forward_ms": model_forward,
        "preprocess_ms": lambda: (predictor.processor.preprocess_images(load_rgb_image(image)),
                                  predictor.encode_metadata(metadata)),
        "bare_forward_backward_ms": bare_forward_backward,
        "predictor_ms": lambda: predictor.predict(image, metadata),
        "predictor_onnx_ms": lambda: onnx_predictor.predict(image, metadata),
        "predictor_gradcam_ms": lambda: predictor.predict(image, metadata, explain=True),
        "predictor_tta_ms": lambda: predictor.predict(image, metadata, tta=True),
    }, runs)
    timings["predictor_overhead"] = timings["predictor_ms"] / timings["bare_forward_ms"] - 1
    timings["predictor_onnx_vs_bare"] = timings["predictor_onnx_ms"] / timings["bare_forward_ms"]
    timings["gradcam_vs_forward_backward"] = timings["predictor_gradcam_ms"] / timings["bare_forward_backward_ms"]
    timings["gradcam_vs_forward"] = timings["predictor_gradcam_ms"] / timings["bare_forward_ms"]
    return timings


def markdown(results: dict[str, dict[str, float]], info: dict[str, object], runs: int) -> str:
    lines = [
        f"Batch 1, median of {runs} interleaved runs after 3 warm-up runs; {info['cpu']} ({info['logical_cpus']} "
        f"logical CPUs), {info['torch_threads']} torch threads, torch {info['torch']}, timm {info['timm']}; load "
        f"average {info['load_average_1min']} at the end. Bare model: eval, channels-last, inference mode.",
        "",
        "| backbone | bare forward | bare fwd+bwd | predictor | overhead (≤ 10%) | predictor, ONNX Runtime (÷ bare) "
        "| + Grad-CAM | Grad-CAM / fwd+bwd (≤ 1) | + TTA |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, t in results.items():
        lines.append(
            f"| {name} | {t['bare_forward_ms']:.1f} ms | {t['bare_forward_backward_ms']:.1f} ms | "
            f"{t['predictor_ms']:.1f} ms | {100 * t['predictor_overhead']:+.1f}% | {t['predictor_onnx_ms']:.1f} ms "
            f"({t['predictor_onnx_vs_bare']:.2f}×) | {t['predictor_gradcam_ms']:.1f} ms "
            f"| {t['gradcam_vs_forward_backward']:.2f} | {t['predictor_tta_ms']:.1f} ms |"
        )
    lines += ["", "Where the predictor's time goes (same runs): image checks + resize/crop/normalise + metadata "
              "encoding, and the served SkinFusion model's forward (backbone with batch norms folded + metadata MLP "
              "+ head) on prepared tensors.", "",
              "| backbone | preprocessing | model forward | bare forward |", "|---|---|---|---|"]
    lines += [f"| {name} | {t['preprocess_ms']:.2f} ms | {t['model_forward_ms']:.1f} ms | "
              f"{t['bare_forward_ms']:.1f} ms |" for name, t in results.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["tf_efficientnet_lite0:224"],
                        help="timm name:size pairs, e.g. tf_efficientnet_lite0:224 tf_efficientnet_b4:380")
    parser.add_argument("--model", type=Path, help="a saved model directory instead of --backbones")
    parser.add_argument("--image", type=Path, help="with --model: the image file to classify (decoded every call)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {}
    if args.model is not None:
        results[f"{args.model.name} ({args.image.name if args.image else 'random image'})"] = bench_model(
            args.model, args.image, args.runs, args.threads)
    else:
        for spec in args.backbones:
            backbone, size = spec.split(":")
            results[f"{backbone} @ {size}"] = bench_backbone(backbone, int(size), args.runs, args.threads)
    info = machine_info()
    table = markdown(results, info, args.runs)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = (f"_{args.model.name}" if args.model is not None else "") + (
        "" if args.threads == 2 else f"_{args.threads}threads")
    report = {"machine": info, "runs": args.runs, "results": results}
    (RESULTS / f"app_latency{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"app_latency{suffix}.md").write_text("# App latency\n\n" + table)


if __name__ == "__main__":
    main()
