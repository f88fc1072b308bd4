"""Evaluation metrics for SkinFusion: the shipped `lesion_metrics` evaluate module, and its `Trainer` adapter.

The metric module lives in `skin_fusion/evaluation/lesion_metrics/` and is loaded by path, so it works offline
(`evaluate.load("accuracy")` needs the Hub). The confusion matrix is not a scalar, so it stays out of the Trainer dict:
use the module's own `confusion_matrix` output instead. This module is also the one home of the metric names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.special import log_softmax, softmax

if TYPE_CHECKING:
    import evaluate
    from transformers import EvalPrediction

LESION_METRIC_PATH = Path(__file__).resolve().parent / "lesion_metrics" / "lesion_metrics.py"

# Scalar outputs of the module copied as they are into the Trainer dict and a run's test metrics.
SCALAR_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece")
# The same metrics in the order a model card lists them: the selection metric first.
CARD_METRICS = ("balanced_accuracy", *(key for key in SCALAR_KEYS if key != "balanced_accuracy"))
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


# Slack for probabilities computed in float32.
PROBABILITY_TOLERANCE = 1e-3


def as_numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    """A tensor or array-like as a NumPy array (detached, on the CPU)."""
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def check_scores_and_labels(scores: np.ndarray, labels: np.ndarray, scores_name: str) -> None:
    """Raise a ValueError naming the problem unless scores are (n, C) finite floats and labels (n,) ints in [0, C)."""
    if scores.size == 0:
        raise ValueError(f"`{scores_name}` is empty (shape {scores.shape}): calibration needs at least one example.")
    if scores.ndim != 2:
        raise ValueError(f"`{scores_name}` must be 2-D (num_examples, num_classes); got shape {scores.shape}.")
    if scores.shape[1] < 2:
        raise ValueError(f"`{scores_name}` needs at least 2 classes (columns); got shape {scores.shape}.")
    if not np.isfinite(scores).all():
        raise ValueError(f"`{scores_name}` contains NaN or infinite values.")
    if labels.ndim != 1:
        raise ValueError(f"`labels` must be 1-D class indices; got shape {labels.shape}.")
    if len(labels) != len(scores):
        raise ValueError(f"`{scores_name}` has {len(scores)} rows but `labels` has {len(labels)}; they must match.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"`labels` must be integer class indices; got dtype {labels.dtype}.")
    num_classes = scores.shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"`labels` must lie in [0, {num_classes}) for {num_classes} classes; got min {labels.min()}, "
            f"max {labels.max()}."
        )


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error of (n, C) probabilities with `n_bins` equal-width confidence bins.

    Args:
        probs: per-class probabilities, rows summing to 1.
        labels: true class indices, shape (n,).
        n_bins: number of bins over (0, 1]; a bin holds confidences in (lower, upper].

    Returns:
        Sum over bins of (bin size / n) * |accuracy in bin - mean confidence in bin|, in [0, 1].
    """
    probs, labels = as_numpy(probs).astype(np.float64), as_numpy(labels)
    check_scores_and_labels(probs, labels, "probs")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"`n_bins` must be a positive integer; got {n_bins!r}.")
    tol = PROBABILITY_TOLERANCE
    if probs.min() < -tol or probs.max() > 1 + tol or np.abs(probs.sum(axis=1) - 1).max() > tol:
        raise ValueError("`probs` must be probabilities in [0, 1] with rows summing to 1; apply a softmax to logits.")
    # The same binning as lesion_metrics' ECE, which must stay a self-contained script (`evaluate` loads it by
    # path); importing it here would also import `evaluate` (about 12 s).
    confidences = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_ids = np.searchsorted(edges[1:-1], confidences, side="left")
    correct_per_bin = np.bincount(bin_ids, weights=correct, minlength=n_bins)
    confidence_per_bin = np.bincount(bin_ids, weights=confidences, minlength=n_bins)
    return float(np.abs(correct_per_bin - confidence_per_bin).sum() / len(labels))


def negative_log_likelihood(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Mean cross-entropy of softmax(logits) against integer labels."""
    logits, labels = as_numpy(logits).astype(np.float64), as_numpy(labels)
    check_scores_and_labels(logits, labels, "logits")
    return float(-log_softmax(logits, axis=1)[np.arange(len(labels)), labels].mean())


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
