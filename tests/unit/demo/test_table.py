"""The demo's plain-text tables: aligned, within their width, every word kept."""

from __future__ import annotations

from zombieguard.demo import table


def test_a_table_too_wide_wraps_its_cells_to_fit_keeping_every_word_and_its_columns_aligned() -> None:
    long = "failed at 4.6 s, 4.1 s after it started, with HardTimeLimitExceeded: " + "word " * 40
    lines = table.render(
        ["scenario", "plain", "guarded"], [["hung on a socket", "still 'started'", long]], 80
    )
    assert max(len(line) for line in lines) <= 80
    assert len(lines) > 3  # the long cell took several lines
    assert {line.index("|") for line in lines if "|" in line} == {len("hung on a socket") + 1}
    assert lines[1].startswith("-" * len("hung on a socket") + "-+-")
    guarded = " ".join(line.rsplit("|", 1)[1].strip() for line in [lines[0], *lines[2:]])
    assert guarded == f"guarded {long.strip()}"


def test_a_table_that_fits_keeps_each_column_as_wide_as_its_longest_cell() -> None:
    lines = table.render(["a", "bb"], [["ccc", "d"]])
    assert lines == ["a   | bb", "----+---", "ccc | d"]
