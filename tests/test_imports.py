"""Importing SkinFusion changes nothing in the process: matplotlib's backend and torch's threads stay as they were."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import importlib, pkgutil
import matplotlib
matplotlib.use("pdf")  # what a notebook or an application chose before importing SkinFusion
import torch
torch.set_num_threads(3)
import skin_fusion
names = sorted(m.name for m in pkgutil.walk_packages(skin_fusion.__path__, "skin_fusion."))
for name in names:
    importlib.import_module(name)
print(len(names), matplotlib.get_backend(), torch.get_num_threads())
"""


def test_importing_every_module_leaves_the_matplotlib_backend_and_torch_threads_alone():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600,
                            env={**{k: v for k, v in os.environ.items() if k != "MPLBACKEND"}, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    count, backend, threads = result.stdout.strip().splitlines()[-1].split()
    assert int(count) >= 30  # every module of the package was imported
    assert backend == "pdf"
    assert threads == "3"


def test_serving_loads_no_training_code():
    # The app and the ONNX export are what a Space runs: they must not pull in the Trainer's arguments and run code.
    script = ("import sys, skin_fusion.serving.predictor, skin_fusion.serving.onnx; "
              "print(sorted(m for m in sys.modules if m.startswith('skin_fusion.training')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
