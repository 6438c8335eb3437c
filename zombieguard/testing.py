"""Helpers for testing your own jobs under zombieguard.

from zombieguard.testing import capture_events, short_policy

def test_my_job_is_stopped_when_hung():
    with capture_events() as events:
        ...run the job with a guarded worker...
    assert [e.kind for e in events if e.kind == "hung"]
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from zombieguard.events import ALL_SIGNALS, JobEvent, QueueEvent, WorkerEvent
from zombieguard.policy import Policy


class CapturedEvents(list[JobEvent | WorkerEvent | QueueEvent]):
    """The events sent while capturing, in order, with filters by kind and for job events."""

    def of_kind(self, kind: str) -> list[JobEvent | WorkerEvent | QueueEvent]:
        """The captured events of one kind (``"stalled"``, ``"hung"``, ...)."""
        return [event for event in self if event.kind == kind]

    def of_jobs(self) -> list[JobEvent]:
        """The captured events about a job (not a worker's or a queue's), in order."""
        return [event for event in self if isinstance(event, JobEvent)]


@contextmanager
def capture_events() -> Iterator[CapturedEvents]:
    """Collect every zombieguard event sent in this process while the block runs."""
    captured = CapturedEvents()

    def receiver(sender: Any, event: JobEvent | WorkerEvent | QueueEvent) -> None:
        captured.append(event)

    for signal in ALL_SIGNALS:
        signal.connect(receiver)
    try:
        yield captured
    finally:
        for signal in ALL_SIGNALS:
            signal.disconnect(receiver)


def short_policy(**overrides: Any) -> Policy:
    """A policy with limits short enough for a test: stalls found in about a second.

    ``lease_ttl=1.5``, ``heartbeat_interval=0.3``, ``overdue_grace=0.5``, ``max_stalls=1``; pass
    ``hard_timeout=2`` and the like for the limits a test needs.
    """
    fields: dict[str, Any] = {
        "lease_ttl": 1.5,
        "heartbeat_interval": 0.3,
        "overdue_grace": 0.5,
        "max_stalls": 1,
    }
    fields.update(overrides)
    return Policy(**fields)
