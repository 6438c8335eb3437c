"""zombieguard.testing: the helpers users test their own jobs with."""

from __future__ import annotations

from zombieguard.events import JobStalled, WorkerZombie, emit
from zombieguard.testing import capture_events, short_policy


def test_capture_events_collects_every_kind_sent_while_capturing_and_nothing_after() -> None:
    stalled = JobStalled("j1", "t", "q", 1, "w", "rq")
    with capture_events() as events:
        emit("rq", stalled)
        emit("rq", WorkerZombie("w", "rq", "gone"))
    emit("rq", stalled)
    assert [e.kind for e in events] == ["stalled", "worker_zombie"]
    assert events.of_kind("stalled") == [stalled]


def test_short_policy_finds_stalls_in_about_a_second_and_takes_overrides() -> None:
    policy = short_policy(hard_timeout=2)
    assert (policy.lease_ttl, policy.renew_every, policy.max_stalls, policy.hard_timeout) == (1.5, 0.3, 1, 2)
