"""Skin-lesion data sets (dermoscopy image + patient metadata) as `datasets` splits without lesion leakage.

`load_lesion_dataset` reads one of
  (a) a local imagefolder directory: `images/*.jpg` plus `metadata.csv` whose `file_name` column holds paths relative
      to the folder (the layout of the synthetic default and of the prepared real sets), or one subfolder of images
      per class;
  (b) a CSV file plus an image directory, the CSV naming each image by file name, path or id (`.jpg` appended);
  (c) a Hugging Face Hub data set id such as `marmal88/skin_cancer`;
and returns train / validation / test splits with the columns `image` (decoded lazily, on access), `label`
(a ClassLabel), the metadata columns under their own names and the group column. The data stay memory-mapped Arrow.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import PIL.Image

from .known_datasets import (
    CATEGORICAL_CANDIDATES,
    GROUP_CANDIDATES,
    IMAGE_REFERENCE_CANDIDATES,
    LABEL_CANDIDATES,
    LEAKY_COLUMNS,
    NUMERIC_CANDIDATES,
    SPLIT_CANDIDATES,
)
from .splits import assign_splits, stratified_subsample

SPLIT_NAMES = ("train", "validation", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "test": "test",
}
# Tried in turn when a CSV names an image without extension (HAM10000's csv uses the bare image_id).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_FILE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# Bytes that close a complete file; a file that does not end with them was cut short.
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MAX_LISTED = 5


class LesionDataError(ValueError):
    """Input that cannot be loaded as a lesion data set; the message names the problem and the fix."""


@dataclass
class LesionDataset:
    """Train / validation / test splits of a lesion data set and the role of each of its columns."""

    splits: datasets.DatasetDict
    label_names: list[str]
    numeric_columns: list[str]
    categorical_columns: list[str]
    group_column: str | None
    source: str


def load_lesion_dataset(
    source: str,
    *,
    label_column: str | None = None,
    numeric_columns: list[str] | None = None,
    categorical_columns: list[str] | None = None,
    group_column: str | None = None,
    split_column: str | None = None,
    image_column: str | None = None,
    images_dir: str | None = None,
    validation_size: float = 0.15,
    test_size: float = 0.15,
    seed: int = 42,
    max_samples: int | None = None,
    label_names: list[str] | None = None,
) -> LesionDataset:
    """Load a lesion data set as leakage-free train / validation / test splits.

    Args:
        source: an imagefolder directory, a CSV file (with `images_dir`) or a Hub data set id.
        label_column: the diagnosis column, renamed to `label`; default the first of dx, label, diagnosis.
        numeric_columns: numeric metadata; default those of age, age_approx present. `[]` for none.
        categorical_columns: categorical metadata; default those of sex, localization, anatom_site_general present.
        group_column: rows sharing a value never cross splits; default lesion_id or patient_id if present.
        split_column: official split per row (train / validation / test, also val / valid); default `split` if
            present. Official splits are kept; a missing validation or test split is carved out of train.
        image_column: for a CSV, the column naming each image file; default file_name, image or image_id.
        images_dir: for a CSV, the folder the image names are relative to; default the CSV's folder.
        validation_size: fraction of all rows for validation, when it has to be carved out.
        test_size: fraction of all rows for test, when it has to be carved out.
        seed: seeds subsampling and splitting; the same seed gives the same rows.
        max_samples: keep this many rows (stratified by split and label) for quick runs.
        label_names: ClassLabel order; default the sorted label values.

    Returns:
        A `LesionDataset`; its splits always have the keys train, validation and test (possibly empty).
    """
    _check_sizes(validation_size, test_size, max_samples)
    table, hub_splits, image_origin = _read_source(str(source), image_column=image_column, images_dir=images_dir)
    columns = [name for name in table.column_names if name != "image"]

    label_column = _resolve_label_column(label_column, columns)
    numeric = _resolve_feature_columns(numeric_columns, NUMERIC_CANDIDATES, columns, "numeric_columns")
    categorical = _resolve_feature_columns(categorical_columns, CATEGORICAL_CANDIDATES, columns, "categorical_columns")
    group_column = _resolve_optional_column(group_column, GROUP_CANDIDATES, columns, "group_column")
    split_column = _resolve_optional_column(split_column, SPLIT_CANDIDATES, columns, "split_column")
    _check_roles(label_column, numeric, categorical, group_column, split_column)

    read = list(dict.fromkeys([label_column, *numeric, *filter(None, [group_column, split_column])]))
    frame = table.select_columns(read).to_pandas()
    labels = _label_values(frame[label_column], table.features[label_column], label_column)
    label_names = _resolve_label_names(labels, label_names, label_column)
    _check_numeric(frame, numeric)
    official = _split_values(frame[split_column], f"column {split_column!r}") if split_column else hub_splits

    rows = np.arange(len(table))
    if max_samples is not None:
        strata = labels if official is None else official.astype(object) + "/" + labels
        rows = stratified_subsample(strata, max_samples, seed)
    groups = frame[group_column].to_numpy(dtype=object)[rows] if group_column else None
    try:
        assignment = assign_splits(
            labels[rows],
            groups,
            None if official is None else official[rows],
            validation_size=validation_size,
            test_size=test_size,
            seed=seed,
        )
    except ValueError as err:
        raise LesionDataError(str(err)) from err
    if image_origin is not None:
        _check_image_files(table, rows, *image_origin)

    table = _standardise(table, label_column, label_names, numeric, categorical, group_column)
    splits = datasets.DatasetDict({name: table.select(rows[assignment == name]) for name in SPLIT_NAMES})
    return LesionDataset(splits, label_names, numeric, categorical, group_column, _describe(source))


def _check_sizes(validation_size: float, test_size: float, max_samples: int | None) -> None:
    if not (0 <= validation_size < 1 and 0 <= test_size < 1 and validation_size + test_size < 1):
        raise LesionDataError(
            f"validation_size={validation_size} and test_size={test_size} must each be in [0, 1) and sum to less "
            "than 1, leaving rows to train on; e.g. validation_size=0.15, test_size=0.15."
        )
    if max_samples is not None and (
        isinstance(max_samples, bool) or int(max_samples) != max_samples or max_samples < 1
    ):
        raise LesionDataError(f"max_samples must be a positive integer or None (all rows), got {max_samples!r}.")


def _describe(source: str) -> str:
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else str(source)


# ---------------------------------------------------------------------------------------------------------------
# Reading the three kinds of source into one Dataset with an `image` column.
# ---------------------------------------------------------------------------------------------------------------


def _read_source(
    source: str, *, image_column: str | None, images_dir: str | None
) -> tuple[datasets.Dataset, np.ndarray | None, tuple[str, Path] | None]:
    """(rows, Hub split per row or None, (what lists the image files, the folder they are relative to) or None
    when the images are embedded)."""
    path = Path(source).expanduser()
    if images_dir is not None and not Path(images_dir).expanduser().is_dir():
        raise LesionDataError(f"images_dir {images_dir!r} is not a folder; pass the folder that holds the images.")
    # Absolute paths: `datasets` fingerprints (and so its caches) follow the path string, and the same folder must hit
    # the same cache from any working directory (the cached image features are keyed by file names and bytes instead).
    if path.is_dir():
        return _read_folder(path.resolve(), image_column=image_column, images_dir=images_dir)
    if path.is_file():
        root = Path(images_dir).expanduser().resolve() if images_dir else path.resolve().parent
        return _read_csv(path.resolve(), image_column=image_column, images_dir=root)
    if HUB_ID.match(source) and not source.startswith("."):
        return _read_hub(source, image_column=image_column)
    raise LesionDataError(
        f"no such file or folder: {source!r} (resolved to {path.resolve()}). Pass an imagefolder directory "
        "(images/ + metadata.csv), a CSV file with images_dir=..., or a Hub id such as 'marmal88/skin_cancer'."
    )


def _read_folder(
    folder: Path, *, image_column: str | None, images_dir: str | None
) -> tuple[datasets.Dataset, None, tuple[str, Path]]:
    if not any(folder.iterdir()):
        raise LesionDataError(
            f"folder {folder} is empty; expected images/*.jpg plus a metadata.csv whose file_name column lists "
            "them, or one subfolder of images per class."
        )
    metadata = folder / "metadata.csv"
    if metadata.is_file():
        header = _read_csv_header(metadata)
        if images_dir is not None or (image_column or "file_name") != "file_name" or "file_name" not in header:
            # Not imagefolder's convention: read it as a CSV whose image names are relative to the folder.
            return _read_csv(metadata, image_column=image_column, images_dir=Path(images_dir or folder))
    elif not any(p.suffix.lower() in IMAGE_FILE_SUFFIXES for p in folder.rglob("*")):
        raise LesionDataError(
            f"folder {folder} holds no images and no metadata.csv; expected images/*.jpg plus metadata.csv "
            "(file_name, dx, ...), or one subfolder of images per class."
        )
    # Naming the files as one "train" pattern skips imagefolder's split inference, which globs the tree for
    # dozens of split-name patterns (about 6 s on HAM10000's 10,013 files, versus under 1 s this way).
    table = datasets.load_dataset("imagefolder", data_files={"train": str(folder / "**")}, split="train")
    where = str(metadata) if metadata.is_file() else str(folder)
    if len(table) == 0:
        raise LesionDataError(f"{where} lists no images; add rows (file_name, label, ...) for the images.")
    return table, None, (where, folder)


def _read_csv_header(path: Path) -> list[str]:
    try:
        return list(pd.read_csv(path, nrows=0).columns)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise LesionDataError(f"{path} is not a readable CSV file ({err}); pass a CSV with a header row.") from err


def _read_csv(
    path: Path, *, image_column: str | None, images_dir: Path
) -> tuple[datasets.Dataset, None, tuple[str, Path]]:
    header = _read_csv_header(path)
    if not header:
        raise LesionDataError(f"{path} has no header row; the first line must name the columns.")
    reference = image_column or next((c for c in IMAGE_REFERENCE_CANDIDATES if c in header), None)
    if reference is None or reference not in header:
        looked_for = repr(image_column) if image_column else ", ".join(IMAGE_REFERENCE_CANDIDATES)
        raise LesionDataError(
            f"{path} has no column naming the image files (looked for {looked_for}); its columns are {header}. "
            "Pass image_column=<the column of file names, paths or image ids>."
        )
    if "image" in header and reference != "image":
        raise LesionDataError(f"{path} has a column 'image' besides the image names in {reference!r}; rename it.")
    table = datasets.load_dataset("csv", data_files=str(path), split="train")
    if len(table) == 0:
        raise LesionDataError(f"{path} has no rows; add one row per image.")
    names = table.data.column(reference).to_pylist()
    unnamed = [i for i, name in enumerate(names) if name is None or str(name).strip() == ""]
    if unnamed:
        raise LesionDataError(
            f"{len(unnamed)} rows of {path} have no image name in column {reference!r} (first data row "
            f"{unnamed[0] + 1}); fill them in or remove those rows."
        )
    paths = [str(_resolve_image_path(images_dir, str(name))) for name in names]
    if reference == "image":
        table = table.remove_columns("image")
    table = table.add_column("image", paths).cast_column("image", datasets.Image())
    return table, None, (str(path), images_dir)


def _resolve_image_path(images_dir: Path, name: str) -> Path:
    """The image file for a CSV entry: the path as given, or with the first of IMAGE_SUFFIXES that exists."""
    path = images_dir / name
    if path.is_file():
        return path
    for suffix in IMAGE_SUFFIXES:
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    return path


def _read_hub(source: str, *, image_column: str | None) -> tuple[datasets.Dataset, np.ndarray, None]:
    try:
        loaded = datasets.load_dataset(source)
    except ConnectionError as err:
        raise LesionDataError(
            f"{source!r} is not a local path, and the Hugging Face Hub is unreachable ({err}). Pass a local folder "
            "instead, e.g. load_lesion_dataset('../shared/data/ham10000'), or go online (and unset HF_HUB_OFFLINE)."
        ) from err
    except datasets.exceptions.DatasetNotFoundError as err:
        raise LesionDataError(
            f"{source!r} is neither a local path nor a data set on the Hugging Face Hub ({err}); check the spelling "
            "or pass a local folder."
        ) from err
    names = list(loaded)
    table = datasets.concatenate_datasets([loaded[name] for name in names])
    hub_splits = _split_values(pd.Series(np.repeat(names, [len(loaded[name]) for name in names])), "the Hub splits")
    images = image_column or next((c for c, f in table.features.items() if isinstance(f, datasets.Image)), "image")
    if not isinstance(table.features.get(images), datasets.Image):
        raise LesionDataError(
            f"{source!r} has no image column {images!r} of type datasets.Image (columns: {table.column_names}); "
            "pass image_column=<its image column>."
        )
    if images != "image":
        table = table.rename_column(images, "image")
    return table, hub_splits, None


# ---------------------------------------------------------------------------------------------------------------
# Column roles, labels and official splits.
# ---------------------------------------------------------------------------------------------------------------


def _resolve_label_column(label_column: str | None, columns: list[str]) -> str:
    if label_column is None:
        label_column = next((c for c in LABEL_CANDIDATES if c in columns), None)
        if label_column is None:
            raise LesionDataError(
                f"no label column found: tried {', '.join(LABEL_CANDIDATES)}; the columns are {columns}. "
                "Pass label_column=<the diagnosis column>."
            )
    elif label_column not in columns:
        raise LesionDataError(
            f"label column {label_column!r} does not exist; the columns are {columns}. "
            "Pass one of them as label_column."
        )
    return label_column


def _resolve_feature_columns(
    requested: list[str] | None, candidates: tuple[str, ...], columns: list[str], argument: str
) -> list[str]:
    if requested is None:
        return [c for c in candidates if c in columns]
    if isinstance(requested, str):
        raise LesionDataError(f"{argument} must be a list of column names, e.g. [{requested!r}], not a string.")
    for name in requested:
        if name in LEAKY_COLUMNS:
            raise LesionDataError(
                f"{name!r} cannot be a metadata feature ({argument}): {LEAKY_COLUMNS[name]}. Remove it from {argument}."
            )
        if name not in columns:
            raise LesionDataError(
                f"metadata column {name!r} (in {argument}) does not exist; the columns are {columns}. "
                f"Fix the name or leave it out of {argument}."
            )
    return list(requested)


def _resolve_optional_column(
    requested: str | None, candidates: tuple[str, ...], columns: list[str], argument: str
) -> str | None:
    if requested is None:
        return next((c for c in candidates if c in columns), None)
    if requested not in columns:
        raise LesionDataError(f"{argument}={requested!r} does not exist; the columns are {columns}.")
    return requested


def _check_roles(
    label_column: str, numeric: list[str], categorical: list[str], group_column: str | None, split_column: str | None
) -> None:
    roles = [(label_column, "label_column")] + [(c, "numeric_columns") for c in numeric]
    roles += [(c, "categorical_columns") for c in categorical]
    roles += [(c, name) for c, name in ((group_column, "group_column"), (split_column, "split_column")) if c]
    seen: dict[str, str] = {}
    for column, role in roles:
        if column in seen:
            raise LesionDataError(f"column {column!r} is given two roles, {seen[column]} and {role}; keep one.")
        seen[column] = role
    if label_column != "label" and "label" in seen:
        raise LesionDataError(
            f"the label column {label_column!r} is renamed to 'label', but 'label' is also the {seen['label']}; "
            "rename that column."
        )


def _label_values(values: pd.Series, feature: datasets.features.FeatureType, column: str) -> np.ndarray:
    if isinstance(feature, datasets.ClassLabel):
        values = values.map(lambda i: feature.names[i] if pd.notna(i) and i >= 0 else None)
    missing = np.flatnonzero(values.isna().to_numpy())
    if len(missing):
        raise LesionDataError(
            f"{len(missing)} rows have no value in the label column {column!r} (first at row {missing[0]}); "
            "fill in the diagnosis or remove those rows."
        )
    return values.astype(str).to_numpy(dtype=object)


def _resolve_label_names(labels: np.ndarray, label_names: list[str] | None, column: str) -> list[str]:
    present = sorted(set(labels))
    if label_names is None:
        return present
    label_names = [str(name) for name in label_names]
    if len(set(label_names)) != len(label_names):
        raise LesionDataError(f"label_names has duplicates: {label_names}; list each class once.")
    unknown = [name for name in present if name not in label_names]
    if unknown:
        raise LesionDataError(
            f"label column {column!r} has values missing from label_names: {unknown}; add them to label_names "
            f"(present values: {present})."
        )
    return label_names


def _check_numeric(frame: pd.DataFrame, numeric: list[str]) -> None:
    for name in numeric:
        if pd.api.types.is_numeric_dtype(frame[name]):
            continue
        parsed = pd.to_numeric(frame[name], errors="coerce")
        bad = frame[name][parsed.isna() & frame[name].notna()].unique()
        if len(bad):
            raise LesionDataError(
                f"numeric column {name!r} holds non-numeric values {list(bad[:MAX_LISTED])}; leave missing values "
                f"empty, or list {name!r} under categorical_columns instead."
            )


def _split_values(values: pd.Series, where: str) -> np.ndarray:
    """Official split names normalised to train / validation / test."""
    normalised = values.astype("string").str.strip().str.lower().map(SPLIT_ALIASES)
    bad = values[normalised.isna()].astype(str).unique()
    if len(bad):
        raise LesionDataError(
            f"{where} holds split names other than {sorted(SPLIT_ALIASES)}: {list(bad[:MAX_LISTED])} "
            f"({normalised.isna().sum()} rows); rename them, or pass split_column=<another column> to use it instead."
        )
    return normalised.to_numpy(dtype=object)


# ---------------------------------------------------------------------------------------------------------------
# Image files and final schema.
# ---------------------------------------------------------------------------------------------------------------


def _check_image_files(table: datasets.Dataset, rows: np.ndarray, where: str, root: Path) -> None:
    """Refuse missing, unidentifiable or truncated image files, reading only each file's header and last bytes."""
    paths = table.data.column("image").combine_chunks().field("path").take(rows).to_pylist()
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise LesionDataError(
            f"{len(missing)} of {len(paths)} image files referenced by {where} are missing (looked for under "
            f"{root}): {_listing(missing, root)}. Restore those files, fix their names (or images_dir), or remove "
            "their rows."
        )
    unreadable = [(p, reason) for p in paths if (reason := _unreadable_reason(p))]
    if unreadable:
        listed = "; ".join(f"{_relative(p, root)} ({reason})" for p, reason in unreadable[:MAX_LISTED])
        more = f" and {len(unreadable) - MAX_LISTED} more" if len(unreadable) > MAX_LISTED else ""
        raise LesionDataError(
            f"{len(unreadable)} image files referenced by {where} are unreadable or corrupt: {listed}{more}. "
            "Replace those files with intact images, or remove their rows."
        )


