"""The Redis data model of leases, and its transitions (docs/data-model.md describes the layout).

Every state change of a lease is one Lua script in ``zombieguard/lua``: atomic, one round trip, timed
by the Redis server's clock. Every key starts with ``{<key_prefix>}``: one hash tag, so that on Redis
Cluster all of zombieguard's keys live in one slot and every script may touch any of them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from typing import Any

import redis

from zombieguard.errors import LeaseLost
from zombieguard.policy import Policy, Settings

log = logging.getLogger("zombieguard.lease")


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
    """How an attempt ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    HUNG = "hung"
    STOPPED = "stopped"
    LEASE_LOST = "lease_lost"
    REQUEUED = "requeued"
    """The job handed its own message back to the broker (Celery ``Reject(requeue=True)``): the
    same delivery comes again and must not be taken for a stale one."""


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
    outcome: str
    reason: str
    stack: str | None = None

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
            outcome=str(data.get("outcome", "")),
            reason=str(data.get("reason", "")),
            stack=data.get("stack"),
        )

    def to_json(self) -> str:
        """One history line."""
        return json.dumps({k: v for k, v in self.__dict__.items() if v is not None}, separators=(",", ":"))


@dataclass(frozen=True)
class LeaseRecord:
    """A lease as stored in Redis. Times are the Redis server's (Unix seconds)."""

    job_id: str
    adapter: str
    task: str
    queue: str
    state: str
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
    abandoned: str = ""
    """Why a running lease was given up (``stalled``, ``timed_out``, ``hung``), if it was: by its
    worker or the watchdog beside it, or by the first script that found it lapsed and overdue. It
    is then the sweeper's, and no longer its attempt's."""
    verdict: str = ""
    """The end a sweeper that claimed the job decided on and may have recorded in the framework
    (``failed``, ``dead_lettered``) before it died: the sweeper that takes its claim over finishes it."""

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
                state=h["state"],
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
                verdict=h.get("verdict", ""),
                abandoned=h.get("abandoned", ""),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise CorruptRecord(f"lease record of {h.get('job', '?')!r} is unreadable: {exc!r}") from None

    @property
    def given_up(self) -> bool:
        """Whether the lease is still running but was given up for a sweeper to act on."""
        return self.state == "running" and bool(self.abandoned)

    def held_by(self, token: int) -> bool:
        """Whether the attempt of fencing token ``token`` still holds this lease: it is running
        under that token and nobody gave it up."""
        return self.state == "running" and self.token == token and not self.given_up

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

    def condition(self, now: float) -> str:
        """At server time ``now``: running, hung (alive, no progress), overdue (past its hard limit)
        or stalled (lease expired, or being recovered)."""
        if self.state == "recovering" or self.expires <= now:
            return "stalled"
        if self.hard_deadline is not None and self.hard_deadline <= now:
            return "overdue"
        if self.progress_deadline is not None and self.progress_deadline <= now:
            return "hung"
        return "running"

    def ended_attempt(
        self, outcome: str, reason: str, ended: float, stack: str | None = None
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
    holder_state: str = ""
    """For BUSY, ``running``, or ``recovering`` while a sweeper requeues the job (this delivery is
    probably that requeue: wait for the sweeper to finish, then acquire again). For STALE, the
    lease's state (``done`` and the sweepers' final states when the job ended)."""


@dataclass(frozen=True)
class Claimed:
    """A lease a sweeper claimed: the record as it was, with the claim's fencing token."""

    record: LeaseRecord
    claim_token: int
    reason: str
    """``stalled``, ``timed_out`` or ``hung``."""
    checkpoint: str | None
    claimed_at: float


@dataclass(frozen=True)
class DeadWorker:
    """A worker whose presence expired: it stopped heartbeating without saying goodbye."""

    name: str
    info: Mapping[str, str]


@dataclass(frozen=True)
class Sweep:
    """What one :meth:`LeaseStore.claim` call returned."""

    claimed: tuple[Claimed, ...]
    corrupt: tuple[tuple[str, str], ...]
    """(job id, what is wrong): reported and dropped from the due index, the record left for a person."""
    dead_workers: tuple[DeadWorker, ...]


RenewCode = str  # 'ok' | 'lost' | 'missing' | 'corrupt'


@dataclass(frozen=True)
class DeferredRelease:
    """The end of an attempt whose completion was safe to record without waiting (see
    ``Attempt.safe_to_finish``); written later, with the next acquire or by the heartbeat."""

    job: JobSpec
    token: int
    outcome: Outcome
    reason: str = ""


def log_deferred_release(release: DeferredRelease, raw: Any) -> None:
    """Report a deferred release that did not go through (it is harmless: see the sweeper)."""
    if isinstance(raw, Exception):
        log.warning("job %s: deferred end not written (%s)", release.job.job_id, raw)
    elif text(raw[0]) not in ("ok", "missing"):
        log.warning("job %s: deferred end refused (%s)", release.job.job_id, [text(x) for x in raw])


class PendingAcquire:
    """An acquire sent by :meth:`LeaseStore.send_acquire`, its reply not yet read."""

    def __init__(
        self,
        store: LeaseStore,
        connection: Any,
        job: JobSpec,
        *,
        worker: str,
        policy: Policy,
        delivery_attempt: int | None,
        releases: list[DeferredRelease],
        tag: str = "",
    ) -> None:
        self._store = store
        self._connection = connection
        self._call = (job, worker, policy, delivery_attempt, tag)
        self._releases = releases

    def result(self) -> Acquired:
        """Read the replies (the releases sent along are logged when refused) and return the acquire's."""
        job, worker, policy, delivery_attempt, tag = self._call
        pool = self._store.client.connection_pool
        replies: list[Any] = []
        try:
            for _ in range(len(self._releases) + 1):
                try:
                    replies.append(self._connection.read_response())
                except redis.ResponseError as exc:  # one command's error; the others' replies still follow
                    replies.append(exc)
        except BaseException:
            self._connection.disconnect()
            raise
        finally:
            pool.release(self._connection)
        for release, raw in zip(self._releases, replies, strict=False):
            if isinstance(raw, redis.exceptions.NoScriptError):
                self._store.release_many([release])
            else:
                log_deferred_release(release, raw)
        if isinstance(replies[-1], redis.ResponseError):
            # NOSCRIPT after a Redis restart, say: the ordinary call loads the script again.
            self._store._loaded = False
            return self._store.acquire(job, worker, policy, delivery_attempt, tag=tag)
        return LeaseStore._acquired(job.job_id, replies[-1])


_SCRIPTS = (
    "acquire",
    "renew",
    "progress",
    "release",
    "reestablish",
    "abandon",
    "claim",
    "decide",
    "finish",
    "seize",
    "completed",
)


def _load_script(name: str) -> str:
    lua = resources.files("zombieguard") / "lua"
    return (lua / "prelude.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


def _connection_from(pool: Any) -> Any:
    """A connection of the pool for our own use (redis-py < 5.3 wants a command name, later ones not)."""
    try:
        return pool.get_connection()
    except TypeError:
        return pool.get_connection("EVALSHA")


def _bulk(value: str) -> bytes:
    """One argument of a command, as the Redis protocol's bulk string."""
    data = value.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def scored_members(client: redis.Redis, key: str) -> list[tuple[str, float]]:
    """Every member of a sorted set with its score, lowest first."""
    reply: list[Any] = client.zrange(key, 0, -1, withscores=True)
    return [(text(member), float(score)) for member, score in reply]


def _flat_pairs(raw: Sequence[Any]) -> dict[str, str]:
    return {text(raw[i]): text(raw[i + 1]) for i in range(0, len(raw), 2)}


class LeaseStore:
    """Leases, their fencing tokens, checkpoints and the dead-letter index in one Redis.

    Thread-safe (redis-py's client is); after a fork, redis-py opens new connections by itself.
    """

    def __init__(self, client: redis.Redis, settings: Settings | None = None) -> None:
        self.client = client
        self.settings = settings or Settings()
        self.prefix = "{" + self.settings.key_prefix + "}"
        self._scripts = {name: client.register_script(_load_script(name)) for name in _SCRIPTS}
        self._loaded = False
        self._packed_tails: dict[tuple[str, Policy], tuple[int, bytes]] = {}

    @classmethod
    def from_url(cls, url: str, settings: Settings | None = None) -> LeaseStore:
        """A store on its own connection pool to ``url``."""
        return cls(redis.Redis.from_url(url, health_check_interval=30), settings)

    # Key layout (docs/data-model.md)
    def lease_key(self, job_id: str) -> str:
        """The hash holding a job's lease."""
        return f"{self.prefix}:lease:{job_id}"

    def checkpoint_key(self, job_id: str) -> str:
        """The string holding a job's last checkpoint (JSON)."""
        return f"{self.prefix}:checkpoint:{job_id}"

    def due_key(self, adapter: str) -> str:
        """The sorted set of one integration's running leases, scored by when a sweeper must look."""
        return f"{self.prefix}:due:{adapter}"

    def kept_result_key(self, job_id: str) -> str:
        """A Celery task's recorded end, kept while stale copies of it may be delivered (see
        ``integrations.celery``); expires with the lease's tombstone."""
        return f"{self.prefix}:kept-result:{job_id}"

    @property
    def fence_key(self) -> str:
        """The counter fencing tokens come from."""
        return f"{self.prefix}:fence"

    @property
    def adapters_key(self) -> str:
        """The set of integrations that hold leases here."""
        return f"{self.prefix}:adapters"

    @property
    def queues_key(self) -> str:
        """The hash of the queues guarded jobs ran from, and the integration of each."""
        return f"{self.prefix}:queues"

    @property
    def completed_key(self) -> str:
        """The hash of when a job of each queue last completed (server time)."""
        return f"{self.prefix}:completed"

    @property
    def silence_key(self) -> str:
        """The hash of the queues now alerted as silent, and since when."""
        return f"{self.prefix}:silence"

    @property
    def workers_key(self) -> str:
        """The sorted set of live workers, scored by when their presence expires."""
        return f"{self.prefix}:workers"

    def worker_key(self, name: str) -> str:
        """The hash describing one worker."""
        return f"{self.prefix}:worker:{name}"

    @property
    def dlq_key(self) -> str:
        """The hash of dead-letter entries by job id."""
        return f"{self.prefix}:dlq"

    @property
    def dlq_index_key(self) -> str:
        """The sorted set of dead-letter entries, scored by when they were dead-lettered."""
        return f"{self.prefix}:dlq:index"

    def _static_fields(
        self, job: JobSpec, worker: str, policy: Policy, tag: str = "", *, on_behalf: bool = False
    ) -> list[str]:
        fields = {
            "job": job.job_id,
            "adapter": job.adapter,
            "task": job.task,
            "queue": job.queue,
            "payload": job.payload,
            **self._policy_fields(worker, policy),
        }
        if tag:
            fields["tag"] = tag
        if on_behalf:
            fields["writer"] = "1"
        return [item for pair in fields.items() for item in pair]

    @staticmethod
    def _policy_fields(worker: str, policy: Policy) -> dict[str, str]:
        """The static fields an acquire writes that depend on the worker and the policy only."""
        return {
            "worker": worker,
            "lease_ttl": repr(policy.lease_ttl),
            "hard_timeout": "" if policy.hard_timeout is None else repr(policy.hard_timeout),
            "progress_timeout": "" if policy.progress_timeout is None else repr(policy.progress_timeout),
            "overdue_grace": repr(policy.overdue_grace),
            "max_stalls": str(policy.max_stalls),
            "dead_letter": "1" if policy.dead_letter else "0",
        }

    def _packed_acquire(
        self, job: JobSpec, worker: str, policy: Policy, delivery_attempt: int | None, tag: str = ""
    ) -> bytes:
        """The acquire as protocol bytes, the worker's and policy's part encoded once and reused: the
        generic encoder's per-argument work was most of an acquire's cost to the job."""
        tail = self._packed_tails.get((worker, policy))
        if tail is None:
            pairs = [item for pair in self._policy_fields(worker, policy).items() for item in pair]
            tail = self._packed_tails[(worker, policy)] = (len(pairs), b"".join(_bulk(p) for p in pairs))
        head = [
            "EVALSHA",
            self._scripts["acquire"].sha,
            "6",
            self.lease_key(job.job_id),
            self.due_key(job.adapter),
            self.fence_key,
            self.checkpoint_key(job.job_id),
            self.adapters_key,
            self.queues_key,
            "" if delivery_attempt is None else str(delivery_attempt),
            "job",
            job.job_id,
            "adapter",
            job.adapter,
            "task",
            job.task,
            "queue",
            job.queue,
            "payload",
            job.payload,
            *(("tag", tag) if tag else ()),
        ]
        count, encoded = tail
        return b"*%d\r\n" % (len(head) + count) + b"".join(_bulk(p) for p in head) + encoded

    def _packed_release(self, release: DeferredRelease) -> bytes:
        keys, args = self._release_call(release.job, release.token, release.outcome, release.reason, None)
        parts = ["EVALSHA", self._scripts["release"].sha, str(len(keys)), *keys, *args]
        return b"*%d\r\n" % len(parts) + b"".join(_bulk(p) for p in parts)

    def _acquire_call(
        self,
        job: JobSpec,
        worker: str,
        policy: Policy,
        delivery_attempt: int | None,
        tag: str = "",
        *,
        on_behalf: bool = False,
    ) -> tuple[list[str], list[str]]:
        keys = [
            self.lease_key(job.job_id),
            self.due_key(job.adapter),
            self.fence_key,
            self.checkpoint_key(job.job_id),
            self.adapters_key,
            self.queues_key,
        ]
        args = [
            "" if delivery_attempt is None else str(delivery_attempt),
            *self._static_fields(job, worker, policy, tag, on_behalf=on_behalf),
        ]
        return keys, args

    @staticmethod
    def _acquired(job_id: str, raw: Sequence[Any]) -> Acquired:
        reply = [None if item is None else text(item) for item in raw]
        status = AcquireStatus(reply[0])
        if status is AcquireStatus.BUSY:
            return Acquired(
                status, attempt=int(reply[1] or 0), holder=reply[3] or "", holder_state=reply[2] or ""
            )
        if status is AcquireStatus.STALE:
            return Acquired(status, attempt=int(reply[1] or 0), holder_state=reply[2] or "")
        if reply[6]:
            log.warning("job %s: replaced a corrupt lease record (%s)", job_id, reply[6])
        return Acquired(
            status,
            token=int(reply[1] or 0),
            attempt=int(reply[2] or 0),
            stalls=int(reply[3] or 0),
            started=float(reply[4] or 0),
            checkpoint=reply[5],
        )

    def acquire(
        self,
        job: JobSpec,
        worker: str,
        policy: Policy,
        delivery_attempt: int | None = None,
        *,
        tag: str = "",
        on_behalf: bool = False,
    ) -> Acquired:
        """Start a new attempt of ``job`` on ``worker``, unless a live or newer attempt exists.

        ``tag`` names one execution (see :func:`zombieguard.slot.execution_tag`): a live running
        lease of ``worker`` under the same tag is that execution's own and is taken over (its token
        returned, the lease renewed). ``on_behalf``: the acquire is made for the execution by another
        of the worker's processes (its own could not run). A lease that passes from that process to
        the execution, or the other way, is marked adopted: the execution records its end (see
        :meth:`release`'s ``unless_adopted``)."""
        keys, args = self._acquire_call(job, worker, policy, delivery_attempt, tag, on_behalf=on_behalf)
        return self._acquired(job.job_id, self._scripts["acquire"](keys=keys, args=args))

    def send_acquire(
        self,
        job: JobSpec,
        worker: str,
        policy: Policy,
        releases: Sequence[DeferredRelease] = (),
        delivery_attempt: int | None = None,
        *,
        tag: str = "",
    ) -> PendingAcquire:
        """Send :meth:`acquire` (after ``releases``, in the same round trip) without waiting for the reply.

        The caller does other work (the framework's own round trip) and then reads the reply with
        :meth:`PendingAcquire.result`: the acquire costs the job no waiting of its own. ``tag``: as
        for :meth:`acquire` (an acquire sent again under the same tag, its reply lost, takes the
        lease the first one wrote).
        """
        if not self._loaded:
            for name in ("acquire", "release"):
                self._scripts[name].sha = text(self.client.script_load(self._scripts[name].script))
            self._loaded = True
        packed = b"".join(self._packed_release(r) for r in releases) + self._packed_acquire(
            job, worker, policy, delivery_attempt, tag
        )
        pool = self.client.connection_pool
        connection: Any = _connection_from(pool)
        try:
            connection.send_packed_command([packed])
        except BaseException:
            connection.disconnect()
            pool.release(connection)
            raise
        return PendingAcquire(
            self,
            connection,
            job,
            worker=worker,
            policy=policy,
            delivery_attempt=delivery_attempt,
            releases=list(releases),
            tag=tag,
        )

    def reestablish(
        self,
        job: JobSpec,
        worker: str,
        policy: Policy,
        *,
        token: int,
        attempt: int,
        stalls: int,
        started: float,
    ) -> bool:
        """Recreate a vanished lease with the same token; False when a record exists already."""
        keys = [self.lease_key(job.job_id), self.due_key(job.adapter), self.fence_key, self.adapters_key]
        args = [
            str(token),
            str(attempt),
            str(stalls),
            repr(started),
            *self._static_fields(job, worker, policy),
        ]
        reply = self._scripts["reestablish"](keys=keys, args=args)
        return text(reply[0]) == "ok"

    def renew(
        self, adapter: str, worker: str, worker_ttl: float, leases: Sequence[tuple[str, int]]
    ) -> list[RenewCode]:
        """Renew a worker's presence and all its leases in one round trip; one code per lease."""
        keys = [self.due_key(adapter), self.workers_key, *(self.lease_key(job_id) for job_id, _ in leases)]
        args: list[str] = [worker, repr(worker_ttl)]
        for job_id, token in leases:
            args += [job_id, str(token)]
        return [text(code) for code in self._scripts["renew"](keys=keys, args=args)]

    def progress(
        self,
        job: JobSpec,
        token: int,
        progress: str = "",
        message: str = "",
        checkpoint: str | None = None,
    ) -> str:
        """Record progress (and a checkpoint); return 'ok' or 'missing'. Raise LeaseLost when fenced off."""
        keys = [self.lease_key(job.job_id), self.due_key(job.adapter), self.checkpoint_key(job.job_id)]
        args = [
            str(token),
            job.job_id,
            progress,
            message,
            "0" if checkpoint is None else "1",
            checkpoint or "",
            str(_ms(self.settings.state_ttl)),
        ]
        reply = [text(item) for item in self._scripts["progress"](keys=keys, args=args)]
        return self._check_fenced(job.job_id, token, reply)

    def _release_call(
        self,
        job: JobSpec,
        token: int,
        outcome: Outcome,
        reason: str,
        stack: str | None,
        *,
        unless_adopted: bool = False,
    ) -> tuple[list[str], list[str]]:
        keys = [
            self.lease_key(job.job_id),
            self.due_key(job.adapter),
            self.checkpoint_key(job.job_id),
            self.completed_key,
        ]
        args = [
            str(token),
            job.job_id,
            outcome.value,
            reason,
            stack or "",
            str(_ms(self.settings.tombstone_ttl)),
            job.queue,
            "1" if unless_adopted else "",
        ]
        return keys, args

    def release(
        self,
        job: JobSpec,
        token: int,
        outcome: Outcome,
        reason: str = "",
        stack: str | None = None,
        *,
        unless_adopted: bool = False,
    ) -> str:
        """End an attempt; return 'ok' or 'missing'. Raise LeaseLost when a newer attempt exists.
        ``unless_adopted``: for a lease written on an execution's behalf (see :meth:`acquire`'s
        ``on_behalf``), only if it did not pass to the execution ('adopted': the execution records
        its own end)."""
        keys, args = self._release_call(job, token, outcome, reason, stack, unless_adopted=unless_adopted)
        reply = [text(item) for item in self._scripts["release"](keys=keys, args=args)]
        return self._check_fenced(job.job_id, token, reply)

    def release_many(self, releases: Sequence[DeferredRelease]) -> None:
        """Write deferred releases in one round trip. A refused one (superseded) is logged, not raised."""
        pipe = self.client.pipeline(transaction=False)
        for release in releases:
            keys, args = self._release_call(release.job, release.token, release.outcome, release.reason, None)
            self._scripts["release"](keys=keys, args=args, client=pipe)
        for release, raw in zip(releases, pipe.execute(raise_on_error=False), strict=True):
            log_deferred_release(release, raw)

    def record_completed(self, adapter: str, queues: Sequence[str]) -> None:
        """Jobs of ``queues`` completed without leases written for them: record each queue's last
        success (what the silence watch and ``status`` read), as a completed release does."""
        named = [queue for queue in queues if queue]
        if named:
            self._scripts["completed"](
                keys=[self.completed_key, self.queues_key, self.adapters_key], args=[adapter, *named]
            )

    def abandon(self, job: JobSpec, token: int, reason: str, stack: str | None = None) -> str:
        """Give an attempt up now (its process died or was killed): the sweeper acts on ``reason``
        (``stalled``: recover; ``timed_out`` / ``hung``: fail). Raise LeaseLost when superseded."""
        keys = [self.lease_key(job.job_id), self.due_key(job.adapter)]
        reply = [
            text(item)
            for item in self._scripts["abandon"](
                keys=keys, args=[str(token), job.job_id, reason, stack or ""]
            )
        ]
        return self._check_fenced(job.job_id, token, reply)

    @staticmethod
    def _check_fenced(job_id: str, token: int, reply: list[str]) -> str:
        code = reply[0]
        if code == "lost":
            state, holder = reply[1], reply[2]
            raise LeaseLost(job_id, token, f"the lease is {state or 'gone'} under token {holder or '-'}")
        if code == "corrupt":
            raise LeaseLost(job_id, token, f"the lease record is corrupt ({reply[1]})")
        return code

    def claim(self, adapter: str, sweeper: str, limit: int | None = None) -> Sweep:
        """Claim due leases of one integration, and collect workers whose presence expired."""
        keys = [self.due_key(adapter), self.fence_key, self.workers_key]
        args = [str(limit or self.settings.sweep_batch), repr(self.settings.claim_ttl), sweeper, self.prefix]
        raw_claims, raw_dead = self._scripts["claim"](keys=keys, args=args)
        claimed: list[Claimed] = []
        corrupt: list[tuple[str, str]] = []
        for item in raw_claims:
            job_id, kind = text(item[0]), text(item[1])
            if kind == "corrupt":
                corrupt.append((job_id, text(item[2])))
                continue
            raw = _flat_pairs(item[2])
            try:
                record = LeaseRecord.from_hash(raw)
            except CorruptRecord as exc:
                # Unreadable once claimed: drop it from the due index so no sweeper loops on it.
                self.client.zrem(self.due_key(adapter), job_id)
                corrupt.append((job_id, str(exc)))
                continue
            claimed.append(
                Claimed(
                    record=record,
                    claim_token=record.token,
                    reason=raw["reason"],
                    checkpoint=None if item[3] is None else text(item[3]),
                    claimed_at=float(raw["claimed_at"]),
                )
            )
        dead = tuple(DeadWorker(text(entry[0]), _flat_pairs(entry[1])) for entry in raw_dead)
        return Sweep(tuple(claimed), tuple(corrupt), dead)

    def seize(self, job_id: str, claimer: str, stopped_by: str) -> Claimed | None:
        """Claim a running lease now, to stop its job (``zombieguard kill``); None if not running."""
        record = self.record(job_id)
        if record is None:
            return None
        keys = [self.lease_key(job_id), self.due_key(record.adapter), self.fence_key]
        args = [job_id, claimer, repr(self.settings.claim_ttl), stopped_by]
        reply = self._scripts["seize"](keys=keys, args=args)
        if text(reply[0]) != "claimed":
            return None
        raw = _flat_pairs(reply[1])
        claimed = LeaseRecord.from_hash(raw)
        return Claimed(
            record=claimed,
            claim_token=claimed.token,
            reason="stopped",
            checkpoint=None,
            claimed_at=float(raw["claimed_at"]),
        )

    def decide(self, claimed: Claimed, state: FinishedState) -> bool:
        """Write down the end a sweeper gives a claimed job before it records that end in the
        framework; False when its claim was taken over meanwhile."""
        reply = self._scripts["decide"](
            keys=[self.lease_key(claimed.record.job_id)], args=[str(claimed.claim_token), state.value]
        )
        return int(reply) == 1

    def finish(
        self,
        claimed: Claimed,
        state: FinishedState,
        ended: AttemptRecord | None,
        dead_letter_entry: str = "",
        republish_after: float | None = None,
    ) -> bool:
        """Record what a sweeper did with a claim; False when its claim was taken over meanwhile."""
        job_id = claimed.record.job_id
        keys = [
            self.lease_key(job_id),
            self.due_key(claimed.record.adapter),
            self.dlq_key,
            self.dlq_index_key,
        ]
        args = [
            str(claimed.claim_token),
            job_id,
            state.value,
            "" if ended is None else ended.to_json(),
            str(_ms(self.settings.tombstone_ttl)),
            str(_ms(self.settings.state_ttl)),
            dead_letter_entry,
            str(self.settings.dead_letter_max_entries),
            repr(self.settings.dead_letter_max_age),
            self.prefix,
            "" if republish_after is None else repr(republish_after),
        ]
        return text(self._scripts["finish"](keys=keys, args=args)[0]) == "ok"

    def record(self, job_id: str) -> LeaseRecord | None:
        """The lease record of one job, None when there is none; CorruptRecord when unreadable."""
        key = self.lease_key(job_id)
        if text(self.client.type(key)) != "hash":
            return None
        raw = self.client.hgetall(key)
        return LeaseRecord.from_hash(raw) if raw else None

    def active(self, adapter: str | None = None) -> tuple[list[LeaseRecord], list[tuple[str, str]]]:
        """Running and recovering leases (of one integration, or all): (records, corrupt ones)."""
        adapters = [adapter] if adapter else sorted(text(a) for a in self.client.smembers(self.adapters_key))
        job_ids = [text(j) for a in adapters for j in self.client.zrange(self.due_key(a), 0, -1)]
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.lease_key(job_id))
        records: list[LeaseRecord] = []
        corrupt: list[tuple[str, str]] = []
        for job_id, raw in zip(job_ids, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(raw, Exception) or not raw:
                corrupt.append((job_id, f"lease record unreadable: {raw!r}"))
                continue
            try:
                records.append(LeaseRecord.from_hash(raw))
            except CorruptRecord as exc:
                corrupt.append((job_id, str(exc)))
        return records, corrupt

    def queues_of(self, adapter: str) -> list[str]:
        """The queues guarded jobs of ``adapter`` ran from (acquire records each)."""
        return sorted(text(q) for q, a in self.client.hgetall(self.queues_key).items() if text(a) == adapter)

    def register_worker(self, name: str, info: Mapping[str, str], ttl: float) -> None:
        """Announce a worker: its description, and its presence until ``ttl`` from now (server time)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.worker_key(name))
        description: dict[Any, Any] = dict(info)
        pipe.hset(self.worker_key(name), mapping=description)
        pipe.execute()
        self.renew(info.get("adapter", "core"), name, ttl, [])

    def deregister_worker(self, name: str) -> None:
        """A worker leaves cleanly: it is not a zombie."""
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(self.workers_key, name)
        pipe.delete(self.worker_key(name))
        pipe.execute()

    def workers(self) -> dict[str, tuple[float, dict[str, str]]]:
        """Live workers: name -> (presence expiry, description)."""
        entries = scored_members(self.client, self.workers_key)
        pipe = self.client.pipeline(transaction=False)
        for name, _ in entries:
            pipe.hgetall(self.worker_key(name))
        infos = pipe.execute()
        return {
            name: (expiry, {text(k): text(v) for k, v in info.items()})
            for (name, expiry), info in zip(entries, infos, strict=True)
        }

    def server_time(self) -> float:
        """The Redis server's clock, the one every lease is timed by."""
        reply: Any = self.client.time()
        return float(reply[0]) + float(reply[1]) / 1_000_000
