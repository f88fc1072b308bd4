"""Specification of the metadata EDA: report, plots and eda.json on synthetic, hand-made and real data."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import PIL.Image
import pytest

from skin_fusion.reports.eda import main, run_eda
from skin_fusion.data.synthetic import generate_synthetic_lesions
from tests.helpers import HAM_DX_COUNTS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return generate_synthetic_lesions(tmp_path_factory.mktemp("synthetic"), n_images=120, image_size=32)


@pytest.fixture(scope="module")
def synthetic_eda(synthetic, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("eda")
    run_eda(str(synthetic), out, n_repeats=3)
    return out, json.loads((out / "eda.json").read_text())


def write_imagefolder(root: Path, frame: pd.DataFrame) -> Path:
    """An imagefolder of 8x8 JPEGs, one per row of `frame` (which gets the file_name column)."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"images/img_{i}.jpg" for i in range(len(frame))]
    for name in names:
        PIL.Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / name)
    frame.insert(0, "file_name", names)
    frame.to_csv(root / "metadata.csv", index=False)
    return root


# --- report, plots and numbers on a generated synthetic set ------------------------------------------------------


def test_eda_writes_report_json_and_a_png_per_plot(synthetic_eda):
    out, facts = synthetic_eda
    report = (out / "report.md").read_text()
    assert facts["plots"].keys() == {"class_counts", "age", "sex", "anatom_site_general", "missing", "importance"}
    for name in facts["plots"].values():
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)
        assert f"]({name})" in report
    assert "SYNTHETIC" in report


def test_eda_class_counts_and_split_sizes_match_the_metadata(synthetic, synthetic_eda):
    _, facts = synthetic_eda
    expected = pd.read_csv(synthetic / "metadata.csv")["label"].value_counts().to_dict()
    assert facts["class_counts"]["all"] == expected
    assert facts["rows"] == sum(facts["split_sizes"].values()) == 120
    for split, size in facts["split_sizes"].items():
        assert sum(facts["class_counts"][split].values()) == size


def test_eda_records_the_synthetic_manifest_and_a_leakage_free_grouping(synthetic, synthetic_eda):
    _, facts = synthetic_eda
    assert facts["synthetic"] == json.loads((synthetic / "manifest.json").read_text())
    lesions = pd.read_csv(synthetic / "metadata.csv")["lesion_id"]
    assert facts["groups"]["groups"] == lesions.nunique()
    assert facts["groups"]["crossing_groups"] == 0 and facts["groups"]["leakage_free"]


def test_eda_measures_the_metadata_only_model_on_the_test_split(synthetic_eda):
    _, facts = synthetic_eda
    importance = facts["importance"]
    assert importance["evaluated_on"] == "test"
    assert importance["evaluated_rows"] == facts["split_sizes"]["test"]
    assert 0 <= importance["balanced_accuracy"] <= 1
    assert set(importance["ranking"]) == {"age", "sex", "anatom_site_general"}
    assert importance["features"]["sex"]["encoded_columns"] == ["sex=female", "sex=male", "sex_missing"]


def test_cli_analyses_a_folder_with_column_overrides(synthetic, tmp_path, capsys):
    assert main([str(synthetic), "--out", str(tmp_path), "--categorical-columns", "sex", "--n-repeats", "2"]) == 0
    facts = json.loads((tmp_path / "eda.json").read_text())
    assert facts["columns"]["categorical"] == ["sex"]
    assert set(facts["importance"]["ranking"]) == {"age", "sex"}
    assert "report.md" in capsys.readouterr().out


# --- missing values on a hand-made folder with known gaps --------------------------------------------------------


def test_missingness_counts_empty_cells_and_placeholders(tmp_path):
    n = 20
    frame = pd.DataFrame({
        "dx": ["nv", "mel"] * (n // 2),
        "age": [None, None, None] + [40.0] * (n - 3),
        "sex": ["unknown", "Unknown ", None] + ["male"] * (n - 3),
        "localization": [None] * 4 + ["back"] * (n - 4),
    })
    facts = run_eda(str(write_imagefolder(tmp_path / "data", frame)), tmp_path / "eda", n_repeats=1)
    missing = facts["missing"]
    assert {k: missing["age"][k] for k in ("missing", "empty", "placeholder")} == {"missing": 3, "empty": 3,
                                                                                  "placeholder": 0}
    assert {k: missing["sex"][k] for k in ("missing", "empty", "placeholder")} == {"missing": 3, "empty": 1,
                                                                                  "placeholder": 2}
    assert missing["sex"]["placeholder_values"] == ["Unknown ", "unknown"]
    assert missing["localization"]["missing"] == 4 and missing["localization"]["fraction"] == 0.2
    assert sum(s["missing"] for s in missing["localization"]["by_split"].values()) == 4
    assert missing["localization"]["by_class"] == {"mel": {"missing": 2, "rows": 10}, "nv": {"missing": 2, "rows": 10}}


# --- importance on a planted signal -------------------------------------------------------------------------------


def test_importance_ranks_a_planted_feature_above_pure_noise(tmp_path):
    rng = np.random.default_rng(0)
    n = 240
    age = rng.integers(20, 86, n).astype(float)
    frame = pd.DataFrame({
        "label": np.where(age >= 55, "old", "young"),
        "age": age,
        "noise": rng.normal(0, 1, n),
        "sex": rng.choice(["male", "female"], n),
    })
    folder = write_imagefolder(tmp_path / "data", frame)
    facts = run_eda(str(folder), tmp_path / "eda", numeric_columns=["age", "noise"], n_repeats=5)
    importance = facts["importance"]
    assert importance["ranking"][0] == "age"
    assert importance["balanced_accuracy"] > 0.9
    drops = {f: importance["features"][f]["balanced_accuracy_drop"] for f in ("age", "noise", "sex")}
    assert drops["age"] > 0.2
    assert drops["age"] > drops["noise"] + 0.15 and drops["age"] > drops["sex"] + 0.15


# --- the real HAM10000 ----------------------------------------------------------------------------------------------


def test_ham10000_eda_counts_gaps_and_leakage_free_lesions(shared_data, tmp_path):
    facts = run_eda(str(shared_data / "ham10000"), tmp_path, n_repeats=2)
    saved = json.loads((tmp_path / "eda.json").read_text())
    assert saved["class_counts"]["all"] == HAM_DX_COUNTS
    assert saved["groups"]["groups"] == 7470
    assert saved["groups"]["crossing_groups"] == 0 and saved["groups"]["leakage_free"]
    assert [saved["missing"][c]["missing"] for c in ("age", "sex", "localization")] == [57, 57, 234]
    assert saved["leaky_columns"]["dx_type"]["top_class"]["follow_up"] == "nv"
    assert facts["seconds"] < 60
