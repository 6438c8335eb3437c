"""A job's lease, acquired around RQ's preparation of it: the acquire is sent before RQ's own round
trip and its reply read after, so that the two overlap. Runs in the worker process, before the job
starts."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import redis
from rq.job import Job
from rq.queue import Queue

from zombieguard.containment import log
from zombieguard.events import JobStarted, emit
from zombieguard.integrations.rq.adapter import ADAPTER
from zombieguard.integrations.rq.runtime import RQRuntime
from zombieguard.leases import Acquired, AcquireStatus, JobSpec, LeaseState, PendingAcquire
from zombieguard.policy import Policy
from zombieguard.worker.attempt import Attempt, AttemptHooks
from zombieguard.worker.lifecycle import wait_out_recovery

ACQUIRE_RETRY = 2.0
"""Seconds an acquire whose reply did not come is sent again, at most, before the job runs without a
lease (Redis restarting, a failover)."""


@dataclass(frozen=True)
class Sent:
    """An acquire sent, its reply not read yet (``pending`` None: it could not be sent)."""

    spec: JobSpec
    policy: Policy
    sent_at: float
    pending: PendingAcquire | None
    tag: str
    """Names this execution: an acquire sent again after a lost reply takes the lease the first wrote."""


@dataclass(frozen=True)
class Begun:
    """A job's attempt, begun: leased, or unguarded when Redis is unreachable."""

    attempt: Attempt
    generation: int
    """The job's generation in the slot: an interrupt is raised only in the job it names."""


def send(zg: RQRuntime, worker: str, job: Job, queue: Queue) -> Sent:
    """Send the acquire of the job's lease, with any deferred releases."""
    task, policy = zg.policy_of(job)
    spec = JobSpec(job.id, ADAPTER, task, queue.name, json.dumps({"description": job.description}))
    sent_at = time.monotonic()
    tag = os.urandom(8).hex()
    releases = zg.heartbeat.take_deferred()
    try:
        pending = zg.store.send_acquire(spec, worker, policy, releases, tag=tag)
    except redis.RedisError:
        for release in releases:
            zg.heartbeat.defer(release)
        pending = None
    return Sent(spec, policy, sent_at, pending, tag)


def reply(zg: RQRuntime, worker: str, sent: Sent) -> Acquired | None:
    """The reply to the acquire sent, or, when none came, to one sent again on a new connection (a
    killed connection, a restart of Redis), for up to :data:`ACQUIRE_RETRY` or a third of the
    lease's TTL; under the execution's tag, so that it takes the lease the first one may have
    written. None when Redis does not answer by then."""
    try:
        if sent.pending is not None:
            return sent.pending.result()
    except redis.RedisError as exc:
        log.info("rq job %s: no reply to its acquire (%s); asking again", sent.spec.job_id, exc)
    deadline = time.monotonic() + min(ACQUIRE_RETRY, sent.policy.lease_ttl / 3)
    delay = 0.1
    while True:
        try:
            return zg.store.acquire(sent.spec, worker, sent.policy, tag=sent.tag)
        except redis.RedisError as exc:
            if time.monotonic() + delay > deadline:
                log.warning(
                    "rq job %s runs without a lease, its limits enforced here all the same: Redis "
                    "for leases unreachable (%s)",
                    sent.spec.job_id,
                    exc,
                )
                return None
        time.sleep(delay)
        delay *= 2


def begin(zg: RQRuntime, worker: str, job: Job, sent: Sent) -> Begun | None:
    """The job's attempt, begun (its slot started, its lease heartbeated, ``JobStarted`` emitted);
    None when this delivery is not to run (a newer attempt holds the job, or it ended)."""
    spec, policy = sent.spec, sent.policy
    acquired = reply(zg, worker, sent)
    try:
        if acquired is not None:
            acquired = wait_out_recovery(
                acquired,
                lambda: zg.store.acquire(spec, worker, policy, tag=sent.tag),
                lambda a: a.status is not AcquireStatus.ACQUIRED and a.holder_state is LeaseState.RECOVERING,
            )
        if acquired is not None and acquired.status is not AcquireStatus.ACQUIRED:
            log.warning(
                "rq job %s not run: %s (attempt %d, %s on %s)",
                job.id,
                acquired.status.value,
                acquired.attempt,
                acquired.holder_state or "superseded",
                acquired.holder or "-",
            )
            return None
    except redis.RedisError as exc:
        log.warning("rq job %s runs without a lease: Redis for leases unreachable (%s)", job.id, exc)
        acquired = None
    slot = zg.slot
    hooks = AttemptHooks(
        progress=slot.progress,
        confirmed=slot.confirm,
        confirmations=slot.confirmed_until,  # in the horse: the parent's renewals
        ending=lambda: slot.read().outcome != 0,
    )
    attempt = Attempt(zg.store, spec, worker, policy, acquired, sent_at=sent.sent_at, hooks=hooks)
    if acquired is None:
        attempt.run_unguarded()
    started = attempt.started_monotonic
    generation = slot.start(
        job.id,
        attempt.token,
        started,
        hard_deadline=started + policy.hard_timeout if policy.hard_timeout is not None else None,
        progress_timeout=policy.progress_timeout,
        confirmed_until=attempt.confirmed_until,
        started_at=attempt.started_at,
        attempt=attempt.number,
        stalls=attempt.stalls,
        lease_ttl=policy.lease_ttl,
        task=spec.task,
        queue=spec.queue,
        max_stalls=policy.max_stalls,
        dead_letter=policy.dead_letter,
        overdue_grace=policy.overdue_grace,
        children_grace=policy.children_grace,
    )
    if not attempt.unguarded:
        zg.heartbeat.add(attempt)
    emit(ADAPTER, attempt.event(JobStarted))
    return Begun(attempt, generation)
