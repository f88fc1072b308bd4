"""SkinFusionProcessor: image transforms from timm's data config, metadata imputation, saving and loading."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

import skin_fusion  # noqa: F401  (registers the Auto classes)
from skin_fusion import MetadataError, SkinFusionProcessor
from tests.helpers import TINY_SIZE, fitted_processor, tiny_model


def photo(seed: int = 0, size: tuple[int, int] = (120, 90)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_image_settings_follow_the_backbones_timm_config():
    b4 = SkinFusionProcessor.for_backbone("tf_efficientnet_b4", 380)
    assert (b4.image_size, b4.resize_size, b4.interpolation) == (380, 412, "bicubic")
    lite = SkinFusionProcessor.for_backbone("tf_efficientnet_lite0", 224)
    assert (lite.image_mean, lite.image_std, lite.resize_size) == ([0.5] * 3, [0.5] * 3, 256)


def test_eval_transform_is_deterministic_and_training_augments():
    processor = fitted_processor()
    image = photo()
    first = processor(images=[image])["pixel_values"]
    assert first.shape == (1, 3, TINY_SIZE, TINY_SIZE)
    assert torch.equal(first, processor(images=[image])["pixel_values"])
    torch.manual_seed(0)
    augmented = [processor(images=[image], training=True)["pixel_values"] for _ in range(2)]
    assert not torch.equal(augmented[0], augmented[1])


def test_batch_preprocessing_equals_the_per_image_transforms():
    processor = fitted_processor()
    images = [photo(seed) for seed in range(3)]
    expected = torch.stack([processor.eval_transform()(image) for image in images])
    assert torch.equal(processor.preprocess_images(images), expected)
    torch.manual_seed(1)
    augmented = processor.preprocess_images(images, training=True)
    torch.manual_seed(1)
    transform = processor.train_transform()
    assert torch.equal(augmented, torch.stack([transform(image) for image in images]))
    assert augmented.is_contiguous()


def test_numeric_gaps_take_the_training_median_and_categorical_gaps_the_most_frequent_value():
    processor = fitted_processor()
    encoder = processor.encoder
    # Training ages 30, 50, 60, 70, 45 (one missing): median 50. Sexes: male x3, female x1: mode male.
    age = encoder.numeric[0]
    assert age.median == 50.0
    row = dict(zip(encoder.feature_names, processor.encode_metadata([{}])[0].tolist()))
    assert row["age"] == pytest.approx((50.0 - age.mean) / age.std)
    assert row["age_missing"] == 1.0
    assert (row["sex=male"], row["sex=female"], row["sex_missing"]) == (1.0, 0.0, 1.0)
    assert (row["anatom_site_general=back"], row["anatom_site_general_missing"]) == (1.0, 1.0)


def test_unknown_strategy_leaves_the_one_hot_empty_but_flags_the_gap():
    from skin_fusion import MetadataEncoder
    from tests.helpers import training_rows

    encoder = MetadataEncoder.fit(training_rows(), ["age"], ["sex"], categorical_missing="unknown")
    row = dict(zip(encoder.feature_names, encoder.transform([{"age": 40}])[0].tolist()))
    assert (row["sex=male"], row["sex=female"], row["sex_missing"]) == (0.0, 0.0, 1.0)


def test_bad_metadata_values_are_refused_with_the_fix():
    processor = fitted_processor()
    with pytest.raises(MetadataError, match="'age' must be a number, got 'forty'"):
        processor.encode_metadata([{"age": "forty"}])
    with pytest.raises(MetadataError, match="outside the plausible range"):
        processor.encode_metadata([{"age": -3}])
    with pytest.raises(MetadataError, match="outside the plausible range"):
        processor.encode_metadata([{"age": 130}])


def test_an_unseen_category_counts_as_missing_or_is_refused_when_strict():
    processor = fitted_processor()
    lenient = processor.encode_metadata([{"sex": "other"}])
    assert torch.equal(lenient, processor.encode_metadata([{"sex": None}]))
    strict = processor.encoder
    strict.on_unseen = "error"
    with pytest.raises(MetadataError, match="never seen in training; use one of"):
        strict.transform([{"sex": "other"}])


def test_processor_round_trips_to_identical_tensors(tmp_path):
    processor = fitted_processor()
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, SkinFusionProcessor)
    rows = [{"age": 61, "sex": "female", "anatom_site_general": "face"}, {}]
    images = [photo(1), photo(2)]
    original, restored = processor(images=images, metadata=rows), loaded(images=images, metadata=rows)
    assert torch.equal(original["pixel_values"], restored["pixel_values"])
    assert torch.equal(original["metadata"], restored["metadata"])


def test_a_row_with_all_metadata_missing_still_predicts():
    processor = fitted_processor()
    model = tiny_model("fusion", processor=processor).eval()
    batch = processor(images=[photo()], metadata=[{"age": None, "sex": "unknown", "anatom_site_general": ""}])
    probabilities = model(**batch).logits.softmax(-1)
    assert probabilities.shape == (1, 3) and torch.isfinite(probabilities).all()


def test_a_datasets_column_batch_encodes_like_rows():
    processor = fitted_processor()
    columns = {"age": [61, None], "sex": ["female", "male"], "anatom_site_general": ["face", None]}
    rows = [{"age": 61, "sex": "female", "anatom_site_general": "face"}, {"sex": "male"}]
    assert torch.equal(processor.encode_metadata(columns), processor.encode_metadata(rows))


def test_image_and_metadata_counts_must_match():
    with pytest.raises(ValueError, match="one metadata row per image"):
        fitted_processor()(images=[photo()], metadata=[{}, {}])


def test_processor_schema_must_match_the_model():
    processor = fitted_processor()
    processor.check_matches(tiny_model("fusion", processor=processor).config)
    with pytest.raises(ValueError, match="does not match the model's metadata schema"):
        processor.check_matches(tiny_model("fusion", processor=processor, numeric_features=[]).config)


def test_the_metadata_encoder_is_built_once_and_not_saved_twice(tmp_path):
    processor = fitted_processor()
    assert processor.encoder is processor.encoder
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert "metadata_encoder" in saved and not {"_encoder", "_encoder_source"} & set(saved)
    processor.metadata_encoder = {**processor.metadata_encoder, "on_unseen": "error"}  # a replaced dict is rebuilt
    assert processor.encoder.to_dict()["on_unseen"] == "error"
