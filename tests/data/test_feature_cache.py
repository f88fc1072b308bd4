"""Cached frozen-backbone features: same logits as pixels, cached by fingerprint, and training on them."""

from __future__ import annotations

import datasets
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, AutoProcessor, set_seed

import skin_fusion  # noqa: F401  (registers the Auto classes)
from skin_fusion.data.balancing import class_counts
from skin_fusion.data.loading import load_lesion_dataset
from skin_fusion.data.feature_cache import (
    add_image_features,
    backbone_features,
    cached_inputs,
    feature_cache_dir,
    feature_extractor,
    feature_matrix,
    smote_inputs,
    split_content_digest,
)
from skin_fusion.modeling.modeling_skin_fusion import SkinFusionForImageClassification
from skin_fusion.training.run import run_training
from skin_fusion.training.arguments import parse_training_arguments
from tests.helpers import TINY_SIZE, fitted_processor, tiny_model

EPOCHS = "3"
CACHED_RUN = ["--backbone", "skin_fusion_small_cnn", "--image_size", "64", "--backbone_weights", "none",
              "--metadata_hidden_sizes", "16", "--head_hidden_sizes", "32", "--num_train_epochs", EPOCHS,
              "--freeze_epochs", EPOCHS, "--cache_image_features", "True", "--per_device_train_batch_size", "32",
              "--report_to", "none", "--disable_tqdm", "True", "--seed", "0", "--test_size", "0.3"]


LESION_FOLDER = dict(n_images=150, image_size=64, seed=5)  # the `lesion_folder` fixture (conftest.py) generates it


@pytest.fixture(scope="module")
def lesions(lesion_folder):
    return load_lesion_dataset(str(lesion_folder), seed=0, test_size=0.3)  # as CACHED_RUN splits it


def features_file(with_features: datasets.Dataset) -> str:
    """The feature cache file that a split with cached features reads its feature column from."""
    (filename,) = [f["filename"] for f in with_features.cache_files
                   if Path(f["filename"]).parent == feature_cache_dir()]
    return filename


def train(folder, output_dir, *extra):
    return run_training(*parse_training_arguments([*CACHED_RUN, "--dataset", str(folder),
                                                   "--output_dir", str(output_dir), *extra]))


def test_image_features_give_the_same_logits_as_pixels_for_a_frozen_model():
    model = tiny_model("fusion").eval()
    pixels = torch.randn(4, 3, TINY_SIZE, TINY_SIZE)
    metadata = torch.randn(4, model.config.metadata_dim)
    features = backbone_features(feature_extractor(model.skin_fusion.backbone), pixels)
    with torch.inference_mode():
        from_pixels = model(pixel_values=pixels, metadata=metadata).logits
        from_features = model(image_features=features, metadata=metadata).logits
    # channels-last may pick other kernels than the default layout: equal up to float rounding
    torch.testing.assert_close(from_features, from_pixels, rtol=0, atol=1e-5)


def test_image_features_errors_say_the_fix():
    model = tiny_model("image")
    pixels = torch.randn(1, 3, TINY_SIZE, TINY_SIZE)
    width = model.skin_fusion.backbone.num_features
    with pytest.raises(ValueError, match="Pass one image input, not pixel_values and image_features"):
        model(pixel_values=pixels, image_features=torch.randn(1, width))
    with pytest.raises(ValueError, match="`feature_map_stage` is not set"):
        model(feature_maps=torch.randn(1, 24, 16, 16))
    with pytest.raises(ValueError, match="or cached `image_features`"):
        model()
    with pytest.raises(ValueError, match=rf"pools \(batch, {width}\); extract them"):
        model(image_features=torch.randn(1, width + 1))
    with pytest.raises(ValueError, match="has shape"):
        model(image_features=torch.randn(width))


def test_the_features_of_a_view_are_those_of_the_image_seen_that_way():
    extractor = feature_extractor(tiny_model("image").skin_fusion.backbone)
    pixels = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    torch.testing.assert_close(backbone_features(extractor, pixels, "hflip"),
                               backbone_features(extractor, pixels.flip(-1)))
    torch.testing.assert_close(backbone_features(extractor, pixels, "rot180"),
                               backbone_features(extractor, pixels.rot90(2, dims=(-2, -1))))


