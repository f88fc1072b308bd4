"""External validation: a HAM10000 SkinFusion model scored on ISIC 2017's official test split.

    python bench/external_validation.py --model models/skin-fusion-ham10000 [--data ../shared/data/isic2017]
        [--isic_model DIR] [--out bench/results]

ISIC 2017's classes map onto three of HAM10000's (nevus -> nv, melanoma -> mel, seborrheic keratosis -> bkl); its
metadata is passed as recorded (age, sex; its general sites mapped onto HAM10000's localisations where one matches,
else "not recorded"; the official test split has almost none). Reported: 3-class balanced accuracy (the model's
decision among the three classes) and the challenge's two AUCs (melanoma vs rest, seborrheic keratosis vs rest, from
the calibrated 7-class probabilities). `--isic_model` is a model trained on ISIC 2017's own training split, scored on
the same images for comparison. Writes OUT/external_validation.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skin_fusion.data.known_datasets import ISIC2017_TO_HAM10000, ISIC_SITE_TO_HAM10000

REPO = Path(__file__).resolve().parents[1]


def isic_rows(data: Path) -> pd.DataFrame:
    """The official test split with HAM10000-style metadata columns and the mapped label."""
    frame = pd.read_csv(data / "metadata.csv", dtype=str, keep_default_na=False)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    return pd.DataFrame({
        "path": [str(data / name) for name in test["file_name"]],
        "label": test["label"].map(ISIC2017_TO_HAM10000),
        "age": test["age"], "sex": test["sex"],
        "localization": test["anatom_site_general"].map(ISIC_SITE_TO_HAM10000).fillna(""),
        "anatom_site_general": test["anatom_site_general"],
    })


def model_probabilities(model_dir: Path, rows: pd.DataFrame, columns: dict[str, str], batch_size: int = 32):
    """Calibrated probabilities and decision offsets of a saved model on `rows` (metadata renamed by `columns`)."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageClassification, AutoProcessor

    import skin_fusion  # noqa: F401  (registers the Auto classes)

    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    logits = []
    for start in range(0, len(rows), batch_size):
        batch = rows.iloc[start:start + batch_size]
        images = [Image.open(path).convert("RGB") for path in batch["path"]]
        metadata = [{model_column: row[source] for model_column, source in columns.items()}
                    for row in batch.to_dict("records")]
        with torch.inference_mode():
            logits.append(model(**processor(images=images, metadata=metadata)).logits)
    logits = torch.cat(logits).double()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return logits.softmax(-1).numpy(), model.config.decision_offsets, labels


def three_class_scores(probabilities: np.ndarray, offsets: list[float] | None, labels: list[str],
                       truth: pd.Series) -> dict[str, Any]:
    """3-class balanced accuracy (decision among nv / mel / bkl) and the melanoma and seborrheic keratosis AUCs."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    classes = ["nv", "mel", "bkl"]
    index = [labels.index(name) for name in classes]
    scores = np.log(probabilities[:, index]) + (np.asarray(offsets)[index] if offsets is not None else 0.0)
    decided = np.asarray(classes)[scores.argmax(1)]
    return {
        "balanced_accuracy_3_class": float(balanced_accuracy_score(truth, decided)),
        "melanoma_auc": float(roc_auc_score(truth == "mel", probabilities[:, labels.index("mel")])),
        "seborrheic_keratosis_auc": float(roc_auc_score(truth == "bkl", probabilities[:, labels.index("bkl")])),
        "images": int(len(truth)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a HAM10000 SkinFusion model directory")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "isic2017")
    parser.add_argument("--isic_model", type=Path, help="a model trained on ISIC 2017's training split")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    if not (args.data / "metadata.csv").is_file():
        raise SystemExit(f"No ISIC 2017 imagefolder at {args.data} (metadata.csv missing); pass --data.")
    rows = isic_rows(args.data)
    results: dict[str, Any] = {"data": args.data.name, "split": "test (official)", "rows": []}
    started = time.perf_counter()
    probabilities, offsets, labels = model_probabilities(
        args.model, rows, {"age": "age", "sex": "sex", "localization": "localization"})
    results["rows"].append({"model": f"{args.model.name} (HAM10000, 7 classes)", "metadata": "as recorded",
                            **three_class_scores(probabilities, offsets, labels, rows["label"])})
    if args.isic_model:
        probabilities, offsets, labels = model_probabilities(
            args.isic_model, rows, {"age": "age", "sex": "sex", "anatom_site_general": "anatom_site_general"})
        mapped = [ISIC2017_TO_HAM10000.get(name, name) for name in labels]
        results["rows"].append({"model": f"{args.isic_model.name} (ISIC 2017 training split)",
                                "metadata": "as recorded",
                                **three_class_scores(probabilities, offsets, mapped, rows["label"])})
    results["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "external_validation.json").write_text(json.dumps(results, indent=2))
    lines = ["| model | metadata | 3-class balanced accuracy | melanoma AUC | seborrheic keratosis AUC | images |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['metadata']} | {r['balanced_accuracy_3_class']:.3f} | {r['melanoma_auc']:.3f} | "
              f"{r['seborrheic_keratosis_auc']:.3f} | {r['images']} |" for r in results["rows"]]
    (args.out / "external_validation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
