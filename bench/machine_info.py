"""The machine line of the training benchmarks: CPU, threads, library versions and how busy the CPU was."""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from pathlib import Path

# The bench scripts run from a checkout (the package is not installed): make `skin_fusion` importable from here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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


def machine_info() -> dict[str, object]:
    """Date, CPU, versions and the 1-minute load average, for a result file."""
    import datasets
    import timm
    import torch
    import transformers

    from skin_fusion.experiments import cpu_model

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__, "datasets": datasets.__version__,
        "timm": timm.__version__, "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
