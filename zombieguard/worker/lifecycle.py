"""What a guarded worker does the same way on every integration around one job's execution: waiting
out a recovery before the acquire, recording the attempt's end, saying that it passed a limit, and
the timings the integrations share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from zombieguard.containment import contained, log, named
from zombieguard.enforcement.children import Found, JobProcesses
from zombieguard.enforcement.limits import Limit
from zombieguard.errors import LeaseLost
from zombieguard.events import JobCompleted, JobHungEvent, JobProcessesEnded, JobTimedOut, emit
from zombieguard.leases import Acquired, Outcome
from zombieguard.worker.attempt import Attempt

ESCALATE_AFTER = 0.5
"""Seconds between the interrupt raised in a job and the kill of its process (or, where no process
can be killed for it, the zombie verdict on its thread) when the job did not end."""
RECOVERING_WAIT = 5.0
"""How long a delivery waits for the attempt before it to end (a retry) or to finish being recovered
by the sweeper that requeued it."""
BACKSTOP_SECONDS = 2
"""The framework's own time limit (Celery's prefork timer, RQ's alarm) stays armed this long past the
policy's hard limit, in case all else fails."""


def wait_out_recovery(
    acquired: Acquired, again: Callable[[], Acquired], waits: Callable[[Acquired], bool]
) -> Acquired:
    """A delivery's answer to its acquire, waited out: while ``waits(answer)`` (a sweeper is still
    recording the recovery that published it, or the attempt before it is still ending), ask
    ``again()`` every 20 ms, for :data:`RECOVERING_WAIT` at most; the last answer."""
    deadline = time.monotonic() + RECOVERING_WAIT
    while waits(acquired) and time.monotonic() < deadline:
        time.sleep(0.02)
        acquired = again()
    return acquired


def record_end(
    adapter: str, attempt: Attempt, outcome: Outcome, reason: str = "", stack: str | None = None
) -> bool:
    """Record how the attempt ended, and say so (``JobCompleted``). False when its end is refused:
    a newer attempt, a sweeper or a stop holds the job (the attempt is marked lost). Redis away: the
    end is logged as not recorded, and stands (the lease expires, and a sweeper asks the framework)."""
    try:
        attempt.release(outcome, reason, stack)
    except LeaseLost as exc:
        attempt.mark_lost(exc)
        log.warning(
            "%s job %s: this attempt's %s is refused: %s", adapter, attempt.job.job_id, outcome.value, exc
        )
        return False
    except redis.RedisError as exc:
        log.warning(
            "%s job %s: end not recorded, Redis for leases unreachable (%s)", adapter, attempt.job.job_id, exc
        )
    duration = time.monotonic() - attempt.started_monotonic
    emit(adapter, attempt.event(JobCompleted, reason=outcome.value, stack=stack, duration=duration))
    return True


def emit_limit(
    adapter: str,
    make: Callable[..., Any],
    limit: Limit,
    seconds: float | None,
    stack: str | None,
    *,
    processes: tuple[str, ...] = (),
) -> None:
    """Say that a job passed ``limit`` (``seconds``: that limit's value; ``stack``: where the job
    was; ``processes``: what it started, ended with it): ``JobTimedOut`` for a soft or hard limit,
    ``JobHungEvent`` for the progress limit. ``make`` builds the event (an attempt's, or one from a
    slot's state) from its type and fields."""
    if limit is Limit.SOFT:
        event = make(JobTimedOut, reason="soft_timeout passed", limit=limit)
        said = f"passed its soft_timeout{_of(seconds)}: SoftTimeLimitExceeded is raised in it to clean up"
    elif limit is Limit.HARD:
        reason = f"ran past its hard_timeout of {seconds or 0:g} s"
        event = make(JobTimedOut, reason=reason, stack=stack, limit=limit, processes=processes)
        said = f"{reason}: stopped, and recorded failed (timed out)"
    else:
        reason = f"no progress within its progress_timeout of {seconds or 0:g} s"
        event = make(JobHungEvent, reason=reason, stack=stack, processes=processes)
        said = f"made {reason}: stopped, and recorded failed (hung)"
    log.warning("%s attempt %d %s", named(adapter, event.task, event.job_id), event.attempt, said)
    emit(adapter, event)


def _of(seconds: float | None) -> str:
    return "" if seconds is None else f" of {seconds:g} s"


def stopping(
    where: JobProcesses,
    grace: float | None,
    stop: Callable[[Found], object],
    *,
    adapter: str,
    make: Callable[..., Any],
    note: Callable[[tuple[str, ...]], object],
) -> None:
    """Stop a job with what it started: find its processes (none when ``grace`` is None: its policy
    leaves them running), call ``stop(found)`` (which interrupts or kills the job, and may name them
    in its event), then :func:`end_found` them."""
    found = where.find() if grace is not None else Found([])
    stop(found)
    if grace is not None:
        end_found(found, grace, adapter=adapter, make=make, note=note)


def end_found(
    found: Found,
    grace: float,
    *,
    adapter: str,
    make: Callable[..., Any],
    note: Callable[[tuple[str, ...]], object],
) -> None:
    """Send the processes a job started SIGTERM, and SIGKILL ``grace`` seconds later, and say so:
    ``JobProcessesEnded`` (built by ``make`` from its type and fields, as :func:`emit_limit`'s) and
    ``note``, which records them on the job's lease for the attempt's history."""
    if not found:
        return
    found.end(grace)
    why = f"ended with the job (SIGKILL {grace:g} s past SIGTERM)"
    event = make(JobProcessesEnded, reason=why, processes=found.described)
    log.warning(
        "%s: ending the processes it started: %s",
        named(adapter, event.task, event.job_id),
        "; ".join(found.described),
    )
    emit(adapter, event)
    with contained(f"{adapter} job {event.job_id}: noting the processes ended on its lease"):
        try:
            note(found.described)
        except redis.RedisError as exc:
            log.warning(
                "%s job %s: the processes ended not noted on its lease (%s)", adapter, event.job_id, exc
            )
