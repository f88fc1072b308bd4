"""Facts about the machine and the command that produced a result, as reports and benchmarks state them."""

from __future__ import annotations

import os
import platform
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def utc_now() -> str:
    """The current time in UTC, to the minute."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def machine_facts() -> dict[str, Any]:
    """The machine a run is about to train on, as the tables state it; sets torch's threads by the thread policy."""
    import torch

    from ..threads import configure_torch_threads

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": configure_torch_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "started": utc_now(),
    }


def command_line(argv: list[str]) -> str:
    """The command as a shell takes it; the --note text, printed further down, is shortened to '…'."""
    words = []
    for index, arg in enumerate(argv):
        if arg.startswith("--note="):
            words.append("--note='…'")
        elif index > 0 and argv[index - 1] == "--note":
            words.append("'…'")
        else:
            words.append(shlex.quote(arg))
    return " ".join(words)
