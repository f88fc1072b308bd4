"""CPU runtime settings shared by training, the app and the benchmarks."""

from __future__ import annotations

import os

import torch


def configure_torch_threads() -> int:
    """Give each local process an equal share of the cores (unless OMP_NUM_THREADS says otherwise); returns it."""
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = max(1, (os.cpu_count() or 1) // max(local_processes, 1))
    torch.set_num_threads(threads)
    return threads
