"""Writing and releasing a lease for a job whose own process cannot: the prefork monitor (for a pool
process) and the watchdog process (for a worker that runs jobs in its main thread) both do it, for
a job that started within its ``lease_delay`` (Celery) and whose process got stuck (C code holding
the GIL) or died before it wrote its lease.

The lease is written under the job's execution tag, from its slot: the job's own process adopts it
if it runs again. One written for a job that then ended without adopting it is released as
completed, unless the job's process adopted it meanwhile (then that process records its own end).
"""

from __future__ import annotations

import contextlib

from zombieguard.containment import log
from zombieguard.enforcement.slot import SlotState
from zombieguard.errors import LeaseLost
from zombieguard.events import LeaseVanished, Subject, emit
from zombieguard.leases import AcquireStatus, JobSpec, LeaseStore, Outcome
from zombieguard.policy import Policy


def write_lease(
    store: LeaseStore, state: SlotState, payload: str, *, adapter: str, worker: str, policy: Policy
) -> int:
    """Write the lease of the job ``state`` (a slot's reading) shows, with ``payload``: its token,
    or 0 when another attempt holds the job. A lease the job's process wrote itself (its token not
    yet in the slot) is taken as this one. Raises ``redis.RedisError``."""
    spec = JobSpec(state.job_id, adapter, state.task, state.queue, payload)
    acquired = store.acquire(spec, worker, policy, state.attempt or 1, tag=state.tag, on_behalf=True)
    return acquired.token if acquired.status is AcquireStatus.ACQUIRED else 0


def write_again(
    store: LeaseStore,
    state: SlotState,
    token: int,
    payload: str,
    *,
    adapter: str,
    worker: str,
    policy: Policy,
) -> bool:
    """Write again, from its slot, the lease (of ``token``) of a job whose process died before its
    body ended, when Redis no longer has it: it was lost with a primary failed over before any
    replica had it, or in a restart without persistence. The job can then be given up and
    recovered, as its worker's heartbeat would have written the lease again had it lived. Says so
    (a warning, :class:`~zombieguard.events.LeaseVanished`). False when a record exists after all.
    Raises ``redis.RedisError``."""
    spec = JobSpec(state.job_id, adapter, state.task, state.queue, payload)
    created = store.reestablish(
        spec,
        worker,
        policy,
        token=token,
        attempt=state.attempt or 1,
        stalls=state.stalls,
        started=state.started_at,
    )
    if created:
        log.warning(
            "%s job %s: its lease was missing from Redis when its process died (lost in a failover, "
            "or a restart without persistence); written again to recover it",
            adapter,
            state.job_id,
        )
        subject = Subject(state.job_id, state.task, state.queue, state.attempt, worker, adapter)
        emit(adapter, subject.event(LeaseVanished, reason="missing from Redis when its process died"))
    return created


def slot_policy(state: SlotState) -> Policy:
    """The fields of the job's policy that its lease holds, as its slot gives them."""
    return Policy(
        lease_ttl=state.lease_ttl,
        hard_timeout=state.hard_timeout,
        progress_timeout=state.progress_timeout,
        lease_delay=None,
        max_stalls=state.max_stalls,
        dead_letter=state.dead_letter,
        overdue_grace=state.overdue_grace,
    )


def give_up(
    store: LeaseStore,
    state: SlotState,
    token: int,
    reason: Outcome,
    *,
    adapter: str,
    worker: str,
    payload: str | None,
    stack: str | None = None,
    how: str = "",
) -> None:
    """Give up, for a sweeper to act on ``reason``, the attempt (of ``token``) that the slot
    ``state`` shows, its process dead or killed (``how``, for its history). A lease missing from
    Redis is written again first (:func:`write_again`) when the job's body had not ended (no
    release can have removed it) and ``payload`` is known (None: the lease needs one the slot does
    not keep). Raises
    :class:`~zombieguard.errors.LeaseLost` when another attempt holds the job, and
    ``redis.RedisError``."""
    job = JobSpec(state.job_id, adapter, "", "")
    if store.abandon(job, token, reason, stack, how) != "missing" or state.outcome or payload is None:
        return
    policy = slot_policy(state)
    if write_again(store, state, token, payload, adapter=adapter, worker=worker, policy=policy):
        store.abandon(job, token, reason, stack, how)


def release_written(
    store: LeaseStore, spec: JobSpec, token: int, reason: str, outcome: Outcome = Outcome.COMPLETED
) -> None:
    """Release a lease :func:`write_lease` wrote, for a job that ended without adopting it. Nothing
    when the lease is no longer that one (the job ended, was recovered or superseded: whoever did
    that recorded it). Raises ``redis.RedisError``."""
    with contextlib.suppress(LeaseLost):
        store.release(spec, token, outcome, reason, unless_adopted=True)
