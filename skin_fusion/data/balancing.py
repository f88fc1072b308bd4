"""Class balancing strategies for the training split (never for validation or test).

Each strategy acts at one stage of training:

| strategy | stage | what it does |
|---|---|---|
| `none` | — | nothing |
| `oversample` | dataset | repeat random minority rows until every class has the majority count |
| `undersample` | dataset | keep a random subset of every class of the minority count |
| `class_weights` | loss | weight the cross-entropy by inverse class frequency |
| `weighted_sampler` | sampler | draw training rows with probability inverse to their class frequency |
| `augment` | dataset | repeat minority rows evenly up to the majority count; random augmentation makes repeats differ |
| `smote` | features | interpolate new minority rows between neighbours, on tabular or cached feature vectors only |

The helpers here are pure functions over label arrays and row indices; resampling a `datasets.Dataset` uses
`Dataset.select`, which stays in Arrow and copies no image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from datasets import Dataset

# strategy: (stage, one-line description for the model card)
STRATEGY_TABLE: dict[str, tuple[str, str]] = {
    "none": ("none", "No class balancing: the training split keeps its natural class frequencies."),
    "oversample": (
        "dataset",
        "Random over-sampling: minority-class training images are repeated at random until every class has as "
        "many as the majority class.",
    ),
    "undersample": (
        "dataset",
        "Random under-sampling: every class keeps a random subset of its training images as large as the smallest "
        "class.",
    ),
    "class_weights": (
        "loss",
        "Class-weighted loss: the cross-entropy weights each class by its inverse training frequency (sklearn's "
        "'balanced'; mean weight over training images 1).",
    ),
    "weighted_sampler": (
        "sampler",
        "Weighted sampling: training images are drawn with replacement with probability inverse to their class "
        "frequency, so every class is drawn equally often on average.",
    ),
    "augment": (
        "dataset",
        "Augmentation over-sampling: every minority-class training image is repeated evenly up to the majority "
        "count, and random training augmentation makes each repeat a different image.",
    ),
    "smote": (
        "features",
        "SMOTE: new minority-class rows are interpolated between nearest neighbours of the same class, on encoded "
        "metadata or cached backbone features (never on raw images).",
    ),
}
BALANCING_STRATEGIES = tuple(STRATEGY_TABLE)
RESAMPLING_STRATEGIES = tuple(name for name, (stage, _) in STRATEGY_TABLE.items() if stage == "dataset")


def check_strategy(strategy: str) -> str:
    """Return `strategy` if it is known; otherwise raise a `ValueError` that lists the valid names."""
    if strategy not in STRATEGY_TABLE:
        raise ValueError(f"Unknown balancing strategy {strategy!r}; use one of {BALANCING_STRATEGIES}.")
    return strategy


def balancing_stage(strategy: str) -> str:
    """Where a strategy acts: `none`, `dataset`, `loss`, `sampler` or `features`."""
    return STRATEGY_TABLE[check_strategy(strategy)][0]


def describe_balancing(strategy: str) -> str:
    """One sentence describing the strategy, for the model card."""
    return STRATEGY_TABLE[check_strategy(strategy)][1]


def class_counts(labels: Sequence[int] | np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Number of rows of each class `0 .. num_classes - 1` (default: up to the largest label)."""
    labels = _as_labels(labels)
    if num_classes is not None and labels.max() >= num_classes:
        raise ValueError(f"Label {labels.max()} is out of range for num_classes={num_classes}.")
    return np.bincount(labels, minlength=num_classes or 0)


def resample_indices(
    labels: Sequence[int] | np.ndarray, strategy: str, seed: int, num_classes: int | None = None
) -> np.ndarray:
    """Sorted row indices of the balanced training split; `arange(n)` for strategies that do not resample.

    Args:
        labels: integer class of every training row.
        strategy: one of `BALANCING_STRATEGIES`.
        seed: random seed; the same inputs give the same indices.
        num_classes: number of classes; with it, a class absent from `labels` is detected (it makes `undersample`
            impossible; `oversample` and `augment` cannot create rows for it and balance the present classes).

    `augment` differs from `oversample` only in how repeats are spread: every minority image is repeated k or k+1
    times instead of a random number of times. The repeats are identical rows; what makes them differ is that the
    training transform applies random augmentation (flips, rotations, colour jitter, ...) each time a row is read,
    so use it with augmentation switched on.
    """
    labels = _as_labels(labels)
    check_strategy(strategy)
    if strategy not in RESAMPLING_STRATEGIES:
        return np.arange(len(labels))
    counts = class_counts(labels, num_classes)
    present = np.flatnonzero(counts)
    if strategy == "undersample" and len(present) < len(counts):
        raise ValueError(
            f"Cannot undersample: class(es) {np.flatnonzero(counts == 0).tolist()} have no training rows, so every "
            "class would be cut to 0. Use 'oversample' or 'class_weights', or a split that contains every class."
        )
    rng = np.random.default_rng(seed)
    chosen = []
    for label in present:
        rows = np.flatnonzero(labels == label)
        if strategy == "undersample":
            chosen.append(rng.choice(rows, size=counts[present].min(), replace=False))
        elif strategy == "oversample":
            chosen.append(np.concatenate([rows, rng.choice(rows, size=counts.max() - len(rows), replace=True)]))
        else:  # augment: whole rounds over the class, then a random subset without replacement for the rest
            rounds, rest = divmod(int(counts.max()), len(rows))
            chosen.append(np.concatenate([np.tile(rows, rounds), rng.choice(rows, size=rest, replace=False)]))
    return np.sort(np.concatenate(chosen))


