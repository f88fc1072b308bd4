"""train.py's library side on tiny models: it learns, calibrates, saves a loadable model with a true card."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForImageClassification, AutoProcessor

import skin_fusion  # noqa: F401  (registers the Auto classes)
from skin_fusion.training.calibration import ADJUSTMENT_STRENGTHS
from skin_fusion.training.run import run_training
from skin_fusion.training.arguments import parse_training_arguments

TINY = ["--backbone", "skin_fusion_small_cnn", "--image_size", "64", "--backbone_weights", "none",
        "--metadata_hidden_sizes", "32", "16", "--head_hidden_sizes", "64", "--freeze_epochs", "0",
        "--per_device_train_batch_size", "32", "--learning_rate", "3e-3", "--backbone_learning_rate", "3e-3",
        "--logging_steps", "50", "--report_to", "none", "--disable_tqdm", "True", "--seed", "0",
        "--num_train_epochs", "15", "--test_size", "0.3"]


LESION_FOLDER = dict(n_images=600, image_size=64, seed=3)  # the `lesion_folder` fixture (conftest.py) generates it


def train(folder: Path, output_dir: Path, *extra: str):
    model_args, data_args, training_args = parse_training_arguments(
        [*TINY, "--dataset", str(folder), "--output_dir", str(output_dir), *extra]
    )
    return run_training(model_args, data_args, training_args)


@pytest.fixture(scope="module")
def fusion_run(lesion_folder, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("fusion")
    report = train(lesion_folder, output_dir, "--push_to_hub", "True",
                   "--hub_model_id", "skin-fusion-test/unreachable", "--report_to", "tensorboard")
    return report, output_dir


def test_fusion_learns_well_above_chance(fusion_run):
    report, _ = fusion_run
    assert report.test_metrics["balanced_accuracy"] > 0.7  # chance is 1/3
    assert report.test_metrics["macro_auc"] > 0.85


def test_fusion_beats_each_single_modality(fusion_run, lesion_folder, tmp_path):
    report = fusion_run[0]
    fusion = report.test_metrics["balanced_accuracy"]
    metadata = train(lesion_folder, tmp_path / "metadata", "--modality", "metadata")
    # The synthetic set puts one half of the answer in each modality (see skin_fusion/data/synthetic.py); the image-only
    # model is the fusion run's twin (--compare_image_only, on by default).
    assert fusion > report.image_only_test_metrics["balanced_accuracy"] + 0.05
    assert fusion > metadata.test_metrics["balanced_accuracy"] + 0.05


def test_a_fusion_run_reports_the_test_split_with_metadata_without_it_and_image_only(fusion_run):
    report, output_dir = fusion_run
    twin = json.loads((output_dir / "image-only" / "training_report.json").read_text())
    assert report.image_only_test_metrics == twin["test_metrics"]
    assert twin["test_metrics_without_metadata"] is None  # an image-only model reads no metadata
    # Half of the synthetic answer is in the metadata: with nothing recorded the fusion model must lose some of it.
    without = report.test_metrics_without_metadata
    assert without["balanced_accuracy"] < report.test_metrics["balanced_accuracy"]
    card = ModelCard.load(output_dir / "README.md").text
    assert "### With and without metadata" in card
    for row, metrics in [("metadata as recorded", report.test_metrics), ("nothing recorded", without),
                         ("image-only model", twin["test_metrics"])]:
        assert f"| {row} | {metrics['balanced_accuracy']:.3f} | {metrics['macro_auc']:.3f} |" in card


def test_decision_offsets_are_fitted_on_validation_and_saved_with_the_model(fusion_run):
    report, output_dir = fusion_run
    offsets = np.array(json.loads((output_dir / "config.json").read_text())["decision_offsets"])
    assert report.decision_strength in ADJUSTMENT_STRENGTHS
    if report.decision_strength == 0:
        assert np.allclose(offsets, 0)
    else:  # offsets = -tau * log(training class frequencies): the frequencies they imply sum to one
        assert np.exp(-offsets / report.decision_strength).sum() == pytest.approx(1.0)


def test_training_curves_are_logged_offline_and_drawn_on_the_card(fusion_run):
    _, output_dir = fusion_run
    assert list((output_dir / "runs").rglob("events.out.tfevents.*"))  # TensorBoard's event files
    assert (output_dir / "training_curves.png").stat().st_size > 1000
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]  # what a soup draws
    assert any("eval_balanced_accuracy" in row for row in history) and any("loss" in row for row in history)
    assert "training_curves.png" in (output_dir / "README.md").read_text()


def test_saved_model_loads_with_auto_classes_and_predicts_calibrated(fusion_run, lesion_folder):
    report, output_dir = fusion_run
    model = AutoModelForImageClassification.from_pretrained(output_dir).eval()
    processor = AutoProcessor.from_pretrained(output_dir)
    assert model.config.temperature == pytest.approx(report.temperature)
    from PIL import Image

    image = Image.open(next((lesion_folder / "images").iterdir()))
    with torch.inference_mode():
        probabilities = model(**processor(images=[image], metadata=[{}])).logits.softmax(-1)
    assert probabilities.shape == (1, 3) and torch.isclose(probabilities.sum(), torch.tensor(1.0))


def test_a_finished_run_leaves_no_checkpoint_for_the_next_run_to_resume_from(fusion_run):
    _, output_dir = fusion_run
    assert (output_dir / "model.safetensors").is_file()
    assert not list(output_dir.glob("checkpoint-*")) and not list((output_dir / "image-only").glob("checkpoint-*"))


def test_calibration_minimises_validation_negative_log_likelihood(fusion_run):
    report, _ = fusion_run
    assert report.temperature > 0
    assert report.nll_after <= report.nll_before + 1e-9


def test_model_card_yaml_parses_and_carries_the_run_numbers(fusion_run):
    report, output_dir = fusion_run
    card = ModelCard.load(output_dir / "README.md")
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["balanced_accuracy"] == pytest.approx(report.test_metrics["balanced_accuracy"], abs=1e-4)
    assert card.data.pipeline_tag == "image-classification"
    assert card.data.license == "apache-2.0"
    assert "synthetic" in card.text.lower() and "not a medical device" in card.text.lower()
    for plot in ["confusion_matrix.png", "roc_curves.png"]:
        assert (output_dir / plot).stat().st_size > 1000 and plot in card.text
    assert "sex" in card.text and "age band" in card.text  # the subgroup table


def test_push_without_network_fails_clearly_and_keeps_the_save(fusion_run):
    report, output_dir = fusion_run
    assert report.pushed_to is None
    assert "saved locally" in report.push_error and "hf upload skin-fusion-test/unreachable" in report.push_error
    for name in ["config.json", "model.safetensors", "preprocessor_config.json", "README.md"]:
        assert (output_dir / name).is_file()
    assert json.loads((output_dir / "training_report.json").read_text())["push_error"]


def test_smote_is_refused_for_image_models_with_the_reason(lesion_folder, tmp_path):
    with pytest.raises(ValueError, match="meaningful for tabular metadata but not for raw pixels"):
        train(lesion_folder, tmp_path / "smote", "--balancing", "smote", "--num_train_epochs", "1")


def test_smote_trains_the_metadata_only_model(lesion_folder, tmp_path):
    report = train(lesion_folder, tmp_path / "smote", "--modality", "metadata", "--balancing", "smote",
                   "--num_train_epochs", "3")
    assert np.isfinite(report.test_metrics["balanced_accuracy"])


def test_the_card_renders_again_from_its_saved_facts_with_plots_linked_from_elsewhere(fusion_run, tmp_path):
    from skin_fusion.reports.model_card import main as render_card

    _, output_dir = fusion_run
    assert render_card([str(output_dir), "--out", str(tmp_path / "model_card.md")]) == 0
    again = (tmp_path / "model_card.md").read_text()
    beside = (output_dir / "README.md").read_text()
    prefix = f"{os.path.relpath(output_dir, tmp_path)}/"
    assert again == beside.replace("](confusion_matrix.png)", f"]({prefix}confusion_matrix.png)").replace(
        "](roc_curves.png)", f"]({prefix}roc_curves.png)").replace(
        "](training_curves.png)", f"]({prefix}training_curves.png)")


def test_the_card_command_adds_an_image_only_model_of_the_same_split_and_refuses_others(fusion_run, tmp_path,
                                                                                         capsys):
    from skin_fusion.reports.model_card import main as render_card

    _, output_dir = fusion_run
    model = Path(shutil.copytree(output_dir, tmp_path / "model"))
    facts = json.loads((model / "card_facts.json").read_text())
    (model / "card_facts.json").write_text(json.dumps({**facts, "image_only_test_metrics": None}))
    twin = model / "image-only"
    other_split = Path(shutil.copytree(twin, tmp_path / "other-split"))
    twin_facts = json.loads((twin / "card_facts.json").read_text())
    (other_split / "card_facts.json").write_text(json.dumps(
        {**twin_facts, "training": {**twin_facts["training"], "split_seed": 99}}))
    for refused, message in [(tmp_path / "nowhere", "No card_facts.json in"), (model, "reads fusion, not images only"),
                             (other_split, r"another split than this model \(split seed \d+ against 99\)")]:
        assert render_card([str(model), "--image_only", str(refused)]) == 1
        assert re.search(message, capsys.readouterr().err)
        assert json.loads((model / "card_facts.json").read_text())["image_only_test_metrics"] is None
    elsewhere = tmp_path / "model_card.md"  # a card written elsewhere leaves the model's facts as they were
    assert render_card([str(model), "--image_only", str(twin), "--out", str(elsewhere)]) == 0
    assert "| image-only model |" in elsewhere.read_text()
    assert json.loads((model / "card_facts.json").read_text())["image_only_test_metrics"] is None
    assert render_card([str(model), "--image_only", str(twin)]) == 0
    assert json.loads((model / "card_facts.json").read_text())["image_only_test_metrics"] == twin_facts["test_metrics"]
    assert f"| image-only model | {twin_facts['test_metrics']['balanced_accuracy']:.3f} |" in (
        model / "README.md").read_text()


def test_split_seed_fixes_the_split_while_the_training_seed_varies(lesion_folder, tmp_path):
    def split_of(name: str, *seeds: str) -> tuple[dict, str, dict]:
        train(lesion_folder, tmp_path / name, "--modality", "metadata", "--num_train_epochs", "1", *seeds)
        facts = json.loads((tmp_path / name / "card_facts.json").read_text())
        # the metadata encoder is fitted on the training split: its saved statistics name that split
        return facts["train_counts"], (tmp_path / name / "preprocessor_config.json").read_text(), facts["training"]

    counts, encoder, training = split_of("a", "--seed", "1", "--split_seed", "7")
    assert (training["seed"], training["split_seed"]) == (1, 7)
    assert split_of("b", "--seed", "2", "--split_seed", "7")[:2] == (counts, encoder)
    assert split_of("c", "--seed", "2")[:2] != (counts, encoder)
