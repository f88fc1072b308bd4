"""Inference speed of SkinFusion against its bare timm backbone, in PyTorch eager, channels-last and ONNX Runtime.

    python bench/inference_speed.py                                               # Lite0 at 224, ImageNet weights
    python bench/inference_speed.py --backbone tf_efficientnet_b4 --image_size 380 --runs 20   # random weights

Variants, all with the same backbone weights, resolution and threads, under `torch.inference_mode()`:
  - bare: the timm classifier (`timm.create_model(backbone, num_classes=3)`) holding SkinFusion's backbone weights;
  - SkinFusion: the fusion model (backbone + metadata MLP + head, temperature-scaled logits) on image + metadata;
  - each in eager PyTorch and channels-last (model and input `.to(memory_format=torch.channels_last)`);
  - SkinFusion in ONNX Runtime (`skin_fusion.serving.onnx`: the whole fusion graph, intra-op threads = --threads).
Batch 1 gives the latency per image, batch 8 the throughput. The machine is shared, so every round runs each variant
once in a shuffled order, and the ratios compare medians from the same rounds. Targets: SkinFusion eager / bare
eager <= 1.10 (the fusion costs at most 10% over the backbone), ONNX Runtime faster than eager at batch 1, with
logits equal to PyTorch's within the export tolerance. Exits with status 1 when a target is missed.
Writes bench/results/inference_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime
import timm
import torch
from bench_model import METADATA_ROWS, fusion_model
from machine_info import machine_info
from torch import nn

from skin_fusion import MetadataEncoder, SkinFusionForImageClassification
from skin_fusion.serving.onnx import ATOL, RTOL, OnnxSkinFusion, export_onnx
from skin_fusion.threads import cpu_busy
from skin_fusion.weights.backbone_weights import load_backbone_weights
from skin_fusion.weights.lite_weights import has_lite_weights

BENCH = Path(__file__).resolve().parent

RESULTS = Path(__file__).resolve().parent / "results"
BATCH_SIZES = (1, 8)
VARIANTS = (
    "bare eager", "bare channels_last", "SkinFusion eager", "SkinFusion channels_last", "SkinFusion ONNX Runtime",
)
RATIOS = (
    ("SkinFusion eager", "bare eager"),
    ("bare channels_last", "bare eager"),
    ("SkinFusion channels_last", "SkinFusion eager"),
    ("SkinFusion ONNX Runtime", "SkinFusion eager"),
    ("SkinFusion ONNX Runtime", "SkinFusion channels_last"),
)
MAX_FUSION_OVERHEAD = 1.10


def build_models(
    backbone: str, image_size: int
) -> tuple[SkinFusionForImageClassification, nn.Module, MetadataEncoder, str]:
    """The fusion model (offline Lite weights when they exist, else random), the bare timm classifier with the same
    backbone weights, the fitted metadata encoder, and where the weights came from."""
    fusion, processor = fusion_model(backbone, image_size, "lite" if has_lite_weights(backbone) else "none")
    provenance = load_backbone_weights(fusion)
    bare = timm.create_model(backbone, pretrained=False, num_classes=fusion.config.num_labels)
    missing, unexpected = bare.load_state_dict(fusion.skin_fusion.backbone.state_dict(), strict=False)
    classifier = bare.pretrained_cfg["classifier"]
    if unexpected or any(not key.startswith(f"{classifier}.") for key in missing):
        raise RuntimeError(f"the bare {backbone} does not take SkinFusion's backbone weights: missing {missing}, "
                           f"unexpected {unexpected}")
    return fusion.eval(), bare.eval(), processor.encoder, provenance


def interleaved_times(
    fns: dict[str, Callable[[], object]], runs: int, warmup: int, seed: int
) -> dict[str, list[float]]:
    """Seconds of each call; every round calls each function once, in a shuffled order, so a busy spell on the shared
    CPU and whatever the previous variant left running (spinning threads, cold caches) hit all variants alike."""
    order = list(fns)
    shuffler = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(warmup + runs):
        shuffler.shuffle(order)
        for name in order:
            start = time.perf_counter()
            fns[name]()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(elapsed)
    return times


def bench(backbone: str, image_size: int, runs: int, warmup: int, threads: int, spin: bool) -> dict[str, object]:
    fusion, bare, encoder, provenance = build_models(backbone, image_size)
    fusion_cl = copy.deepcopy(fusion).to(memory_format=torch.channels_last)
    bare_cl = copy.deepcopy(bare).to(memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        onnx_path = export_onnx(fusion, Path(tmp) / "model.onnx")
        export_s = time.perf_counter() - start
        session = OnnxSkinFusion(onnx_path, num_threads=threads, spin=spin)

    generator = torch.Generator().manual_seed(0)
    results: dict[str, object] = {"weights": provenance, "export_s": export_s, "batches": {}}
    for batch_size in BATCH_SIZES:
        pixels = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
        pixels_cl = pixels.contiguous(memory_format=torch.channels_last)
        rows = METADATA_ROWS.iloc[[i % len(METADATA_ROWS) for i in range(batch_size)]]
        metadata = torch.from_numpy(encoder.transform(rows))

        fns = {
            "bare eager": partial(bare, pixels),
            "bare channels_last": partial(bare_cl, pixels_cl),
            "SkinFusion eager": partial(fusion, pixel_values=pixels, metadata=metadata),
            "SkinFusion channels_last": partial(fusion_cl, pixel_values=pixels_cl, metadata=metadata),
            "SkinFusion ONNX Runtime": partial(session, pixel_values=pixels, metadata=metadata),
        }
        with torch.inference_mode():
            torch_logits = fusion(pixel_values=pixels, metadata=metadata).logits.numpy()
            times = interleaved_times(fns, runs, warmup, seed=batch_size)
        onnx_logits = session(pixel_values=pixels, metadata=metadata)
        results["batches"][str(batch_size)] = {
            "ms_per_call": {name: [round(1000 * t, 3) for t in values] for name, values in times.items()},
            **summarise(times, batch_size),
            "onnx_max_abs_diff": float(np.abs(onnx_logits - torch_logits).max()),
            "onnx_allclose": bool(np.allclose(onnx_logits, torch_logits, atol=ATOL, rtol=RTOL)),
        }
    return results


def summarise(times: dict[str, list[float]], batch_size: int) -> dict[str, object]:
    """Per-image milliseconds (median, quartiles, best), images/s, and the ratios of medians and of bests."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    bests = {name: min(values) for name, values in times.items()}
    quartiles = {name: statistics.quantiles(values, n=4) for name, values in times.items()}
    ratios = {"median": {}, "best": {}}
    for numerator, denominator in RATIOS:
        ratios["median"][f"{numerator} / {denominator}"] = medians[numerator] / medians[denominator]
        ratios["best"][f"{numerator} / {denominator}"] = bests[numerator] / bests[denominator]
    return {
        "median_ms_per_image": {name: 1000 * t / batch_size for name, t in medians.items()},
        "iqr_ms_per_image": {name: [1000 * q[0] / batch_size, 1000 * q[2] / batch_size]
                             for name, q in quartiles.items()},
        "best_ms_per_image": {name: 1000 * t / batch_size for name, t in bests.items()},
        "images_per_s": {name: batch_size / t for name, t in medians.items()},
        "ratios": ratios,
    }


