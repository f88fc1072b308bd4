"""CPU thread policy, the one shared by training, the app, ONNX Runtime and the benchmarks.

Two processes that each run as many threads as there are cores slow each other down far more than they share
(measured here: 2-10x on 2 cores), so a process takes the cores that other work leaves free, shared equally among the
local processes of a distributed run, unless OMP_NUM_THREADS says otherwise.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs' time spent busy over `seconds` (from /proc/stat; NaN where it does not exist)."""
    stat = Path("/proc/stat")
    if not stat.is_file():
        return float("nan")

    def snapshot() -> tuple[int, int]:
        fields = [int(v) for v in stat.read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    busy_0, total_0 = snapshot()
    time.sleep(seconds)
    busy_1, total_1 = snapshot()
    return (busy_1 - busy_0) / max(total_1 - total_0, 1)


def thread_count(sample_seconds: float = 0.25) -> int:
    """Threads for this process: OMP_NUM_THREADS if set, else the cores free over the next `sample_seconds`
    divided among the local processes (LOCAL_WORLD_SIZE), at least one."""
    if "OMP_NUM_THREADS" in os.environ:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = os.cpu_count() or 1
    busy = cpu_busy(sample_seconds)
    free = cores if busy != busy else cores * (1.0 - busy)  # NaN (no /proc/stat): assume all cores are free
    local_processes = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(1, min(cores // local_processes, round(free / local_processes)))


def configure_torch_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to `threads` (default: `thread_count()`); returns the number set."""
    threads = threads or thread_count()
    torch.set_num_threads(threads)
    return threads
