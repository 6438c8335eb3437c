"""Sentry: a real sentry-sdk sending to a local HTTP endpoint that receives its envelopes."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk

from tests.support.sentry_endpoint import SentryEndpoint
from tests.support.waiting import wait_until
from zombieguard import Policy
from zombieguard.enforcement.limits import Limit
from zombieguard.errors import HardTimeLimitExceeded
from zombieguard.events import (
    JobDeadLettered,
    JobStalled,
    JobStarted,
    JobTimedOut,
    QueueRecovered,
    QueueSilent,
    emit,
)
from zombieguard.integrations.sentry import ZombieGuardIntegration, stack_frames

FAULTHANDLER_DUMP = """Current thread 0x00007f (most recent call first):
  File "/app/jobs.py", line 12 in crunch
  File "/app/worker.py", line 40 in run
  File "/usr/lib/rq/job.py", line 1539 in _execute
"""


@pytest.fixture
def sentry_events() -> Iterator[list[dict[str, Any]]]:
    """sentry-sdk initialised with the integration, sending to a local endpoint; the events it got."""
    endpoint = SentryEndpoint()
    sentry_sdk.init(
        dsn=endpoint.dsn,
        integrations=[ZombieGuardIntegration(max_events_per_fingerprint=3, rate_limit_window=60)],
        default_integrations=False,
    )
    yield endpoint.events
    sentry_sdk.get_client().close()
    sentry_sdk.init(default_integrations=False)  # no DSN: a client that sends nothing
    endpoint.close()


def _event(kind: type, **extra: Any) -> Any:
    fields = {"job_id": "job-1", "task": "billing.charge", "queue": "default", "attempt": 2, "worker": "w1"}
    return kind(**fields, adapter="rq", reason="why", **extra)


def test_a_stopped_job_becomes_one_sentry_event_with_fingerprint_tags_and_the_frame_where_it_hung(
    sentry_events: list[dict[str, Any]],
) -> None:
    emit("rq", _event(JobTimedOut, limit=Limit.HARD, stack=FAULTHANDLER_DUMP, policy=Policy(hard_timeout=30)))
    sentry_sdk.flush(5)
    [event] = wait_until(lambda: list(sentry_events), 5, what="the event arrived")
    assert event["fingerprint"] == ["zombieguard", "timed_out", "billing.charge"]
    assert event["level"] == "error"
    assert event["tags"]["zombieguard.kind"] == "timed_out"
    assert event["tags"]["zombieguard.task"] == "billing.charge"
    assert event["tags"]["zombieguard.attempt"] == "2"
    assert event["tags"]["zombieguard.worker"] == "w1"
    frames = event["threads"]["values"][0]["stacktrace"]["frames"]
    assert [f["function"] for f in frames] == ["_execute", "run", "crunch"]  # innermost last
    assert frames[-1]["lineno"] == 12
    assert event["contexts"]["zombieguard"]["job_id"] == "job-1"
    assert event["contexts"]["zombieguard"]["policy"]["hard_timeout"] == 30  # the policy it ran under
    assert "args" not in json.dumps(event)  # job arguments are never sent


def test_a_storm_of_stalls_is_bounded_per_fingerprint_and_soft_limits_are_not_reported(
    sentry_events: list[dict[str, Any]],
) -> None:
    for _ in range(10):
        emit("rq", _event(JobStalled))
    emit("rq", _event(JobTimedOut, limit=Limit.SOFT))
    emit("rq", _event(JobDeadLettered))
    sentry_sdk.flush(5)
    wait_until(lambda: len(sentry_events) >= 4, 5, what="events arrived")
    kinds = [e["tags"]["zombieguard.kind"] for e in sentry_events]
    assert sorted(kinds) == ["dead_lettered", "stalled", "stalled", "stalled"]
    assert {e["level"] for e in sentry_events if e["tags"]["zombieguard.kind"] == "stalled"} == {"warning"}


def test_a_python_traceback_is_read_oldest_frame_first() -> None:
    stack = (
        "Traceback (most recent call last):\n"
        '  File "/a.py", line 1, in outer\n'
        '  File "/b.py", line 2, in inner\n'
    )
    assert [f["function"] for f in stack_frames(stack)] == ["outer", "inner"]


# sentry-sdk 2.7x's data_collection; older 2.x refuses the option.
_DC = pytest.mark.skipif(
    "data_collection" not in inspect.signature(sentry_sdk.consts.ClientConstructor.__init__).parameters,
    reason="this sentry-sdk has no data_collection option",
)


@pytest.mark.parametrize(
    ("settings", "pii"),
    [
        ({"send_default_pii": False}, False),
        ({"send_default_pii": True}, True),
        pytest.param({"data_collection": {"queues": False}}, False, marks=_DC),
        pytest.param({"data_collection": {"queues": True}}, True, marks=_DC),
        pytest.param(
            {"data_collection": {"queues": False}, "send_default_pii": True},
            False,
            marks=_DC,
        ),
    ],
)
def test_the_job_and_its_arguments_go_to_sentry_only_where_sentry_settings_let_job_arguments_go(
    settings: dict[str, Any], pii: bool
) -> None:
    # As sentry-sdk's own Celery and RQ integrations decide: data_collection["queues"] where
    # data_collection is given (it wins over send_default_pii), else send_default_pii.
    endpoint = SentryEndpoint()
    sentry_sdk.init(
        dsn=endpoint.dsn, integrations=[ZombieGuardIntegration()], default_integrations=False, **settings
    )
    try:
        payload = json.dumps({"signature": {"args": ["card-4242-secret"]}})
        emit("celery", _event(JobStalled, payload=payload))
        # The command lines of the programs a stopped job started carry arguments the same way.
        ended = ("41 charge --card card-4343-secret",)
        emit("celery", _event(JobTimedOut, limit=Limit.HARD, processes=ended))
        sentry_sdk.flush(5)
        got = wait_until(lambda: len(endpoint.events) == 2 and list(endpoint.events), 5, what="both events")
        stalled, timed_out = sorted(got, key=lambda e: str(e["tags"]["zombieguard.kind"]))
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.init(default_integrations=False)
        endpoint.close()
    assert ("card-4242-secret" in json.dumps(stalled)) is pii
    assert ("card-4343-secret" in json.dumps(timed_out)) is pii
    if pii:
        assert stalled["contexts"]["zombieguard"]["job"] == {"signature": {"args": ["card-4242-secret"]}}
        assert timed_out["contexts"]["zombieguard"]["processes_ended"] == list(ended)
    else:
        assert timed_out["contexts"]["zombieguard"]["processes_ended"] == 1


def test_the_job_s_own_exceptions_carry_the_attempt_and_interrupts_are_not_reported_twice(
    sentry_events: list[dict[str, Any]],
) -> None:
    emit("rq", _event(JobStarted))
    try:
        raise ValueError("the job's own bug")
    except ValueError:
        sentry_sdk.capture_exception()
    try:
        raise HardTimeLimitExceeded("job passed its hard_timeout of 2 s")
    except HardTimeLimitExceeded:
        sentry_sdk.capture_exception()  # the RQ integration's report of zombieguard's interrupt
    sentry_sdk.flush(5)
    [own] = wait_until(lambda: list(sentry_events), 5, what="the event arrived")  # flush() sent both
    assert own["exception"]["values"][-1]["type"] == "ValueError"
    assert (own["tags"]["zombieguard.attempt"], own["tags"]["zombieguard.worker"]) == ("2", "w1")


def test_in_a_dump_of_every_thread_the_job_s_thread_is_the_main_one() -> None:
    dump = (
        "Current thread 0x00007f01 (most recent call first):\n"
        '  File "/usr/lib/python3/threading.py", line 331 in wait\n'
        '  File "/app/zombieguard/heartbeat.py", line 160 in _run\n'
        '  File "/usr/lib/python3/threading.py", line 1002 in _bootstrap\n'
        "\n"
        "Thread 0x00007f00 (most recent call first):\n"
        '  File "/app/tasks.py", line 9 in hang\n'
        '  File "/usr/bin/celery", line 8 in <module>\n'
    )
    assert [f["function"] for f in stack_frames(dump)] == ["<module>", "hang"]


def test_a_silent_queue_is_an_error_and_its_recovery_an_info_event_in_one_issue(
    sentry_events: list[dict[str, Any]],
) -> None:
    emit("celery", QueueSilent("billing", "celery", 612.0, running=2, waiting=40))
    emit("celery", QueueRecovered("billing", "celery", 3.0, running=1, waiting=0))
    sentry_sdk.flush(5)
    silent, recovered = wait_until(lambda: len(sentry_events) >= 2 and list(sentry_events), 5, what="events")
    assert silent["fingerprint"] == recovered["fingerprint"] == ["zombieguard", "queue_silent", "billing"]
    assert (silent["level"], recovered["level"]) == ("error", "info")
    assert silent["message"] == "queue billing: no job completed 612 s (2 running, 40 waiting)"
