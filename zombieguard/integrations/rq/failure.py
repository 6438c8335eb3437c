"""How a job zombieguard stopped fails the RQ way: its exception (RQ's own type when the limit is
RQ's ``job_timeout``), the ``exc_info`` RQ records, and the job's ``on_failure`` callback."""

from __future__ import annotations

import importlib
from typing import Any

from rq.job import Job
from rq.timeouts import JobTimeoutException as RQJobTimeoutException

from zombieguard.errors import HardTimeLimitExceeded
from zombieguard.integrations.rq import internals
from zombieguard.leases import Outcome
from zombieguard.policy import Policy


def run_failure_callback(job: Job, death_penalty_class: Any, error: BaseException) -> None:
    """Run the job's ``on_failure`` callback as RQ does (RQ 3: ``rq.callbacks``; RQ 2: a Job method)."""
    if internals.RQ3:
        callbacks = importlib.import_module("rq.callbacks")
        callbacks.execute_failure_callback(job, death_penalty_class, type(error), error, None)
    else:
        job.execute_failure_callback(death_penalty_class, type(error), error, None)  # type: ignore[attr-defined]


_EXCEPTION_NAMES = {
    Outcome.TIMED_OUT: "zombieguard.HardTimeLimitExceeded",
    Outcome.HUNG: "zombieguard.JobHung",
    Outcome.STALLED: "zombieguard.JobStalled",
    Outcome.DEAD_LETTERED: "zombieguard.JobDeadLettered",
    Outcome.STOPPED: "zombieguard.JobStopped",
}


class JobTimeoutException(HardTimeLimitExceeded, RQJobTimeoutException):
    """Raised in a job past its hard limit when that limit is RQ's own ``job_timeout`` (no zombieguard
    source set ``hard_timeout``): both zombieguard's interrupt and RQ's exception, so that a job
    catching ``rq.timeouts.JobTimeoutException`` to clean up still does; ``exc_info`` names it
    ``JobTimeoutException``, with RQ's message. Like RQ's, it is an ``Exception``: a job that
    swallows it is still stopped, its horse (or worker) killed :data:`ESCALATE_AFTER` later."""


def rq_timeout_message(seconds: float) -> str:
    """RQ's own words for a job past its ``job_timeout``."""
    return f"Task exceeded maximum timeout value ({seconds:g} seconds)"


def rq_limit(policy: Policy, job_timeout: Any) -> bool:
    """Whether the policy's hard limit is RQ's own ``job_timeout`` (no zombieguard source set another)."""
    return policy.hard_timeout is not None and bool(job_timeout) and float(job_timeout) == policy.hard_timeout


def hard_limit_error(policy: Policy, job_timeout: Any, killed: bool) -> HardTimeLimitExceeded:
    """The exception for a job past its hard limit: RQ's type when the limit is RQ's ``job_timeout``;
    ``killed``: its process was killed (it was stuck where no Python code runs)."""
    if rq_limit(policy, job_timeout):
        return JobTimeoutException(rq_timeout_message(float(job_timeout)))
    if killed:
        return HardTimeLimitExceeded(
            f"job passed its hard_timeout of {policy.hard_timeout:g} s and was killed "
            "(stuck where no Python code runs: C code or a blocking call)"
        )
    return HardTimeLimitExceeded(f"job passed its hard_timeout of {policy.hard_timeout:g} s")


def failure_text(outcome: Outcome, error: BaseException, stack: str | None) -> str:
    """The ``exc_info`` RQ records for a job zombieguard ended (``outcome``), with its stack."""
    if isinstance(error, JobTimeoutException):
        name = "zombieguard.integrations.rq.JobTimeoutException"
    else:
        name = _EXCEPTION_NAMES.get(outcome, "zombieguard.JobFailed")
    return f"{name}: {error}\n" + (f"\nStack when it was stopped:\n{stack}" if stack else "")
