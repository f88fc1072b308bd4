"""The dataset card (`dataset_card.md` at the repository root): the embedded synthetic default set and the real sets
SkinFusion supports, with every number read from the EDA (`eda.json`) of each set, never typed by hand.

`python -m skin_fusion.reports.dataset_card --out dataset_card.md` runs the EDA on the embedded default and on each
real set found under `../shared/data`, renders the card from a Jinja2 template and checks that its YAML header parses.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import DatasetCard, DatasetCardData

from ..data.known_datasets import REAL_SETS
from ..data.loading import SPLIT_NAMES
from ..data.synthetic import ensure_default_dataset
from .eda import MISSING_VALUE, run_eda

DEFAULT_LICENSE = "apache-2.0"
# Where the real sets live on the project machine, seen from the repository root (a path argument, not a package path).
DEFAULT_DATA_ROOT = "../shared/data"
# Missingness is called class-dependent below this chi-squared p-value (a strict level: several columns are tested).
MISSINGNESS_P_VALUE = 0.001
# A test split missing at least this share of a column is said to have (almost) none of it.
NEARLY_ALL = 0.99
# Classes with fewer recorded values are left out when comparing a value's share across classes (too noisy).
MIN_RECORDED = 30
TAGS = ["dermoscopy", "skin-lesion", "medical-imaging", "synthetic", "tabular-metadata", "multimodal", "skin_fusion"]


CARD_TEMPLATE = """\
---
{{ card_data }}
---

# SkinFusion lesion data

> **The embedded default data set is SYNTHETIC.** Its {{ default.rows | int_ }} images are drawn by a program \
(`skin_fusion.data.synthetic`, generator version {{ default.synthetic.version }}): they are not photographs of real skin
> lesions, and its metadata describe no real patient. It exists so that SkinFusion's training, tests and demo
> run offline. A model trained on it has learned nothing about dermatology: never use it for any medical purpose.

SkinFusion classifies a dermoscopy image together with the patient's metadata (age, sex, anatomical site). This
card documents the data it works with: the embedded synthetic default, generated on the user's machine, and the
real sets it supports ({{ real_sets | map(attribute="title") | join("; ") }}), which keep their own licences and \
are **not redistributed** with SkinFusion. Every number below was computed by `skin_fusion.reports.eda` \
(its `eda.json`) on
the data itself when this card was generated (`python -m skin_fusion.reports.dataset_card --out dataset_card.md`).

All sets load with `skin_fusion.data.loading.load_lesion_dataset(source)` as train / validation / test splits with the
columns `image`, `label` (a ClassLabel), the metadata columns and the group column. Where a set has no official
splits they are carved out by label-stratified splitting grouped by lesion, so that no lesion lands in two splits.

## The embedded default (synthetic)

{% set args = default.synthetic.arguments %}
- **What it is**: {{ default.rows | int_ }} PNG images at {{ args.image_size }}×{{ args.image_size }} px of \
{{ default.groups.groups | int_ }} synthetic lesions in {{ default.label_names | length }} classes \
({{ default.label_names | join(", ") }}), with age, sex and anatomical site.
- **How it is made**: each image shows a skin-toned background with noise and hair-like strokes and one lesion
  blob whose colour, border, asymmetry and texture depend on the class; age, sex and site are drawn from
  class-dependent distributions. The classes overlap on purpose (some lesions are drawn to look like another class,
  metadata distributions are wide, cells are left empty at random) so that neither the image nor the metadata
  alone reaches what both reach together. A lesion has one or more images under one `lesion_id`.
- **Deterministic**: `skin_fusion.data.synthetic.generate_synthetic_lesions(out_dir, n_images={{ args.n_images }}, \
image_size={{ args.image_size }}, seed={{ args.seed }})` (generator version {{ default.synthetic.version }}) writes \
byte-identical files on every machine; its `metadata.csv` has SHA-256 `{{ default.synthetic.metadata_sha256 }}`.
  `skin_fusion.data.synthetic.ensure_default_dataset()` generates it once into `~/.cache/skin_fusion/` and reuses it.
