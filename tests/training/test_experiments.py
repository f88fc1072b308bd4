"""`python -m skin_fusion.training.experiments` on a tiny data set: a row per run, numbers from reports, resumable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

import skin_fusion.training.run
from skin_fusion.files import TRAINING_REPORT_FILE
from skin_fusion.training.experiments import comparison_plan, run_comparison

RUNS = ["metadata_mlp", "small_cnn", "fusion_lite0"]
# train.py flags for every run: the fusion run gets the plain CNN too, so nothing needs pretrained weights.
TINY_TRAIN_FLAGS = ["--backbone", "skin_fusion_small_cnn", "--backbone_weights", "none",
                    "--per_device_train_batch_size", "32", "--metadata_hidden_sizes", "16", "--head_hidden_sizes", "32"]


def tiny_comparison_argv(folder: Path, out: Path, epochs: int = 1) -> list[str]:
    return ["--dataset", str(folder), "--out", str(out), "--image_size", "32", "--epochs", str(epochs),
            "--freeze_epochs", "0", "--metadata_epochs", "2", "--only", *RUNS, *TINY_TRAIN_FLAGS]


LESION_FOLDER = dict(n_images=120, image_size=32)  # the `lesion_folder` fixture (conftest.py) generates it


@pytest.fixture(scope="module")
def comparison(lesion_folder, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("comparison")
    return out, run_comparison(tiny_comparison_argv(lesion_folder, out))


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The body rows of the first table under `heading`, as lists of cells."""
    section = markdown.split(heading, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_writes_results_json_markdown_and_png(comparison):
    out, _ = comparison
    results = json.loads((out / "results.json").read_text())
    assert [row["name"] for row in results["runs"]] == RUNS
    with Image.open(out / "comparison.png") as image:
        assert image.format == "PNG" and image.width > 300


def test_markdown_has_one_model_row_per_run_and_the_fusion_in_the_sweep(comparison):
    out, results = comparison
    markdown = (out / "results.md").read_text()
    models = table_rows(markdown, "## Models")
    assert [row[0] for row in models] == [row["model"] for row in results["runs"]]
    assert [row[1] for row in models] == ["metadata", "image", "fusion"]
    assert [row[0] for row in table_rows(markdown, "## Fusion sweep")] == ["fusion_lite0 (reference)"]


def test_rows_state_what_train_py_actually_ran(comparison):
    _, results = comparison
    metadata, cnn, fusion = results["runs"]
    assert metadata["backbone"] is None and metadata["epochs"] == 2
    assert cnn["backbone"] == fusion["backbone"] == "skin_fusion_small_cnn"  # the extra flags reached every run
    assert cnn["image_size"] == 32 and cnn["epochs"] == 1 and cnn["weights"] == "none: from scratch"


def test_numbers_equal_each_runs_training_report(comparison):
    out, results = comparison
    models = table_rows((out / "results.md").read_text(), "## Models")
    for row, cells in zip(results["runs"], models):
        report = json.loads((Path(row["run_dir"]) / TRAINING_REPORT_FILE).read_text())
        assert row["test_metrics"] == report["test_metrics"]
        metrics = report["test_metrics"]
        expected = [f"{metrics[key]:.3f}" for key in ("balanced_accuracy", "macro_auc", "macro_f1", "ece")]
        assert cells[6:10] == expected
        assert re.fullmatch(r"\d+ s", cells[10])


def test_rerun_skips_finished_runs(comparison, lesion_folder, monkeypatch):
    out, first = comparison
    def report_times(comparison_result: dict) -> dict[str, int]:
        return {row["name"]: (Path(row["run_dir"]) / TRAINING_REPORT_FILE).stat().st_mtime_ns
                for row in comparison_result["runs"]}

    reports = report_times(first)

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(skin_fusion.training.run, "run_training", must_not_train)
    again = run_comparison(tiny_comparison_argv(lesion_folder, out))
    assert [row["test_metrics"] for row in again["runs"]] == [row["test_metrics"] for row in first["runs"]]
    assert report_times(again) == reports


def test_run_folder_made_with_other_flags_is_refused(comparison, lesion_folder):
    out, _ = comparison
    with pytest.raises(ValueError, match="other train.py flags"):
        run_comparison(tiny_comparison_argv(lesion_folder, out, epochs=2))


def test_unknown_train_flag_fails_before_any_training(lesion_folder, tmp_path):
    with pytest.raises(ValueError, match="--no_such_flag"):
        run_comparison(["--dataset", str(lesion_folder), "--out", str(tmp_path), "--no_such_flag", "1"])
    assert not (tmp_path / "runs").exists()


def test_plan_has_the_five_models_then_a_one_at_a_time_fusion_sweep():
    plan = comparison_plan()
    assert [spec.name for spec in plan[:5]] == [
        "metadata_mlp", "small_cnn", "resnet18", "efficientnet_lite0", "fusion_lite0"]
    sweep = [spec for spec in plan if "sweep" in spec.groups]
    assert len(sweep) == 5  # the reference, one other learning rate, one other dropout, two other balancings
    assert sweep[0].name == "fusion_lite0"


def test_grid_sweep_tries_every_combination():
    sweep = [spec for spec in comparison_plan(sweep="grid") if "sweep" in spec.groups]
    assert len(sweep) == 2 * 2 * 3
    assert len({spec.flags for spec in sweep}) == 12
