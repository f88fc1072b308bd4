"""`python -m skin_fusion.training.soup` on two tiny train.py runs: a saved, calibrated, scored soup with its card."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModelForImageClassification

import skin_fusion  # noqa: F401  (registers the Auto classes)
from skin_fusion.reports.model_card import load_card_facts, render_model_card
from skin_fusion.training.soup import main
from tests.training.test_run import train

LESION_FOLDER = dict(n_images=300, image_size=64, seed=5)  # the `lesion_folder` fixture (conftest.py) generates it
QUICK = ["--num_train_epochs", "6", "--compare_image_only", "False", "--split_seed", "0"]
FINE_TUNING = ["--backbone_learning_rate", "3e-4", "--backbone_weights", "file", "--backbone_weights_file"]


@pytest.fixture(scope="module")
def pretrained_backbone(lesion_folder, tmp_path_factory) -> Path:
    """A tiny backbone trained on the folder, saved as a state dict: the shared starting point that ImageNet weights
    are for real runs (averaging backbones trained from different random starts would be meaningless)."""
    output_dir = tmp_path_factory.mktemp("pretraining")
    train(lesion_folder, output_dir, *QUICK)
    path = output_dir / "backbone.safetensors"
    backbone = AutoModelForImageClassification.from_pretrained(output_dir).skin_fusion.backbone
    save_file({name: value.contiguous() for name, value in backbone.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def two_runs(lesion_folder, pretrained_backbone, tmp_path_factory) -> list[Path]:
    """Two seeds of one recipe fine-tuning the same pretrained backbone, as the preset's runs do."""
    runs = []
    for seed in (1, 2):
        output_dir = tmp_path_factory.mktemp(f"seed{seed}")
        train(lesion_folder, output_dir, *QUICK, *FINE_TUNING, str(pretrained_backbone), "--seed", str(seed))
        runs.append(output_dir)
    return runs


def test_a_soup_is_saved_calibrated_scored_and_carded(two_runs, lesion_folder, tmp_path):
    out, image_only = tmp_path / "soup", tmp_path / "image-only"
    train(lesion_folder, image_only, *QUICK, "--modality", "image")  # the soup's twin for the card's table
    assert main(["--runs", *map(str, two_runs), "--output_dir", str(out), "--dataset", str(lesion_folder),
                 "--test_size", "0.3", "--validation_size", "0.15", "--image_only", str(image_only)]) == 0
    report = json.loads((out / "soup_report.json").read_text())
    twin = load_card_facts(image_only / "card_facts.json").test_metrics
    assert report["image_only_test_metrics"] == twin
    assert report["seeds"] == [1, 2]
    # Chance is 1/3; the soup is at least about as good as its runs alone.
    runs_alone = [m["balanced_accuracy"] for m in report["runs_test_metrics"]]
    assert min(runs_alone) > 0.5 and report["test_metrics"]["balanced_accuracy"] > min(runs_alone) - 0.05
    assert report["test_metrics_without_metadata"] is not None
    model = AutoModelForImageClassification.from_pretrained(out)
    assert model.config.head_hidden_sizes == [2 * 64] and model.config.temperature == report["temperature"] != 1.0
    assert model.config.decision_offsets is not None
    facts = load_card_facts(out / "card_facts.json")
    card = (out / "README.md").read_text()
    assert card.rstrip() == str(render_model_card(facts)).rstrip()
    assert "A soup of these 2 runs" in card and "seeds 1, 2 (one run each) (split seed 0)" in card
    assert facts.training["curve_seeds"] == [1, 2] and "The curves below are all 2 runs'." in card
    assert f"| image-only model | {twin['balanced_accuracy']:.3f} | {twin['macro_auc']:.3f} |" in card
    scores = {r.metric_type: r.metric_value for r in ModelCard.load(out / "README.md").data.eval_results}
    assert scores["balanced_accuracy"] == pytest.approx(report["test_metrics"]["balanced_accuracy"], abs=1e-4)
    for name in ("confusion_matrix.png", "roc_curves.png", "training_curves.png", "preprocessor_config.json",
                 "modeling_skin_fusion.py"):
        assert (out / name).is_file(), name


