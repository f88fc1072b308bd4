"""The embedded synthetic data set: deterministic, imagefolder-loadable, plainly labelled, and bimodal by design."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skin_fusion.data import synthetic
from skin_fusion.modeling.configuration_skin_fusion import DEFAULT_LABELS
from skin_fusion.data.synthetic import (
    MANIFEST_NAME,
    ensure_default_dataset,
    generate_synthetic_lesions,
    is_complete,
)

SMALL = dict(n_images=40, image_size=64)


@pytest.fixture(scope="session")
def default_set(tmp_path_factory) -> Path:
    """The default 600-image set, generated once per test session."""
    return ensure_default_dataset(tmp_path_factory.mktemp("cache"))


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    first = folder_bytes(generate_synthetic_lesions(tmp_path / "a", seed=3, **SMALL))
    second = folder_bytes(generate_synthetic_lesions(tmp_path / "b", seed=3, **SMALL))
    assert len(first) == 40 + 3  # images, metadata.csv, README.md, manifest.json
    assert first == second


def test_different_seed_gives_different_images_and_metadata(tmp_path):
    first = generate_synthetic_lesions(tmp_path / "a", seed=0, **SMALL)
    second = generate_synthetic_lesions(tmp_path / "b", seed=1, **SMALL)
    assert (first / "metadata.csv").read_bytes() != (second / "metadata.csv").read_bytes()
    first_image = np.asarray(Image.open(next((first / "images").iterdir())))
    second_image = np.asarray(Image.open(next((second / "images").iterdir())))
    assert not np.array_equal(first_image, second_image)


def test_refuses_a_non_empty_folder_unless_overwrite(tmp_path):
    generate_synthetic_lesions(tmp_path, seed=0, **SMALL)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_synthetic_lesions(tmp_path, seed=0, **SMALL)
    generate_synthetic_lesions(tmp_path, seed=1, n_images=10, image_size=64, overwrite=True)
    assert len(list((tmp_path / "images").iterdir())) == 10


def test_loads_as_imagefolder_with_every_metadata_column(tmp_path):
    import datasets

    folder = generate_synthetic_lesions(tmp_path / "data", seed=0, **SMALL)
    train = datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=str(tmp_path / "hf"))["train"]
    assert train.num_rows == 40
    assert train.column_names == ["image", "label", "age", "sex", "anatom_site_general", "lesion_id"]
    assert set(train["label"]) <= set(DEFAULT_LABELS)
    assert train[0]["image"].size == (64, 64)


def test_metadata_csv_layout_has_no_split_column(default_set):
    metadata = pd.read_csv(default_set / "metadata.csv")
    assert list(metadata.columns) == ["file_name", "label", "age", "sex", "anatom_site_general", "lesion_id"]
    assert metadata.file_name.str.match(r"^images/[\w.]+\.png$").all()
    assert all((default_set / name).is_file() for name in metadata.file_name)


def test_readme_says_synthetic_with_version_and_seed(tmp_path):
    readme = (generate_synthetic_lesions(tmp_path, seed=7, **SMALL) / "README.md").read_text(encoding="utf-8")
    assert "SYNTHETIC" in readme
    assert "not real" in readme
    assert f"generator version {synthetic.GENERATOR_VERSION}, seed 7" in readme


def test_default_set_is_imbalanced_like_isic_seed3(default_set):
    shares = pd.read_csv(default_set / "metadata.csv").label.value_counts(normalize=True)
    assert len(shares) == 3
    assert shares["pigmented benign keratosis"] == pytest.approx(0.59, abs=0.07)
    assert shares["squamous cell carcinoma"] == pytest.approx(0.24, abs=0.06)
    assert shares["actinic keratosis"] == pytest.approx(0.16, abs=0.05)


def test_metadata_has_10_to_20_percent_missing_per_column(default_set):
    missing = pd.read_csv(default_set / "metadata.csv")[["age", "sex", "anatom_site_general"]].isna().mean()
    assert ((missing > 0.10) & (missing < 0.20)).all(), missing.to_dict()


def test_some_lesions_have_several_images(default_set):
    images_per_lesion = pd.read_csv(default_set / "metadata.csv").lesion_id.value_counts()
    assert images_per_lesion.max() >= 3
    assert 0.2 < (images_per_lesion > 1).mean() < 0.7


def test_custom_class_names_are_used_as_labels(tmp_path):
    names = ("melanoma", "nevus", "seborrheic keratosis", "vascular")
    folder = generate_synthetic_lesions(tmp_path, seed=0, n_images=80, image_size=64, class_names=names)
    assert set(pd.read_csv(folder / "metadata.csv").label) <= set(names)


def test_ensure_default_dataset_reuses_a_complete_set(default_set, monkeypatch):
    assert default_set.name == synthetic.DEFAULT_DATASET_NAME
    assert is_complete(default_set, n_images=600, seed=0)

    def must_not_generate(*args, **kwargs):
        raise AssertionError("a complete cached set was generated again")

    monkeypatch.setattr(synthetic, "generate_synthetic_lesions", must_not_generate)
    assert ensure_default_dataset(default_set.parent) == default_set


def test_ensure_default_dataset_regenerates_after_an_interruption(default_set, tmp_path):
    folder = tmp_path / synthetic.DEFAULT_DATASET_NAME
    shutil.copytree(default_set, folder)
    # A run killed before the manifest was written, mid-way through a new image.
    (folder / MANIFEST_NAME).unlink()
    (folder / "images" / "half_written.png").write_bytes(b"\x89PNG truncated")
    assert not is_complete(folder)

    assert ensure_default_dataset(tmp_path) == folder
    assert is_complete(folder, n_images=600, seed=0)
    assert not (folder / "images" / "half_written.png").exists()
    assert folder_bytes(folder) == folder_bytes(default_set)
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no staging folder left behind


def test_a_missing_image_makes_the_set_incomplete(tmp_path):
    folder = generate_synthetic_lesions(tmp_path, seed=0, **SMALL)
    assert is_complete(folder)
    next((folder / "images").iterdir()).unlink()
    assert not is_complete(folder)


# --- The two modalities are complementary: each alone is above chance, both together clearly better. ---


def lesion_colour_histogram(path: Path) -> np.ndarray:
    """Histograms of the centre's colours relative to the skin (median of the top and bottom eighths)."""
    pixels = np.asarray(Image.open(path), dtype=np.float32)
    edge = pixels.shape[0] // 8
    skin = np.median(np.concatenate([pixels[:edge], pixels[-edge:]]).reshape(-1, 3), axis=0)
    centre = pixels[2 * edge : -2 * edge, 2 * edge : -2 * edge].reshape(-1, 3) - skin
    return np.concatenate([np.histogram(centre[:, c], bins=12, range=(-150, 60))[0] for c in range(3)]) / len(centre)


