"""The records of the lease data model (docs/data-model.md), as Redis holds and Lua replies them."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from zombieguard.policy import Policy

log = logging.getLogger("zombieguard.leases")


class CorruptRecord(ValueError):
    """A record in Redis that zombieguard cannot read; it is reported and skipped."""


class AcquireStatus(str, Enum):
    """What :meth:`LeaseStore.acquire` decided about a delivery."""

    ACQUIRED = "acquired"
    """A new attempt started; run the job."""
    BUSY = "busy"
    """A live attempt (or a sweeper recovering it) holds the job: the delivery is a duplicate."""
    STALE = "stale"
    """The delivery is for an attempt that a newer one superseded: do not run it."""


class Outcome(str, Enum):
    """How an attempt ended, or why it was taken from its worker: one vocabulary for the attempt's
    release, a lease given up, a sweeper's claim, the history and the framework's failure."""

    COMPLETED = "completed"
    FAILED = "failed"
    """The job raised."""
    TIMED_OUT = "timed_out"
    """Past its ``hard_timeout``."""
    HUNG = "hung"
    """No progress within its ``progress_timeout``."""
    STOPPED = "stopped"
    """An operator stopped it (``zombieguard kill``, RQ's kill-horse and stop-job commands)."""
    STALLED = "stalled"
    """Its worker died or froze: the lease lapsed, and a sweeper recovers the job."""
    DEAD_LETTERED = "dead_lettered"
    """It stalled ``max_stalls`` times (a poison pill) and went to the dead-letter queue."""
    UNSTARTED = "unstarted"
    """Requeued, and started by no worker in time: a sweeper publishes it again (a claim reason)."""
    LEASE_LOST = "lease_lost"
    """A newer attempt, a sweeper or a stop holds the job now: this attempt is superseded."""
    REQUEUED = "requeued"
    """The job handed its own message back to the broker (Celery ``Reject(requeue=True)``): the
    same delivery comes again and must not be taken for a stale one."""

    def __str__(self) -> str:
        return self.value


Condition = Literal["running", "hung", "overdue", "stalled"]
"""How a running job looks at a moment: :meth:`LeaseRecord.condition`."""


class LeaseState(str, Enum):
    """Where a lease is (docs/data-model.md)."""

    RUNNING = "running"
    """An attempt holds it and renews it."""
    RECOVERING = "recovering"
    """A sweeper claimed it and is acting on it."""
    QUEUED = "queued"
    """A sweeper requeued the job; the next delivery starts the next attempt."""
    DONE = "done"
    """The job ended (its ``outcome`` says how)."""

    def __str__(self) -> str:
        return self.value


def text(value: Any) -> str:
    """A Redis reply item as text (replies are bytes unless the client decodes them)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _num(value: str) -> float | None:
    return float(value) if value != "" else None


class FinishedState(str, Enum):
    """Where a sweeper leaves a job it claimed."""

    QUEUED = "queued"
    """Requeued: the next delivery starts the next attempt."""
    FAILED = "failed"
    """Failed in the framework (timed out, hung, or stalls exhausted without a dead-letter queue)."""
    DEAD_LETTERED = "dead_lettered"
    ENDED = "ended"
    """The framework had recorded the job's end already: only the lease is closed."""

    def __str__(self) -> str:
        return self.value


@dataclass(slots=True)
class JobSpec:
    """What the store needs to know about a job, as an integration describes it. Not changed once
    built (``dataclasses.replace`` makes another); not frozen, as one is built for every job and a
    frozen dataclass costs four times as much to build."""

    job_id: str
    adapter: str
    task: str
    queue: str
    payload: str = ""
    """What the integration needs to requeue the job; opaque to the core (e.g. a serialised message)."""


@dataclass(frozen=True)
class AttemptRecord:
    """One ended attempt, as kept in a lease's history."""

    attempt: int
    worker: str
    started: float | None
    ended: float | None
    last_beat: float | None
    last_progress: float | None
    outcome: Outcome
    reason: str
    stack: str | None = None
    processes: tuple[str, ...] = ()
    """The processes the attempt started that were ended with it ("pid command")."""

    @classmethod
    def from_json(cls, line: str) -> AttemptRecord:
        """Parse one history line."""
        data = json.loads(line)

        def opt(name: str) -> float | None:
            value = data.get(name)
            return None if value is None else float(value)

        return cls(
            attempt=int(data["attempt"]),
            worker=str(data.get("worker", "")),
            started=opt("started"),
            ended=opt("ended"),
            last_beat=opt("last_beat"),
            last_progress=opt("last_progress"),
            outcome=Outcome(data["outcome"]),
            reason=str(data.get("reason", "")),
            stack=data.get("stack"),
            processes=tuple(str(p) for p in data.get("processes") or ()),
        )

    def to_json(self) -> str:
        """One history line."""
        return json.dumps(
            {k: v for k, v in self.__dict__.items() if v is not None and v != ()}, separators=(",", ":")
        )


@dataclass(frozen=True)
class LeaseRecord:
    """A lease as stored in Redis. Times are the Redis server's (Unix seconds)."""

    job_id: str
    adapter: str
    task: str
    queue: str
    state: LeaseState
    token: int
    attempt: int
    stalls: int
    worker: str
    started: float
    expires: float
    last_beat: float | None
    last_progress: float | None
    hard_deadline: float | None
    progress_deadline: float | None
    lease_ttl: float
    hard_timeout: float | None
    progress_timeout: float | None
    overdue_grace: float
    max_stalls: int
    dead_letter: bool
    progress: str
    message: str
    payload: str
    reason: str
    stack: str = ""
    """The stack captured when the attempt was given up, if any."""
    history: tuple[AttemptRecord, ...] = field(default=())
    republished: int = 0
    """Times a requeued job was published again because no worker started it."""
    stopped_by: str = ""
    """Who stopped the job (``zombieguard kill``), and why."""
    abandoned: Outcome | None = None
    """Why a running lease was given up (stalled, timed out, hung), if it was: by its
    worker or the watchdog beside it, or by the first script that found it lapsed and overdue. It
    is then the sweeper's, and no longer its attempt's."""
    abandoned_how: str = ""
    """How the given-up attempt's process ended, when its worker or the watchdog process knew:
    ``killed by signal 9 (SIGKILL)``, ``exited with code 1``, ``killed by the OOM killer``."""
    worker_gone: float | None = None
    """When its worker was found dead by its closed presence connection (server time), if it was:
    the lease was then given up as stalled (see ``presence.lua``)."""
    processes: int | None = None
    """How many processes ran under the job at its worker's last renewal (None: not counted)."""
    ended_processes: tuple[str, ...] = ()
    """The processes the running attempt started that were ended with it ("pid command")."""
    verdict: FinishedState | None = None
    """The end a sweeper that claimed the job decided on and may have recorded in the framework
    (failed, dead-lettered) before it died: the sweeper that takes its claim over finishes it."""

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> LeaseRecord:
        """Parse a lease hash; raise :class:`CorruptRecord` naming what is unreadable."""
        h = {text(k): text(v) for k, v in raw.items()}
        try:
            history = tuple(
                AttemptRecord.from_json(line) for line in h.get("history", "").splitlines() if line
            )
            return cls(
                job_id=h["job"],
                adapter=h["adapter"],
                task=h.get("task", ""),
                queue=h.get("queue", ""),
                state=LeaseState(h["state"]),
                token=int(h["token"]),
                attempt=int(h["attempt"]),
                stalls=int(h.get("stalls") or 0),
                worker=h.get("worker", ""),
                started=float(h["started"]),
                expires=float(h["expires"]),
                last_beat=_num(h.get("last_beat", "")),
                last_progress=_num(h.get("last_progress", "")),
                hard_deadline=_num(h.get("hard_deadline", "")),
                progress_deadline=_num(h.get("progress_deadline", "")),
                lease_ttl=float(h["lease_ttl"]),
                hard_timeout=_num(h.get("hard_timeout", "")),
                progress_timeout=_num(h.get("progress_timeout", "")),
                overdue_grace=float(h["overdue_grace"]),
                max_stalls=int(h["max_stalls"]),
                dead_letter=h.get("dead_letter", "1") == "1",
                progress=h.get("progress", ""),
                message=h.get("message", ""),
                payload=h.get("payload", ""),
                reason=h.get("reason", ""),
                stack=h.get("stack", ""),
                history=history,
                republished=int(h.get("republished") or 0),
                stopped_by=h.get("stopped_by", ""),
                verdict=FinishedState(h["verdict"]) if h.get("verdict") else None,
                abandoned=Outcome(h["abandoned"]) if h.get("abandoned") else None,
                abandoned_how=h.get("abandoned_how", ""),
                worker_gone=_num(h.get("worker_gone", "")),
                processes=int(h["processes"]) if h.get("processes", "").isdigit() else None,
                ended_processes=tuple(h.get("ended_processes", "").splitlines()),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise CorruptRecord(f"lease record of {h.get('job', '?')!r} is unreadable: {exc!r}") from None

    @property
    def given_up(self) -> bool:
        """Whether the lease is still running but was given up for a sweeper to act on."""
        return self.state is LeaseState.RUNNING and self.abandoned is not None

    def taken_from(self, token: int) -> str:
        """Why the attempt of fencing token ``token`` no longer holds this lease, and what happens to
        the job now, in plain words."""
        if self.stopped_by:
            return f"stopped by {self.stopped_by}; the job ends failed (stopped)"
        if self.token != token and self.state is LeaseState.RUNNING:
            return f"attempt {self.attempt} holds the job now and runs it"
        if self.token != token:
            return f"attempt {self.attempt} took the job over (its lease is {self.state} now)"
        if self.given_up:
            return f"given up as {self.abandoned}; a sweeper recovers or ends the job"
        if self.state is LeaseState.RECOVERING:
            return "its lease expired and a sweeper is recovering the job"
        return f"the job is {self.state} already"

    def held_by(self, token: int) -> bool:
        """Whether the attempt of fencing token ``token`` still holds this lease: it is running
        under that token and nobody gave it up."""
        return self.state is LeaseState.RUNNING and self.token == token and not self.given_up

    def policy(self) -> Policy | None:
        """The policy the lease was taken under, as far as the lease records it (None if invalid)."""
        try:
            return Policy(
                hard_timeout=self.hard_timeout,
                progress_timeout=self.progress_timeout,
                lease_ttl=self.lease_ttl,
                overdue_grace=self.overdue_grace,
                max_stalls=self.max_stalls,
                dead_letter=self.dead_letter,
            )
        except ValueError:
            return None

    def condition(self, now: float) -> Condition:
        """At server time ``now``: running, hung (alive, no progress), overdue (past its hard limit)
        or stalled (lease expired, or being recovered)."""
        if self.state is LeaseState.RECOVERING or self.expires <= now:
            return "stalled"
        if self.hard_deadline is not None and self.hard_deadline <= now:
            return "overdue"
        if self.progress_deadline is not None and self.progress_deadline <= now:
            return "hung"
        return "running"

    def ended_attempt(
        self, outcome: Outcome, reason: str, ended: float, stack: str | None = None
    ) -> AttemptRecord:
        """This record's current attempt, as a history entry that ended now."""
        return AttemptRecord(
            attempt=self.attempt,
            worker=self.worker,
            started=self.started,
            ended=ended,
            last_beat=self.last_beat,
            last_progress=self.last_progress,
            outcome=outcome,
            reason=reason,
            stack=stack,
            processes=self.ended_processes,
        )


@dataclass(frozen=True)
class Acquired:
    """The result of :meth:`LeaseStore.acquire`."""

    status: AcquireStatus
    token: int = 0
    attempt: int = 0
    stalls: int = 0
    started: float = 0.0
    checkpoint: str | None = None
    holder: str = ""
    """For BUSY, the worker holding the live attempt."""
    holder_state: LeaseState | None = None
    """For BUSY, running, or recovering while a sweeper requeues the job (this delivery is probably
    that requeue: wait for the sweeper to finish, then acquire again). For STALE, the lease's state
    (done when the job ended). None when the record holds no state this version knows."""

    @classmethod
    def from_reply(cls, job_id: str, raw: Sequence[Any]) -> Acquired:
        """The acquire script's reply, read."""
        reply = [None if item is None else text(item) for item in raw]
        status = AcquireStatus(reply[0])
        if status is AcquireStatus.BUSY:
            return cls(
                status, attempt=int(reply[1] or 0), holder=reply[3] or "", holder_state=_state(reply[2])
            )
        if status is AcquireStatus.STALE:
            return cls(status, attempt=int(reply[1] or 0), holder_state=_state(reply[2]))
        if reply[6]:
            log.warning("job %s: replaced a corrupt lease record (%s)", job_id, reply[6])
        return cls(
            status,
            token=int(reply[1] or 0),
            attempt=int(reply[2] or 0),
            stalls=int(reply[3] or 0),
            started=float(reply[4] or 0),
            checkpoint=reply[5],
        )


def _state(value: str | None) -> LeaseState | None:
    try:
        return LeaseState(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class Claimed:
    """A lease a sweeper claimed: the record as it was, with the claim's fencing token."""

    record: LeaseRecord
    claim_token: int
    reason: Outcome
    """Stalled, timed out, hung, stopped (``zombieguard kill``) or unstarted."""
    checkpoint: str | None
    claimed_at: float


@dataclass(frozen=True)
class DeadWorker:
    """A worker gone without saying goodbye: its presence expired (it stopped heartbeating), or its
    presence connection closed and stayed closed (its process died)."""

    name: str
    info: Mapping[str, str]
    given_up: int = 0
    """Running leases of it given up as stalled (found by its closed presence connection)."""


@dataclass(frozen=True)
class Sweep:
    """What one :meth:`LeaseStore.claim` call returned."""

    claimed: tuple[Claimed, ...]
    corrupt: tuple[tuple[str, str], ...]
    """(job id, what is wrong): reported and dropped from the due index, the record left for a person."""
    dead_workers: tuple[DeadWorker, ...]
    replicated: bool = True
    """Whether a replica acknowledged the claims (asked of a Sentinel service's primary only: a
    former primary that is still up takes them, and loses them when Sentinel demotes it)."""


@dataclass(frozen=True)
class PresenceLook:
    """What a look at an integration's presence connections found (``presence.lua``)."""

    watching: bool
    """This sweeper holds a watcher's seat (else it did not look)."""
    workers: int = 0
    """Workers with a presence connection looked at."""
    dead: tuple[DeadWorker, ...] = ()
    """Workers found dead, their running leases given up, and removed from the registry."""


RenewCode = str  # 'ok' | 'lost' | 'missing' | 'corrupt'


@dataclass(frozen=True)
class DeferredRelease:
    """The end of an attempt whose completion was safe to record without waiting (see
    ``Attempt.safe_to_finish``); written later, with the next acquire or by the heartbeat."""

    job: JobSpec
    token: int
    outcome: Outcome
    reason: str = ""
