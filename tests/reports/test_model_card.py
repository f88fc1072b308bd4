"""Card facts: telling whether two saved models were trained on one split, and saying how they differ."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from skin_fusion.reports.model_card import load_card_facts, split_differences

SHIPPED_FACTS = Path(__file__).resolve().parents[2] / "models" / "skin-fusion-ham10000" / "card_facts.json"


def test_split_differences_name_what_differs_and_compare_rows_only_where_both_recorded_them():
    facts = load_card_facts(SHIPPED_FACTS)
    digests = {"train": "a", "validation": "b", "test": "c"}
    digested = dataclasses.replace(facts, split_digests=digests)
    assert split_differences(facts, facts) == []
    assert split_differences(facts, digested) == []  # older models recorded no digests: sizes and seed decide
    assert split_differences(digested, dataclasses.replace(facts, split_digests={**digests, "test": "other"})) == [
        "the test rows (same sizes, other images or metadata)"]
    seed = facts.training["split_seed"]
    other_seed = dataclasses.replace(facts, training={**facts.training, "split_seed": seed + 1})
    assert split_differences(facts, other_seed) == [f"split seed {seed!r} against {seed + 1!r}"]
    smaller = {**facts.split_sizes, "test": facts.split_sizes["test"] - 1}
    elsewhere = dataclasses.replace(facts, dataset_source="elsewhere", split_sizes=smaller)
    assert [difference.split(" ")[0] for difference in split_differences(facts, elsewhere)] == ["data", "split"]
    assert "split sizes" in split_differences(facts, elsewhere)[1]
