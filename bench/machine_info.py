"""The machine line of the training benchmarks: CPU, threads, library versions and how busy the CPU was."""

from __future__ import annotations

import datetime
import os
import platform


def machine_info() -> dict[str, object]:
    """Date, CPU, versions and the 1-minute load average, for a result file."""
    import datasets
    import timm
    import torch
    import transformers

    from skin_fusion.reports.machine import cpu_model

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__, "datasets": datasets.__version__,
        "timm": timm.__version__, "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
