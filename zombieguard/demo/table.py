"""Plain-text tables for ``zombieguard demo``: aligned columns, cells wrapped at word boundaries so
that a table fits a width, and nothing but printable characters (it reads the same when piped)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

WIDTH = 120
"""The widest a table may be, in characters."""

_NARROWEST = 12
"""No column is wrapped narrower than this, however many there are."""


def widths(rows: Sequence[Sequence[str]], width: int = WIDTH) -> list[int]:
    """Each column's width: its longest cell, the widest columns narrowed in turn until the table,
    with its separators, fits ``width``."""
    columns = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    budget = width - 3 * (len(columns) - 1)
    while sum(columns) > budget and max(columns) > _NARROWEST:
        columns[columns.index(max(columns))] -= 1
    return columns


def render(header: Sequence[str], rows: Sequence[Sequence[str]], width: int = WIDTH) -> list[str]:
    """The table's lines: the header, a rule, then each row, its cells wrapped to their column."""
    sizes = widths([header, *rows], width)
    lines = _row(header, sizes)
    lines.append("-+-".join("-" * size for size in sizes))
    for row in rows:
        lines += _row(row, sizes)
    return lines


def _row(cells: Sequence[str], sizes: Sequence[int]) -> list[str]:
    wrapped = [
        textwrap.wrap(cell, size, break_on_hyphens=False) or [""]
        for cell, size in zip(cells, sizes, strict=True)
    ]
    height = max(len(column) for column in wrapped)
    padded = [[*column, *[""] * (height - len(column))] for column in wrapped]
    return [
        " | ".join(column[n].ljust(size) for column, size in zip(padded, sizes, strict=True)).rstrip()
        for n in range(height)
    ]
