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

from zombieguard.enforcement.slot import SlotState
from zombieguard.errors import LeaseLost
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


def release_written(
    store: LeaseStore, spec: JobSpec, token: int, reason: str, outcome: Outcome = Outcome.COMPLETED
) -> None:
    """Release a lease :func:`write_lease` wrote, for a job that ended without adopting it. Nothing
    when the lease is no longer that one (the job ended, was recovered or superseded: whoever did
    that recorded it). Raises ``redis.RedisError``."""
    with contextlib.suppress(LeaseLost):
        store.release(spec, token, outcome, reason, unless_adopted=True)