- **Layout**: a Hugging Face `imagefolder` (`images/*.png`, `metadata.csv` with `file_name` first, a `README.md`
  that says the data is synthetic, and `manifest.json`, written last, which marks the folder complete).
- **Licence**: Apache-2.0, like SkinFusion; the generator draws every pixel, nothing is derived from real images.

{{ describe(default) }}
## Supported real sets

These folders are read in place (from `../shared/data` on the project machine); SkinFusion ships none of their
images.
{% for item in real_sets %}

### {{ item.title }}

- **Licence**: {{ item.license }}. **Citation**: {{ item.citation }}
- {{ item.notes }}
{% if item.facts %}

{{ describe(item.facts) }}
{{ item.extra }}
{% else %}
- Not analysed here: the folder `{{ item.folder }}` was absent when this card was generated.
{% endif %}
{% endfor %}

## Known biases and limitations

- **Skin tone.** The real sets come mostly from fair-skinned populations (HAM10000 from Austria and Australia, the
  ISIC archive largely from Europe, the USA and Australia); none records skin type, so the skew cannot be measured
  here, and performance on darker skin is unknown. The synthetic set draws light to medium-brown skin tones,
  lighter ones more often.
- **Body sites.** Sites are unevenly spread over the classes, so site is partly a shortcut to the label (share of \
each class's images with a recorded site, among classes with at least {{ min_recorded }} of them):
{% for spread in site_spreads %}
  {{ spread.title }}: `{{ spread.value }}` {{ spread.low_share | pct0 }} of {{ spread.low_class }} \
({{ spread.low_n | int_ }}) vs {{ spread.high_share | pct0 }} of {{ spread.high_class }} \
({{ spread.high_n | int_ }}){{ ";" if not loop.last else "." }}
{% endfor %}
- **Class imbalance** (report balanced accuracy, not accuracy):
{% for item in imbalance %}
  {{ item.title }}: {{ item.largest }} {{ item.largest_count | int_ }} vs {{ item.smallest }} \
{{ item.smallest_count | int_ }} images ({{ "%.1f" | format(item.ratio) }}×){{ ";" if not loop.last else "." }}
{% endfor %}
{% if ham %}
- **`dx_type` leaks the label in HAM10000** and is never a model input (`load_lesion_dataset` refuses it):
{% for value, count in ham.dx_type.counts.items() %}
  `{{ value }}` {{ count.values() | sum | int_ }} images, {{ ham.dx_type.top_class_share[value] | pct1 }} \
{{ ham.dx_type.top_class[value] }}{{ ";" if not loop.last else "." }}
{% endfor %}
{% endif %}
{% if missing_spreads %}
- **Missing values depend on the class** (χ² test, p < {{ "%g" | format(max_p) }}), so a model can read the label \
from which values are missing (the metadata encoder's missing indicators make that visible to it):
{% for gap in missing_spreads %}
  {{ gap.title }}: `{{ gap.column }}` missing for {{ gap.high_share | pct0 }} of {{ gap.high_class }} vs \
{{ gap.low_share | pct0 }} of {{ gap.low_class }} (p = {{ "%.2g" | format(gap.p) }}){{ ";" if not loop.last else "." }}
{% endfor %}
{% endif %}
- **Label noise in isic-seed3**: its source folders are known to carry some mislabelled images; treat results on it
  as indicative.
- **Near duplicates.** Sets without a lesion or patient column (ISIC 2017, isic-seed3) cannot be checked for
  several images of one lesion across splits.
- **Images** of the real sets here were downscaled (and squeezed to squares) by the repositories they were
  gathered from; full-size originals are not on the project machine.

## Licences and citations

| data | licence | citation |
|---|---|---|
| embedded synthetic default | Apache-2.0 (generated by SkinFusion) | this repository |
{% for item in real_sets %}
| {{ item.title }} | {{ item.license }} | {{ item.citation }} |
{% endfor %}

Use the real sets under their own terms: HAM10000 is non-commercial, and none of them may be redistributed as
part of SkinFusion.
"""

SET_TEMPLATE = """\
{% set counts = facts.class_counts %}
{% set official = facts.official_splits %}
**Classes and splits** ({{ facts.rows | int_ }} images):

| class | train | validation | test | all |
|---|---|---|---|---|
{% for name in facts.label_names %}
| {{ name }} | {{ counts.train[name] | int_ }} | {{ counts.validation[name] | int_ }} | {{ counts.test[name] | int_ }} \
| {{ counts.all[name] | int_ }} |
{% endfor %}
| **total** | {{ facts.split_sizes.train | int_ }} | {{ facts.split_sizes.validation | int_ }} \
| {{ facts.split_sizes.test | int_ }} | {{ facts.rows | int_ }} |

**Columns**: {{ facts.columns.source_columns | map("code") | join(", ") }}. Model inputs: numeric \
{{ facts.columns.numeric | map("code") | join(", ") or "none" }}; categorical \
{{ facts.columns.categorical | map("code") | join(", ") or "none" }}.

{% if official.column %}
{% set carved = split_names | reject("in", official.names) | list %}
**Splits**: the official {{ official.names | join(" / ") }} splits of column `{{ official.column }}` are kept as they \
are{% if carved %}; {{ carved | join(" / ") }} is carved out of train (label-stratified){% endif %}.
{% else %}
**Splits**: none are given; train / validation / test are carved out (label-stratified, grouped by lesion).
{% endif %}

{% if facts.groups.checked %}
**Grouping**: {{ facts.groups.groups | int_ }} distinct `{{ facts.groups.column }}` values, \
{{ facts.groups.groups_with_several_rows | int_ }} with several images \
(at most {{ facts.groups.max_rows_per_group }}); \
{{ facts.groups.crossing_groups | int_ }} `{{ facts.groups.column }}` values occur in two splits.
{% else %}
**Grouping**: none (no `lesion_id` or `patient_id` column), so several images of one lesion cannot be kept together.
{% endif %}

**Missing values** (empty cells or placeholders such as `unknown`):

| column | missing | share | train | validation | test |
|---|---|---|---|---|---|
{% for column, gap in facts.missing.items() if column != facts.groups.column %}
| `{{ column }}` | {{ gap.missing | int_ }} | {{ gap.fraction | pct1 }} \
| {{ gap.by_split.train.missing | int_ }} / {{ gap.by_split.train.rows | int_ }} \
| {{ gap.by_split.validation.missing | int_ }} / {{ gap.by_split.validation.rows | int_ }} \
| {{ gap.by_split.test.missing | int_ }} / {{ gap.by_split.test.rows | int_ }} |
{% endfor %}

{% set imp = facts.importance %}
{% if imp.skipped is defined %}
**Metadata signal**: not measured ({{ imp.skipped }}).
{% else %}
**Metadata signal**: a random forest on the metadata alone (encoded like SkinFusion's processor, fitted on train) \
reaches balanced accuracy **{{ imp.balanced_accuracy | score }}** on the {{ imp.evaluated_on }} split \
(chance {{ imp.chance_balanced_accuracy | score }}; macro AUC {{ imp.macro_auc | score }}). Permutation importance \
(drop in balanced accuracy when the feature is shuffled): \
{% for name in imp.ranking %}`{{ name }}` {{ imp.features[name].balanced_accuracy_drop | signed }}\
{% if imp.features[name].observed_rows == 0 %} (never observed in that split){% endif %}\
{{ ", " if not loop.last else "." }}{% endfor %}

{% endif %}
"""


def render_dataset_card(default: dict[str, Any], real: dict[str, dict[str, Any] | None]) -> DatasetCard:
    """The card from the EDA facts of the synthetic default and of each real set (`None`: folder absent)."""
    if not default.get("synthetic"):
        raise ValueError(
            f"the default set {default.get('source')!r} is not a complete synthetic set (no manifest.json); pass the "
            "folder of skin_fusion.data.synthetic.ensure_default_dataset()."
        )
    environment = _environment()
    set_template = environment.from_string(SET_TEMPLATE)
    real_sets = [{**vars(spec), "facts": real.get(spec.folder), "extra": _extra(real.get(spec.folder))}
                 for spec in REAL_SETS]
    analysed = [("the synthetic default", default)] + [(i["title"], i["facts"]) for i in real_sets if i["facts"]]
    ham = real.get("ham10000")
    card_data = DatasetCardData(
        license=DEFAULT_LICENSE,
        task_categories=["image-classification"],
        task_ids=["multi-class-image-classification"],
        tags=TAGS,
        size_categories=[size_category(default["rows"])],
        pretty_name="SkinFusion lesion data (synthetic default; HAM10000, ISIC 2017, isic-seed3 supported)",
        annotations_creators=["machine-generated"],
        source_datasets=["original"],
    )
    content = environment.from_string(CARD_TEMPLATE).render(
        card_data=card_data.to_yaml(),
        default=default,
        real_sets=real_sets,
        site_spreads=[spread for title, facts in analysed for spread in _site_spreads(title, facts)],
        missing_spreads=[gap for title, facts in analysed for gap in _missing_spreads(title, facts)],
        max_p=MISSINGNESS_P_VALUE,
        min_recorded=MIN_RECORDED,
        imbalance=[_imbalance(title, facts) for title, facts in analysed],
        ham={"dx_type": ham["leaky_columns"]["dx_type"]} if ham and "dx_type" in ham["leaky_columns"] else None,
        describe=lambda facts: set_template.render(facts=facts, split_names=SPLIT_NAMES),
    )
    return DatasetCard(content)


def collect_eda(
    default_source: str | Path, data_root: str | Path | None, eda_dir: str | Path, seed: int = 42
) -> tuple[dict[str, Any], dict[str, dict[str, Any] | None]]:
    """Run the EDA on the default set and on each real set under `data_root`, and read back their `eda.json`."""
    eda_dir = Path(eda_dir)

    def facts(source: Path | str, name: str) -> dict[str, Any]:
        run_eda(str(source), eda_dir / name, seed=seed)
        return json.loads((eda_dir / name / "eda.json").read_text(encoding="utf-8"))

    default = facts(default_source, "synthetic-default")
    root = Path(data_root) if data_root is not None else None
    real = {
        spec.folder: facts(root / spec.folder, spec.folder) if root and (root / spec.folder).is_dir() else None
        for spec in REAL_SETS
    }
    return default, real


def size_category(rows: int) -> str:
    """The Hub's `size_categories` value for a number of rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "n>1M"


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined
    )
    environment.filters.update(
        int_=lambda n: f"{int(n):,}",
        pct0=lambda x: f"{x:.0%}",
        pct1=lambda x: f"{x:.1%}",
        score=lambda x: "–" if x is None else f"{x:.3f}",
        signed=lambda x: f"{x:+.3f}",
        code=lambda name: f"`{name}`",
    )
    return environment


def _site_spreads(title: str, facts: dict[str, Any]) -> list[dict[str, Any]]:
    """Per categorical column other than sex: the value whose share differs most between two classes."""
    spreads = [_widest_spread(table) for column, table in facts["categorical_by_class"].items() if column != "sex"]
    return [{"title": title, **spread} for spread in spreads if spread]


def _missing_spreads(title: str, facts: dict[str, Any]) -> list[dict[str, Any]]:
    """Metadata columns whose missingness depends on the class, with the classes missing them most and least."""
    gaps = []
    for column in facts["columns"]["numeric"] + facts["columns"]["categorical"]:
        gap = facts["missing"][column]
        if gap["class_dependence_p"] is None or gap["class_dependence_p"] >= MISSINGNESS_P_VALUE:
            continue
        shares = {c: v["missing"] / v["rows"] for c, v in gap["by_class"].items() if v["rows"]}
        high, low = max(shares, key=shares.get), min(shares, key=shares.get)
        gaps.append({"title": title, "column": column, "high_class": high, "high_share": shares[high],
                     "low_class": low, "low_share": shares[low], "p": gap["class_dependence_p"]})
    return gaps


def _imbalance(title: str, facts: dict[str, Any]) -> dict[str, Any]:
    counts = facts["class_counts"]["all"]
    largest, smallest = max(counts, key=counts.get), min(counts, key=counts.get)
    return {"title": title, "largest": largest, "largest_count": counts[largest], "smallest": smallest,
            "smallest_count": counts[smallest], "ratio": counts[largest] / max(counts[smallest], 1)}


def _widest_spread(table: dict[str, dict[str, int]]) -> dict[str, Any] | None:
    """The value whose share of a class's images with a recorded value differs most between two classes."""
    observed = {c: {v: n for v, n in row.items() if v != MISSING_VALUE} for c, row in table.items()}
    observed = {c: row for c, row in observed.items() if sum(row.values()) >= MIN_RECORDED}
    best = None
    for value in next(iter(observed.values()), {}):
        shares = {c: row[value] / sum(row.values()) for c, row in observed.items()}
        high, low = max(shares, key=shares.get), min(shares, key=shares.get)
        if best is None or shares[high] - shares[low] > best["high_share"] - best["low_share"]:
            best = {"value": value, "high_class": high, "high_share": shares[high],
                    "high_n": sum(observed[high].values()), "low_class": low, "low_share": shares[low],
                    "low_n": sum(observed[low].values())}
    return best


def _extra(facts: dict[str, Any] | None) -> str:
    """Set-specific facts worth a line of their own, from the EDA numbers."""
    if not facts:
        return ""
    lines = []
    for column, stats in facts["numeric_by_class"].items():
        if stats["zeros"]:
            lines.append(f"- {stats['zeros']:,} images have `{column}` = 0, which is more likely a placeholder than "
                         "a newborn; it is kept as recorded.")
    features = facts["columns"]["numeric"] + facts["columns"]["categorical"]
    absent = [(c, facts["missing"][c]["by_split"]["test"]) for c in features]
    absent = [(c, t) for c, t in absent if t["rows"] and t["missing"] >= NEARLY_ALL * t["rows"]]
    if absent:
        listed = ", ".join(f"`{c}` {t['missing']:,} of {t['rows']:,}" for c, t in absent)
        lines.append(f"- Its test split has (almost) no metadata ({listed} rows missing): a model must cope with "
                     "fully missing metadata there, and metadata importance cannot be measured on it.")
    sizes, train = facts["class_counts"]["test"], facts["class_counts"]["train"]
    if facts["split_sizes"]["test"] and len(set(sizes.values())) == 1 and len(set(train.values())) > 1:
        lines.append(f"- Its test split is class-balanced ({next(iter(sizes.values())):,} per class), unlike train: "
                     "accuracy there is not comparable with accuracy on the other splits.")
    return "\n".join(lines) + ("\n" if lines else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skin_fusion.reports.dataset_card",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="dataset_card.md", help="where to write the card")
    parser.add_argument("--data-root", default=DEFAULT_DATA_ROOT,
                        help="folder holding ham10000/, isic2017/, isic-seed3/, relative to the working directory "
                             f"(default: {DEFAULT_DATA_ROOT}; absent sets are listed, not analysed)")
    parser.add_argument("--default-source", help="the synthetic default set (default: ensure_default_dataset())")
    parser.add_argument("--eda-dir", help="keep each set's EDA report here (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=42, help="seeds the splits and the EDA's forest")
    args = parser.parse_args(argv)
    default_source = args.default_source or str(ensure_default_dataset())
    with tempfile.TemporaryDirectory(prefix="skin_fusion_eda_") as scratch:
        default, real = collect_eda(default_source, args.data_root, args.eda_dir or scratch, seed=args.seed)
    card = render_dataset_card(default, real)
    Path(args.out).write_text(str(card), encoding="utf-8")
    found = [name for name, facts in real.items() if facts] or ["none"]
    print(f"Wrote {args.out} (synthetic default + real sets: {', '.join(found)}).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
