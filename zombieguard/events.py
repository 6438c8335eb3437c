"""Typed events and the blinker signals that carry them.

Each signal sends one immutable event: ``signal.send(sender, event=event)``, where ``sender`` is the
name of the integration that detected it (``"rq"``, ``"celery"``, ``"sweeper"`` for a standalone
sweeper). Receivers are called in the process that detected the event, synchronously; one that
raises is logged and does not disturb the job or the worker.

    from zombieguard import signals

    @signals.job_stalled.connect
    def page_someone(sender, event):
        ...
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

from blinker import Namespace, Signal

from zombieguard.containment import contained
from zombieguard.enforcement.limits import Limit
from zombieguard.policy import Policy

_signals = Namespace()

job_started: Signal = _signals.signal("job_started", doc="An attempt acquired its lease and started.")
job_completed: Signal = _signals.signal("job_completed", doc="An attempt ended in its worker (any outcome).")
job_stalled: Signal = _signals.signal("job_stalled", doc="A lease expired: its worker is dead or frozen.")
job_hung: Signal = _signals.signal("job_hung", doc="A job made no progress within progress_timeout.")
job_timed_out: Signal = _signals.signal("job_timed_out", doc="A job ran past soft_timeout or hard_timeout.")
job_recovered: Signal = _signals.signal("job_recovered", doc="A stalled job was requeued as a new attempt.")
job_dead_lettered: Signal = _signals.signal("job_dead_lettered", doc="A job went to the dead-letter queue.")
lease_lost: Signal = _signals.signal("lease_lost", doc="A superseded attempt found out it lost its lease.")
lease_vanished: Signal = _signals.signal(
    "lease_vanished",
    doc="A running attempt's lease was missing from Redis while its worker renewed it; it was written again.",
)
job_processes_ended: Signal = _signals.signal(
    "job_processes_ended",
    doc="The processes a job started were ended with it (its stop, or its worker's death).",
)
worker_zombie: Signal = _signals.signal(
    "worker_zombie", doc="A worker stopped heartbeating, or holds zombies."
)
heartbeat_failed: Signal = _signals.signal("heartbeat_failed", doc="A worker could not renew its leases.")
queue_silent: Signal = _signals.signal(
    "queue_silent", doc="No job of a queue completed for silence_alert seconds while jobs waited or ran."
)
queue_recovered: Signal = _signals.signal("queue_recovered", doc="A silent queue completed a job again.")

ALL_SIGNALS: tuple[Signal, ...] = (
    job_started,
    job_completed,
    job_stalled,
    job_hung,
    job_timed_out,
    job_recovered,
    job_dead_lettered,
    lease_lost,
    lease_vanished,
    job_processes_ended,
    worker_zombie,
    heartbeat_failed,
    queue_silent,
    queue_recovered,
)


@dataclass(frozen=True)
class JobEvent:
    """What happened to one attempt of one job. Times are Unix seconds (the Redis server's clock
    where zombieguard read it from a lease)."""

    job_id: str
    task: str
    queue: str
    attempt: int
    worker: str
    adapter: str
    reason: str = ""
    started_at: float | None = None
    last_beat_at: float | None = None
    last_progress_at: float | None = None
    stack: str | None = None
    """Where the job was when it was stopped (all threads of its process), when it was captured."""
    processes: tuple[str, ...] = ()
    """The processes the job started that zombieguard ends with it, each as "pid command"."""
    at: float = field(default_factory=time.time)
    details: tuple[tuple[str, Any], ...] = ()
    """Further facts as (name, value) pairs: e.g. the limit that fired, the next attempt's number."""
    policy: Policy | None = field(default=None, repr=False)
    """The policy the attempt ran under, where known."""
    payload: str = field(default="", repr=False)
    """The job as its framework described it (its arguments among it), where known. Personal data,
    perhaps: the Sentry integration sends it only where sentry-sdk's settings let job arguments go
    (``data_collection["queues"]``, else ``send_default_pii``)."""

    @property
    def kind(self) -> str:
        """The event's kind, as used in metrics and Sentry tags (``stalled``, ``hung``, ...)."""
        return _KINDS[type(self)]

    def detail(self, name: str, default: Any = None) -> Any:
        """One of :attr:`details` by name."""
        return dict(self.details).get(name, default)


E = TypeVar("E", bound=JobEvent)


@dataclass(frozen=True)
class Subject:
    """Whom a job event is about, as the process that saw it knows the attempt: the attempt itself
    (where the job runs), a prefork pool process's slot (the worker's main process), or the lease
    (a sweeper)."""

    job_id: str
    task: str
    queue: str
    attempt: int
    worker: str
    adapter: str
    started_at: float | None = None
    last_beat_at: float | None = None
    last_progress_at: float | None = None
    payload: str = ""
    policy: Policy | None = None

    def event(self, kind: type[E], reason: str = "", stack: str | None = None, **extra: Any) -> E:
        """An event of type ``kind`` about this attempt."""
        return kind(
            job_id=self.job_id,
            task=self.task,
            queue=self.queue,
            attempt=self.attempt,
            worker=self.worker,
            adapter=self.adapter,
            reason=reason,
            started_at=self.started_at,
            last_beat_at=self.last_beat_at,
            last_progress_at=self.last_progress_at,
            stack=stack,
            payload=self.payload,
            policy=self.policy,
            **extra,
        )


@dataclass(frozen=True)
class JobStarted(JobEvent):
    """An attempt started (its lease is acquired)."""