def _unreadable_reason(path: str) -> str | None:
    try:
        with PIL.Image.open(path) as image:
            image_format = image.format
    except OSError as err:  # PIL.UnidentifiedImageError is an OSError
        return f"not an image PIL can read: {err.__class__.__name__}"
    end = END_MARKERS.get(image_format)
    if end is not None:
        with open(path, "rb") as file:
            file.seek(-min(1024, os.path.getsize(path)), os.SEEK_END)
            if not file.read().rstrip(b"\x00\r\n ").endswith(end):
                return f"{image_format} data is truncated"
    return None


def _relative(path: str, root: Path) -> str:
    return os.path.relpath(path, root) if Path(path).is_relative_to(root) else path


def _listing(paths: list[str], root: Path) -> str:
    more = f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else ""
    return ", ".join(_relative(p, root) for p in paths[:MAX_LISTED]) + more


def _standardise(
    table: datasets.Dataset,
    label_column: str,
    label_names: list[str],
    numeric: list[str],
    categorical: list[str],
    group_column: str | None,
) -> datasets.Dataset:
    """Keep only the role columns, rename the label to `label` and give every source the same feature types."""
    table = table.select_columns(["image", label_column, *numeric, *categorical, *filter(None, [group_column])])
    if label_column != "label":
        table = table.rename_column(label_column, "label")
    source_label = table.features["label"]
    if isinstance(source_label, datasets.ClassLabel):
        table = table.map(
            lambda ids: {"label": [source_label.names[i] for i in ids]},
            input_columns="label",
            batched=True,
            features=datasets.Features({**table.features, "label": datasets.Value("string")}),
            desc="Label ids to names",
        )
    elif getattr(source_label, "dtype", None) not in ("string", "large_string"):
        table = table.cast_column("label", datasets.Value("string"))
    features = datasets.Features(
        {
            "image": table.features["image"],
            "label": datasets.ClassLabel(names=label_names),
            **{name: datasets.Value("float64") for name in numeric},
            **{name: datasets.Value("string") for name in categorical},
            **({group_column: datasets.Value("string")} if group_column else {}),
        }
    )
    return table.cast(features)