def targets(results: dict[str, object]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each target of the brief."""
    b1, b8 = results["batches"]["1"], results["batches"]["8"]
    checks = []
    for batch, r in (("1", b1), ("8", b8)):
        ratio = r["ratios"]["median"]["SkinFusion eager / bare eager"]
        checks.append((f"SkinFusion eager / bare eager ≤ {MAX_FUSION_OVERHEAD:.2f} (batch {batch})", f"{ratio:.3f}",
                       ratio <= MAX_FUSION_OVERHEAD))
    onnx_ratio = b1["ratios"]["median"]["SkinFusion ONNX Runtime / SkinFusion eager"]
    checks.append(("SkinFusion ONNX Runtime / SkinFusion eager < 1 (batch 1)", f"{onnx_ratio:.3f}", onnx_ratio < 1))
    for batch, r in (("1", b1), ("8", b8)):
        checks.append((f"ONNX logits = PyTorch's within atol {ATOL:g} + rtol {RTOL:g} (batch {batch})",
                       f"max abs diff {r['onnx_max_abs_diff']:.1e}", r["onnx_allclose"]))
    return checks


def machine(threads: int, spin: bool) -> dict[str, object]:
    return {**machine_info(), "onnxruntime_threads": threads, "onnxruntime_spinning": spin,
            "onnxruntime": onnxruntime.__version__}


def markdown(results: dict[str, object], info: dict[str, object], args: argparse.Namespace) -> str:
    b1, b8 = results["batches"]["1"], results["batches"]["8"]
    lines = [
        f"`{args.backbone}` at {args.image_size} px, {results['weights']}; {info['date']}; {info['cpu']} "
        f"({info['logical_cpus']} logical CPUs, shared), {info['torch_threads']} torch threads, "
        f"{info['onnxruntime_threads']} ONNX Runtime intra-op threads (spinning "
        f"{'on' if info['onnxruntime_spinning'] else 'off'}); torch {info['torch']}, onnxruntime "
        f"{info['onnxruntime']}, timm {info['timm']}. {args.runs} interleaved rounds (shuffled order) after "
        f"{args.warmup} warm-up rounds, under `torch.inference_mode()`. Other processes kept "
        f"{info['cpu_busy_before']:.0%} of the CPUs busy just before the run; load average "
        f"{info['load_average_1min']} at the end. ONNX export + check took {results['export_s']:.0f} s.",
        "",
        "Milliseconds per image: median (interquartile range), and best of the rounds.",
        "",
        "| variant | batch 1 median | batch 1 best | batch 8 median | batch 8 best | batch 8 images / s (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in VARIANTS:
        cells = []
        for r in (b1, b8):
            q = r["iqr_ms_per_image"][name]
            cells += [f"{r['median_ms_per_image'][name]:.1f} ({q[0]:.1f}–{q[1]:.1f})",
                      f"{r['best_ms_per_image'][name]:.1f}"]
        lines.append(f"| {name} | {' | '.join(cells)} | {b8['images_per_s'][name]:.1f} |")
    lines += ["", "| ratio | of medians, batch 1 | of medians, batch 8 | of bests, batch 1 | of bests, batch 8 |",
              "|---|---:|---:|---:|---:|"]
    for name in b1["ratios"]["median"]:
        values = [r["ratios"][kind][name] for kind in ("median", "best") for r in (b1, b8)]
        lines.append(f"| {name} | {' | '.join(f'{v:.3f}' for v in values)} |")
    lines += ["", "| target (on medians) | measured | met |", "|---|---|---|"]
    lines += [f"| {target} | {measured} | {'yes' if met else '**NO**'} |" for target, measured, met in targets(results)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0",
                        help="timm name; tf_efficientnet_lite0/1/2 get offline ImageNet weights, others random ones")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=30, help="timed rounds per batch size (each runs every variant)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=2, help="torch threads and ONNX Runtime intra-op threads")
    parser.add_argument("--ort_spin", action="store_true",
                        help="let ONNX Runtime's idle threads spin (off in OnnxSkinFusion: they slow what runs next)")
    args = parser.parse_args()
    if args.runs < 20:
        parser.error("--runs must be at least 20: fewer medians are too noisy on a shared CPU.")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    busy_before = cpu_busy()
    results = bench(args.backbone, args.image_size, args.runs, args.warmup, args.threads, args.ort_spin)
    info = {**machine(args.threads, args.ort_spin), "cpu_busy_before": round(busy_before, 3)}
    table = markdown(results, info, args)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    checks = [{"target": t, "measured": m, "met": ok} for t, m, ok in targets(results)]
    (RESULTS / "inference_speed.json").write_text(json.dumps(
        {"machine": info, "backbone": args.backbone, "image_size": args.image_size, "runs": args.runs,
         "warmup": args.warmup, "results": results, "targets": checks}, indent=2) + "\n")
    (RESULTS / "inference_speed.md").write_text("# Inference speed\n\n" + table)
    if not all(check["met"] for check in checks):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
