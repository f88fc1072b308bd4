"""Scale: time and peak memory to load HAM10000 and to train one epoch on it through the real pipeline, per size.

    python bench/scale.py [--data ../shared/data/ham10000] [--sizes 1000 10000] [--max-growth 1.2] [--threads 1]

Each size runs in a fresh Python process with an empty `datasets` cache (`data_memory.run_fresh`), so the load
builds the Arrow file and no size profits from another's caches. The load is train.py's (`load_lesion_dataset` with
`--max_samples`, a stratified subsample split by lesion); the epoch is `SkinFusionTrainer.train()` for one epoch on the
training split with lazy JPEG decoding and augmentation, the collator and train.py's other defaults (data-loader
workers included), built as in bench/training_throughput.py. The model is cheap on purpose — the plain CNN
`skin_fusion_small_cnn` at 64 px with the metadata MLP — since the point is the data path and memory. Peak memory is
sampled every 2 ms (psutil) over the main process plus its data-loader workers. One torch thread by default: on the
busy shared CPU, a model this small spends most of a 2-thread step waiting at OpenMP barriers for a parked thread
(about 2 s instead of 0.35 s per step, measured), which would hide the data path behind noise. Target: peak memory
at the largest size within --max-growth of that at the smallest (nothing grows with the data); exits with status 1
otherwise. Epoch time should grow linearly (constant seconds per training image). Writes bench/results/scale.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import psutil
from data_memory import DEFAULT_DATA, MIB, PeakRSS, run_fresh
from machine_info import machine_info

from skin_fusion.threads import cpu_busy

BENCH = Path(__file__).resolve().parent

RESULTS = BENCH / "results"
MODEL_FLAGS = ["--backbone", "skin_fusion_small_cnn", "--backbone_weights", "none", "--image_size", "64",
               "--freeze_epochs", "0", "--num_train_epochs", "1"]


def measure(data: str, size: int, threads: int) -> dict[str, float]:
    """In this (fresh) process: load `size` images as train.py does, then train one epoch; times in s, bytes."""
    import datasets
    import torch
    from training_throughput import pipeline_trainer, training_arguments
    from transformers import set_seed

    from skin_fusion.modeling.modeling_skin_fusion import SkinFusionForImageClassification
    from skin_fusion.threads import configure_torch_threads
    from skin_fusion.training.run import build_processor_and_config, load_training_data

    datasets.disable_progress_bars()
    if threads:
        torch.set_num_threads(threads)
    threads = threads or configure_torch_threads()
    rss_before = psutil.Process().memory_info().rss
    with tempfile.TemporaryDirectory(prefix="skin_fusion_scale_") as output_dir:
        model_args, data_args, args = training_arguments(data, output_dir, [*MODEL_FLAGS, "--max_samples", str(size)])
        with PeakRSS() as load_rss:
            start = time.perf_counter()
            lesions, _ = load_training_data(data_args, args.seed)
            load_s = time.perf_counter() - start
        rss_loaded = psutil.Process().memory_info().rss
        set_seed(args.seed)
        _, config = build_processor_and_config(lesions, model_args, data_args)
        trainer = pipeline_trainer(lesions, SkinFusionForImageClassification(config), model_args, data_args, args)
        with PeakRSS(children=True) as epoch_rss:
            start = time.perf_counter()
            output = trainer.train()
            epoch_s = time.perf_counter() - start
    return {
        "images": sum(len(split) for split in lesions.splits.values()),
        "train_images": len(lesions.splits["train"]), "steps": output.global_step,
        "workers": args.dataloader_num_workers, "torch_threads": threads,
        "batch_size": args.per_device_train_batch_size,
        "load_s": load_s, "epoch_s": epoch_s, "rss_before": rss_before, "rss_loaded": rss_loaded,
        "peak_load": load_rss.peak, "peak_epoch": epoch_rss.peak,
        "peak_kernel": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # kB on Linux
        "peak_kernel_worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }


def peak(result: dict[str, float]) -> int:
    return max(result["peak_load"], result["peak_epoch"])


def markdown(results: list[dict[str, float]], info: dict[str, object], max_growth: float) -> str:
    first, last = results[0], results[-1]
    lines = [
        (f"`skin_fusion_small_cnn` fusion model at 64 px (random weights), batch {first['batch_size']}, "
         f"{first['workers']} data-loader worker(s) (train.py's default), {info['torch_threads']} torch threads; "
         f"HAM10000 JPEGs (256 px), each size in a fresh process with an empty datasets cache. {info['date']}; "
         f"{info['cpu']} ({info['logical_cpus']} logical CPUs, shared); torch {info['torch']}, datasets "
         f"{info['datasets']}. Other processes kept {info['cpu_busy_before']:.0%} of the CPUs busy just before the "
         f"run; load average {info['load_average_1min']} at the end."),
        "",
        ("| images | train images | load (s) | peak RSS, load (MiB) | RSS after load (MiB) | epoch (s) | steps "
         "| train images / s | ms per train image | peak RSS, epoch, main + workers (MiB) | peak RSS, kernel, main / "
         "largest child (MiB) |"),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['images']:,} | {r['train_images']:,} | {r['load_s']:.1f} | {r['peak_load'] / MIB:.0f} "
            f"| {r['rss_loaded'] / MIB:.0f} | {r['epoch_s']:.1f} | {r['steps']} "
            f"| {r['train_images'] / r['epoch_s']:.0f} | {1000 * r['epoch_s'] / r['train_images']:.1f} "
            f"| {r['peak_epoch'] / MIB:.0f} | {r['peak_kernel'] / MIB:.0f} / {r['peak_kernel_worker'] / MIB:.0f} |"
        )
    growth = peak(last) / peak(first)
    per_image = (last["epoch_s"] / last["train_images"]) / (first["epoch_s"] / first["train_images"])
    lines += [
        "", "| target | measured | met |", "|---|---|---|",
        (f"| peak RSS (load or epoch), {last['images']:,} / {first['images']:,} images ≤ {max_growth} "
         f"| {growth:.2f} | {'yes' if growth <= max_growth else '**NO**'} |"),
        (f"| epoch time linear in the data: seconds per train image, {last['images']:,} / {first['images']:,} "
         f"images ≈ 1 (reported, not enforced) | {per_image:.2f} | {'yes' if 0.67 <= per_image <= 1.5 else 'no'} |"),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="HAM10000 imagefolder (images/ + metadata.csv)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="numbers of images to load")
    parser.add_argument("--max-growth", type=float, default=1.2, help="allowed peak-RSS ratio, largest/smallest")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: train.py's, all cores)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.data, args.sizes[0], args.threads)))
        return
    if not Path(args.data).is_dir():
        raise SystemExit(f"no data folder at {args.data}; pass --data <HAM10000 imagefolder>.")
    busy_before = cpu_busy()
    results = [run_fresh(args.data, size, script=__file__, extra=("--threads", str(args.threads)))
               for size in args.sizes]
    info = {**machine_info(), "cpu_busy_before": round(busy_before, 3), "torch_threads": results[0]["torch_threads"]}
    table = markdown(results, info, args.max_growth)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    growth = peak(results[-1]) / peak(results[0])
    (RESULTS / "scale.json").write_text(json.dumps(
        {"machine": info, "sizes": args.sizes, "max_growth": args.max_growth, "peak_growth": growth,
         "results": results}, indent=2) + "\n")
    (RESULTS / "scale.md").write_text("# Scale: load and one training epoch, 1k vs 10k images\n\n" + table)
    if growth > args.max_growth:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
