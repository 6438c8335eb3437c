"""The one limit evaluator every enforcer uses (``zombieguard.enforcement.limits``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from zombieguard import Policy
from zombieguard.enforcement.interrupts import Interrupt
from zombieguard.enforcement.limits import Deadlines, Limit, LimitClock
from zombieguard.enforcement.slot import JobSlot
from zombieguard.leases import Outcome


def test_the_limit_clock_says_which_limit_passed_and_when_to_look_next() -> None:
    progress = [0.0]
    clock = LimitClock(
        Policy(hard_timeout=10, soft_timeout=5, progress_timeout=3),
        started=0.0,
        last_progress=lambda: progress[0],
    )
    assert clock.due(1.0) == (None, 3.0)
    progress[0] = 2.5
    assert clock.due(4.0) == (None, 5.0)
    assert clock.due(5.0) == (Limit.SOFT, 5.0)
    clock.soft_fired = True
    assert clock.due(5.6) == (Limit.PROGRESS, 5.6)
    progress[0] = 5.6
    assert clock.due(8.0) == (None, 8.6)
    progress[0] = 9.9
    assert clock.due(10.0) == (Limit.HARD, 10.0)
    assert LimitClock(Policy(), 0.0, lambda: 0.0).due(1e9) == (None, float("inf"))


def test_the_hard_limit_counts_first_then_progress_then_soft_when_several_passed() -> None:
    deadlines = Deadlines(hard=10.0, progress=8.0, soft=5.0)
    assert deadlines.passed(4.9) is None
    assert deadlines.passed(5.0) is Limit.SOFT
    assert deadlines.passed(8.0) is Limit.PROGRESS
    assert deadlines.passed(10.0) is Limit.HARD
    assert deadlines.next() == 5.0


def test_a_limit_is_overdue_only_grace_seconds_after_it_passed() -> None:
    deadlines = Deadlines(hard=10.0, progress=12.0)
    assert deadlines.passed(10.4, grace=0.5) is None
    assert deadlines.passed(10.5, grace=0.5) is Limit.HARD
    assert deadlines.next(grace=0.5) == 10.5
    assert Deadlines().passed(1e9) is None
    assert Deadlines().next() == float("inf")


def test_a_slot_s_deadlines_are_its_job_s_and_its_soft_limit_can_be_left_out(tmp_path: Path) -> None:
    slot = JobSlot(tmp_path / "slot")
    slot.start("j1", 7, 100.0, hard_deadline=110.0, progress_timeout=3.0, soft_deadline=105.0)
    state = slot.read()
    assert Deadlines.of_slot(state) == Deadlines(hard=110.0, progress=103.0, soft=105.0)
    assert Deadlines.of_slot(state, soft=False) == Deadlines(hard=110.0, progress=103.0)
    slot.progress(104.0)
    assert Deadlines.of_slot(slot.read()).progress == 107.0


@pytest.mark.parametrize(
    ("limit", "outcome", "seconds", "interrupt"),
    [
        (Limit.HARD, Outcome.TIMED_OUT, 10.0, Interrupt.HARD),
        (Limit.PROGRESS, Outcome.HUNG, 3.0, Interrupt.HUNG),
    ],
)
def test_a_job_stopped_at_a_limit_ends_as_that_limit_says(
    limit: Limit, outcome: Outcome, seconds: float, interrupt: Interrupt
) -> None:
    policy = Policy(hard_timeout=10, soft_timeout=5, progress_timeout=3)
    assert limit.outcome is outcome
    assert limit.seconds(policy) == seconds
    assert Interrupt.at(limit) is interrupt


def test_a_soft_limit_warns_and_ends_no_job() -> None:
    assert Interrupt.at(Limit.SOFT) is Interrupt.SOFT
    assert Limit.SOFT.seconds(Policy(soft_timeout=5)) == 5.0
    with pytest.raises(ValueError, match="ends no attempt"):
        _ = Limit.SOFT.outcome


def test_a_limit_reads_as_its_name_in_events_logs_and_comparisons() -> None:
    # JobTimedOut.limit is a Limit: receivers that format it or compare it with "soft"/"hard" go on
    # working.
    assert f"{Limit.HARD}" == "hard"
    assert str(Limit.SOFT) == "soft"
    assert Limit.HARD == "hard"  # type: ignore[comparison-overlap]  # a str enum equals its value
