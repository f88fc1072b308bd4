"""Specification of the leakage-free split helpers (pure functions, synthetic inputs)."""

from collections import Counter

import datasets
import numpy as np
import pytest

from skin_fusion.data.splits import assign_splits, grouped_stratified_split, split_overlap, stratified_subsample


def lesion_like(n_groups: int = 600, seed: int = 0) -> tuple[list[str], list[str]]:
    """Labels and group ids shaped like HAM10000: imbalanced classes, 1-6 images per lesion, one label per lesion."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for g in range(n_groups):
        label = rng.choice(["nv", "mel", "bkl", "bcc", "df"], p=[0.66, 0.12, 0.11, 0.07, 0.04])
        for _ in range(rng.integers(1, 7)):
            labels.append(str(label))
            groups.append(f"lesion_{g}")
    return labels, groups


def test_no_group_is_on_both_sides():
    labels, groups = lesion_like()
    train, test = grouped_stratified_split(labels, groups, test_size=0.2, seed=1)
    assert not {groups[i] for i in train} & {groups[i] for i in test}


def test_indices_partition_all_rows():
    labels, groups = lesion_like()
    train, test = grouped_stratified_split(labels, groups, test_size=0.2, seed=1)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(labels)))


def test_grouped_split_honours_size_and_class_proportions():
    labels, groups = lesion_like()
    _, test = grouped_stratified_split(labels, groups, test_size=0.2, seed=3)
    assert len(test) / len(labels) == pytest.approx(0.2, abs=0.01)
    overall, in_test = Counter(labels), Counter(labels[i] for i in test)
    for label, count in overall.items():
        assert in_test[label] / count == pytest.approx(0.2, abs=0.03)


def test_without_groups_each_class_is_split_to_the_nearest_row():
    labels = ["a"] * 100 + ["b"] * 30 + ["c"] * 7
    _, test = grouped_stratified_split(labels, None, test_size=0.2, seed=0)
    assert Counter(labels[i] for i in test) == {"a": 20, "b": 6, "c": 1}


def test_same_seed_same_split_and_other_seed_other_split():
    labels, groups = lesion_like()
    first = grouped_stratified_split(labels, groups, 0.2, seed=7)[1]
    again = grouped_stratified_split(labels, groups, 0.2, seed=7)[1]
    other = grouped_stratified_split(labels, groups, 0.2, seed=8)[1]
    assert first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()


def test_rows_without_group_are_their_own_groups():
    labels = ["a"] * 10
    groups = [None] * 10
    train, test = grouped_stratified_split(labels, groups, test_size=0.3, seed=0)
    assert (len(train), len(test)) == (7, 3)


def test_zero_test_size_gives_empty_test():
    train, test = grouped_stratified_split(["a", "b"] * 5, None, test_size=0.0, seed=0)
    assert len(train) == 10 and len(test) == 0


def test_bad_test_size_is_refused():
    with pytest.raises(ValueError, match=r"test_size must be in \[0, 1\)"):
        grouped_stratified_split(["a"], None, test_size=1.0, seed=0)


def test_subsample_has_exact_size_and_proportions():
    labels = ["a"] * 700 + ["b"] * 200 + ["c"] * 100
    chosen = stratified_subsample(labels, 100, seed=0)
    assert len(chosen) == 100
    assert Counter(labels[i] for i in chosen) == {"a": 70, "b": 20, "c": 10}


def test_subsample_is_deterministic_for_a_seed():
    labels = ["a", "b", "c"] * 50
    assert stratified_subsample(labels, 20, seed=5).tolist() == stratified_subsample(labels, 20, seed=5).tolist()
    assert stratified_subsample(labels, 20, seed=5).tolist() != stratified_subsample(labels, 20, seed=6).tolist()


def test_subsample_larger_than_data_keeps_all_rows():
    assert stratified_subsample(["a", "b"], 10, seed=0).tolist() == [0, 1]


def test_assign_splits_keeps_official_splits_and_carves_only_from_train():
    labels = ["a", "b"] * 50
    official = ["train"] * 80 + ["test"] * 20
    assignment = assign_splits(labels, None, official, validation_size=0.15, test_size=0.15, seed=0)
    assert (assignment[80:] == "test").all()
    assert set(assignment[:80]) == {"train", "validation"}
    assert abs(Counter(assignment)["validation"] - 15) <= 1  # 15% of all 100 rows, to the nearest row per class


def test_assign_splits_without_official_splits_makes_three_grouped_splits():
    labels, groups = lesion_like()
    assignment = assign_splits(labels, groups, None, validation_size=0.15, test_size=0.15, seed=0)
    sizes = Counter(assignment)
    assert sizes["test"] / len(labels) == pytest.approx(0.15, abs=0.01)
    assert sizes["validation"] / len(labels) == pytest.approx(0.15, abs=0.01)
    split_of_group: dict[str, set[str]] = {}
    for group, name in zip(groups, assignment, strict=True):
        split_of_group.setdefault(group, set()).add(name)
    assert all(len(names) == 1 for names in split_of_group.values())


def test_assign_splits_needs_train_rows():
    with pytest.raises(ValueError, match="no train rows"):
        assign_splits(["a", "b"], None, ["test", "test"], validation_size=0.1, test_size=0.1, seed=0)


def test_split_overlap_reports_a_group_in_two_splits():
    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"lesion_id": ["L1", "L2", None]}),
            "validation": datasets.Dataset.from_dict({"lesion_id": ["L3"]}),
            "test": datasets.Dataset.from_dict({"lesion_id": ["L2", "L4", None]}),
        }
    )
    assert split_overlap(splits, "lesion_id") == {"L2": ["test", "train"]}


def test_split_overlap_is_empty_for_clean_splits():
    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"lesion_id": ["L1", "L1"]}),
            "test": datasets.Dataset.from_dict({"lesion_id": ["L2"]}),
        }
    )
    assert split_overlap(splits, "lesion_id") == {}


def test_split_overlap_names_a_missing_group_column():
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": [1]})})
    with pytest.raises(ValueError, match="has no column 'lesion_id'"):
        split_overlap(splits, "lesion_id")
