"""Markdown tables and number formatting: how every SkinFusion report writes a value (EDA, cards, comparisons)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MISSING = "–"  # a value that is absent, undefined (NaN) or not measured


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; cells are written with `str`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def is_absent(value: Any) -> bool:
    """None, or a float that is not finite (NaN, inf)."""
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def number(value: float | None, digits: int = 3) -> str:
    """A score with `digits` decimals; `MISSING` for None or a non-finite value."""
    return MISSING if is_absent(value) else f"{value:.{digits}f}"


def compact(value: float | None) -> str:
    """A number in its shortest form (`:g`); `MISSING` for None."""
    return MISSING if value is None else f"{value:g}"


def seconds(value: float | None) -> str:
    """A duration in whole seconds; `MISSING` for None."""
    return MISSING if value is None else f"{value:.0f} s"


def cell(value: Any, digits: int = 3) -> str:
    """A table cell: floats with `digits` decimals, `MISSING` for None or NaN, anything else as `str`."""
    if is_absent(value):
        return MISSING
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
