"""Calibration of class probabilities: top-label expected calibration error and temperature scaling (Guo et al. 2017).

Temperature scaling divides every logit by one scalar T fitted on held-out data by minimising the negative
log-likelihood; it changes confidences, never the predicted class.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from ..evaluation.metrics import balanced_accuracy

TEMPERATURE_BOUNDS = (0.05, 20.0)
# Strengths of the post-hoc logit adjustment tried on validation data (0 = the most probable class is the decision).
ADJUSTMENT_STRENGTHS = tuple(np.round(np.arange(0.0, 2.01, 0.1), 2))
# Slack for probabilities computed in float32.
PROBABILITY_TOLERANCE = 1e-3


def _as_numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _check_scores_and_labels(scores: np.ndarray, labels: np.ndarray, scores_name: str) -> None:
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
    probs, labels = _as_numpy(probs).astype(np.float64), _as_numpy(labels)
    _check_scores_and_labels(probs, labels, "probs")
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
    logits, labels = _as_numpy(logits).astype(np.float64), _as_numpy(labels)
    _check_scores_and_labels(logits, labels, "logits")
    return float(-log_softmax(logits, axis=1)[np.arange(len(labels)), labels].mean())


def fit_temperature(
    logits: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    tolerance: float = 1e-6,
) -> float:
    """The temperature T in `bounds` that minimises the NLL of softmax(logits / T) on held-out (logits, labels).

    Args:
        logits: pre-softmax scores, shape (n, C); not probabilities.
        labels: true class indices, shape (n,).
        bounds: search interval for T; the result stays inside it (separable data push T to the lower bound).
        tolerance: absolute tolerance on log T.

    Returns:
        T > 0; T > 1 softens over-confident predictions, T < 1 sharpens under-confident ones.
    """
    logits, labels = _as_numpy(logits).astype(np.float64), _as_numpy(labels)
    _check_scores_and_labels(logits, labels, "logits")
    low, high = bounds
    if not 0 < low < high or not math.isfinite(high):
        raise ValueError(f"`bounds` must satisfy 0 < low < high < inf; got {bounds}.")
    rows = np.arange(len(labels))

    def nll(log_temperature: float) -> float:
        return float(-log_softmax(logits / math.exp(log_temperature), axis=1)[rows, labels].mean())

    # The NLL is convex in 1/T, hence unimodal in log T: Brent's bounded search finds the constrained optimum
    # deterministically and never leaves the bounds, unlike a gradient method on a flat (separable) objective.
    log_bounds = (math.log(low), math.log(high))
    result = minimize_scalar(nll, bounds=log_bounds, method="bounded", options={"xatol": tolerance})
    return float(math.exp(result.x))


def apply_temperature(logits: torch.Tensor | np.ndarray, temperature: float) -> torch.Tensor | np.ndarray:
    """Logits divided by `temperature`, in the input's own type (softmax them for calibrated probabilities)."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not 0 < temperature < math.inf:
        raise ValueError(f"`temperature` must be a finite number > 0; got {temperature!r}.")
    if isinstance(logits, torch.Tensor):
        return logits / temperature
    return np.asarray(logits) / temperature


def fit_decision_offsets(
    logits: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    class_prior: np.ndarray,
    strengths: tuple[float, ...] = ADJUSTMENT_STRENGTHS,
) -> tuple[list[float], float]:
    """Post-hoc logit adjustment (Menon et al. 2021): offsets `-tau * log(prior)` with the `tau` of `strengths` that
    maximises balanced accuracy on held-out (logits, labels); ties go to the smaller `tau`.

    Args:
        logits: calibrated held-out logits, shape (n, C).
        labels: true class indices, shape (n,).
        class_prior: class frequencies of the training data, shape (C,), all positive.

    Returns:
        The per-class offsets (added to log-probabilities before the arg-max) and the chosen `tau`.
    """
    logits, labels = _as_numpy(logits).astype(np.float64), _as_numpy(labels)
    _check_scores_and_labels(logits, labels, "logits")
    prior = np.asarray(class_prior, dtype=np.float64)
    if prior.shape != (logits.shape[1],) or (prior <= 0).any():
        raise ValueError(f"`class_prior` must hold {logits.shape[1]} positive class frequencies; got {class_prior}.")
    log_probabilities, log_prior = log_softmax(logits, axis=1), np.log(prior / prior.sum())
    scores = [balanced_accuracy(labels, (log_probabilities - tau * log_prior).argmax(axis=1)) for tau in strengths]
    tau = float(strengths[int(np.argmax(scores))])
    return [float(v) for v in -tau * log_prior], tau
