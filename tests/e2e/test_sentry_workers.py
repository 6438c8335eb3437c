"""Sentry with real workers of both frameworks: a real sentry-sdk in the workers (with sentry-sdk's
own Celery or RQ integration alongside), posting to a local endpoint in the test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk

from tests.support.celery_harness import CeleryHarness
from tests.support.rq_harness import RQHarness
from tests.support.sentry_endpoint import SentryEndpoint
from tests.support.waiting import wait_until
from zombieguard.integrations import version_tuple

pytestmark = pytest.mark.slow

CELERY_SCOPE_SENDS_ARGUMENTS = version_tuple(sentry_sdk.VERSION) < (2, 59)
"""sentry-sdk's Celery integration puts a task's arguments on every event sent from the task's scope
(zombieguard's included) whatever the settings say, before 2.59."""


@pytest.fixture
def endpoint() -> Iterator[SentryEndpoint]:
    """Where the workers' sentry-sdk sends its envelopes."""
    server = SentryEndpoint()
    yield server
    server.close()


def _zombieguard_events(endpoint: SentryEndpoint) -> list[dict[str, Any]]:
    return [e for e in endpoint.events if (e.get("fingerprint") or [""])[0] == "zombieguard"]


def _exception_types(endpoint: SentryEndpoint) -> list[str]:
    return [e["exception"]["values"][-1]["type"] for e in endpoint.events if e.get("exception")]


def _check_timed_out(
    event: dict[str, Any], task: str, notes: str, pii: bool, scope_sends_arguments: bool = False
) -> None:
    assert event["fingerprint"] == ["zombieguard", "timed_out", task]
    assert event["tags"]["zombieguard.kind"] == "timed_out"
    assert event["tags"]["zombieguard.attempt"] == "1"
    frames = event["threads"]["values"][0]["stacktrace"]["frames"]
    assert "hang_on_socket" in [f["function"] for f in frames]  # where it was stuck
    # The job's arguments only where Sentry lets them go.
    assert (notes in json.dumps(event["contexts"]["zombieguard"])) is pii
    assert (notes in json.dumps(event)) is (pii or scope_sends_arguments)


@pytest.mark.parametrize("pii", [False, True])
def test_a_celery_task_stopped_at_its_limit_is_one_sentry_issue_and_its_own_bugs_carry_the_attempt(
    celery_harness: CeleryHarness, endpoint: SentryEndpoint, black_hole: int, pii: bool
) -> None:
    celery_harness.start_worker(
        "prefork", env={"ZG_SENTRY_DSN": endpoint.dsn, "ZG_SENTRY_PII": "1" if pii else "0"}
    )
    hung = celery_harness.send("hang_on_socket", celery_harness.notes, black_hole, time_limit=2)
    celery_harness.wait_state(hung, {"FAILURE"}, 15)
    buggy = celery_harness.send("fails", celery_harness.notes)
    celery_harness.wait_state(buggy, {"FAILURE"}, 15)
    wait_until(lambda: _zombieguard_events(endpoint) and "ValueError" in _exception_types(endpoint), 15)
    events = _zombieguard_events(endpoint)
    assert [e["fingerprint"] for e in events] == [
        ["zombieguard", "timed_out", "tests.support.celery_app.hang_on_socket"]
    ]
    _check_timed_out(
        events[0],
        "tests.support.celery_app.hang_on_socket",
        celery_harness.notes,
        pii,
        CELERY_SCOPE_SENDS_ARGUMENTS,
    )
    # sentry-sdk's Celery integration reported the task's own bug, tagged; not the limit a second time.
    assert _exception_types(endpoint) == ["ValueError"]
    [bug] = [e for e in endpoint.events if e.get("exception")]
    assert bug["tags"]["zombieguard.attempt"] == "1"


def test_an_rq_job_stopped_at_its_limit_is_one_sentry_issue_alongside_the_rq_integration(
    rq_harness: RQHarness, endpoint: SentryEndpoint, black_hole: int
) -> None:
    rq_harness.start_worker("GuardedWorker", env={"ZG_SENTRY_DSN": endpoint.dsn})
    job = rq_harness.enqueue("hang_on_socket", rq_harness.notes, black_hole, job_timeout=2)
    rq_harness.wait_status(job, ["failed"], 15)
    buggy = rq_harness.enqueue("fails", rq_harness.notes)
    rq_harness.wait_status(buggy, ["failed"], 15)
    wait_until(lambda: _zombieguard_events(endpoint) and "ValueError" in _exception_types(endpoint), 15)
    events = _zombieguard_events(endpoint)
    assert [e["fingerprint"] for e in events] == [
        ["zombieguard", "timed_out", "tests.support.rq_jobs.hang_on_socket"]
    ]
    _check_timed_out(events[0], "tests.support.rq_jobs.hang_on_socket", rq_harness.notes, pii=False)
    assert _exception_types(endpoint) == ["ValueError"]
    [bug] = [e for e in endpoint.events if e.get("exception")]
    assert bug["tags"]["zombieguard.attempt"] == "1"
