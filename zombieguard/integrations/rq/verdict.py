"""What RQ records when a guarded job's execution did not succeed, decided by how it ended: raised
in the process that ran it, never started, or a horse that ended abnormally (stopped by a limit, on
an operator's request, superseded, or dead by itself). Each returns whether RQ is to record the
failure; a stall is given up to the sweeper instead, and a superseded attempt records nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from rq.job import Job

from zombieguard.containment import contained
from zombieguard.enforcement.interrupts import Interrupt, interrupt_error
from zombieguard.integrations.rq.adapter import ADAPTER
from zombieguard.integrations.rq.failure import failure_text, hard_limit_error, run_failure_callback
from zombieguard.integrations.rq.runtime import RQRuntime
from zombieguard.leases import Outcome
from zombieguard.worker.attempt import Attempt
from zombieguard.worker.lifecycle import record_end


@dataclass(frozen=True)
class HorseEnd:
    """What the worker knows of a horse that did not exit normally."""

    stopped_on_request: bool
    """RQ's stop-job command came for the job (``send_stop_job_command``)."""
    kill_command: bool
    """RQ's kill-horse command came for the job (``send_kill_horse_command``)."""
    stop: tuple[Outcome, str | None] | None
    """zombieguard stopped it at a limit: the outcome and the stack captured then."""
    death_penalty_class: Any
    how: str = ""
    """How the horse ended (``killed by signal 9 (SIGKILL)``), when RQ said."""


def unstarted(zg: RQRuntime, attempt: Attempt, error: redis.RedisError) -> bool:
    """RQ could not prepare the job, Redis not answering: it never started. A stall to recover,
    not a failure to record; without a lease (unguarded), RQ records it as it would alone."""
    if attempt.unguarded:
        return True
    zg.give_up_stalled(
        attempt.job, attempt.token, f"RQ could not prepare it ({error})", again=attempt.reestablish
    )
    return False


def raised_here(attempt: Attempt, interrupt: Interrupt | None, exc_string: str) -> bool:
    """The job raised in this process (zombieguard's ``interrupt`` among the possibilities)."""
    outcome = Outcome.FAILED if interrupt is None else interrupt.outcome
    last_line = exc_string.strip().splitlines()[-1] if exc_string.strip() else ""
    stack = exc_string if outcome is not Outcome.FAILED else None
    return record_end(ADAPTER, attempt, outcome, last_line, stack)


def horse_ended(zg: RQRuntime, attempt: Attempt, job: Job, end: HorseEnd, kwargs: dict[str, Any]) -> bool:
    """In the worker: the horse did not exit normally. Its ``exc_string`` in ``kwargs`` is replaced
    by zombieguard's account when zombieguard stopped it."""
    if attempt.lost is not None:
        return False  # killed because a newer attempt holds the job: nothing of this one is recorded
    if end.stopped_on_request:
        return record_end(ADAPTER, attempt, Outcome.STOPPED, "stopped on request (send_stop_job_command)")
    if end.kill_command and end.stop is None:
        # Killed on request: failed, as RQ alone fails it.
        return record_end(
            ADAPTER, attempt, Outcome.STOPPED, "horse killed on request (send_kill_horse_command)"
        )
    if end.stop is None:
        return _died(zg, attempt, end.how or kwargs.get("exc_string", "").strip())
    outcome, stack = end.stop
    policy = attempt.policy
    if outcome is Outcome.TIMED_OUT:
        error: BaseException = hard_limit_error(policy, job.timeout, killed=True)
    else:
        error = interrupt_error(Interrupt.HUNG, policy, "job")
    if not record_end(ADAPTER, attempt, outcome, str(error), stack):
        return False
    with contained(f"on_failure callback of rq job {job.id}"):
        run_failure_callback(job, end.death_penalty_class, error)
    kwargs["exc_string"] = failure_text(outcome, error, stack)
    return True


def _died(zg: RQRuntime, attempt: Attempt, how: str) -> bool:
    """The horse died by itself (OOM, segfault, a poison payload): a stall for the sweeper to
    recover or dead-letter, not a failure to record (without a lease: RQ's failure, as alone). The
    programs the job started die with it."""
    if attempt.unguarded:
        return True
    zg.give_up_stalled(
        attempt.job,
        attempt.token,
        f"its horse died: {how}",
        before_sweep=lambda: zg.end_orphans(attempt.job, attempt.token, attempt.number),
        again=attempt.reestablish,
    )
    return False
