"""Test-set evaluation of a trained model: overall and per-subgroup metrics (the plots are in `plots.py`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .metrics import balanced_accuracy, expected_calibration_error, load_lesion_metric

AGE_BANDS = (0, 30, 45, 60, 75, 200)
MIN_SUBGROUP_SIZE = 5


def evaluate_probabilities(
    probabilities: np.ndarray, labels: np.ndarray, label_names: list[str], decision_offsets: list[float] | None = None
) -> dict[str, Any]:
    """Every metric of the shipped `evaluate` module (confusion matrix and per-class lists included); decisions are
    the arg-max of the log-probabilities plus `decision_offsets` (see `SkinFusionConfig.decision_offsets`)."""
    metric = load_lesion_metric(len(label_names), keep_in_memory=True, decision_offsets=decision_offsets)
    return metric.compute(predictions=probabilities, references=labels)


def age_band(age: Any) -> str:
    """'45-59'-style band of an age, or 'unknown'."""
    try:
        value = float(age)
    except (TypeError, ValueError):
        return "unknown"
    if np.isnan(value):
        return "unknown"
    for low, high in zip(AGE_BANDS[:-1], AGE_BANDS[1:]):
        if low <= value < high:
            return f"{low}+" if high == AGE_BANDS[-1] else f"{low}-{high - 1}"
    return "unknown"


def subgroup_metrics(
    metadata: pd.DataFrame, probabilities: np.ndarray, labels: np.ndarray, columns: list[str],
    predicted: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Accuracy, balanced accuracy and ECE per value of each metadata column (numeric ones in age bands).

    Subgroups smaller than `MIN_SUBGROUP_SIZE` are reported with their size only: their metrics would be noise.
    `predicted` are the model's decisions (default: the most probable class).
    """
    predicted = probabilities.argmax(axis=1) if predicted is None else predicted
    rows: list[dict[str, Any]] = []
    for column in columns:
        values = metadata[column]
        if pd.api.types.is_numeric_dtype(values):
            groups, name = values.map(age_band), f"{column} band"
        else:
            groups, name = values.fillna("unknown").astype(str).replace("", "unknown"), column
        for group in sorted(groups.unique()):
            mask = (groups == group).to_numpy()
            row: dict[str, Any] = {"feature": name, "group": group, "n": int(mask.sum())}
            if mask.sum() >= MIN_SUBGROUP_SIZE:
                row["accuracy"] = float((predicted[mask] == labels[mask]).mean())
                row["balanced_accuracy"] = balanced_accuracy(labels[mask], predicted[mask])
                row["ece"] = expected_calibration_error(probabilities[mask], labels[mask])
            rows.append(row)
    return rows

