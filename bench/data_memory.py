"""Time and peak memory to load HAM10000 with `load_lesion_dataset` and decode every image once, per data-set size.

Each size runs in a fresh Python process with an empty `datasets` cache, so the load includes building the Arrow
file and no size profits from another's caches. A psutil thread samples RSS every 2 ms during load + decode; the
kernel's peak (ru_maxrss) is shown beside it. "RSS before load" is what the imports cost (the skin_fusion package
imports torch and transformers), the same for every size. Images are decoded lazily, one at a time, so peak memory
must not grow with the number of images; the script exits with status 1 when it grows more than --max-growth.

    python bench/data_memory.py [--data ../shared/data/ham10000] [--sizes 1000 10000] [--max-growth 1.2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import psutil

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ham10000"
MIB = 2**20


class PeakRSS:
    """Samples this process's RSS with psutil in a background thread; `peak` is the largest value seen.

    With `children=True` the RSS of its child processes (data-loader workers) is added; pages a forked child still
    shares with its parent then count twice, so that sum is an upper bound.
    """

    def __init__(self, interval: float = 0.002, children: bool = False) -> None:
        self.process, self.interval, self.children, self.peak = psutil.Process(), interval, children, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def rss(self) -> int:
        total = self.process.memory_info().rss
        if self.children:
            for child in self.process.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.NoSuchProcess:  # a worker that ended between the listing and the reading
                    pass
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def measure(data: str, size: int) -> dict[str, float]:
    """In this (fresh) process: load `size` images, then decode each once; times in s, memory in bytes."""
    import datasets

    from skin_fusion.data.loading import load_lesion_dataset

    datasets.disable_progress_bars()
    rss_before = psutil.Process().memory_info().rss
    with PeakRSS() as rss:
        start = time.perf_counter()
        lesions = load_lesion_dataset(data, max_samples=size)
        loaded = time.perf_counter()
        rss_loaded = psutil.Process().memory_info().rss
        for split in lesions.splits.values():
            for example in split:
                example["image"].getpixel((0, 0))  # decoded on access; touch it so nothing is skipped
        decoded = time.perf_counter()
    return {
        "images": sum(len(split) for split in lesions.splits.values()),
        "load_s": loaded - start,
        "decode_s": decoded - loaded,
        "rss_before": rss_before,
        "rss_loaded": rss_loaded,
        "peak_sampled": rss.peak,
        "peak_kernel": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # kB on Linux
    }


def run_fresh(data: str, size: int, script: str = __file__, extra: tuple[str, ...] = ()) -> dict[str, float]:
    """Run `script --worker` (this file's `measure` by default) in a child process with its own empty `datasets`
    cache; it prints its measurements as one JSON line."""
    with tempfile.TemporaryDirectory(prefix="skin_fusion_bench_") as cache:
        env = {**os.environ, "HF_DATASETS_CACHE": cache, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        command = [sys.executable, script, "--worker", "--data", data, "--sizes", str(size), *extra]
        child = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if child.returncode != 0:
        raise SystemExit(f"measuring {size} images failed (exit {child.returncode}); see the error above.")
    return json.loads(child.stdout.strip().splitlines()[-1])


def table(results: list[dict[str, float]]) -> str:
    lines = [
        ("| images | load (s) | decode all once (s) | images/s | RSS before load (MiB) | RSS after load (MiB) "
         "| peak RSS, psutil (MiB) | peak RSS, kernel (MiB) |"),
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['images']:,} | {r['load_s']:.1f} | {r['decode_s']:.1f} | {r['images'] / r['decode_s']:.0f} "
            f"| {r['rss_before'] / MIB:.0f} | {r['rss_loaded'] / MIB:.0f} | {r['peak_sampled'] / MIB:.0f} "
            f"| {r['peak_kernel'] / MIB:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="HAM10000 imagefolder (images/ + metadata.csv)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="numbers of images to load")
    parser.add_argument("--max-growth", type=float, default=1.2, help="allowed peak-RSS ratio, largest/smallest")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.data, args.sizes[0])))
        return
    if not Path(args.data).is_dir():
        raise SystemExit(f"no data folder at {args.data}; pass --data <HAM10000 imagefolder>.")
    results = [run_fresh(args.data, size) for size in args.sizes]
    print(table(results))
    growth = results[-1]["peak_sampled"] / results[0]["peak_sampled"]
    verdict = "flat" if growth <= args.max_growth else f"GROWS (more than {args.max_growth}x)"
    print(f"\npeak RSS, {results[-1]['images']:,} vs {results[0]['images']:,} images: {growth:.2f}x ({verdict})")
    if growth > args.max_growth:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