def test_a_soup_refuses_runs_of_other_recipes_splits_and_data_that_do_not_reproduce_theirs(
        two_runs, lesion_folder, pretrained_backbone, tmp_path):
    sizes = ["--test_size", "0.3", "--validation_size", "0.15", "--dataset", str(lesion_folder)]
    out = tmp_path / "soup"
    other_split = tmp_path / "other-split"
    train(lesion_folder, other_split, *QUICK, *FINE_TUNING, str(pretrained_backbone), "--split_seed", "1")
    with pytest.raises(ValueError, match="trained differently .*split_seed"):
        main(["--runs", str(two_runs[0]), str(other_split), "--output_dir", str(out), *sizes])
    with pytest.raises(ValueError, match="pass the runs' --validation_size and --test_size"):
        main(["--runs", *map(str, two_runs), "--output_dir", str(out), *sizes[:2], "--validation_size", "0.2",
              "--dataset", str(lesion_folder)])
    edited = Path(shutil.copytree(lesion_folder, tmp_path / "edited"))  # same rows and sizes, one image changed
    first_image = sorted((edited / "images").iterdir())[0]
    with Image.open(first_image) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(first_image)
    with pytest.raises(ValueError, match="rows of .* differ from those the runs were trained on"):
        main(["--runs", *map(str, two_runs), "--output_dir", str(out), *sizes[:4], "--dataset", str(edited)])
    # A run saved before runs recorded their rows' digests soups with newer runs; the data is checked against theirs.
    older = older_run(two_runs[0], tmp_path / "older")
    with pytest.raises(ValueError, match="rows of .* differ from those the runs were trained on"):
        main(["--runs", str(older), str(two_runs[1]), "--output_dir", str(out), *sizes[:4], "--dataset", str(edited)])
    with pytest.raises(ValueError, match="not images only: pass a model trained with --modality image"):
        main(["--runs", *map(str, two_runs), "--output_dir", str(out), *sizes, "--image_only", str(other_split)])
    with pytest.raises(ValueError, match="each run once"):
        main(["--runs", str(two_runs[0]), str(two_runs[0]), "--output_dir", str(out), *sizes])
    with pytest.raises(ValueError, match="none of the runs"):
        main(["--runs", *map(str, two_runs), "--output_dir", str(two_runs[1]), *sizes])
    soup = Path(shutil.copytree(two_runs[0], tmp_path / "a-soup"))  # first, where its seeds read as another recipe
    soup_facts = json.loads((soup / "card_facts.json").read_text())
    (soup / "card_facts.json").write_text(json.dumps({**soup_facts, "training": {
        **soup_facts["training"], "seed": None, "soup_seeds": [1, 2]}}))
    with pytest.raises(ValueError, match=r"is a soup already \(seeds \[1, 2\]\); pass the runs it was made of"):
        main(["--runs", str(soup), str(two_runs[1]), "--output_dir", str(out), *sizes])
    assert not out.exists()


def older_run(run: Path, folder: Path) -> Path:
    """A copy of `run` as runs were saved before they recorded their rows' digests."""
    older = Path(shutil.copytree(run, folder))
    facts = json.loads((older / "card_facts.json").read_text())
    (older / "card_facts.json").write_text(json.dumps({**facts, "split_digests": None}))
    return older


def test_a_soup_records_the_digests_of_the_rows_it_was_scored_on_even_when_its_first_run_had_none(
        two_runs, lesion_folder, tmp_path):
    older, out = older_run(two_runs[0], tmp_path / "older"), tmp_path / "soup"

    assert main(["--runs", str(older), str(two_runs[1]), "--output_dir", str(out), "--dataset", str(lesion_folder),
                 "--test_size", "0.3", "--validation_size", "0.15"]) == 0

    digests = load_card_facts(two_runs[1] / "card_facts.json").split_digests
    assert digests is not None and load_card_facts(out / "card_facts.json").split_digests == digests


def test_the_command_refuses_a_folder_without_a_run_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "soup"
    result = subprocess.run([sys.executable, "-m", "skin_fusion.training.soup", "--runs", str(tmp_path / "nope"),
                             str(tmp_path), "--output_dir", str(out), "--validation_size", "0.1", "--test_size", "0.2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "No card_facts.json in" in result.stderr and "pass folders written by train.py" in result.stderr
    assert not out.exists()