def class_weights(labels: Sequence[int] | np.ndarray, num_classes: int) -> list[float]:
    """Inverse-frequency class weights `n / (num_classes * count)` (sklearn's 'balanced'); mean over rows is 1."""
    counts = class_counts(labels, num_classes)
    if (counts == 0).any():
        raise ValueError(
            f"Class(es) {np.flatnonzero(counts == 0).tolist()} have no training rows, so their inverse-frequency "
            "weight is undefined. Use a split that contains every class, or another balancing strategy."
        )
    return _present_class_weights(counts).tolist()


def sample_weights(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Per-row weights for `torch.utils.data.WeightedRandomSampler`: each class gets the same total weight."""
    labels = _as_labels(labels)
    return _present_class_weights(class_counts(labels))[labels]


def smote_features(
    features: np.ndarray, labels: Sequence[int] | np.ndarray, seed: int, k_neighbors: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Balance tabular feature vectors with imbalanced-learn's SMOTE: originals first, then synthetic rows.

    Only for 2-D inputs (rows × features): the encoded metadata of the metadata-only model, or backbone features
    cached from a frozen image encoder. Images are refused: a pixel-wise blend of two lesions is no lesion (two
    half-transparent blobs, mixed hair and skin), it teaches the model artefacts; and each synthetic image carries
    the identity of two real lesions, so grouped splits and per-lesion statistics no longer hold. To balance images
    use `oversample`, `augment`, `class_weights` or `weighted_sampler`.

    `k_neighbors` is reduced to (smallest class size − 1) when a class is smaller than that.
    """
    from imblearn.over_sampling import SMOTE  # imported here: the other strategies need no imbalanced-learn

    features = np.asarray(features)
    labels = _as_labels(labels)
    if features.ndim != 2:
        raise ValueError(
            f"SMOTE needs a 2-D array of feature vectors (rows × features), got shape {features.shape}. It is not "
            "applied to images: interpolated pixels of two lesions are no lesion. Encode the metadata or cache "
            "backbone features first, or balance images with 'oversample', 'augment', 'class_weights' or "
            "'weighted_sampler'."
        )
    if len(features) != len(labels):
        raise ValueError(f"features has {len(features)} rows but labels has {len(labels)}.")
    smallest = int(class_counts(labels)[np.unique(labels)].min())
    if smallest < 2:
        raise ValueError(
            "SMOTE needs at least 2 rows in every class to interpolate between; a class has 1. Use 'oversample'."
        )
    smote = SMOTE(k_neighbors=min(k_neighbors, smallest - 1), random_state=seed)
    resampled_features, resampled_labels = smote.fit_resample(features, labels)
    return resampled_features, np.asarray(resampled_labels)


def balance_dataset(dataset: Dataset, strategy: str, seed: int, label_column: str = "label") -> Dataset:
    """The training split resampled by `strategy` via `dataset.select` (no image copies); unchanged otherwise.

    Call it on the training split only. Labels may be `ClassLabel` integers or strings. Strategies acting on the
    loss, the sampler or features (`class_weights`, `weighted_sampler`, `smote`) return the dataset unchanged.
    """
    check_strategy(strategy)
    if label_column not in dataset.column_names:
        raise ValueError(
            f"Column {label_column!r} not found; the dataset has {dataset.column_names}. Pass label_column=..."
        )
    if strategy not in RESAMPLING_STRATEGIES:
        return dataset
    feature = dataset.features[label_column]
    num_classes = getattr(feature, "num_classes", None)
    raw = np.asarray(dataset[label_column])
    labels = raw if num_classes is not None or raw.dtype.kind in "iu" else np.unique(raw, return_inverse=True)[1]
    return dataset.select(resample_indices(labels, strategy, seed, num_classes=num_classes))


def _present_class_weights(counts: np.ndarray) -> np.ndarray:
    """`n / (classes present * count)` for present classes, 0 for absent ones (they have no rows to weight)."""
    present = counts > 0
    weights = np.zeros(len(counts))
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def _as_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.asarray(labels)
    if array.size == 0:
        raise ValueError("labels is empty: there is nothing to balance. Check that the training split has rows.")
    if array.ndim != 1 or array.dtype.kind not in "iu" or array.min() < 0:
        raise ValueError(
            f"labels must be a 1-D array of non-negative class integers, got dtype {array.dtype} and shape "
            f"{array.shape}. Encode string labels first (e.g. with a datasets ClassLabel)."
        )
    return array.astype(np.int64)
