"""Sentry integration: zombies reported as grouped Sentry issues.

    import sentry_sdk
    from zombieguard.integrations.sentry import ZombieGuardIntegration

    sentry_sdk.init(dsn=..., integrations=[ZombieGuardIntegration()])

Each stalled, hung, timed-out (hard limit), dead-lettered and lease-lost event becomes one Sentry
event: a level by kind, a fingerprint ``(zombieguard, kind, task)`` so that a thousand stalls of one
task are one issue, tags ``zombieguard.kind/task/queue/worker/attempt``, a ``zombieguard`` context
with the lease's timeline, and the captured stack of the stopped job as the event's stack trace. A
storm is bounded: at most ``max_events_per_fingerprint`` events per fingerprint per
``rate_limit_window`` seconds (the rest are counted, and the count goes with the next event sent).
The job itself (its arguments) goes with the event only where sentry-sdk's own Celery and RQ
integrations would send job arguments: ``data_collection["queues"]`` when ``data_collection`` is
configured (sentry-sdk 2.7x), else ``send_default_pii``. The events
are reported in the process that detects them (see the integration's docs).

Alongside sentry-sdk's own RQ and Celery integrations: those keep reporting the exceptions the jobs
themselves raise, tagged here with the attempt (``zombieguard.attempt``, ``zombieguard.worker``);
their report of zombieguard's own interrupt (the job stopped at a limit, or superseded) is dropped,
because zombieguard's event reports the same failure, grouped by task and with the stack.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from typing import Any, cast

from zombieguard.errors import IntegrationNotAvailable

try:
    import sentry_sdk
    from sentry_sdk.integrations import Integration
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise IntegrationNotAvailable(
        f"zombieguard.integrations.sentry needs sentry-sdk ({exc}): pip install 'zombieguard[sentry]'"
    ) from exc

from zombieguard import events
from zombieguard.enforcement.limits import Limit
from zombieguard.events import JobEvent, JobStarted, JobTimedOut, QueueEvent

LEVELS = {
    "stalled": "warning",
    "hung": "error",
    "timed_out": "error",
    "dead_lettered": "error",
    "lease_lost": "warning",
}

# Python tracebacks ('File "x", line 3, in f') and faulthandler dumps ('File "x", line 3 in f').
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+),? in (?P<func>\S+)')


def stack_frames(stack: str) -> list[dict[str, Any]]:
    """Sentry frames (oldest first) from a captured stack: the job's thread.

    A faulthandler dump lists every thread of the process, the one that caught the signal first;
    the job's thread is the main thread there (an RQ horse, a Celery pool process or solo worker),
    the one whose outermost frame is not ``threading``'s ``_bootstrap``.
    """
    blocks = [
        b for b in re.split(r"\n\s*\n|(?=\nThread 0x)|(?=\nCurrent thread)", stack.strip()) if b.strip()
    ]
    parsed = []
    for block in blocks or [""]:
        frames = [
            {"filename": m["file"], "abs_path": m["file"], "lineno": int(m["line"]), "function": m["func"]}
            for m in _FRAME.finditer(block)
        ]
        if "most recent call first" in block:
            frames.reverse()  # faulthandler lists the innermost frame first; Sentry wants it last
        parsed.append(frames)
    main = [frames for frames in parsed if frames and frames[0]["function"] != "_bootstrap"]
    return (main or parsed)[0]


class ZombieGuardIntegration(Integration):
    """Reports zombieguard's zombie events to Sentry."""

    identifier = "zombieguard"

    def __init__(self, max_events_per_fingerprint: int = 10, rate_limit_window: float = 60.0) -> None:
        if max_events_per_fingerprint < 1 or rate_limit_window <= 0:
            raise ValueError(
                f"ZombieGuardIntegration(max_events_per_fingerprint={max_events_per_fingerprint!r}, "
                f"rate_limit_window={rate_limit_window!r}) is invalid: both must be positive"
            )
        self.max_events = max_events_per_fingerprint
        self.window = rate_limit_window
        self._sent: dict[tuple[str, ...], list[float]] = {}
        self._suppressed: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()

    @staticmethod
    def setup_once() -> None:
        """Connect to zombieguard's signals (once per process; the client decides whether to send)."""
        for signal in (
            events.job_stalled,
            events.job_hung,
            events.job_timed_out,
            events.job_dead_lettered,
            events.lease_lost,
        ):
            signal.connect(_report, weak=False)
        events.job_started.connect(_tag_scope, weak=False)
        events.queue_silent.connect(_report_queue, weak=False)
        events.queue_recovered.connect(_report_queue, weak=False)
        sentry_sdk.scope.add_global_event_processor(cast(Any, _drop_interrupt_reports))

    def admit(self, fingerprint: tuple[str, ...], now: float) -> int | None:
        """None when rate-limited; else how many events of this fingerprint were dropped before it."""
        with self._lock:
            recent = [t for t in self._sent.get(fingerprint, []) if now - t < self.window]
            if len(recent) >= self.max_events:
                self._sent[fingerprint] = recent
                self._suppressed[fingerprint] = self._suppressed.get(fingerprint, 0) + 1
                return None
            recent.append(now)
            self._sent[fingerprint] = recent
            return self._suppressed.pop(fingerprint, 0)


# What zombieguard raises in a job to stop it, as the job's own exception reaches sentry-sdk: the
# interrupts themselves (RQ), or Celery's TimeLimitExceeded that the Celery integration turns them into.
_INTERRUPTS = {"HardTimeLimitExceeded", "JobHung", "LeaseLost"}


