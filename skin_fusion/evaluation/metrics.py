"""Evaluation metrics for SkinFusion: the shipped `lesion_metrics` evaluate module, and its `Trainer` adapter.

The metric module lives in `skin_fusion/evaluation/lesion_metrics/` and is loaded by path, so it works offline
(`evaluate.load("accuracy")` needs the Hub). The confusion matrix is not a scalar, so it stays out of the Trainer dict:
use `confusion_matrix_from` (or the module's own `confusion_matrix` output) on the predictions instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import softmax
from sklearn.metrics import confusion_matrix

if TYPE_CHECKING:
    import evaluate
    from transformers import EvalPrediction

LESION_METRIC_PATH = Path(__file__).resolve().parent / "lesion_metrics" / "lesion_metrics.py"

# Scalar outputs of the module copied as they are into the Trainer dict.
SCALAR_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece")
# Per-class list outputs of the module, flattened to `<prefix>_<label name>`.
PER_CLASS_KEYS = {"precision": "precision", "recall": "recall", "roc_auc": "auc"}


def load_lesion_metric(num_classes: int, **kwargs: Any) -> evaluate.EvaluationModule:
    """The shipped lesion metric module, loaded from its file (no Hub access).

    Args:
        num_classes: number of classes; predictions must have this many probability columns.
        kwargs: passed to `evaluate.load`, e.g. `ece_bins`, `keep_in_memory`, `num_process`, `process_id`,
            `experiment_id`, `cache_dir`.
    """
    # Imported here because `import evaluate` takes seconds; modules that only need the pure helpers skip it.
    import evaluate

    if not LESION_METRIC_PATH.is_file():
        raise FileNotFoundError(
            f"The lesion metric module is missing at {LESION_METRIC_PATH}; reinstall skin_fusion with its "
            "`lesion_metrics/lesion_metrics.py` package data."
        )
    try:
        return evaluate.load(str(LESION_METRIC_PATH), num_classes=num_classes, **kwargs)
    except ImportError as error:
        raise ImportError(
            f"Could not import the lesion metric module {LESION_METRIC_PATH}: {error}. "
            "Install the pinned requirements (`pip install -r requirements.txt`)."
        ) from error


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float | None:
    """Mean recall over the classes present in `labels` (sklearn's definition); `None` with fewer than two."""
    present = np.unique(labels)
    if len(present) < 2:
        return None
    return float(np.mean([(predicted[labels == c] == c).mean() for c in present]))


def logits_from(predictions: np.ndarray | tuple) -> np.ndarray:
    """The logits array of `EvalPrediction.predictions`; a model returning extra outputs gives a tuple, logits first."""
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    logits = np.asarray(predictions, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"Expected logits of shape (num_examples, num_classes); got shape {logits.shape}.")
    return logits


def confusion_matrix_from(predictions: np.ndarray | tuple, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The (num_classes, num_classes) confusion matrix of logits or probabilities; rows true, columns predicted."""
    predicted = logits_from(predictions).argmax(axis=1)
    return confusion_matrix(np.asarray(labels), predicted, labels=list(range(num_classes)))


def build_compute_metrics(
    label_names: Sequence[str], **metric_kwargs: Any
) -> Callable[[EvalPrediction], dict[str, float]]:
    """A `Trainer` `compute_metrics` that softmaxes the logits and returns a flat dict of floats.

    Keys: accuracy, balanced_accuracy, macro_f1, macro_auc, ece, and per class `precision_<name>`, `recall_<name>`,
    `auc_<name>` (NaN where undefined, e.g. a class absent from the evaluation set). The metric module is loaded
    once, here, and reused by every evaluation.

    Args:
        label_names: class names in label-index order (`config.id2label` values).
        metric_kwargs: passed to `load_lesion_metric`, e.g. `ece_bins`.
    """
    label_names = list(label_names)
    if len(label_names) < 2 or len(set(label_names)) != len(label_names):
        raise ValueError(f"`label_names` must hold at least 2 distinct class names; got {label_names}.")
    # Trainer gathers predictions from all processes before calling compute_metrics, so one in-memory module suffices.
    metric = load_lesion_metric(len(label_names), **{"keep_in_memory": True, **metric_kwargs})

    def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
        probs = softmax(logits_from(eval_prediction.predictions), axis=1)
        results = metric.compute(predictions=probs, references=np.asarray(eval_prediction.label_ids))
        flat = {key: float(results[key]) for key in SCALAR_KEYS}
        for key, prefix in PER_CLASS_KEYS.items():
            flat.update(
                {f"{prefix}_{name}": float(value) for name, value in zip(label_names, results[key], strict=True)}
            )
        return flat

    return compute_metrics
