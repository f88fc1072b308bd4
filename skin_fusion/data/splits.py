"""Leakage-free splits: stratified by label, grouped so that no lesion (or patient) lands in two splits.

Several images of one lesion look almost alike; if they fall on both sides of a split, the test score measures
recognition of that lesion rather than diagnosis (about +0.03 balanced accuracy on HAM10000, see NOTES.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import datasets


def _group_codes(groups: Sequence[Any] | None, n: int) -> np.ndarray:
    """Integer code per row; a row without a group (None/NaN) is a group of its own."""
    if groups is None:
        return np.arange(n)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} values but labels has {n}; pass one group per row.")
    codes, uniques = pd.factorize(pd.Series(list(groups), dtype=object), use_na_sentinel=True)
    missing = codes < 0
    codes[missing] = len(uniques) + np.arange(missing.sum())
    return codes


def grouped_stratified_split(
    labels: Sequence[Any], groups: Sequence[Any] | None, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (train_idx, test_idx), stratified by label, with no group on both sides.

    Groups are visited in a seeded random order and a group joins the test side when that brings the per-class
    test counts closer (L1) to `test_size` x the class counts. Without groups every row is its own group, which
    gives a plain stratified split with per-class sizes rounded to the nearest row.

    Args:
        labels: one label per row (any hashable values).
        groups: one group id per row (e.g. `lesion_id`), or None for a plain stratified split. Missing ids
            (None/NaN) are treated as singleton groups.
        test_size: fraction of rows wanted on the test side, in [0, 1).
        seed: the same seed and inputs always give the same split.

    Returns:
        Two sorted integer index arrays that partition `range(len(labels))`.
    """
    if not 0.0 <= test_size < 1.0:
        raise ValueError(f"test_size must be in [0, 1), got {test_size}.")
    labels = np.asarray(list(labels), dtype=object)
    n = len(labels)
    group_of_row = _group_codes(groups, n)
    _, class_of_row = np.unique(labels.astype(str), return_inverse=True)
    n_groups, n_classes = group_of_row.max(initial=-1) + 1, class_of_row.max(initial=-1) + 1

    counts = np.zeros((n_groups, n_classes))
    np.add.at(counts, (group_of_row, class_of_row), 1)
    target = test_size * counts.sum(axis=0)
    taken = np.zeros(n_classes)
    in_test = np.zeros(n_groups, dtype=bool)
    for group in np.random.default_rng(seed).permutation(n_groups):
        after = taken + counts[group]
        if np.abs(after - target).sum() < np.abs(taken - target).sum():
            taken, in_test[group] = after, True
    test_rows = in_test[group_of_row]
    return np.flatnonzero(~test_rows), np.flatnonzero(test_rows)


def assign_splits(
    labels: Sequence[Any],
    groups: Sequence[Any] | None,
    official: Sequence[str] | None,
    *,
    validation_size: float,
    test_size: float,
    seed: int,
) -> np.ndarray:
    """Split name ("train", "validation" or "test") for each row.

    Official splits are kept as they are. A split that is absent (or every split but train, when there are no
    official splits) is carved out of the train rows with `grouped_stratified_split`: test first, then
    validation. Sizes are fractions of all rows, so a 15% validation split is 15% of the data whichever splits
    were official.
    """
    n = len(labels)
    labels = np.asarray(list(labels), dtype=object)
    groups = None if groups is None else np.asarray(list(groups), dtype=object)
    assignment = np.array(["train"] * n if official is None else list(official), dtype=object)
    if not (assignment == "train").any():
        raise ValueError("there are no train rows; the official splits must include 'train'.")
    for name, size in (("test", test_size), ("validation", validation_size)):
        if size == 0 or (assignment == name).any():
            continue
        pool = np.flatnonzero(assignment == "train")
        fraction = size * n / len(pool)
        if fraction >= 1:
            raise ValueError(
                f"a {name} split of {size:.0%} of {n} rows needs more than the {len(pool)} train rows left; "
                f"lower the {name} size."
            )
        _, carved = grouped_stratified_split(labels[pool], None if groups is None else groups[pool], fraction, seed)
        assignment[pool[carved]] = name
    return assignment


def stratified_subsample(labels: Sequence[Any], n_samples: int, seed: int) -> np.ndarray:
    """Sorted indices of exactly `min(n_samples, len(labels))` rows, keeping the label proportions.

    Each class gets its proportional share rounded by largest remainder; rows are drawn with a seeded generator,
    so the same arguments always give the same rows.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples}.")
    labels = np.asarray(list(labels), dtype=object).astype(str)
    if n_samples >= len(labels):
        return np.arange(len(labels))
    classes, class_of_row, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = n_samples * class_counts / len(labels)
    share = np.floor(quota).astype(int)
    # Largest remainders first; a stable sort keeps ties in class order, so the result is deterministic.
    by_remainder = np.argsort(-(quota - share), kind="stable")
    share[by_remainder[: n_samples - share.sum()]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(class_of_row == c), size=share[c], replace=False) for c in range(len(classes))]
    return np.sort(np.concatenate(chosen))


def split_overlap(splits: datasets.DatasetDict, group_column: str) -> dict[Any, list[str]]:
    """Groups found in more than one split, each mapped to the sorted names of the splits that hold it.

    An empty dict means the splits are leakage-free for `group_column`; missing ids (None/NaN) are ignored.
    """
    seen: dict[Any, set[str]] = {}
    for name, split in splits.items():
        if group_column not in split.column_names:
            raise ValueError(
                f"split {name!r} has no column {group_column!r} (columns: {split.column_names}); "
                "pass the group column the data set was split by, e.g. LesionDataset.group_column."
            )
        values = split.select_columns([group_column]).to_pandas()[group_column].dropna().unique()
        for value in values:
            seen.setdefault(value, set()).add(name)
    return {group: sorted(names) for group, names in seen.items() if len(names) > 1}
