"""Exploratory analysis of a lesion data set's metadata: class counts, missing values, metadata by class, lesion
grouping, leaky columns, and how much each metadata feature says about the label.

`python -m skin_fusion.reports.eda DATA --out DIR` writes `DIR/report.md`, PNG plots and `DIR/eda.json`, which holds
every number of the report so that other code (the dataset card) reads numbers rather than prose. Images are never
decoded: only metadata columns are read, so HAM10000's 10,013 rows take seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from scipy.stats import chi2_contingency
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from ..data.known_datasets import LABEL_CANDIDATES, LEAKY_COLUMNS, SPLIT_CANDIDATES
from ..data.loading import SPLIT_ALIASES, SPLIT_NAMES, LesionDataset, load_lesion_dataset
from ..data.model_inputs import metadata_frame
from ..data.splits import split_overlap
from ..data.synthetic import MANIFEST_NAME, ensure_default_dataset, is_complete
from ..modeling.metadata_encoding import MetadataEncoder, MetadataError, is_missing, normalise_category
from .formatting import compact, markdown_table, number

MISSING_VALUE = "(missing)"
# The classical metadata-only model; class weights because balanced accuracy is the project's headline metric.
FOREST_SETTINGS = {"n_estimators": 300, "min_samples_leaf": 3, "class_weight": "balanced_subsample", "n_jobs": 2}
PLOT_FILES = {
    "class_counts": "class_counts.png",
    "numeric_by_class": "{column}_by_class.png",
    "categorical_by_class": "{column}_by_class.png",
    "missing": "missing_values.png",
    "importance": "metadata_importance.png",
}
DPI = 90


# ---------------------------------------------------------------------------------------------------------------
# Numbers.
# ---------------------------------------------------------------------------------------------------------------


def labelled_frame(lesions: LesionDataset) -> pd.DataFrame:
    """Every row's split, label name, metadata and group, read without the image column."""
    columns = ["label", *lesions.numeric_columns, *lesions.categorical_columns, *filter(None, [lesions.group_column])]
    names = np.asarray(lesions.label_names, dtype=object)
    frames = []
    for split_name in SPLIT_NAMES:
        frame = metadata_frame(lesions.splits[split_name], columns)
        frame["label"] = names[frame["label"].to_numpy(dtype=int)]
        frame.insert(0, "split", split_name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def class_counts_per_split(frame: pd.DataFrame, label_names: list[str]) -> dict[str, dict[str, int]]:
    """Rows per class name, over all rows and per split (`balancing.class_counts` counts label indices)."""
    counts = {"all": _value_counts(frame["label"], label_names)}
    for split_name in SPLIT_NAMES:
        counts[split_name] = _value_counts(frame.loc[frame["split"] == split_name, "label"], label_names)
    return counts


def missingness(frame: pd.DataFrame, columns: list[str], label_names: list[str]) -> dict[str, dict[str, Any]]:
    """Missing values per column, as the metadata encoder sees them (empty cells and placeholders like `unknown`),
    overall, per split and per class (a class that is missing more often than others lets missingness leak it)."""
    result = {}
    for column in columns:
        values = frame[column]
        empty = values.isna().to_numpy()
        missing = np.fromiter((is_missing(v) for v in values), dtype=bool, count=len(values))
        placeholders = sorted({str(v) for v in values[missing & ~empty]})
        by_split = {
            name: {"missing": int(missing[in_split].sum()), "rows": int(in_split.sum())}
            for name in SPLIT_NAMES
            for in_split in [(frame["split"] == name).to_numpy()]
        }
        by_class = {
            name: {"missing": int(missing[in_class].sum()), "rows": int(in_class.sum())}
            for name in label_names
            for in_class in [(frame["label"] == name).to_numpy()]
        }
        result[column] = {
            "missing": int(missing.sum()),
            "fraction": _fraction(missing.sum(), len(values)),
            "empty": int(empty.sum()),
            "placeholder": int((missing & ~empty).sum()),
            "placeholder_values": placeholders,
            "by_split": by_split,
            "by_class": by_class,
            "class_dependence_p": _class_dependence(by_class),
        }
    return result


def _class_dependence(by_class: dict[str, dict[str, int]]) -> float | None:
    """Chi-squared p-value of "missingness does not depend on the class"; None when there is nothing to test."""
    table = np.array([[v["missing"], v["rows"] - v["missing"]] for v in by_class.values() if v["rows"]])
    if len(table) < 2 or (table.sum(axis=0) == 0).any():
        return None
    return float(f"{chi2_contingency(table).pvalue:.3g}")


def numeric_by_class(frame: pd.DataFrame, column: str, label_names: list[str]) -> dict[str, Any]:
    """Summary statistics of a numeric column over all observed values and per class."""
    values = pd.to_numeric(frame[column], errors="coerce")
    return {
        "all": _summary(values.dropna()),
        "zeros": int((values == 0).sum()),
        "by_class": {name: _summary(values[frame["label"] == name].dropna()) for name in label_names},
    }


def categorical_by_class(frame: pd.DataFrame, column: str, label_names: list[str]) -> dict[str, dict[str, int]]:
    """Rows per (class, normalised value); missing values and placeholders are counted under `(missing)`."""
    values = frame[column].map(lambda v: normalise_category(v) or MISSING_VALUE)
    order = sorted(set(values) - {MISSING_VALUE}) + ([MISSING_VALUE] if (values == MISSING_VALUE).any() else [])
    table = pd.crosstab(frame["label"], values).reindex(index=label_names, columns=order, fill_value=0)
    return {name: {value: int(table.loc[name, value]) for value in order} for name in label_names}


def group_check(lesions: LesionDataset, frame: pd.DataFrame) -> dict[str, Any]:
    """Rows per group, groups with several labels, and groups found in more than one split (leakage)."""
    column = lesions.group_column
    if column is None:
        return {"column": None, "checked": False, "reason": "no group column (lesion_id or patient_id)"}
    grouped = frame.dropna(subset=[column])
    sizes = grouped[column].value_counts()
    crossing = split_overlap(lesions.splits, column)
    return {
        "column": column,
        "checked": True,
        "groups": int(len(sizes)),
        "rows_without_group": int(len(frame) - len(grouped)),
        "groups_with_several_rows": int((sizes > 1).sum()),
        "max_rows_per_group": int(sizes.max()) if len(sizes) else 0,
        "groups_with_several_labels": int((grouped.groupby(column)["label"].nunique() > 1).sum()),
        "crossing_groups": len(crossing),
        "crossing_examples": sorted(map(str, crossing))[:5],
        "leakage_free": not crossing,
    }


def metadata_importance(
    lesions: LesionDataset, frame: pd.DataFrame, *, seed: int = 42, n_repeats: int = 10
) -> dict[str, Any]:
    """Balanced accuracy of a metadata-only random forest on the held-out split, and each raw feature's
    permutation importance there.

    The forest is trained on the train split encoded exactly as the processor encodes it (`MetadataEncoder` fitted on
    train: median / most-frequent imputation, one-hot, missing indicators). A feature's importance is the mean drop
    in score when its encoded columns are shuffled together across rows, which equals shuffling the raw column
    before encoding: encoding is row-wise and each block of columns depends only on its own raw column.
    """
    features = lesions.numeric_columns + lesions.categorical_columns
    held_out = "test" if (frame["split"] == "test").any() else "validation"
    train, held = frame[frame["split"] == "train"], frame[frame["split"] == held_out]
    if not features:
        return {"skipped": "the data set has no metadata columns"}
    if held.empty:
        return {"skipped": "there is neither a test nor a validation split to measure on"}

    try:
        encoder = MetadataEncoder.fit(train, lesions.numeric_columns, lesions.categorical_columns)
    except MetadataError as err:  # e.g. a column with no value in train: the processor could not encode it either
        return {"skipped": str(err)}
    x_train, x_held = encoder.transform(train[features]), encoder.transform(held[features])
    index = {name: i for i, name in enumerate(lesions.label_names)}
    y_train, y_held = train["label"].map(index).to_numpy(), held["label"].map(index).to_numpy()
    forest = RandomForestClassifier(random_state=seed, **FOREST_SETTINGS).fit(x_train, y_train)
    n_classes = len(lesions.label_names)
    baseline = _scores(forest, x_held, y_held, n_classes)

    metrics = [metric for metric, value in baseline.items() if value is not None]
    rng = np.random.default_rng(seed)
    importances = {}
    for feature, columns in _feature_blocks(encoder).items():
        drops = []
        for _ in range(n_repeats):
            shuffled = x_held.copy()
            shuffled[:, columns] = x_held[rng.permutation(len(x_held))][:, columns]
            scores = _scores(forest, shuffled, y_held, n_classes)
            drops.append({metric: baseline[metric] - scores[metric] for metric in metrics})
        importances[feature] = {
            "encoded_columns": [encoder.feature_names[i] for i in columns],
            "observed_rows": int(sum(not is_missing(v) for v in held[feature])),
            **{f"{metric}_drop": _round(np.mean([d[metric] for d in drops])) for metric in metrics},
            **{f"{metric}_drop_std": _round(np.std([d[metric] for d in drops])) for metric in metrics},
        }
    ranking = sorted(importances, key=lambda f: -importances[f]["balanced_accuracy_drop"])
    return {
        "model": f"RandomForestClassifier({', '.join(f'{k}={v!r}' for k, v in FOREST_SETTINGS.items())})",
        "encoding": "MetadataEncoder fitted on train: median / most-frequent imputation, one-hot, missing indicators",
        "evaluated_on": held_out,
        "train_rows": int(len(train)),
        "evaluated_rows": int(len(held)),
        "n_repeats": n_repeats,
        "balanced_accuracy": _round(baseline["balanced_accuracy"]),
        "macro_auc": _round(baseline["macro_auc"]),
        "chance_balanced_accuracy": _round(1 / len(np.unique(y_held))),
        "features": importances,
        "ranking": ranking,
    }


def source_metadata(source: str) -> pd.DataFrame | None:
    """The raw metadata CSV of a local source (every cell a string, empty cells NaN); None for a Hub source."""
    path = Path(source).expanduser()
    csv_path = path / "metadata.csv" if path.is_dir() else path
    if csv_path.is_file() and csv_path.suffix.lower() == ".csv":
        return pd.read_csv(csv_path, dtype=str)
    return None


def leaky_columns(raw: pd.DataFrame | None, label_column: str | None) -> dict[str, Any]:
    """Rows per (value, class) of each raw column that leaks the label (and so is never a model input)."""
    if raw is None:
        return {}
    label_column = label_column or next((c for c in LABEL_CANDIDATES if c in raw.columns), None)
    result = {}
    for column in (c for c in LEAKY_COLUMNS if c in raw.columns and label_column in raw.columns):
        table = pd.crosstab(raw[column].fillna(MISSING_VALUE), raw[label_column])
        result[column] = {
            "why": LEAKY_COLUMNS[column],
            "counts": {value: {k: int(n) for k, n in row.items() if n} for value, row in table.iterrows()},
            "top_class": {value: str(row.idxmax()) for value, row in table.iterrows()},
            "top_class_share": {value: _fraction(row.max(), row.sum()) for value, row in table.iterrows()},
        }
    return result


def official_splits(raw: pd.DataFrame | None, split_column: str | None) -> dict[str, Any]:
    """The source's own split column and the split names it holds; splits it lacks were carved out of train."""
    column = split_column or next((c for c in SPLIT_CANDIDATES if raw is not None and c in raw.columns), None)
    if raw is None or column is None:
        return {"column": None, "names": []}
    present = set(raw[column].dropna().str.strip().str.lower().map(SPLIT_ALIASES).dropna())
    return {"column": column, "names": [name for name in SPLIT_NAMES if name in present]}


def describe(
    lesions: LesionDataset,
    frame: pd.DataFrame,
    source: str,
    *,
    label_column: str | None = None,
    split_column: str | None = None,
    seed: int = 42,
    n_repeats: int = 10,
) -> dict[str, Any]:
    """Every number of the EDA (JSON-serialisable) from the loaded splits, their `labelled_frame` and the source."""
    features = lesions.numeric_columns + lesions.categorical_columns
    raw = source_metadata(source)
    folder = Path(source).expanduser()
    return {
        "source": _display_path(source),
        "name": Path(lesions.source).name or lesions.source,
        "synthetic": json.loads((folder / MANIFEST_NAME).read_text()) if is_complete(folder) else None,
        "rows": int(len(frame)),
        "label_names": list(lesions.label_names),
        "columns": {
            "numeric": lesions.numeric_columns,
            "categorical": lesions.categorical_columns,
            "group": lesions.group_column,
            "source_columns": [] if raw is None else list(raw.columns),
        },
        "official_splits": official_splits(raw, split_column),
        "split_sizes": {name: int((frame["split"] == name).sum()) for name in SPLIT_NAMES},
        "class_counts": class_counts_per_split(frame, lesions.label_names),
        "groups": group_check(lesions, frame),
        "missing": missingness(frame, features + list(filter(None, [lesions.group_column])), lesions.label_names),
        "numeric_by_class": {c: numeric_by_class(frame, c, lesions.label_names) for c in lesions.numeric_columns},
        "categorical_by_class": {
            c: categorical_by_class(frame, c, lesions.label_names) for c in lesions.categorical_columns
        },
        "leaky_columns": leaky_columns(raw, label_column),
        "importance": metadata_importance(lesions, frame, seed=seed, n_repeats=n_repeats),
    }


def _value_counts(values: pd.Series, names: list[str]) -> dict[str, int]:
    counts = values.value_counts()
    return {name: int(counts.get(name, 0)) for name in names}


def _fraction(part: float, whole: float) -> float:
    return _round(part / whole) if whole else 0.0


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _summary(values: pd.Series) -> dict[str, float | int | None]:
    if values.empty:
        return {"n": 0, "mean": None, "std": None, "min": None, "q1": None, "median": None, "q3": None, "max": None}
    q1, median, q3 = values.quantile([0.25, 0.5, 0.75])
    return {
        "n": int(len(values)), "mean": _round(values.mean(), 2), "std": _round(values.std(ddof=0), 2),
        "min": _round(values.min(), 2), "q1": _round(q1, 2), "median": _round(median, 2), "q3": _round(q3, 2),
        "max": _round(values.max(), 2),
    }


def _feature_blocks(encoder: MetadataEncoder) -> dict[str, list[int]]:
    """Indices of the encoded columns of each raw feature (value, one-hot and missing-indicator columns)."""
    names = encoder.feature_names
    return {
        feature: [i for i, n in enumerate(names) if n in (feature, f"{feature}_missing") or n.startswith(f"{feature}=")]
        for feature in encoder.columns
    }


def _scores(forest: RandomForestClassifier, x: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, float | None]:
    """Balanced accuracy and macro one-vs-rest AUC over the classes present in `y` (and with negatives)."""
    probabilities = np.zeros((len(x), n_classes))
    probabilities[:, forest.classes_] = forest.predict_proba(x)
    predicted = probabilities.argmax(axis=1)
    aucs = [roc_auc_score(y == c, probabilities[:, c]) for c in np.unique(y) if 0 < (y == c).sum() < len(y)]
    return {
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
        "macro_auc": float(np.mean(aucs)) if aucs else None,
    }


def _display_path(source: str) -> str:
    """The source as given, with the home folder written `~` (reports should not carry one machine's paths)."""
    path = Path(source).expanduser()
    if path.is_absolute() and path.is_relative_to(Path.home()):
        return str(Path("~") / path.relative_to(Path.home()))
    return str(source)


# ---------------------------------------------------------------------------------------------------------------
# Plots.
# ---------------------------------------------------------------------------------------------------------------


def plot_class_counts(facts: dict[str, Any], path: Path) -> Path:
    """Rows per class, one bar per split."""
    names = facts["label_names"]
    figure = Figure(figsize=(max(6, 1.1 * len(names) + 2), 4))
    axes = figure.subplots()
    width = 0.8 / len(SPLIT_NAMES)
    for i, split_name in enumerate(SPLIT_NAMES):
        counts = [facts["class_counts"][split_name][name] for name in names]
        bars = axes.bar(np.arange(len(names)) + (i - 1) * width, counts, width, label=f"{split_name} "
                        f"({facts['split_sizes'][split_name]:,})")
        axes.bar_label(bars, fontsize=7)
    axes.set_xticks(range(len(names)), names, rotation=25, ha="right")
    axes.set_ylabel("images")
    axes.set_title(f"Class counts per split ({facts['rows']:,} images)")
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_numeric_by_class(frame: pd.DataFrame, column: str, label_names: list[str], path: Path) -> Path:
    """Box plot of an observed numeric column per class (missing values left out, counted in the labels)."""
    values = pd.to_numeric(frame[column], errors="coerce")
    groups = [values[frame["label"] == name].dropna().to_numpy() for name in label_names]
    figure = Figure(figsize=(max(6, 1.1 * len(label_names) + 2), 4))
    axes = figure.subplots()
    axes.boxplot([g if len(g) else [np.nan] for g in groups], showfliers=True, flierprops={"markersize": 2})
    axes.set_xticks(range(1, len(label_names) + 1), [f"{n}\n(n={len(g):,})" for n, g in zip(label_names, groups)],
                    fontsize=8)
    axes.set_ylabel(column)
    axes.set_title(f"{column} by class (observed values)")
    return _save(figure, path)


def plot_categorical_by_class(table: dict[str, dict[str, int]], column: str, path: Path) -> Path:
    """Stacked bars: the share of each value of a categorical column within each class."""
    names = list(table)
    values = list(next(iter(table.values())))
    counts = np.array([[table[name][v] for v in values] for name in names], dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    colours = colormaps["tab20" if len(values) > 10 else "tab10"](np.arange(len(values)) % 20)
    figure = Figure(figsize=(8, 0.45 * len(names) + 1.6))
    axes = figure.subplots()
    left = np.zeros(len(names))
    for j, value in enumerate(values):
        colour = "lightgrey" if value == MISSING_VALUE else colours[j]
        axes.barh(range(len(names)), shares[:, j], left=left, color=colour, label=value)
        left += shares[:, j]
    axes.set_yticks(range(len(names)), [f"{n} (n={int(c):,})" for n, c in zip(names, counts.sum(axis=1))], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_xlabel("share of the class's images")
    axes.set_title(f"{column} by class")
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), ncols=1 + len(values) // 12)
    return _save(figure, path)


def plot_missing(missing: dict[str, dict[str, Any]], path: Path) -> Path:
    """Share of missing values per column."""
    columns = list(missing)
    figure = Figure(figsize=(6, 0.4 * len(columns) + 1.4))
    axes = figure.subplots()
    bars = axes.barh(columns, [missing[c]["fraction"] for c in columns], color="indianred")
    axes.bar_label(bars, [f"{missing[c]['missing']:,}" for c in columns], fontsize=8, padding=2)
    axes.invert_yaxis()
    axes.set_xlim(0, max(0.05, 1.2 * max((missing[c]["fraction"] for c in columns), default=0)))
    axes.set_xlabel("share of rows missing (empty or a placeholder such as 'unknown')")
    axes.set_title("Missing values per column")
    return _save(figure, path)


def plot_importance(importance: dict[str, Any], path: Path) -> Path:
    """Permutation importance (drop in balanced accuracy) per raw metadata feature, with its spread."""
    features = importance["ranking"]
    means = [importance["features"][f]["balanced_accuracy_drop"] for f in features]
    spreads = [importance["features"][f]["balanced_accuracy_drop_std"] for f in features]
    figure = Figure(figsize=(6, 0.45 * len(features) + 1.6))
    axes = figure.subplots()
    axes.barh(features, means, xerr=spreads, color="steelblue", capsize=3)
    axes.axvline(0, color="grey", linewidth=1)
    axes.invert_yaxis()
    axes.set_xlabel(f"drop in balanced accuracy when shuffled ({importance['evaluated_on']} split)")
    axes.set_title(f"Metadata importance (forest balanced accuracy {importance['balanced_accuracy']:.3f})")
    return _save(figure, path)


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Report and entry point.
# ---------------------------------------------------------------------------------------------------------------


def write_plots(facts: dict[str, Any], frame: pd.DataFrame, out_dir: Path) -> dict[str, str]:
    """All plots of the report, as {what: file name in out_dir}."""
    plots = {"class_counts": plot_class_counts(facts, out_dir / PLOT_FILES["class_counts"]).name}
    for column in facts["columns"]["numeric"]:
        path = out_dir / PLOT_FILES["numeric_by_class"].format(column=column)
        plots[column] = plot_numeric_by_class(frame, column, facts["label_names"], path).name
    for column in facts["columns"]["categorical"]:
        path = out_dir / PLOT_FILES["categorical_by_class"].format(column=column)
        plots[column] = plot_categorical_by_class(facts["categorical_by_class"][column], column, path).name
    if facts["missing"]:
        plots["missing"] = plot_missing(facts["missing"], out_dir / PLOT_FILES["missing"]).name
    if "features" in facts["importance"]:
        plots["importance"] = plot_importance(facts["importance"], out_dir / PLOT_FILES["importance"]).name
    return plots


def render_report(facts: dict[str, Any], plots: dict[str, str]) -> str:
    """The markdown report; every number comes from `facts`."""
    names, counts = facts["label_names"], facts["class_counts"]
    lines = [f"# EDA: {facts['name']}", ""]
    if facts["synthetic"]:
        lines += ["**SYNTHETIC data** (drawn by `skin_fusion.data.synthetic`, generator version "
                  f"{facts['synthetic']['version']}): not real lesions.", ""]
    columns = facts["columns"]
    lines += [
        f"Source `{facts['source']}`: {facts['rows']:,} images, {len(names)} classes. Metadata: numeric "
        f"{_names(columns['numeric'])}, categorical {_names(columns['categorical'])}; group column "
        f"{_names([columns['group']] if columns['group'] else [])}; official splits "
        f"{_official_sentence(facts['official_splits'])}. Images were not decoded.",
        "",
        "## Classes and splits",
        "",
        markdown_table(["class", *SPLIT_NAMES, "all", "share"],
               [[n, *(f"{counts[s][n]:,}" for s in SPLIT_NAMES), f"{counts['all'][n]:,}",
                 f"{counts['all'][n] / max(facts['rows'], 1):.1%}"] for n in names]
               + [["**total**", *(f"{facts['split_sizes'][s]:,}" for s in SPLIT_NAMES), f"{facts['rows']:,}", ""]]),
        "",
        f"![class counts]({plots['class_counts']})",
        "",
        "## Grouping and leakage",
        "",
        _groups_sentence(facts["groups"]),
        "",
        "## Missing values",
        "",
        "Missing = an empty cell or a placeholder the metadata encoder treats as not recorded (e.g. `unknown`).",
        "",
        markdown_table(["column", "missing", "share", "empty", "placeholder",
                        *(f"missing in {s}" for s in SPLIT_NAMES)],
               [[f"`{c}`", f"{m['missing']:,}", f"{m['fraction']:.1%}", f"{m['empty']:,}",
                 f"{m['placeholder']:,}" + (f" ({', '.join(m['placeholder_values'])})" if m["placeholder"] else ""),
                 *(f"{m['by_split'][s]['missing']:,} / {m['by_split'][s]['rows']:,}" for s in SPLIT_NAMES)]
                for c, m in facts["missing"].items()]),
        "",
    ]
    if "missing" in plots:
        lines += [f"![missing values]({plots['missing']})", ""]
    for column, stats in facts["numeric_by_class"].items():
        rows = [[n, f"{s['n']:,}", *(compact(s[k]) for k in ("median", "q1", "q3", "mean", "min", "max"))]
                for n, s in [*stats["by_class"].items(), ("**all**", stats["all"])]]
        header = ["class", "n", "median", "q1", "q3", "mean", "min", "max"]
        lines += [f"## {column} by class", "", markdown_table(header, rows),
                  "", f"{stats['zeros']:,} rows have {column} = 0.", "", f"![{column} by class]({plots[column]})", ""]
    for column, table in facts["categorical_by_class"].items():
        values = list(next(iter(table.values())))
        rows = [[n, *(f"{row[v] / max(sum(row.values()), 1):.0%}" for v in values)] for n, row in table.items()]
        lines += [f"## {column} by class", "", "Share of each class's images.", "",
                  markdown_table(["class", *values], rows),
                  "", f"![{column} by class]({plots[column]})", ""]
    for column, leak in facts["leaky_columns"].items():
        rows = [[v, f"{sum(c.values()):,}", leak["top_class"][v], f"{leak['top_class_share'][v]:.1%}"]
                for v, c in leak["counts"].items()]
        lines += [f"## Leaky column `{column}` (never a model input)", "", f"It leaks the label: {leak['why']}.", "",
                  markdown_table([column, "images", "most common class", "its share"], rows), ""]
    lines += ["## What the metadata says about the label", ""] + _importance_lines(facts["importance"], plots)
    return "\n".join(lines) + "\n"


def run_eda(source: str, out_dir: str | Path, *, seed: int = 42, n_repeats: int = 10, **load_arguments: Any
            ) -> dict[str, Any]:
    """Load `source` with `load_lesion_dataset(source, seed=seed, **load_arguments)` and write the report, the
    plots and `eda.json` (which also records the seconds taken) to `out_dir`; returns what `eda.json` holds."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lesions = load_lesion_dataset(str(source), seed=seed, **load_arguments)
    frame = labelled_frame(lesions)
    facts = describe(lesions, frame, str(source), label_column=load_arguments.get("label_column"),
                     split_column=load_arguments.get("split_column"), seed=seed, n_repeats=n_repeats)
    plots = write_plots(facts, frame, out_dir)
    (out_dir / "report.md").write_text(render_report(facts, plots), encoding="utf-8")
    facts["plots"] = plots
    facts["seconds"] = round(time.perf_counter() - start, 1)
    (out_dir / "eda.json").write_text(json.dumps(facts, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return facts


def _official_sentence(official: dict[str, Any]) -> str:
    if official["column"] is None:
        return "none (all carved out, grouped and stratified)"
    carved = [name for name in SPLIT_NAMES if name not in official["names"]]
    return (f"{', '.join(official['names'])} from column `{official['column']}`"
            + (f" ({', '.join(carved)} carved out of train)" if carved else ""))


def _names(columns: list[str]) -> str:
    return ", ".join(f"`{c}`" for c in columns) or "none"


def _groups_sentence(groups: dict[str, Any]) -> str:
    if not groups["checked"]:
        return f"Not checked: {groups['reason']}. Images of one lesion could fall in two splits."
    verdict = (f"no `{groups['column']}` occurs in two splits (leakage-free)." if groups["leakage_free"] else
               f"**{groups['crossing_groups']:,} `{groups['column']}` values occur in two splits** "
               f"(e.g. {', '.join(groups['crossing_examples'])}).")
    return (f"{groups['groups']:,} distinct `{groups['column']}` values; {groups['groups_with_several_rows']:,} have "
            f"several images (at most {groups['max_rows_per_group']}), {groups['groups_with_several_labels']:,} have "
            f"more than one label, {groups['rows_without_group']:,} rows have none. Split check: {verdict}")


def _importance_lines(importance: dict[str, Any], plots: dict[str, str]) -> list[str]:
    if "skipped" in importance:
        return [f"Not measured: {importance['skipped']}.", ""]
    features = importance["features"]
    rows = [[f"`{f}`", _drop(features[f], "balanced_accuracy"), _drop(features[f], "macro_auc"),
             len(features[f]["encoded_columns"]), f"{features[f]['observed_rows']:,}"]
            for f in importance["ranking"]]
    blind = [f"`{f}`" for f in importance["ranking"] if features[f]["observed_rows"] == 0]
    unobserved = [f"**{', '.join(blind)} never observed in the {importance['evaluated_on']} split**: shuffling "
                  "cannot change a constant column, so an importance of 0 there says nothing about the feature.",
                  ""] if blind else []
    return [
        f"A {importance['model']} on the metadata alone, encoded like the processor does "
        f"({importance['encoding']}), trained on {importance['train_rows']:,} train rows and measured on the "
        f"{importance['evaluated_rows']:,} rows of the {importance['evaluated_on']} split: balanced accuracy "
        f"**{importance['balanced_accuracy']:.3f}** (chance {importance['chance_balanced_accuracy']:.3f}), macro AUC "
        f"{number(importance['macro_auc'])}.",
        "",
        f"Permutation importance: the drop in those scores when one raw feature is shuffled across rows "
        f"({importance['n_repeats']} shuffles; mean ± standard deviation).",
        "",
        markdown_table(["feature", "balanced accuracy drop", "macro AUC drop", "encoded columns", "observed rows"],
                       rows),
        "",
        *unobserved,
        f"![metadata importance]({plots['importance']})",
        "",
    ]


def _drop(feature: dict[str, Any], metric: str) -> str:
    mean, spread = feature.get(f"{metric}_drop"), feature.get(f"{metric}_drop_std")
    return "–" if mean is None else f"{mean:+.3f} ± {spread:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skin_fusion.reports.eda", description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", help="imagefolder, CSV or Hub id; omit (or --default) for the embedded set")
    parser.add_argument("--default", action="store_true", help="analyse the embedded synthetic default set")
    parser.add_argument("--out", required=True, help="folder for report.md, eda.json and the plots")
    parser.add_argument("--label-column")
    parser.add_argument("--numeric-columns", nargs="*", help="numeric metadata (none: no numeric columns)")
    parser.add_argument("--categorical-columns", nargs="*", help="categorical metadata")
    parser.add_argument("--group-column")
    parser.add_argument("--split-column")
    parser.add_argument("--images-dir", help="image folder of a CSV source")
    parser.add_argument("--seed", type=int, default=42, help="seeds the splits, the forest and the shuffles")
    parser.add_argument("--n-repeats", type=int, default=10, help="shuffles per feature for permutation importance")
    args = parser.parse_args(argv)
    if args.default and args.data:
        parser.error("pass either DATA or --default, not both")
    source = args.data or str(ensure_default_dataset())
    overrides = {
        key: value
        for key in ("label_column", "numeric_columns", "categorical_columns", "group_column", "split_column",
                    "images_dir")
        if (value := getattr(args, key)) is not None
    }
    facts = run_eda(source, args.out, seed=args.seed, n_repeats=args.n_repeats, **overrides)
    accuracy = facts["importance"].get("balanced_accuracy")
    score = "" if accuracy is None else f"; metadata-only balanced accuracy {accuracy:.3f}"
    print(f"Wrote {Path(args.out) / 'report.md'} and eda.json ({facts['rows']:,} rows{score}; {facts['seconds']} s).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
