"""How the operator's tools write for people: durations, aligned tables, colour.

Colour is added with ``click.style`` and written with ``click.echo``, which drops it when the output
is not a terminal (a pipe, a file): piped output is plain text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import click

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")

STATE_COLOURS = {
    "running": "green",
    "hung": "red",
    "overdue": "red",
    "stalled": "red",
    "worker gone": "yellow",
}
"""The colour of each state ``zombieguard status`` shows."""


def duration(seconds: float | None) -> str:
    """``seconds`` for people: ``4.2s``, ``3.5m``, ``2.0h``, ``1.5d``; ``-`` for None."""
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``1.5m``, ``1h30m``, ``2d`` or ``500ms``; ValueError otherwise."""
    stripped = text.strip().lower()
    try:
        seconds = float(stripped)
    except ValueError:
        parts = _PART.findall(stripped)
        if not parts or "".join(number + unit for number, unit in parts) != stripped:
            raise ValueError(f"{text!r} is not a duration (e.g. 90, 90s, 1.5m, 1h30m, 2d)") from None
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if seconds < 0:
        raise ValueError(f"{text!r} is not a duration: it is negative")
    return seconds


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], colours: Sequence[str | None] = ()) -> str:
    """An aligned table, headers in bold; ``colours``: each row's colour (None: the default)."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    lines = [click.style(line(headers), bold=True)]
    for i, row in enumerate(rows):
        colour = colours[i] if i < len(colours) else None
        lines.append(click.style(line(row), fg=colour) if colour else line(row))
    return "\n".join(lines)