def test_feature_maps_of_an_early_stage_give_the_same_logits_as_pixels():
    model = tiny_model("fusion").eval()
    pixels = torch.randn(4, 3, TINY_SIZE, TINY_SIZE)
    metadata = torch.randn(4, model.config.metadata_dim)
    extractor = feature_extractor(model.skin_fusion.backbone)
    with torch.inference_mode():
        from_pixels = model(pixel_values=pixels, metadata=metadata).logits
        for stage in range(1, len(model.skin_fusion.backbone.blocks)):
            model.skin_fusion.feature_map_stage = stage
            maps = backbone_features(extractor, pixels, stage=stage)
            from_maps = model(feature_maps=maps, metadata=metadata).logits
            torch.testing.assert_close(from_maps, from_pixels, rtol=0, atol=1e-5)
            hflip_maps = backbone_features(extractor, pixels, "hflip", stage=stage)
            torch.testing.assert_close(hflip_maps, backbone_features(extractor, pixels.flip(-1), stage=stage))


def test_feature_maps_are_refused_for_backbones_and_stages_that_cannot_be_cut():
    from skin_fusion.modeling.backbones import check_stage_split, create_backbone

    backbone = tiny_model("image").skin_fusion.backbone
    for stage in (0, len(backbone.blocks)):
        with pytest.raises(ValueError, match=f"train between 1 and {len(backbone.blocks) - 1} last stages"):
            check_stage_split(backbone, stage)
    with pytest.raises(ValueError, match="no conv_stem / blocks / conv_head layout"):
        check_stage_split(create_backbone("skin_fusion_small_cnn"), 1)
    with pytest.raises(ValueError, match="interpolates feature vectors, not the feature maps"):
        smote_inputs({"labels": np.zeros(4), "feature_maps": np.zeros((4, 2, 2, 2))}, seed=0)


def test_a_feature_maps_column_holds_float16_maps_of_the_evaluation_transform(lesions):
    processor = fitted_processor()
    model = tiny_model("image", processor=processor).eval()
    split = lesions.splits["validation"]
    with_maps = add_image_features(split, model.skin_fusion.backbone, processor, stage=2)
    maps = feature_matrix(with_maps, "feature_maps")
    assert maps.dtype == np.float16 and maps.shape == (len(split), 24, 16, 16)  # test_efficientnet at 64 px
    assert with_maps._fingerprint != add_image_features(split, model.skin_fusion.backbone, processor)._fingerprint
    inputs = cached_inputs(with_maps, processor, uses_image=True, uses_metadata=False)
    assert set(inputs) == {"labels", "feature_maps"}
    model.skin_fusion.feature_map_stage = 2
    with torch.inference_mode():
        expected = model(pixel_values=processor.preprocess_images(split[:3]["image"])).logits
        from_maps = model(feature_maps=torch.from_numpy(maps[:3])).logits
    torch.testing.assert_close(from_maps, expected, rtol=0, atol=2e-2)  # float16 maps


def test_features_column_holds_the_backbone_features_of_the_evaluation_transform(lesions):
    processor = fitted_processor()
    model = tiny_model("image", processor=processor).eval()
    split = lesions.splits["validation"]
    matrix = feature_matrix(add_image_features(split, model.skin_fusion.backbone, processor))
    assert matrix.shape == (len(split), model.skin_fusion.backbone.num_features) and matrix.dtype == np.float32
    with torch.inference_mode():
        expected = model.skin_fusion(pixel_values=processor.preprocess_images(split[:3]["image"])).pooler_output
    np.testing.assert_allclose(matrix[:3], expected.numpy(), rtol=0, atol=1e-5)


def test_a_second_extraction_reads_the_cache_and_new_weights_do_not(lesions):
    processor = fitted_processor()
    backbone = tiny_model("image", processor=processor).skin_fusion.backbone
    split = lesions.splits["test"]
    first = add_image_features(split, backbone, processor)
    cache_file = features_file(first)
    written = os.stat(cache_file).st_mtime_ns
    second = add_image_features(split, backbone, processor)
    assert features_file(second) == cache_file
    assert os.stat(cache_file).st_mtime_ns == written  # read, not rewritten
    with torch.no_grad():
        next(backbone.parameters()).add_(1.0)
    assert features_file(add_image_features(split, backbone, processor)) != cache_file
    assert add_image_features(split, backbone, processor, view="hflip")._fingerprint != first._fingerprint


