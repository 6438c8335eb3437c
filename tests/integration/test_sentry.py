"""Sentry: a real sentry-sdk sending to a local HTTP endpoint that receives its envelopes."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import sentry_sdk

from tests.waiting import wait_until
from zombieguard.events import JobDeadLettered, JobStalled, JobTimedOut, emit
from zombieguard.integrations.sentry import ZombieGuardIntegration, stack_frames

FAULTHANDLER_DUMP = """Current thread 0x00007f (most recent call first):
  File "/app/jobs.py", line 12 in crunch
  File "/app/worker.py", line 40 in run
  File "/usr/lib/rq/job.py", line 1539 in _execute
"""


class _Envelopes(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        lines = body.decode().splitlines()
        for header, payload in zip(lines[1::2], lines[2::2], strict=False):
            if json.loads(header).get("type") == "event":
                self.received.append(json.loads(payload))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def sentry_events() -> Iterator[list[dict[str, Any]]]:
    """sentry-sdk initialised with the integration, sending to a local endpoint; the events it got."""
    _Envelopes.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Envelopes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sentry_sdk.init(
        dsn=f"http://public@127.0.0.1:{server.server_address[1]}/1",
        integrations=[ZombieGuardIntegration(max_events_per_fingerprint=3, rate_limit_window=60)],
        default_integrations=False,
    )
    yield _Envelopes.received
    sentry_sdk.get_client().close()
    sentry_sdk.init(default_integrations=False)  # no DSN: a client that sends nothing
    server.shutdown()
    server.server_close()


def _event(kind: type, **extra: Any) -> Any:
    fields = {"job_id": "job-1", "task": "billing.charge", "queue": "default", "attempt": 2, "worker": "w1"}
    return kind(**fields, adapter="rq", reason="why", **extra)


def test_a_stopped_job_becomes_one_sentry_event_with_fingerprint_tags_and_the_frame_where_it_hung(
    sentry_events: list[dict[str, Any]],
) -> None:
    emit("rq", _event(JobTimedOut, limit="hard", stack=FAULTHANDLER_DUMP))
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
    assert "args" not in json.dumps(event)  # job arguments are never sent


def test_a_storm_of_stalls_is_bounded_per_fingerprint_and_soft_limits_are_not_reported(
    sentry_events: list[dict[str, Any]],
) -> None:
    for _ in range(10):
        emit("rq", _event(JobStalled))
    emit("rq", _event(JobTimedOut, limit="soft"))
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
