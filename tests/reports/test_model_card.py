"""Card facts: telling whether two saved models were trained on one split, and saying how they differ."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

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


def test_the_data_sets_name_is_compared_only_for_models_without_digests():
    facts = load_card_facts(SHIPPED_FACTS)
    digests = {"train": "a", "validation": "b", "test": "c"}
    typed_here, typed_there = (dataclasses.replace(facts, dataset_source=source, split_digests=digests)
                               for source in ("../data/ham10000", "/home/me/data/ham10000"))
    assert split_differences(typed_here, typed_there) == []  # one folder typed two ways: the rows decide
    assert split_differences(dataclasses.replace(typed_here, split_digests=None), typed_there) == [
        "data set '../data/ham10000' against '/home/me/data/ham10000'"]


# Damaged card_facts.json files, made from the shipped model's, with the words their refusal must say.
DAMAGED_FACTS = {
    "cut short": (lambda shipped: "{", "is not valid JSON"),
    "a list": (lambda shipped: "[]", "holds a JSON list, not the facts' object"),
    "an unknown key": (lambda shipped: json.dumps({**shipped, "unknown_key": 1}),
                       r"has keys this version of SkinFusion does not know \(unknown_key\)"),
    "no labels": (lambda shipped: json.dumps({k: v for k, v in shipped.items() if k != "label_names"}),
                  "lacks label_names"),
}


@pytest.mark.parametrize("damage", list(DAMAGED_FACTS))
def test_damaged_card_facts_are_refused_naming_the_file_and_the_fix(tmp_path, damage):
    content, message = DAMAGED_FACTS[damage]
    path = tmp_path / "card_facts.json"
    path.write_text(content(json.loads(SHIPPED_FACTS.read_text())))

    with pytest.raises(ValueError, match=f"{re.escape(str(path))} .*{message}.*train the model again"):
        load_card_facts(path)
