"""``zombieguard demo``: on RQ and on Celery, the same zombies on plain workers and on guarded ones,
side by side in a table read from its real output."""

from __future__ import annotations

import re
import time

import pytest

from tests.support.harness import unconfigured

pytestmark = pytest.mark.slow


def tables(out: str) -> list[dict[str, list[str]]]:
    """Every table the demo printed: its cells by the first cell of their row (the header's first
    cell names the header), a cell's wrapped lines joined."""
    found = []
    for block in out.split("\n\n"):
        lines = block.splitlines()
        if len(lines) < 3 or not re.fullmatch(r"-+(\+-+)*", lines[1]):
            continue
        rows: list[list[str]] = []
        for line in [lines[0], *lines[2:]]:
            cells = [cell.strip() for cell in line.split("|")]
            if cells[0] or not rows:
                rows.append(cells)
            else:
                rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=False)]
        found.append({row[0]: row[1:] for row in rows})
    return found


def ran(cell: str) -> float:
    """How long a zombie's last attempt ran before it ended, as its cell says."""
    found = re.search(r"([\d.]+) s after (it|attempt \d) started", cell)
    assert found, cell
    return float(found.group(1))


ZOMBIES = ["worker SIGKILLed", "hung on a socket", "stuck in C code", "poison pill"]


@pytest.mark.timeout(200)
def test_the_demo_shows_each_framework_plain_and_guarded_side_by_side_for_every_zombie_within_2_min() -> None:
    t0 = time.monotonic()
    result = unconfigured("demo", timeout=180)
    took = time.monotonic() - t0
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert took < 120, out
    rq, celery, summary = tables(out)
    for table, framework in ((rq, "RQ"), (celery, "Celery")):
        assert table["scenario"] == [f"what plain {framework} did", "what zombieguard did"]
        assert list(table) == ["scenario", *ZOMBIES, "24 normal jobs"], out
        # Guarded, every zombie is handled: the killed worker's job finishes on its second attempt,
        # the hung and the stuck one fail at their hard_timeout (4 s), the poison pill is dead-lettered.
        guarded = {name: cells[1] for name, cells in table.items()}
        assert re.search(
            r"its worker SIGKILLed at .* finished at .*attempt 2 started", guarded["worker SIGKILLed"]
        )
        for name in ("hung on a socket", "stuck in C code"):
            assert guarded[name].startswith("failed at "), guarded[name]
            assert 4.0 <= ran(guarded[name]) < 7.0, guarded[name]
        assert guarded["poison pill"].startswith("failed at "), guarded["poison pill"]
        assert "after attempt 3 started" in guarded["poison pill"]
        assert guarded["24 normal jobs"].startswith("24/24 finished by ")
    # Plain RQ: the hung job holds the one worker left, and nothing behind it ever starts.
    plain_rq = {name: cells[0] for name, cells in rq.items()}
    assert re.fullmatch(r"started at [\d.]+ s; still 'started' at 2\d\.\d s", plain_rq["hung on a socket"])
    assert plain_rq["stuck in C code"].startswith("never started: still queued at ")
    assert plain_rq["poison pill"].startswith("never started: still queued at ")
    assert plain_rq["24 normal jobs"].startswith("0/24 finished; 24 still queued at ")
    # Plain Celery: the killed worker's task stays 'started' (its message waits for the broker's
    # one-hour visibility timeout).
    assert re.search(r"its worker SIGKILLed at .*; still 'started' at ", celery["worker SIGKILLed"][0])
    # One name for each exception, and messages whole (the longest is RQ's for the stuck job).
    assert "with HardTimeLimitExceeded: job passed its hard_timeout of 4 s" in rq["hung on a socket"][1]
    assert rq["stuck in C code"][1].endswith("(stuck where no Python code runs: C code or a blocking call)")
    assert "with JobDeadLettered: stalled 3 times (max_stalls=2)" in rq["poison pill"][1]
    assert "with TimeLimitExceeded" in celery["hung on a socket"][1]
    assert "stalled 3 times (max_stalls=2)" in celery["poison pill"][1]
    assert not re.search(r"zombieguard\.[\w.]*Exceeded|zombieguard\.[\w.]*Lettered", out)
    # A sentence on each zombie, and a summary of every run.
    for name in ZOMBIES:
        assert f"- {name}: " in out
    assert summary["summary"] == ["RQ, plain", "RQ, guarded", "Celery, plain", "Celery, guarded"]
    assert summary["normal jobs finished"] == ["0/24", "24/24", summary["normal jobs finished"][2], "24/24"]
    assert summary["zombies left 'started'"][1::2] == ["0", "0"]
    assert all(int(left) >= 1 for left in summary["zombies left 'started'"][0::2])
    # Piped, it is plain text within 120 columns, and queued jobs are never called zombies.
    assert "\x1b" not in out
    assert max(len(line) for line in out.splitlines()) <= 120
    cells = [cell for table in (rq, celery) for row in table.values() for cell in row]
    assert not [cell for cell in cells if re.search(r"\bzombies?\b", cell)]


def test_unguarded_shows_only_the_plain_run_where_no_normal_job_finishes_behind_the_hung_one_on_rq() -> None:
    result = unconfigured("demo", "--only", "rq", "--unguarded", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Celery" not in result.stdout
    rq, summary = tables(result.stdout)
    assert rq["scenario"] == ["what plain RQ did"]
    assert "still 'started' at " in rq["hung on a socket"][0]
    assert rq["24 normal jobs"][0].startswith("0/24 finished")
    assert summary["summary"] == ["RQ, plain"]
