"""Whether an attempt a Celery worker runs still holds its task, as its lease record says: only then
may what notices its end (Celery's own time limit, its pool process's death) record anything."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from zombieguard.enforcement.slot import JobSlot, SlotState
from zombieguard.integrations.celery.deaths import holds_lease, is_superseded
from zombieguard.leases import LeaseRecord, LeaseState, Outcome

RECORD = LeaseRecord.from_hash(
    {
        "job": "t1",
        "adapter": "celery",
        "state": "running",
        "token": "7",
        "attempt": "2",
        "worker": "w1",
        "started": "1.0",
        "expires": "31.0",
        "lease_ttl": "30",
        "overdue_grace": "5",
        "max_stalls": "3",
    }
)


def _slot(token: int, attempt: int = 2) -> SlotState:
    slot = JobSlot()
    slot.start("t1", token, 1.0, hard_deadline=None, progress_timeout=None, attempt=attempt)
    return slot.read()


@pytest.mark.parametrize(
    ("change", "token", "holds"),
    [
        ({}, 7, True),  # its own running lease
        ({"state": LeaseState.DONE}, 7, True),  # its own end, written by itself
        ({}, None, True),  # its slot gone: by worker and state
        ({"worker": "w2"}, 7, False),  # another worker's attempt
        ({"token": 9}, 7, False),  # another attempt on this worker
        ({"state": LeaseState.RECOVERING}, 7, False),  # a sweeper claimed it
        ({"state": LeaseState.QUEUED}, 7, False),  # requeued as the next attempt
        ({"state": LeaseState.DONE, "token": 9}, 7, False),  # a sweeper ended it (dead-lettered, failed)
    ],
)
def test_an_attempt_holds_its_task_while_its_lease_is_its_own(
    change: dict[str, Any], token: int | None, holds: bool
) -> None:
    record = replace(RECORD, **change)
    state = None if token is None else _slot(token)
    assert holds_lease(record, "w1", state) is holds


def test_an_attempt_not_leased_yet_holds_its_task_unless_a_newer_attempt_has_a_lease() -> None:
    assert holds_lease(replace(RECORD, attempt=1, state=LeaseState.DONE), "w1", _slot(0, attempt=2))
    assert not holds_lease(replace(RECORD, attempt=3), "w1", _slot(0, attempt=2))


@pytest.mark.parametrize(
    ("change", "superseded"),
    [
        ({}, False),  # its own running lease
        ({"abandoned": Outcome.STALLED}, True),  # given up as a stall: the sweeper recovers it
        ({"abandoned": Outcome.TIMED_OUT}, True),  # given up by its watchdog: the sweeper fails it
        (
            {"state": LeaseState.DONE, "abandoned": Outcome.STALLED},
            False,
        ),  # it completed before a sweeper came
        ({"token": 9}, True),  # another attempt on this worker
    ],
)
def test_an_attempt_whose_lease_was_given_up_is_superseded_and_records_nothing(
    change: dict[str, Any], superseded: bool
) -> None:
    assert is_superseded(replace(RECORD, **change), "w1", _slot(7)) is superseded
