"""train.py as users run it: killed with SIGKILL and resumed (on pixels and on cached maps), and under
`accelerate launch` with two processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skin_fusion.training.checkpoints import last_complete_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--backbone", "skin_fusion_small_cnn", "--image_size", "48", "--backbone_weights", "none",
        "--metadata_hidden_sizes", "16", "--head_hidden_sizes", "32", "--freeze_epochs", "1",
        "--per_device_train_batch_size", "16", "--report_to", "none", "--disable_tqdm", "True", "--seed", "0",
        "--num_train_epochs", "4", "--save_total_limit", "10"]


def environment(tmp_path: Path) -> dict[str, str]:
    """The training processes' environment: offline, one thread, `datasets`' caches inside the test's folder."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
            "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")}


LESION_FOLDER = dict(n_images=200, image_size=48, seed=5)  # the `lesion_folder` fixture (conftest.py) generates it


def train_command(folder: Path, output_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *TINY, "--dataset", str(folder), "--output_dir", str(output_dir),
            *extra]


def report(output_dir: Path) -> dict:
    return json.loads((output_dir / "training_report.json").read_text())


# The last two stages of a small EfficientNet learning on cached maps of the earlier ones (the shipped preset's kind).
# Evaluated (and checkpointed) every eighth of the run as the preset is, so it resumes from mid-epoch.
LAST_STAGES_ON_CACHED_MAPS = ["--backbone", "test_efficientnet", "--cache_image_features", "True",
                              "--unfreeze_last_blocks", "2", "--freeze_epochs", "0", "--compare_image_only", "False",
                              "--eval_strategy", "steps", "--eval_steps", "0.125"]


@pytest.mark.parametrize("recipe", [[], LAST_STAGES_ON_CACHED_MAPS], ids=["pixels", "last-stages-on-cached-maps"])
def test_a_run_killed_mid_training_resumes_to_the_same_result(lesion_folder, tmp_path, recipe):
    reference = subprocess.run(train_command(lesion_folder, tmp_path / "reference", *recipe), env=environment(tmp_path),
                               capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(train_command(lesion_folder, killed_dir, *recipe), env=environment(tmp_path),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while last_complete_checkpoint(killed_dir) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert last_complete_checkpoint(killed_dir) is not None, "no checkpoint before the deadline"
    assert not (killed_dir / "training_report.json").exists(), "the run finished before it could be killed"

    resumed = subprocess.run(train_command(lesion_folder, killed_dir, *recipe), env=environment(tmp_path),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stderr
    expected, actual = report(tmp_path / "reference"), report(killed_dir)
    assert actual["optimizer_steps"] == expected["optimizer_steps"]
    for name, value in expected["test_metrics"].items():
        assert actual["test_metrics"][name] == pytest.approx(value, abs=0.02), name


def test_a_checkpoint_cut_off_mid_save_is_skipped(tmp_path):
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-20").mkdir()
    (tmp_path / "checkpoint-20" / "trainer_state.json").write_text('{"global_st')
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")


def test_resume_false_refuses_to_overwrite_checkpoints(lesion_folder, tmp_path):
    output_dir = tmp_path / "run"
    (output_dir / "checkpoint-5").mkdir(parents=True)
    (output_dir / "checkpoint-5" / "trainer_state.json").write_text("{}")
    result = subprocess.run(train_command(lesion_folder, output_dir, "--resume", "False"), env=environment(tmp_path),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "holds checkpoints" in result.stderr and "nothing was overwritten" in result.stderr


def test_accelerate_launch_with_two_cpu_processes(lesion_folder, tmp_path):
    # accelerate 1.15's `--cpu` launcher starts a single process unless MPI is set up; `--multi_gpu` goes through
    # torchrun, which on a machine without a GPU gives two processes in a gloo group (train.py trains on the CPU).
    output_dir = tmp_path / "ddp"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(ROOT / "train.py"), *TINY, "--dataset", str(lesion_folder), "--output_dir", str(output_dir)]
    result = subprocess.run(command, env=environment(tmp_path), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = report(output_dir)
    assert run["world_size"] == 2
    # Each optimiser step consumes one batch of 16 per process: half the steps of a single process.
    assert run["optimizer_steps"] == 4 * math.ceil(run["train_examples"] / (2 * 16))
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "README.md").is_file()
