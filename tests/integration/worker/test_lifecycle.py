"""How a guarded worker records an attempt's end, on every integration, against real Redis."""

from __future__ import annotations

from typing import Any

from tests.support.leases import start
from zombieguard import Policy
from zombieguard.events import JobCompleted, job_completed
from zombieguard.leases import LeaseStore, Outcome
from zombieguard.worker.lifecycle import record_end

POLICY = Policy(lease_ttl=10, hard_timeout=60)


def test_an_attempt_s_end_is_recorded_and_said_once_and_a_superseded_one_s_is_refused(
    store: LeaseStore,
) -> None:
    said: list[tuple[str, str, str]] = []

    def receiver(sender: str, event: Any) -> None:
        assert isinstance(event, JobCompleted)
        said.append((sender, event.job_id, event.reason))

    job_completed.connect(receiver)
    try:
        ended = start(store, "ends", POLICY)
        assert record_end("test", ended, Outcome.FAILED, "ValueError: bad input")
        record = store.record("ends")
        assert record is not None
        assert record.state == "done"
        assert record.history[-1].outcome == "failed"

        superseded = start(store, "superseded", POLICY)
        store.abandon(superseded.job, superseded.token, Outcome.STALLED)
        store.claim("test", "sweeper")  # the sweeper takes it: a new token fences the attempt off
        assert not record_end("test", superseded, Outcome.COMPLETED)
        assert superseded.lost is not None
    finally:
        job_completed.disconnect(receiver)
    assert said == [("test", "ends", "failed")]