def grouped_balanced_accuracy(features: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=3000))
    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
    predictions = cross_val_predict(model, features, labels, groups=groups, cv=folds)
    return balanced_accuracy_score(labels, predictions)


def test_neither_modality_alone_reaches_both_together(default_set):
    metadata = pd.read_csv(default_set / "metadata.csv")
    image_features = np.stack([lesion_colour_histogram(default_set / name) for name in metadata.file_name])
    age = metadata.age.fillna(metadata.age.median()).to_numpy()[:, None]
    metadata_features = np.hstack(
        [
            age,
            metadata.age.isna().to_numpy()[:, None],
            pd.get_dummies(metadata[["sex", "anatom_site_general"]], dummy_na=True).to_numpy(float),
        ]
    )
    labels = metadata.label.astype("category").cat.codes.to_numpy()
    groups = metadata.lesion_id.to_numpy()

    image_only = grouped_balanced_accuracy(image_features, labels, groups)
    metadata_only = grouped_balanced_accuracy(metadata_features, labels, groups)
    both = grouped_balanced_accuracy(np.hstack([image_features, metadata_features]), labels, groups)
    print(f"balanced accuracy: image {image_only:.3f}, metadata {metadata_only:.3f}, both {both:.3f}")

    assert 0.55 < image_only < 0.78
    assert 0.45 < metadata_only < 0.72
    assert both > 0.75
    assert both > max(image_only, metadata_only) + 0.05
