"""SkinFusionPredictor: one call from an image and metadata to calibrated probabilities, TTA, Grad-CAM, model card."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from PIL import Image
from transformers import AutoModelForImageClassification, AutoProcessor

from skin_fusion import MetadataError
from skin_fusion.data.views import TEST_TIME_VIEWS
from skin_fusion.reports.model_card import ModelCardFacts, save_card_facts
from skin_fusion.serving.predictor import (
    ModelCardSummary,
    ModelNotFoundError,
    SkinFusionPredictor,
    centre_crop_box,
    centre_window,
)
from tests.helpers import MODEL_DAMAGES, damaged_model, lesion_image, save_tiny_model, symmetric_lesion

METADATA = {"age": 55, "sex": "female", "anatom_site_general": "face"}


def test_probabilities_are_the_models_softmax(predictor, model_dir):
    image = lesion_image()
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        expected = model(**processor(images=[image], metadata=[METADATA])).logits.softmax(-1)[0]

    result = predictor.predict(image, METADATA)

    assert list(result.probabilities) == predictor.labels
    np.testing.assert_allclose(list(result.probabilities.values()), expected.numpy(), atol=1e-5)
    assert result.label == predictor.labels[int(expected.argmax())]
    assert result.probability == pytest.approx(float(expected.max()), abs=1e-5)
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_tta_sums_to_one_and_equals_plain_prediction_for_a_symmetric_image(model_dir):
    # Without a crop margin a symmetric image stays symmetric through the processor (67 -> 64 crops 2 + 1 pixels).
    processor = AutoProcessor.from_pretrained(model_dir)
    processor.resize_size = processor.image_size
    predictor = SkinFusionPredictor(AutoModelForImageClassification.from_pretrained(model_dir), processor)
    image = symmetric_lesion(64)

    plain = predictor.predict(image, METADATA)
    averaged = predictor.predict(image, METADATA, tta=True)

    assert averaged.tta_views == len(TEST_TIME_VIEWS) == 2
    assert sum(averaged.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(list(averaged.probabilities.values()), list(plain.probabilities.values()), atol=1e-5)


def test_tta_averages_the_model_over_the_image_and_its_mirror_image(predictor):
    image = lesion_image()
    inputs = predictor.processor(images=[image], metadata=[METADATA])
    with torch.inference_mode():
        pixels = inputs["pixel_values"]
        expected = predictor.model(pixel_values=torch.cat([pixels, pixels.flip(-1)]),
                                   metadata=inputs["metadata"].expand(2, -1)).logits.softmax(-1).mean(0)

    result = predictor.predict(image, METADATA, tta=True)

    assert result.tta_views == 2
    np.testing.assert_allclose(list(result.probabilities.values()), expected.numpy(), atol=1e-5)


def test_explain_gives_a_heatmap_of_the_image_size_and_the_same_probabilities(predictor):
    image = lesion_image(width=120, height=90)

    plain = predictor.predict(image, METADATA)
    explained = predictor.predict(image, METADATA, explain=True)

    assert explained.heatmap.shape == (90, 120)
    assert explained.overlay.size == (120, 90)
    assert 0.0 <= explained.heatmap.min() and explained.heatmap.max() <= 1.0
    np.testing.assert_allclose(list(explained.probabilities.values()), list(plain.probabilities.values()), atol=1e-5)
    assert explained.explanation.startswith(f"Grad-CAM for {explained.label}")


def test_heatmap_covers_only_the_centre_square_the_model_saw(predictor):
    image = lesion_image(width=160, height=80)
    left, top, right, bottom = centre_crop_box(image.size, predictor.processor.resize_size,
                                               predictor.processor.image_size)

    explained = predictor.predict(image, METADATA, explain=True)

    # Shorter side 80 -> resize_size 67, centre crop 64: a square of 80 * 64 / 67 = 76.4 pixels in the middle.
    assert (left, top, right, bottom) == (42, 2, 118, 78)
    assert explained.heatmap[:, :left].max() == 0 and explained.heatmap[:, right:].max() == 0
    assert explained.overlay.crop((0, 0, left, 80)).tobytes() == image.crop((0, 0, left, 80)).tobytes()


def test_metadata_only_model_explains_that_it_has_no_grad_cam(tmp_path):
    predictor = SkinFusionPredictor.from_pretrained(save_tiny_model(tmp_path, modality="metadata"))

    result = predictor.predict(None, METADATA, explain=True)

    assert result.heatmap is None and result.overlay is None
    assert "metadata-only model" in result.explanation
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_image_only_model_reads_no_metadata(tmp_path):
    predictor = SkinFusionPredictor.from_pretrained(save_tiny_model(tmp_path, modality="image"))

    result = predictor.predict(lesion_image(), None, explain=True)

    assert predictor.metadata_columns == [] and predictor.metadata_choices() == {}
    assert result.heatmap.shape == (80, 96)


def test_missing_model_path_says_how_to_make_one(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"python train\.py") as error:
        SkinFusionPredictor.from_pretrained(tmp_path / "no-model-here")
    assert "No model directory at" in str(error.value)


def test_directory_without_a_model_says_how_to_make_one(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"is not a SkinFusion model directory.*python train\.py"):
        SkinFusionPredictor.from_pretrained(tmp_path)


def test_uncertain_flag_and_note_follow_the_thresholds(model_dir):
    image = lesion_image()
    cautious = SkinFusionPredictor.from_pretrained(model_dir, min_probability=1.01)
    relaxed = SkinFusionPredictor.from_pretrained(model_dir, min_probability=0.0, min_margin=0.0)

    flagged, confident = cautious.predict(image, METADATA), relaxed.predict(image, METADATA)

    assert flagged.uncertain and "a clinician must look" in flagged.note
    assert not confident.uncertain and "not a diagnosis" in confident.note


def test_missing_metadata_is_imputed_and_named_in_the_note(predictor):
    result = predictor.predict(lesion_image(), {"age": None, "sex": "unknown"})

    assert result.not_recorded == ["age", "sex", "anatom_site_general"]
    assert "Not recorded: age, sex, anatom_site_general" in result.note


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"age": -1}, r"'age' = -1 is outside the plausible range \[0, 120\]"),
        ({"age": 121}, r"'age' = 121 is outside the plausible range"),
        ({"age": "forty"}, r"'age' must be a number, got 'forty'"),
        ({"sex": "other"}, r"'sex' = 'other' was never seen in training; use one of \['female', 'male'\]"),
        ({"site": "face"}, r"Unknown metadata field\(s\) \['site'\]"),
    ],
)
def test_bad_metadata_is_refused_with_the_fix(predictor, metadata, message):
    with pytest.raises(MetadataError, match=message):
        predictor.predict(lesion_image(), metadata)


def test_metadata_choices_are_the_training_vocabularies_plus_unknown(predictor):
    assert predictor.metadata_choices() == {
        "sex": ["female", "male", "unknown"], "anatom_site_general": ["back", "face", "unknown"],
    }
    assert predictor.numeric_columns == ["age"]


def card_facts(**overrides) -> ModelCardFacts:
    """Facts as training records them beside a model (only the summary's fields matter here)."""
    facts = dict(
        model_name="tiny", repo_or_path="tiny", label_names=["a", "b", "c"], backbone="test_efficientnet",
        image_size=64, modality="fusion", metadata_columns=["age"], dataset_name="synthetic-v1",
        dataset_source="/data/synthetic-v1", synthetic=True, license="apache-2.0",
        test_metrics={"accuracy": 0.9, "balanced_accuracy": 0.81234, "macro_f1": 0.8, "macro_auc": 0.95, "ece": 0.05},
        test_results={}, subgroups=[], temperature=1.0, ece_before=0.1, ece_after=0.05, nll_before=1.0,
        nll_after=0.9, split_sizes={"train": 400, "validation": 100, "test": 100}, train_counts={}, group_column=None,
    )
    return ModelCardFacts(**{**facts, **overrides})


def test_model_card_summary_reads_the_facts_training_wrote_beside_the_model(tmp_path):
    model_dir = save_tiny_model(tmp_path)
    save_card_facts(card_facts(), model_dir / "card_facts.json")
    # The rendered card's prose is not read: a card whose headings say something else changes nothing.
    ModelCard("---\nlicense: mit\n---\n# tiny\n\n## Data\n\nsomething else\n").save(model_dir / "README.md")

    card = SkinFusionPredictor.from_pretrained(model_dir).card

    assert card.classes == ["actinic keratosis", "pigmented benign keratosis", "squamous cell carcinoma"]
    assert card.training_data == "synthetic-v1 (`/data/synthetic-v1`): train 400, validation 100, test 100."
    assert card.test_metrics == [("synthetic-v1 (test)", name, value) for name, value in (
        ("balanced_accuracy", 0.8123), ("accuracy", 0.9), ("macro_f1", 0.8), ("macro_auc", 0.95), ("ece", 0.05))]
    assert card.synthetic and card.note is None
    assert "| synthetic-v1 (test) | balanced_accuracy | 0.8123 |" in card.to_markdown()



def test_damaged_card_facts_give_a_note_without_the_servers_paths_and_the_model_still_serves(tmp_path, caplog):
    model_dir = save_tiny_model(tmp_path)
    (model_dir / "card_facts.json").write_text('{"model_name": "cut sho')

    predictor = SkinFusionPredictor.from_pretrained(model_dir)

    assert predictor.card.note == ("This model's card_facts.json is damaged: its training data and test results are "
                                   "unknown.")
    assert str(tmp_path) not in predictor.card.to_markdown()
    assert f"{model_dir / 'card_facts.json'} is not valid JSON" in caplog.text
    assert sum(predictor.predict(lesion_image(), {}).probabilities.values()) == pytest.approx(1.0, abs=1e-5)

def test_model_card_summary_without_facts_reads_the_yaml_header_never_the_prose(tmp_path):
    model_dir = save_tiny_model(tmp_path)
    results = [EvalResult(task_type="image-classification", dataset_type="synthetic-v1", dataset_name="synthetic-v1",
                          dataset_split="test", metric_type="balanced_accuracy", metric_name="balanced_accuracy",
                          metric_value=0.8123)]
    data = ModelCardData(eval_results=results, model_name="tiny", tags=["synthetic-data"], datasets=["org/lesions"])
    ModelCard(f"---\n{data.to_yaml()}\n---\n# tiny\n\n## Training data\n\nsynthetic-v1: train 400, val 100.\n\n"
              "## Training procedure\n\n- fast\n").save(model_dir / "README.md")

    card = SkinFusionPredictor.from_pretrained(model_dir).card

    assert card.classes == ["actinic keratosis", "pigmented benign keratosis", "squamous cell carcinoma"]
    assert card.training_data == "`org/lesions`"
    assert card.test_metrics == [("synthetic-v1 (test)", "balanced_accuracy", 0.8123)]
    assert card.synthetic and card.note is None
    assert "| synthetic-v1 (test) | balanced_accuracy | 0.8123 |" in card.to_markdown()


def test_absent_model_card_gives_a_note_not_an_error(predictor):
    assert predictor.card.note.startswith("No model card (README.md)")
    assert predictor.card.test_metrics == []
    assert "No model card" in predictor.card.to_markdown()


def test_onnx_runtime_predicts_what_torch_predicts(predictor, model_dir):
    onnx_predictor = SkinFusionPredictor.from_pretrained(model_dir, runtime="onnx")
    assert onnx_predictor.onnx_session is not None and (model_dir / "model.onnx").is_file()
    image = lesion_image()
    for tta in (False, True):
        expected = predictor.predict(image, METADATA, tta=tta).probabilities
        actual = onnx_predictor.predict(image, METADATA, tta=tta).probabilities
        np.testing.assert_allclose(list(actual.values()), list(expected.values()), atol=1e-5)
    explained = onnx_predictor.predict(image, METADATA, explain=True)  # Grad-CAM still runs in PyTorch
    assert explained.heatmap is not None


def test_unknown_runtime_names_the_choices(model_dir):
    with pytest.raises(ValueError, match=r"Unknown runtime 'tensorrt'; choose one of \('torch', 'onnx'\)"):
        SkinFusionPredictor.from_pretrained(model_dir, runtime="tensorrt")


@pytest.mark.parametrize(("width", "height"), [(50_000, 32), (32, 50_000), (32_000, 32)])
def test_long_thin_image_is_explained_on_its_centre_part(predictor, width, height):
    image = Image.new("RGB", (width, height), (225, 180, 160))
    image.paste((110, 60, 45), (width // 2 - 10, height // 2 - 10, width // 2 + 10, height // 2 + 10))

    result = predictor.predict(image, METADATA, explain=True)

    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.overlay.size == ((4 * 32, 32) if width > height else (32, 4 * 32))
    assert result.heatmap.shape == result.overlay.size[::-1] and result.heatmap.max() > 0
    assert f"This {width}x{height} image is more than 4 times longer than wide" in result.explanation


def test_centre_window_keeps_ordinary_images_whole_and_cuts_long_ones_around_the_centre():
    assert centre_window((4000, 3000)) == (0, 0, 4000, 3000)
    assert centre_window((400, 100)) == (0, 0, 400, 100)
    assert centre_window((1000, 100)) == (300, 0, 700, 100)
    assert centre_window((32, 50_000)) == (0, 24_936, 32, 25_064)


@pytest.mark.parametrize(
    "metadata", [["age", 63], "age=63", 63], ids=["list", "string", "number"]
)
def test_metadata_that_is_not_a_dict_is_refused_with_the_expected_shape(predictor, metadata):
    with pytest.raises(MetadataError, match=r"Metadata must be a dict of field name to value, such as \{'age': 63"):
        predictor.predict(lesion_image(), metadata)


@pytest.mark.parametrize("value", [True, False, np.bool_(True)], ids=["True", "False", "numpy True"])
def test_a_boolean_age_is_refused_not_taken_as_one_or_zero(predictor, value):
    with pytest.raises(MetadataError, match=rf"'age' must be a number, got {value!r}"):
        predictor.predict(lesion_image(), {**METADATA, "age": value})


@pytest.mark.parametrize("field", ["age", "sex"])
def test_a_long_bad_value_is_quoted_in_at_most_80_characters(predictor, field):
    with pytest.raises(MetadataError) as error:
        predictor.predict(lesion_image(), {**METADATA, field: "x" * 5_000_000})
    assert len(str(error.value)) < 400
    assert "... (5000002 characters)" in str(error.value)


@pytest.mark.parametrize("damage", MODEL_DAMAGES)
def test_damaged_model_folder_gives_the_one_line_model_not_found_message(model_dir, damage):
    broken = damaged_model(model_dir, damage)

    with pytest.raises(ModelNotFoundError) as error:
        SkinFusionPredictor.from_pretrained(broken)

    message = str(error.value)
    assert message.startswith(f"'{broken}' is not a SkinFusion model directory (") and "\n" not in message
    assert message.endswith("Make a local model with `python train.py` (it writes outputs/skin-fusion), or pass a "
                            "Hub id with HF_HUB_OFFLINE=0.")
    if damage == "another model_type":
        assert "its config.json names model_type 'other_fusion', not 'skin_fusion'" in message


def test_plain_predictions_run_a_folded_copy_that_gives_the_models_probabilities(predictor):
    assert predictor.inference_model is not predictor.model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in predictor.inference_model.modules())
    image = lesion_image()
    explained = predictor.predict(image, {}, explain=True)  # Grad-CAM runs the model as trained
    plain = predictor.predict(image, {})
    for name, probability in plain.probabilities.items():
        assert probability == pytest.approx(explained.probabilities[name], abs=1e-5)


def test_the_card_summary_names_known_classes_for_people():
    summary = ModelCardSummary(["mel", "nv", "my clinic's class"]).to_markdown()

    assert "**Classes:** melanoma (mel), melanocytic nevus (nv), my clinic's class" in summary