def _tag_scope(sender: Any, event: JobStarted) -> None:
    """Where the job runs: its own exceptions are reported with the attempt that raised them. The
    frameworks' integrations report after the attempt's end is recorded, so the tags stay on the scope
    until the next job sets its own (Celery and RQ give each job a scope of its own anyway)."""
    if sentry_sdk.get_client().get_integration(ZombieGuardIntegration) is None:
        return
    # The isolation scope's tags (sentry_sdk.get_isolation_scope() itself exists only since 2.12).
    sentry_sdk.set_tag("zombieguard.attempt", str(event.attempt))
    sentry_sdk.set_tag("zombieguard.worker", event.worker)


def _drop_interrupt_reports(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    """Drop another integration's report of zombieguard's own interrupt: zombieguard reported it."""
    if sentry_sdk.get_client().get_integration(ZombieGuardIntegration) is None:
        return event
    for value in (event.get("exception") or {}).get("values") or []:
        kind, text = value.get("type") or "", str(value.get("value") or "")
        module = str(value.get("module") or "")
        if kind in _INTERRUPTS or (kind == "TimeLimitExceeded" and "zombieguard:" in text):
            return None
        if kind == "JobTimeoutException" and module.startswith("zombieguard."):
            return None  # RQ's timeout type, as zombieguard raises it at RQ's own job_timeout
    return event


def _report_queue(sender: Any, event: QueueEvent) -> None:
    """A queue went silent (an error), or recovered (info, grouped with it)."""
    integration = sentry_sdk.get_client().get_integration(ZombieGuardIntegration)
    if integration is None:
        return
    silent = event.kind == "queue_silent"
    fingerprint = ("zombieguard", "queue_silent", event.queue)
    suppressed = integration.admit((*fingerprint, event.kind), time.monotonic())
    if suppressed is None:
        return
    waiting = "?" if event.waiting is None else str(event.waiting)
    what = "no job completed" if silent else "completing jobs again after"
    counts = f"{event.running} running, {waiting} waiting"
    sentry_event: dict[str, Any] = {
        "level": "error" if silent else "info",
        "logger": "zombieguard",
        "message": f"queue {event.queue}: {what} {event.silent_for:.0f} s ({counts})",
        "fingerprint": list(fingerprint),
        "tags": {"zombieguard.kind": event.kind, "zombieguard.queue": event.queue},
        "contexts": {
            "zombieguard": {
                "adapter": event.adapter,
                "silent_for": event.silent_for,
                "running": event.running,
                "waiting": event.waiting,
                "suppressed_before_this": suppressed,
            }
        },
    }
    sentry_sdk.capture_event(cast(Any, sentry_event))


def _job_arguments_allowed() -> bool:
    """Whether the user's Sentry settings let a job's arguments go with an event, decided as
    sentry-sdk's Celery and RQ integrations decide it."""
    client = sentry_sdk.get_client()
    options = getattr(client, "options", None) or {}
    data_collection = options.get("data_collection")
    if isinstance(data_collection, dict) and data_collection.get("provided_by_user"):
        return bool(data_collection.get("queues"))
    return bool(client.should_send_default_pii())


def _job_description(payload: str) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return payload


def _report(sender: Any, event: JobEvent) -> None:
    integration = sentry_sdk.get_client().get_integration(ZombieGuardIntegration)
    if integration is None or (isinstance(event, JobTimedOut) and event.limit is Limit.SOFT):
        return
    kind = event.kind
    fingerprint = ("zombieguard", kind, event.task)
    suppressed = integration.admit(fingerprint, time.monotonic())
    if suppressed is None:
        return
    sentry_event: dict[str, Any] = {
        "level": LEVELS[kind],
        "logger": "zombieguard",
        "message": f"{event.task or event.job_id}: {kind.replace('_', ' ')} ({event.reason})",
        "fingerprint": list(fingerprint),
        "tags": {
            "zombieguard.kind": kind,
            "zombieguard.task": event.task,
            "zombieguard.queue": event.queue,
            "zombieguard.worker": event.worker,
            "zombieguard.attempt": str(event.attempt),
        },
        "contexts": {
            "zombieguard": {
                "job_id": event.job_id,
                "adapter": event.adapter,
                "reason": event.reason,
                "started_at": event.started_at,
                "last_beat_at": event.last_beat_at,
                "last_progress_at": event.last_progress_at,
                "detected_at": event.at,
                "suppressed_before_this": suppressed,
                **dict(event.details),
            }
        },
    }
    if event.policy is not None:
        policy = {k: v for k, v in dataclasses.asdict(event.policy).items() if v is not None}
        sentry_event["contexts"]["zombieguard"]["policy"] = policy
    if event.payload and _job_arguments_allowed():
        sentry_event["contexts"]["zombieguard"]["job"] = _job_description(event.payload)
    if event.processes:  # command lines carry arguments as a job's do: named only where those go
        named = _job_arguments_allowed()
        sentry_event["contexts"]["zombieguard"]["processes_ended"] = (
            list(event.processes) if named else len(event.processes)
        )
    frames = stack_frames(event.stack) if event.stack else []
    if frames:
        sentry_event["threads"] = {
            "values": [
                {"id": 0, "name": "job", "crashed": True, "current": True, "stacktrace": {"frames": frames}}
            ]
        }
    sentry_sdk.capture_event(cast(Any, sentry_event))  # sentry-sdk's Event is a TypedDict of its own


__all__ = ["ZombieGuardIntegration", "stack_frames"]