def test_the_same_files_copied_or_moved_hit_the_cache_and_changed_bytes_do_not(lesion_folder, tmp_path):
    # Shared data laid down afresh gets new modification times, and a moved folder new paths: `datasets` then loads
    # the folder under a new fingerprint and cache folder, but the cached features must still be found (extracting
    # them again took 34 minutes for HAM10000's four training views).
    processor = fitted_processor()
    backbone = tiny_model("image", processor=processor).skin_fusion.backbone
    folder = tmp_path / "lesions"
    shutil.copytree(lesion_folder, folder)
    first_split = load_lesion_dataset(str(folder), seed=0).splits["test"]
    cache_file = features_file(add_image_features(first_split, backbone, processor))
    written = os.stat(cache_file).st_mtime_ns

    later = time.time() + 60
    for path in folder.rglob("*"):
        os.utime(path, (later, later))
    again = load_lesion_dataset(str(folder), seed=0).splits["test"]
    assert again._fingerprint != first_split._fingerprint  # what `datasets` sees: new files
    assert features_file(add_image_features(again, backbone, processor)) == cache_file
    assert os.stat(cache_file).st_mtime_ns == written  # read, not rewritten
    moved = shutil.move(folder, tmp_path / "moved")  # a user's data folder moved or cloned elsewhere
    in_new_place = load_lesion_dataset(str(moved), seed=0).splits["test"]
    in_new_place = add_image_features(in_new_place, backbone, processor)
    assert features_file(in_new_place) == cache_file
    image_paths = [Path(image["path"]) for image in in_new_place.with_format("arrow")["image"].to_pylist()]
    assert all(path.is_relative_to(moved) for path in image_paths)  # the rows are those of the folder's new place

    changed = image_paths[0]
    with Image.open(changed) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed)
    edited = load_lesion_dataset(str(moved), seed=0).splits["test"]
    assert features_file(add_image_features(edited, backbone, processor)) != cache_file


def test_a_split_digest_is_pinned_and_follows_the_rows_image_names_and_bytes(tmp_path):
    # Runs record these digests and the soup command checks data against them later, maybe under other library
    # versions: the value for fixed rows must never change (a canonical encoding, not a pickle-based hash).
    def digest(folder: str, age: float = 45.0, name: str = "ISIC_1.jpg", content: bytes = b"read, not decoded") -> str:
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_bytes(content)
        features = datasets.Features({"image": datasets.Image(), "age": datasets.Value("float32"),
                                      "sex": datasets.Value("string"), "label": datasets.Value("int64")})
        return split_content_digest(datasets.Dataset.from_dict(
            {"image": [str(tmp_path / folder / name)], "age": [age], "sex": [None], "label": [2]}, features=features))

    pinned = "d0ce7bcdfedafe8e268c4e24b977d8881e5d9bdc23d51a4c0e493edfd7a64355"
    assert digest("here") == digest("elsewhere") == pinned
    assert pinned not in {digest("older", age=50.0), digest("renamed", name="ISIC_2.jpg"),
                          digest("edited", content=b"other bytes")}


def test_smote_on_features_brings_every_class_to_the_majority_count_and_keeps_the_columns():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 8 + [2] * 5)
    inputs = {"labels": labels, "image_features": rng.normal(size=(33, 12)).astype(np.float32),
              "metadata": rng.normal(size=(33, 4)).astype(np.float32)}
    balanced = smote_inputs(inputs, seed=0)
    np.testing.assert_array_equal(class_counts(balanced["labels"]), [20, 20, 20])
    assert balanced["image_features"].shape == (60, 12) and balanced["metadata"].shape == (60, 4)
    np.testing.assert_array_equal(balanced["image_features"][:33], inputs["image_features"])  # originals first
    np.testing.assert_array_equal(balanced["metadata"][:33], inputs["metadata"])


def test_caching_is_refused_when_the_backbone_would_learn(lesion_folder, tmp_path):
    with pytest.raises(ValueError, match=f"Pass --freeze_epochs {EPOCHS} \\(or more\\)"):
        train(lesion_folder, tmp_path / "run", "--freeze_epochs", "1")


