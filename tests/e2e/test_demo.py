"""``zombieguard demo``: the seed incident on RQ and on Celery, each zombie handled when guarded."""

from __future__ import annotations

import time

import pytest

from tests.support.harness import unconfigured

pytestmark = pytest.mark.slow


def summaries(out: str) -> dict[str, dict[str, str]]:
    """Each framework's summary: its lines by the name they start with."""
    found = {}
    for part in out.split("summary after")[1:]:
        title = part.split("(", 1)[1].split(",", 1)[0]
        lines = part.split("\n\n", 1)[0].splitlines()[1:]
        found[title] = {line.strip().split("  ")[0]: line for line in lines if line.startswith("  ")}
    return found


@pytest.mark.timeout(300)
def test_the_demo_shows_every_zombie_handled_on_rq_and_on_celery_and_exits_0_within_three_minutes() -> None:
    t0 = time.monotonic()
    result = unconfigured("demo", timeout=280)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - t0 < 180
    assert "a zombie" not in result.stdout, result.stdout + result.stderr  # the whole timeline
    found = summaries(result.stdout)
    assert sorted(found) == ["Celery", "RQ"]
    rq, celery = found["RQ"], found["Celery"]
    for lines in (rq, celery):
        assert "normal jobs finished: 24/24" in lines
        assert "finished" in lines["worker SIGKILLed"]
        assert "2 attempt(s)" in lines["worker SIGKILLed"]
        assert "failed" in lines["hung on a socket"]
        assert "failed" in lines["stuck in C code"]
        assert "failed" in lines["poison pill"]
        assert "3 attempt(s)" in lines["poison pill"]
    assert "HardTimeLimitExceeded" in rq["hung on a socket"]
    assert "JobDeadLettered" in rq["poison pill"]
    assert "TimeLimitExceeded" in celery["hung on a socket"]
    assert "TimeLimitExceeded" in celery["stuck in C code"]
    assert "stalled 3 times (max_stalls=2)" in celery["poison pill"]


def test_the_unguarded_celery_demo_leaves_the_killed_workers_task_started_as_a_zombie() -> None:
    result = unconfigured("demo", "--only", "celery", "--unguarded", timeout=90)
    assert result.returncode == 0, result.stderr
    assert "plain Celery prefork (unguarded)" in result.stdout
    lines = summaries(result.stdout)["Celery"]
    assert "SIGKILLed the worker running 'worker SIGKILLed'" in result.stdout
    assert lines["worker SIGKILLed"].split()[2:4] == ["started", "for"]
    assert "<- a zombie" in lines["worker SIGKILLed"]
