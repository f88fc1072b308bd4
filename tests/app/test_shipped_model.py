"""The model shipped in models/: loadable with and without this package, its card generated from its facts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoModelForImageClassification, AutoProcessor

import skin_fusion  # noqa: F401  (registers the Auto classes)
from skin_fusion.data.known_datasets import class_display_name
from skin_fusion.reports.model_card import load_card_facts, render_model_card
from skin_fusion.serving.predictor import SkinFusionPredictor

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "skin-fusion-ham10000"
EXAMPLES = REPO / "examples" / "ham10000"


@pytest.fixture(scope="module")
def model_and_processor():
    return AutoModelForImageClassification.from_pretrained(SHIPPED).eval(), AutoProcessor.from_pretrained(SHIPPED)


def example_inputs(processor, with_metadata: bool):
    rows = pd.read_csv(EXAMPLES / "metadata.csv").to_dict("records")
    images = [Image.open(EXAMPLES / row["file_name"]) for row in rows]
    metadata = [{k: row[k] for k in ("age", "sex", "localization")} if with_metadata else {} for row in rows]
    return processor(images=images, metadata=metadata), [row["dx"] for row in rows]


def test_the_shipped_model_classifies_the_held_out_examples_with_and_without_metadata(model_and_processor):
    model, processor = model_and_processor
    for with_metadata in (True, False):
        inputs, truth = example_inputs(processor, with_metadata)
        with torch.inference_mode():
            logits = model(**inputs).logits
        probabilities = logits.softmax(-1)
        assert torch.allclose(probabilities.sum(-1), torch.ones(len(truth)), atol=1e-5)
        decided = [model.config.id2label[int(i)] for i in model.predicted_classes(logits)]
        # Seven test images, one per class: far above the 1-in-7 a guess would get.
        assert sum(d == t for d, t in zip(decided, truth)) >= 4


def test_the_shipped_model_loads_with_trust_remote_code_where_skin_fusion_cannot_be_imported(model_and_processor):
    script = f"""
import sys
sys.modules["skin_fusion"] = None  # any import of the package now fails
import torch
from transformers import AutoModelForImageClassification, AutoProcessor
model = AutoModelForImageClassification.from_pretrained({str(SHIPPED)!r}, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained({str(SHIPPED)!r}, trust_remote_code=True)
inputs = processor(images=[__import__("PIL.Image").Image.new("RGB", (256, 256), (180, 120, 100))], metadata=[{{}}])
with torch.inference_mode():
    print(model(**inputs).logits.softmax(-1).tolist())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    model, processor = model_and_processor
    with torch.inference_mode():
        expected = model(**processor(images=[Image.new("RGB", (256, 256), (180, 120, 100))],
                                     metadata=[{}])).logits.softmax(-1)
    assert torch.allclose(torch.tensor(json.loads(result.stdout.strip().splitlines()[-1])), expected, atol=1e-5)


def test_the_cards_are_generated_from_the_runs_facts_not_typed():
    facts = load_card_facts(SHIPPED / "card_facts.json")
    assert (SHIPPED / "README.md").read_text().rstrip() == str(render_model_card(facts)).rstrip()
    top_level = (REPO / "model_card.md").read_text()
    assert top_level.rstrip() == str(render_model_card(facts, assets="models/skin-fusion-ham10000/")).rstrip()
    report = json.loads((SHIPPED / "soup_report.json").read_text())
    card = ModelCard.load(REPO / "model_card.md")
    scores = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert scores["balanced_accuracy"] == pytest.approx(report["test_metrics"]["balanced_accuracy"], abs=1e-4)
    assert card.data.license == "cc-by-nc-4.0" and "Non-commercial use only" in card.text


def test_the_shipped_models_notes_name_the_classes_for_people():
    row = pd.read_csv(EXAMPLES / "metadata.csv").iloc[0]
    predictor = SkinFusionPredictor.from_pretrained(SHIPPED)
    result = predictor.predict(EXAMPLES / row["file_name"], {})

    assert class_display_name(result.label) in result.note and f"({result.label})" in result.note


def test_the_ham10000_preset_is_the_shipped_models_recipe(tmp_path):
    from skin_fusion.training.arguments import parse_training_arguments

    model_args, data_args, args = parse_training_arguments(["--preset", "ham10000", "--output_dir", str(tmp_path)])
    facts = load_card_facts(SHIPPED / "card_facts.json")
    trained = facts.training
    assert (facts.backbone, facts.image_size) == (model_args.backbone, model_args.image_size)
    expected = {
        "cached_views": ", ".join(args.cache_train_views), "epochs": f"{args.num_train_epochs:g}",
        "batch_size": args.per_device_train_batch_size, "learning_rate": args.learning_rate,
        "backbone_learning_rate": args.backbone_learning_rate, "unfreeze_last_blocks": args.unfreeze_last_blocks,
        "freeze_epochs": args.freeze_epochs, "split_seed": data_args.split_seed,
        "metadata_dropout": model_args.metadata_dropout, "metadata_row_dropout": model_args.metadata_row_dropout,
    }
    assert {name: trained[name] for name in expected} == expected
    # A soup of the preset's runs: its default seed and the two after it (README: "Reproduce the shipped model").
    assert trained["soup_seeds"] == [args.seed, args.seed + 1, args.seed + 2]


def test_the_readme_api_example_and_the_app_name_the_shipped_models_fields():
    from app import FIELD_LABELS

    encoder = json.loads((SHIPPED / "preprocessor_config.json").read_text())["metadata_encoder"]
    fields = [column["name"] for kind in ("numeric", "categorical") for column in encoder[kind]]
    example = re.search(r"client\.predict\((.*?)api_name", (REPO / "README.md").read_text(), re.S).group(1)
    keywords = re.findall(r"(\w+)=", example)
    assert keywords == [*fields, "tta", "explain"]
    assert all(name in FIELD_LABELS for name in fields)


def test_the_spaces_licence_is_the_served_models():
    from huggingface_hub import metadata_load

    from app import DEFAULT_MODEL

    assert REPO / DEFAULT_MODEL == SHIPPED
    assert metadata_load(REPO / "README.md")["license"] == ModelCard.load(SHIPPED / "README.md").data.license
