"""How sweepers, the CLI and the watchdog process act on RQ jobs: requeue, fail, stop, republish,
and reclaim what a dead worker left in RQ's intermediate queue."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis
from rq.command import send_kill_horse_command
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.timeouts import TimerDeathPenalty

from zombieguard.containment import contained, log
from zombieguard.errors import HardTimeLimitExceeded, JobHung, JobInterrupt, ZombieGuardError
from zombieguard.integrations.rq import internals
from zombieguard.integrations.rq.failure import (
    JobTimeoutException,
    failure_text,
    rq_limit,
    rq_timeout_message,
    run_failure_callback,
)
from zombieguard.leases import LeaseRecord, Outcome
from zombieguard.leases.connection import RedisTarget
from zombieguard.recovery.deadletter import DeadLetterEntry

ADAPTER = "rq"


_ENDED = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)


STRANDED_AFTER = 5.0
"""Seconds a job must sit in RQ's intermediate queue, unstarted, before a sweeper puts it back: a live
worker moves it on within a few round trips; one that died (or froze) after taking it never does."""


class RQAdapter:
    """How the core acts on RQ jobs (requeue, fail, stop, republish)."""

    name = ADAPTER
    republishes_unstarted = False  # RQ would run a second copy of the job id: it carries no attempt
    reclaims = True
    requeues_from_payload = False

    def __init__(
        self,
        connection: redis.Redis,
        job_class: type[Job] = Job,
        queue_class: type[Queue] = Queue,
        serializer: Any = None,
        queues: Sequence[str] = (),
    ) -> None:
        self.connection = connection
        self.job_class = job_class
        self.queue_class = queue_class
        self.serializer = serializer
        self.queues = tuple(queues)
        """The queues of the worker this adapter serves (a sweeper also looks at every queue guarded
        jobs ran from)."""
        self._intermediate = internals.Intermediate(connection, job_class)
        self._unstarted: dict[tuple[str, str], float] = {}
        """(queue, job id) seen unstarted in the queue's intermediate queue, and since when."""

    def _job(self, job_id: str) -> Job | None:
        try:
            return self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
        except NoSuchJobError:
            log.warning("rq job %s no longer exists; nothing to act on", job_id)
            return None

    def _queue(self, name: str) -> Queue:
        return self.queue_class(
            name, connection=self.connection, job_class=self.job_class, serializer=self.serializer
        )

    def requeue(self, record: LeaseRecord) -> bool:
        """Back on the front of its queue, same job id, as the next attempt; False if it had ended."""
        job = self._job(record.job_id)
        if job is None or job.get_status() in _ENDED:
            return False
        queue = self._queue(record.queue or job.origin)
        with self.connection.pipeline() as pipe:
            internals.forget_executions(self.connection, job.id, queue.name, pipe)
            pipe.execute()
        if self._waiting(queue, job.id):
            return True  # put back already (see reclaim): a second copy would run it twice
        # Its own round trip: RQ WATCHes the job's dependencies on a pipeline of its own.
        queue.enqueue_job(job, at_front=True)
        return True

    def _waiting(self, queue: Queue, job_id: str) -> bool:
        """Whether the job is in its queue's list (LPOS: Redis 6.0.6 and later; before, not known)."""
        try:
            return self.connection.lpos(queue.key, job_id) is not None
        except redis.ResponseError:
            return False

    def fail(self, record: LeaseRecord, outcome: Outcome, reason: str) -> bool:
        """Failed the RQ way: failure callback, FAILED status, failed registry (no retry: it would
        hang, or stall, again). False if the job had ended already."""
        job = self._job(record.job_id)
        if job is None or job.get_status() in _ENDED:
            return False
        error: BaseException
        policy = record.policy()
        if outcome is Outcome.TIMED_OUT and policy is not None and rq_limit(policy, job.timeout):
            error = JobTimeoutException(f"{rq_timeout_message(job.timeout or 0)}; {reason}")
        else:
            error = {Outcome.TIMED_OUT: HardTimeLimitExceeded, Outcome.HUNG: JobHung}.get(
                outcome, JobInterrupt
            )(reason)
        exc_string = failure_text(outcome, error, record.stack)
        with contained(f"on_failure callback of rq job {job.id}"):
            run_failure_callback(job, TimerDeathPenalty, error)
        with self.connection.pipeline() as pipe:
            internals.forget_executions(self.connection, job.id, record.queue or job.origin, pipe)
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            internals.record_failure(job, exc_string, pipe, record.worker)
            pipe.execute()
        return True

    def stop(self, record: LeaseRecord) -> None:
        """Ask the worker that runs it to kill its horse (RQ's own command, over pub/sub)."""
        send_kill_horse_command(self.connection, record.worker)

    def waiting(self, queue: str) -> int | None:
        """Jobs in the RQ queue."""
        return int(self._queue(queue).count)

    def republish(self, entry: DeadLetterEntry) -> None:
        """Enqueue a dead-lettered job again, from RQ's failed registry."""
        job = self._job(entry.job_id)
        if job is None:
            raise ZombieGuardError(
                f"rq job {entry.job_id} no longer exists in Redis (its failure_ttl passed)"
            )
        if job.get_status() == JobStatus.FAILED:
            job.requeue()
        else:
            self._queue(entry.queue or job.origin).enqueue_job(job)

    def reclaim(self, queues: Sequence[str], leased: Callable[[str], bool]) -> list[str]:
        """Put back at the front of its queue a job that sat in RQ's intermediate queue, unstarted,
        for :data:`STRANDED_AFTER` (RQ would fail it, after a minute, at its next maintenance),
        unless it has a live lease (its expiry recovers it, and two copies would run it twice). A
        job that ended meanwhile, or waits in its queue already, only loses that stale entry."""
        now = time.monotonic()
        seen: dict[tuple[str, str], float] = {}
        requeued: list[str] = []
        for name in sorted({*queues, *self.queues}):
            queue = self._queue(name)
            for job_id in self._intermediate.job_ids(queue):
                key = (name, job_id)
                since = seen[key] = self._unstarted.get(key, now)
                if now - since < STRANDED_AFTER or leased(key[1]):
                    continue
                if self._intermediate.put_back(queue, job_id) == "requeued":
                    requeued.append(key[1])
                    log.warning(
                        "rq job %s: taken from queue %s by a worker that never started it; put back",
                        key[1],
                        name,
                    )
                del seen[key]
        self._unstarted = seen
        return requeued

    def worker_gone(self, workdir: Path) -> None:
        """Nothing: RQ holds no job for a worker beyond what its leases, and :meth:`reclaim`,
        recover."""


def cli_adapter(connection: redis.Redis, rq_url: str | None) -> RQAdapter:
    """The adapter the CLI loads: RQ's jobs in the Redis ``rq_url`` names (``--rq-url``), else in
    the leases' Redis."""
    return RQAdapter(RedisTarget.from_url(rq_url, "--rq-url").client() if rq_url else connection)


def watchdog_process_adapter(connection: redis.Redis, rq_redis: str = "") -> RQAdapter:
    """The adapter :mod:`zombieguard.enforcement.watchdog_process` loads
    (``zombieguard.integrations.rq:watchdog_process_adapter``), on RQ's own Redis (``rq_redis``, a
    :class:`~zombieguard.leases.connection.RedisTarget` as JSON; the leases' by default, when they
    share one)."""
    return RQAdapter(RedisTarget.from_json(rq_redis).client() if rq_redis else connection)
