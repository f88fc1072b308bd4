"""Specification of `load_lesion_dataset`: the three real sets in ../shared/data, and each bad input's message."""

import io
from collections import Counter
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import pandas as pd
import PIL.Image
import pytest

from skin_fusion.data.loading import LesionDataError, load_lesion_dataset
from skin_fusion.data.splits import split_overlap
from tests.helpers import HAM_DX_COUNTS



@pytest.fixture(scope="module")
def ham(shared_data):
    return load_lesion_dataset(str(shared_data / "ham10000"))


def image_names(split: datasets.Dataset) -> list[str]:
    """File names behind a split's image column, read without decoding."""
    return [Path(value["path"]).name for value in split.cast_column("image", datasets.Image(decode=False))["image"]]


def label_counts(lesions) -> Counter:
    names = lesions.label_names
    return Counter(names[label] for split in lesions.splits.values() for label in split["label"])


def write_folder(root: Path, n: int = 12, **columns) -> Path:
    """A tiny imagefolder: n 8x8 JPEGs under images/ and a metadata.csv in HAM10000's layout."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        PIL.Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "images" / f"img_{i}.jpg")
    frame = pd.DataFrame(
        {
            "file_name": [f"images/img_{i}.jpg" for i in range(n)],
            "image_id": [f"img_{i}" for i in range(n)],
            "lesion_id": [f"lesion_{i // 2}" for i in range(n)],
            "dx": [["nv", "mel", "bkl"][(i // 2) % 3] for i in range(n)],
            "dx_type": ["histo"] * n,
            "age": [float(30 + i) for i in range(n)],
            "sex": ["male", "female"] * (n // 2),
            "localization": ["back"] * n,
        }
    )
    for name, values in columns.items():
        if values is None:
            frame = frame.drop(columns=name)
        else:
            frame[name] = values
    frame.to_csv(root / "metadata.csv", index=False)
    return root


# --- the real data sets -----------------------------------------------------------------------------------------


def test_ham10000_loads_every_image_with_the_seven_dx_counts(ham):
    assert sum(len(split) for split in ham.splits.values()) == 10013
    assert ham.label_names == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert label_counts(ham) == HAM_DX_COUNTS


def test_ham10000_detects_metadata_and_group_columns(ham):
    assert (ham.numeric_columns, ham.categorical_columns, ham.group_column) == (
        ["age"],
        ["sex", "localization"],
        "lesion_id",
    )
    assert ham.splits["train"].column_names == ["image", "label", "age", "sex", "localization", "lesion_id"]
    assert isinstance(ham.splits["train"].features["label"], datasets.ClassLabel)


def test_ham10000_no_lesion_crosses_splits(ham):
    assert split_overlap(ham.splits, "lesion_id") == {}


def test_ham10000_splits_are_about_70_15_15_and_stratified(ham):
    total = 10013
    for name, fraction in (("train", 0.70), ("validation", 0.15), ("test", 0.15)):
        split = ham.splits[name]
        assert len(split) / total == pytest.approx(fraction, abs=0.01)
        melanoma = sum(1 for label in split["label"] if ham.label_names[label] == "mel")
        assert melanoma / len(split) == pytest.approx(1113 / total, abs=0.01)


def test_ham10000_stays_memory_mapped_with_lazy_images(ham):
    train = ham.splits["train"]
    assert train.cache_files, "splits should be memory-mapped Arrow files, not in-memory tables"
    assert train.features["image"] == datasets.Image()
    stored = train.cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert stored["bytes"] is None and stored["path"].endswith(".jpg")
    assert train[0]["image"].size == (256, 256)


def test_isic2017_keeps_the_official_splits_exactly(shared_data):
    isic = load_lesion_dataset(str(shared_data / "isic2017"))
    metadata = pd.read_csv(shared_data / "isic2017" / "metadata.csv")
    assert {name: len(split) for name, split in isic.splits.items()} == {"train": 2000, "validation": 150, "test": 600}
    for name, split in isic.splits.items():
        expected = sorted(Path(f).name for f in metadata.loc[metadata["split"] == name, "file_name"])
        assert sorted(image_names(split)) == expected
    assert isic.label_names == ["melanoma", "nevus", "seborrheic_keratosis"]
    assert label_counts(isic) == {"nevus": 1843, "melanoma": 521, "seborrheic_keratosis": 386}
    assert (isic.numeric_columns, isic.categorical_columns, isic.group_column) == (
        ["age"],
        ["sex", "anatom_site_general"],
        None,
    )


def test_isic_seed3_carves_validation_out_of_train_and_keeps_test(shared_data):
    seed3 = load_lesion_dataset(str(shared_data / "isic-seed3"))
    metadata = pd.read_csv(shared_data / "isic-seed3" / "metadata.csv")
    sizes = {name: len(split) for name, split in seed3.splits.items()}
    assert sizes["test"] == 48 and sizes["train"] + sizes["validation"] == 757
    assert sizes["validation"] == pytest.approx(0.15 * 805, abs=2)
    official_test = sorted(Path(f).name for f in metadata.loc[metadata["split"] == "test", "file_name"])
    assert sorted(image_names(seed3.splits["test"])) == official_test
    assert label_counts(seed3) == {
        "pigmented benign keratosis": 478,
        "squamous cell carcinoma": 197,
        "actinic keratosis": 130,
    }


def test_max_samples_is_deterministic_and_stratified(shared_data):
    first = load_lesion_dataset(str(shared_data / "ham10000"), max_samples=500, seed=1)
    again = load_lesion_dataset(str(shared_data / "ham10000"), max_samples=500, seed=1)
    other = load_lesion_dataset(str(shared_data / "ham10000"), max_samples=500, seed=2)
    assert sum(len(split) for split in first.splits.values()) == 500
    for name in ("train", "validation", "test"):
        assert image_names(first.splits[name]) == image_names(again.splits[name])
    assert image_names(first.splits["train"]) != image_names(other.splits["train"])
    assert first.label_names == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert label_counts(first)["nv"] == round(500 * 6703 / 10013)
    assert split_overlap(first.splits, "lesion_id") == {}


def test_max_samples_keeps_the_official_split_proportions(shared_data):
    isic = load_lesion_dataset(str(shared_data / "isic2017"), max_samples=275)
    sizes = {name: len(split) for name, split in isic.splits.items()}
    assert sum(sizes.values()) == 275
    assert sizes == pytest.approx({"train": 200, "validation": 15, "test": 60}, abs=2)


# --- other sources and options ------------------------------------------------------------------------------------


def test_csv_naming_images_by_bare_image_id_gets_jpg_appended(tmp_path):
    folder = write_folder(tmp_path / "ham_like")
    metadata = pd.read_csv(folder / "metadata.csv").drop(columns="file_name")
    metadata.to_csv(tmp_path / "HAM10000_metadata.csv", index=False)
    lesions = load_lesion_dataset(str(tmp_path / "HAM10000_metadata.csv"), images_dir=str(folder / "images"))
    names = sorted(name for split in lesions.splits.values() for name in image_names(split))
    assert names == sorted(f"img_{i}.jpg" for i in range(12))
    assert lesions.splits["train"][0]["image"].size == (8, 8)


def test_class_subfolders_without_metadata_give_the_labels(tmp_path):
    for i in range(10):
        folder = tmp_path / "d" / ("mel" if i < 4 else "nv")
        folder.mkdir(parents=True, exist_ok=True)
        PIL.Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(folder / f"{i}.jpg")
    lesions = load_lesion_dataset(str(tmp_path / "d"), label_names=["nv", "mel"])
    assert lesions.label_names == ["nv", "mel"]
    assert label_counts(lesions) == {"nv": 6, "mel": 4}
    assert (lesions.numeric_columns, lesions.categorical_columns, lesions.group_column) == ([], [], None)


def test_hub_dataset_keeps_its_own_splits(monkeypatch):
    """The Hub path on an in-memory stand-in for marmal88/skin_cancer (the real one needs the network)."""
    jpeg = io.BytesIO()
    PIL.Image.new("RGB", (8, 8), (200, 100, 50)).save(jpeg, format="JPEG")

    def split(n: int, offset: int) -> datasets.Dataset:
        rows = range(offset, offset + n)
        return datasets.Dataset.from_dict(
            {
                "image": [{"bytes": jpeg.getvalue(), "path": None}] * n,
                "image_id": [f"ISIC_{i}" for i in rows],
                "lesion_id": [f"HAM_{i}" for i in rows],
                "dx": [["nv", "mel"][i % 2] for i in rows],
                "dx_type": ["histo"] * n,
                "age": [50.0] * n,
                "sex": ["male"] * n,
                "localization": ["back"] * n,
            },
            features=datasets.Features(
                {
                    "image": datasets.Image(),
                    **{
                        c: datasets.Value("string")
                        for c in ("image_id", "lesion_id", "dx", "dx_type", "sex", "localization")
                    },
                    "age": datasets.Value("float64"),
                }
            ),
        )

    hub = datasets.DatasetDict({"train": split(8, 0), "validation": split(4, 8), "test": split(2, 12)})
    monkeypatch.setattr(datasets, "load_dataset", lambda source: hub if source == "marmal88/skin_cancer" else None)
    lesions = load_lesion_dataset("marmal88/skin_cancer")
    assert {name: len(split) for name, split in lesions.splits.items()} == {"train": 8, "validation": 4, "test": 2}
    assert lesions.splits["test"]["lesion_id"][:] == ["HAM_12", "HAM_13"]
    assert lesions.splits["train"].column_names == ["image", "label", "age", "sex", "localization", "lesion_id"]
    assert lesions.splits["train"][0]["image"].size == (8, 8)
    assert lesions.source == "marmal88/skin_cancer"


def test_label_names_set_the_class_order(tmp_path):
    lesions = load_lesion_dataset(str(write_folder(tmp_path / "d")), label_names=["nv", "mel", "bkl", "scc"])
    assert lesions.splits["train"].features["label"].names == ["nv", "mel", "bkl", "scc"]
    assert label_counts(lesions) == {"nv": 4, "mel": 4, "bkl": 4}


def test_split_column_accepts_val_as_validation(tmp_path):
    folder = write_folder(tmp_path / "d", split=["train"] * 8 + ["val"] * 2 + ["test"] * 2)
    lesions = load_lesion_dataset(str(folder))
    assert {name: len(split) for name, split in lesions.splits.items()} == {"train": 8, "validation": 2, "test": 2}


def test_categorical_and_numeric_types_are_uniform(tmp_path):
    lesions = load_lesion_dataset(str(write_folder(tmp_path / "d")))
    features = lesions.splits["test"].features
    assert features["age"] == datasets.Value("float64")
    assert features["sex"] == datasets.Value("string")
    assert "dx_type" not in features and "image_id" not in features


# --- bad input: each error names the problem and the fix -----------------------------------------------------------


def test_missing_label_column_lists_the_columns(tmp_path):
    folder = write_folder(tmp_path / "d", dx=None)
    with pytest.raises(LesionDataError, match=r"no label column found.*'lesion_id'.*Pass label_column"):
        load_lesion_dataset(str(folder))


def test_named_label_column_that_does_not_exist(tmp_path):
    with pytest.raises(LesionDataError, match=r"label column 'diagnosis' does not exist"):
        load_lesion_dataset(str(write_folder(tmp_path / "d")), label_column="diagnosis")


def test_metadata_column_that_does_not_exist(tmp_path):
    with pytest.raises(LesionDataError, match=r"metadata column 'weight' \(in numeric_columns\) does not exist"):
        load_lesion_dataset(str(write_folder(tmp_path / "d")), numeric_columns=["age", "weight"])


@pytest.mark.parametrize("argument", ["numeric_columns", "categorical_columns"])
def test_dx_type_is_refused_as_a_feature_with_the_reason(tmp_path, argument):
    with pytest.raises(LesionDataError, match=r"'dx_type' cannot be a metadata feature .*how the diagnosis was conf"):
        load_lesion_dataset(str(write_folder(tmp_path / "d")), **{argument: ["dx_type"]})


def test_missing_image_file_is_named(tmp_path):
    folder = write_folder(tmp_path / "d")
    (folder / "images" / "img_3.jpg").unlink()
    with pytest.raises(LesionDataError, match=r"1 of 12 image files .* missing \(looked for under .*\): images/img_3"):
        load_lesion_dataset(str(folder))


def test_images_dir_that_is_not_a_folder_is_named(tmp_path):
    folder = write_folder(tmp_path / "d")
    with pytest.raises(LesionDataError, match=r"images_dir '.*nowhere' is not a folder"):
        load_lesion_dataset(str(folder / "metadata.csv"), images_dir=str(tmp_path / "nowhere"))


def test_csv_image_missing_under_images_dir_is_named(tmp_path):
    folder = write_folder(tmp_path / "d")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(LesionDataError, match=r"12 of 12 image files .* missing \(looked for under .*elsewhere\)"):
        load_lesion_dataset(
            str(folder / "metadata.csv"), image_column="image_id", images_dir=str(tmp_path / "elsewhere")
        )


def test_truncated_image_file_is_named(tmp_path):
    folder = write_folder(tmp_path / "d")
    image = folder / "images" / "img_5.jpg"
    image.write_bytes(image.read_bytes()[:-30])  # header intact, the end of the pixel data cut off
    with pytest.raises(LesionDataError, match=r"images/img_5\.jpg \(JPEG data is truncated\)"):
        load_lesion_dataset(str(folder))


def test_file_that_is_not_an_image_is_named(tmp_path):
    folder = write_folder(tmp_path / "d")
    (folder / "images" / "img_7.jpg").write_text("not a picture")
    with pytest.raises(LesionDataError, match=r"unreadable or corrupt: images/img_7\.jpg \(not an image"):
        load_lesion_dataset(str(folder))


def test_empty_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LesionDataError, match=r"folder .* is empty; expected images/\*\.jpg plus a metadata"):
        load_lesion_dataset(str(tmp_path / "empty"))


def test_nonexistent_path_is_refused(tmp_path):
    with pytest.raises(LesionDataError, match=r"no such file or folder: .*nowhere"):
        load_lesion_dataset(str(tmp_path / "nowhere"))


def test_unknown_split_name_is_refused(tmp_path):
    folder = write_folder(tmp_path / "d", split=["train"] * 10 + ["holdout"] * 2)
    with pytest.raises(LesionDataError, match=r"column 'split' holds split names other than .*\['holdout'\]"):
        load_lesion_dataset(str(folder))


def test_label_names_missing_a_present_value_is_refused(tmp_path):
    with pytest.raises(LesionDataError, match=r"values missing from label_names: \['bkl'\]"):
        load_lesion_dataset(str(write_folder(tmp_path / "d")), label_names=["nv", "mel"])


def test_rows_without_label_are_refused(tmp_path):
    folder = write_folder(tmp_path / "d", dx=["nv", None] * 6)
    with pytest.raises(LesionDataError, match=r"6 rows have no value in the label column 'dx'"):
        load_lesion_dataset(str(folder))


def test_non_numeric_age_is_refused(tmp_path):
    folder = write_folder(tmp_path / "d", age=["unknown"] + [40] * 11)
    with pytest.raises(LesionDataError, match=r"numeric column 'age' holds non-numeric values \['unknown'\]"):
        load_lesion_dataset(str(folder))


def test_hub_id_offline_says_the_hub_is_unreachable(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        LesionDataError,
        match=r"'marmal88/skin_cancer' is not a local path, and the Hugging Face Hub "
        r"is unreachable.*Pass a local folder",
    ):
        load_lesion_dataset("marmal88/skin_cancer")