@pytest.fixture(scope="module")
def cached_run(lesion_folder, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("cached")
    return train(lesion_folder, output_dir), output_dir


def test_a_cached_feature_run_saves_a_model_that_predicts_the_same_from_pixels(cached_run, lesions):
    report, output_dir = cached_run
    assert np.isfinite(report.test_metrics["balanced_accuracy"]) and report.feature_extraction_seconds > 0
    model = AutoModelForImageClassification.from_pretrained(output_dir).eval()
    processor = AutoProcessor.from_pretrained(output_dir)
    split = lesions.splits["test"]
    inputs = cached_inputs(add_image_features(split, model.skin_fusion.backbone, processor), processor, True, True)
    batch = split[:8]
    with torch.inference_mode():
        from_pixels = model(**processor(images=batch["image"], metadata=[
            {c: batch[c][i] for c in processor.encoder.columns} for i in range(8)])).logits
        from_features = model(image_features=torch.from_numpy(inputs["image_features"][:8]),
                              metadata=torch.from_numpy(inputs["metadata"][:8])).logits
    torch.testing.assert_close(from_features, from_pixels, rtol=0, atol=1e-4)


def test_a_cached_feature_run_leaves_the_backbone_as_it_was_initialised(cached_run):
    _, output_dir = cached_run
    saved = AutoModelForImageClassification.from_pretrained(output_dir)
    set_seed(0)  # run_training seeds before building the model
    initial = SkinFusionForImageClassification(saved.config)
    expected = initial.skin_fusion.backbone.state_dict()
    actual = saved.skin_fusion.backbone.state_dict()
    assert all(torch.equal(actual[name], expected[name]) for name in expected)


@pytest.fixture(scope="module")
def last_stages_run(lesion_folder, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("last-stages")
    report = train(lesion_folder, output_dir, "--backbone", "test_efficientnet", "--unfreeze_last_blocks", "2",
                   "--freeze_epochs", "0", "--backbone_learning_rate", "1e-2", "--compare_image_only", "False")
    return report, output_dir


def test_a_last_stages_run_trains_only_the_stages_after_its_cached_maps(last_stages_run):
    report, output_dir = last_stages_run
    assert np.isfinite(report.test_metrics["balanced_accuracy"]) and report.feature_extraction_seconds > 0
    saved = AutoModelForImageClassification.from_pretrained(output_dir)
    assert saved.skin_fusion.feature_map_stage is None  # a runtime setting, not part of the saved model
    set_seed(0)  # run_training seeds before building the model
    initial = SkinFusionForImageClassification(saved.config).skin_fusion.backbone.state_dict()
    actual = saved.skin_fusion.backbone.state_dict()
    changed = {name.split(".")[0] + (".%s" % name.split(".")[1] if name.startswith("blocks") else "")
               for name in initial if not torch.equal(actual[name], initial[name])}
    assert changed == {"blocks.3", "blocks.4", "conv_head", "bn2"}  # test_efficientnet has 5 stages


def test_a_last_stages_run_saves_a_model_that_predicts_the_same_from_pixels(last_stages_run, lesions):
    _, output_dir = last_stages_run
    model = AutoModelForImageClassification.from_pretrained(output_dir).eval()
    processor = AutoProcessor.from_pretrained(output_dir)
    split = lesions.splits["test"]
    stage = len(model.skin_fusion.backbone.blocks) - 2
    maps = feature_matrix(add_image_features(split, model.skin_fusion.backbone, processor, stage=stage),
                          "feature_maps")
    batch = split[:8]
    rows = [{c: batch[c][i] for c in processor.encoder.columns} for i in range(8)]
    with torch.inference_mode():
        from_pixels = model(**processor(images=batch["image"], metadata=rows)).logits
        model.skin_fusion.feature_map_stage = stage
        from_maps = model(feature_maps=torch.from_numpy(maps[:8]), metadata=processor(metadata=rows)["metadata"])
    torch.testing.assert_close(from_maps.logits, from_pixels, rtol=0, atol=2e-2)  # float16 maps


def test_caching_maps_is_refused_where_the_backbone_cannot_be_cut(lesion_folder, tmp_path):
    with pytest.raises(ValueError, match="no conv_stem / blocks / conv_head layout"):
        train(lesion_folder, tmp_path / "run", "--unfreeze_last_blocks", "1", "--freeze_epochs", "0")
    with pytest.raises(ValueError, match="train between 1 and 4 last stages"):
        train(lesion_folder, tmp_path / "run", "--backbone", "test_efficientnet", "--unfreeze_last_blocks", "5",
              "--freeze_epochs", "0")


def test_smote_trains_the_image_model_on_cached_features(lesion_folder, lesions, tmp_path):
    report = train(lesion_folder, tmp_path / "smote", "--modality", "image", "--balancing", "smote")
    counts = class_counts(np.asarray(lesions.splits["train"]["label"]))
    assert report.train_examples == len(counts) * counts.max()
    assert np.isfinite(report.test_metrics["balanced_accuracy"])


def test_cached_inputs_serve_a_whole_batch_equal_to_stacked_rows():
    from torch.utils.data import DataLoader

    from skin_fusion.data.feature_cache import CachedInputs, collate_inputs

    rng = np.random.default_rng(0)
    inputs = {"image_features": rng.normal(size=(10, 4)), "metadata": rng.normal(size=(10, 3)),
              "labels": np.arange(10)}
    dataset = CachedInputs(inputs)
    batches = list(DataLoader(dataset, batch_size=4, collate_fn=collate_inputs))
    assert [len(b["labels"]) for b in batches] == [4, 4, 2]
    rows = collate_inputs([dataset[i] for i in range(4)])
    for key in inputs:
        assert torch.equal(batches[0][key], rows[key])
    assert batches[0]["image_features"].dtype == torch.float32 and batches[0]["labels"].dtype == torch.int64
