"""Patient metadata (age, sex, anatomical site) to a fixed-length float vector.

The encoder is fitted on training rows only. Numeric features are imputed with the training median and then
standardised; categorical features are imputed with the most frequent training value (or left as unknown) and
one-hot encoded. Every feature also gets a "missing" indicator column, so a model can tell an imputed value from
an observed one and a row with no metadata at all is still a valid input.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

# Strings that mean "not recorded" in HAM10000 / ISIC metadata (compared after strip + lower-case).
MISSING_TOKENS = frozenset({"", "unknown", "nan", "none", "null", "na", "n/a", "?"})

# Plausible ranges for numeric features we know; a value outside is refused rather than silently standardised.
NUMERIC_VALID_RANGES: dict[str, tuple[float, float]] = {
    "age": (0.0, 120.0),
    "age_approx": (0.0, 120.0),
}

CATEGORICAL_MISSING_STRATEGIES = ("most_frequent", "unknown")
# Error messages quote at most this many characters of a bad value: enough to recognise it, never a 5 MB echo.
MAX_QUOTED_CHARS = 80
UNSEEN_CATEGORY_POLICIES = ("missing", "error")


class MetadataError(ValueError):
    """A metadata value that cannot be encoded; the message names the value and the fix."""


@dataclass
class NumericFeatureStats:
    """Training statistics of one numeric feature."""

    name: str
    median: float
    mean: float
    std: float


@dataclass
class CategoricalFeatureStats:
    """Training vocabulary of one categorical feature."""

    name: str
    categories: list[str]
    most_frequent: str


def is_missing(value: Any) -> bool:
    """Whether a raw metadata value means "not recorded"."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip().lower() in MISSING_TOKENS
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # array-likes have no single truth value: they are not "missing"
        return False