@dataclass(frozen=True)
class JobCompleted(JobEvent):
    """An attempt ended in its worker; ``reason`` holds the outcome (completed, failed, ...)."""

    duration: float | None = None


@dataclass(frozen=True)
class JobStalled(JobEvent):
    """The lease expired: the worker died or froze."""


@dataclass(frozen=True)
class JobHungEvent(JobEvent):
    """Alive but no progress within ``progress_timeout``."""


@dataclass(frozen=True)
class JobTimedOut(JobEvent):
    """Past ``soft_timeout`` (``limit`` is :attr:`Limit.SOFT`) or ``hard_timeout`` (:attr:`Limit.HARD`)."""

    limit: Limit = Limit.HARD


@dataclass(frozen=True)
class JobRecovered(JobEvent):
    """Requeued as a new attempt; ``attempt`` is the attempt that stalled."""


@dataclass(frozen=True)
class JobDeadLettered(JobEvent):
    """Moved to the dead-letter queue."""


@dataclass(frozen=True)
class LeaseLostEvent(JobEvent):
    """A superseded attempt learned that a newer one holds the lease; its writes are refused."""


@dataclass(frozen=True)
class LeaseVanished(JobEvent):
    """The lease of a running attempt was missing from Redis: Redis evicted it (a
    ``maxmemory-policy`` other than ``noeviction``), restarted without persistence, or failed over
    to a replica the write had not reached. Its worker, renewing it, wrote it again; or, when the
    job's process had died, whoever gave the job up did (the worker, its watchdog process, or the
    next worker started on the machine), so that it is recovered. Until then a sweeper could not
    see the job."""


@dataclass(frozen=True)
class JobProcessesEnded(JobEvent):
    """zombieguard ended the job and, with it, the processes it started (:attr:`processes`): sent
    SIGTERM, then SIGKILL past the policy's ``kill_children_grace``."""


@dataclass(frozen=True)
class WorkerEvent:
    """Something about a whole worker."""

    worker: str
    adapter: str
    reason: str
    info: tuple[tuple[str, str], ...] = ()
    at: float = field(default_factory=time.time)

    @property
    def kind(self) -> str:
        """The event's kind (``worker_zombie`` or ``heartbeat_failed``)."""
        return _KINDS[type(self)]


@dataclass(frozen=True)
class WorkerZombie(WorkerEvent):
    """A worker stopped heartbeating without leaving, or holds threads it cannot stop."""


@dataclass(frozen=True)
class HeartbeatFailed(WorkerEvent):
    """A heartbeat round trip failed (Redis unreachable); ``failures`` counts them in a row."""

    failures: int = 1


@dataclass(frozen=True)
class QueueEvent:
    """Something about a whole queue: nothing of it completed for a while (or did again)."""

    queue: str
    adapter: str
    silent_for: float
    """Seconds since a job of the queue last completed."""
    running: int
    """Guarded jobs of the queue holding a lease."""
    waiting: int | None
    """Jobs waiting in the queue, as its framework says (None when it cannot say)."""
    at: float = field(default_factory=time.time)

    @property
    def kind(self) -> str:
        """``queue_silent`` or ``queue_recovered``."""
        return _KINDS[type(self)]


@dataclass(frozen=True)
class QueueSilent(QueueEvent):
    """No job of the queue completed for ``silence_alert`` seconds while jobs waited or ran."""


@dataclass(frozen=True)
class QueueRecovered(QueueEvent):
    """A queue that was silent completed a job again (or has nothing left to do)."""


_KINDS: dict[type, str] = {
    JobStarted: "started",
    JobCompleted: "completed",
    JobStalled: "stalled",
    JobHungEvent: "hung",
    JobTimedOut: "timed_out",
    JobRecovered: "recovered",
    JobDeadLettered: "dead_lettered",
    LeaseLostEvent: "lease_lost",
    LeaseVanished: "lease_vanished",
    JobProcessesEnded: "processes_ended",
    WorkerZombie: "worker_zombie",
    HeartbeatFailed: "heartbeat_failed",
    QueueSilent: "queue_silent",
    QueueRecovered: "queue_recovered",
}

SIGNAL_OF: dict[type, Signal] = {
    JobStarted: job_started,
    JobCompleted: job_completed,
    JobStalled: job_stalled,
    JobHungEvent: job_hung,
    JobTimedOut: job_timed_out,
    JobRecovered: job_recovered,
    JobDeadLettered: job_dead_lettered,
    LeaseLostEvent: lease_lost,
    LeaseVanished: lease_vanished,
    JobProcessesEnded: job_processes_ended,
    WorkerZombie: worker_zombie,
    HeartbeatFailed: heartbeat_failed,
    QueueSilent: queue_silent,
    QueueRecovered: queue_recovered,
}


def listened(kind: type) -> bool:
    """Whether any receiver is connected to the signal of event ``kind`` (to skip building events
    that no one receives, on a job's path)."""
    return bool(SIGNAL_OF[kind].receivers)


def emit(sender: str, event: JobEvent | WorkerEvent | QueueEvent) -> None:
    """Send ``event`` on its signal; a receiver that raises is logged, never propagated."""
    signal = SIGNAL_OF[type(event)]
    if not signal.receivers:
        return
    for receiver in signal.receivers_for(sender):
        with contained(f"signal receiver {getattr(receiver, '__qualname__', receiver)!r}"):
            receiver(sender, event=event)