def quote(value: Any, limit: int = MAX_QUOTED_CHARS) -> str:
    """`repr(value)` for an error message, cut to `limit` characters with the full length said."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse_numeric(name: str, value: Any) -> float | None:
    """Parse one numeric value; `None` when missing; raises `MetadataError` when it is not a plausible number."""
    if is_missing(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond float's range
        number = None
    if number is None or isinstance(value, (bool, np.bool_)):  # float(True) is 1.0: a tick box's value, not an age
        raise MetadataError(
            f"Metadata '{name}' must be a number, got {quote(value)}. Enter a number (for example 45) or leave it "
            "empty if it is unknown."
        )
    if math.isnan(number):
        return None
    low, high = NUMERIC_VALID_RANGES.get(name, (-math.inf, math.inf))
    if math.isinf(number) or not low <= number <= high:
        raise MetadataError(
            f"Metadata '{name}' = {number:g} is outside the plausible range [{low:g}, {high:g}]. Correct it, or "
            "leave it empty if it is unknown."
        )
    return number


def normalise_category(value: Any) -> str | None:
    """Canonical form of a categorical value (stripped, lower-case); `None` when missing."""
    if is_missing(value):
        return None
    return str(value).strip().lower()


@dataclass
class MetadataEncoder:
    """Fitted metadata encoder: imputation, standardisation, one-hot encoding and missing indicators.

    Args:
        numeric: statistics of the numeric features, in encoding order.
        categorical: vocabularies of the categorical features, in encoding order.
        categorical_missing: `most_frequent` imputes a missing category with the training mode (the original
            study's choice); `unknown` leaves every one-hot column at zero. The missing indicator is set either way.
        on_unseen: what a category never seen in training becomes: `missing` (treated as not recorded) or `error`.
    """

    numeric: list[NumericFeatureStats] = field(default_factory=list)
    categorical: list[CategoricalFeatureStats] = field(default_factory=list)
    categorical_missing: str = "most_frequent"
    on_unseen: str = "missing"

    def __post_init__(self) -> None:
        self.numeric = [f if isinstance(f, NumericFeatureStats) else NumericFeatureStats(**f) for f in self.numeric]
        self.categorical = [
            f if isinstance(f, CategoricalFeatureStats) else CategoricalFeatureStats(**f) for f in self.categorical
        ]
        if self.categorical_missing not in CATEGORICAL_MISSING_STRATEGIES:
            raise ValueError(
                f"categorical_missing={self.categorical_missing!r} is not supported; use one of "
                f"{CATEGORICAL_MISSING_STRATEGIES}."
            )
        if self.on_unseen not in UNSEEN_CATEGORY_POLICIES:
            raise ValueError(f"on_unseen={self.on_unseen!r} is not supported; use one of {UNSEEN_CATEGORY_POLICIES}.")

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        numeric_columns: Sequence[str] = (),
        categorical_columns: Sequence[str] = (),
        categorical_missing: str = "most_frequent",
        on_unseen: str = "missing",
    ) -> MetadataEncoder:
        """Learn medians, means, standard deviations, vocabularies and modes from training rows."""
        absent = [c for c in [*numeric_columns, *categorical_columns] if c not in frame.columns]
        if absent:
            raise MetadataError(
                f"Metadata column(s) {absent} not found; available columns: {sorted(map(str, frame.columns))}. "
                "Pass existing column names (or none)."
            )
        numeric = [_fit_numeric(name, frame[name]) for name in numeric_columns]
        categorical = [_fit_categorical(name, frame[name]) for name in categorical_columns]
        return cls(numeric, categorical, categorical_missing=categorical_missing, on_unseen=on_unseen)

    @property
    def numeric_columns(self) -> list[str]:
        return [f.name for f in self.numeric]

    @property
    def categorical_columns(self) -> list[str]:
        return [f.name for f in self.categorical]

    @property
    def columns(self) -> list[str]:
        """The raw metadata columns this encoder reads."""
        return self.numeric_columns + self.categorical_columns

    @property
    def vocabularies(self) -> dict[str, list[str]]:
        return {f.name: list(f.categories) for f in self.categorical}

    @property
    def feature_names(self) -> list[str]:
        """Names of the encoded columns, in order."""
        names: list[str] = []
        for f in self.numeric:
            names += [f.name, f"{f.name}_missing"]
        for f in self.categorical:
            names += [f"{f.name}={c}" for c in f.categories] + [f"{f.name}_missing"]
        return names

    @property
    def dim(self) -> int:
        return len(self.feature_names)

    def transform(self, rows: pd.DataFrame | Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Encode rows (a DataFrame, one dict, or dicts; absent keys count as missing) to a float32 array."""
        records = _as_records(rows)
        encoded = np.zeros((len(records), self.dim), dtype=np.float32)
        for i, record in enumerate(records):
            encoded[i] = self.encode_row(record)
        return encoded

    def encode_row(self, record: Mapping[str, Any]) -> np.ndarray:
        """Encode one row (a dict of raw values; absent keys count as missing)."""
        values: list[float] = []
        for f in self.numeric:
            number = parse_numeric(f.name, record.get(f.name))
            imputed = f.median if number is None else number
            values += [(imputed - f.mean) / f.std, float(number is None)]
        for f in self.categorical:
            category = normalise_category(record.get(f.name))
            if category is not None and category not in f.categories:
                if self.on_unseen == "error":
                    raise MetadataError(
                        f"Metadata '{f.name}' = {quote(category)} was never seen in training; use one of "
                        f"{f.categories} or leave it empty if it is unknown."
                    )
                category = None
            one_hot = [0.0] * len(f.categories)
            if category is None and self.categorical_missing == "most_frequent":
                one_hot[f.categories.index(f.most_frequent)] = 1.0
            elif category is not None:
                one_hot[f.categories.index(category)] = 1.0
            values += one_hot + [float(category is None)]
        return np.asarray(values, dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (inverse of `from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetadataEncoder:
        return cls(**data)


def _fit_numeric(name: str, column: pd.Series) -> NumericFeatureStats:
    parsed = pd.Series([parse_numeric(name, v) for v in column], dtype="float64")
    if parsed.notna().sum() == 0:
        raise MetadataError(
            f"Numeric metadata column '{name}' has no values in the training rows; drop it from the metadata columns."
        )
    median = float(parsed.median())
    imputed = parsed.fillna(median)
    std = float(imputed.std(ddof=0))
    return NumericFeatureStats(name=name, median=median, mean=float(imputed.mean()), std=std if std > 0 else 1.0)


def _fit_categorical(name: str, column: pd.Series) -> CategoricalFeatureStats:
    values = pd.Series([normalise_category(v) for v in column], dtype="object").dropna()
    if values.empty:
        raise MetadataError(
            f"Categorical metadata column '{name}' has no values in the training rows; drop it from the metadata "
            "columns."
        )
    counts = values.value_counts()
    # Ties in the mode are broken alphabetically so that fitting is deterministic.
    most_frequent = sorted(counts[counts == counts.max()].index)[0]
    return CategoricalFeatureStats(name=name, categories=sorted(counts.index), most_frequent=most_frequent)


def _as_records(rows: pd.DataFrame | Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(rows, pd.DataFrame):
        return rows.to_dict(orient="records")
    if isinstance(rows, Mapping):
        # A `datasets` batch is a dict of equal-length columns; a single row is a dict of scalars.
        if rows and all(isinstance(v, (list, tuple)) for v in rows.values()):
            return pd.DataFrame(dict(rows)).to_dict(orient="records")
        return [rows]
    return list(rows)
