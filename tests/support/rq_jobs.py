"""Jobs the end-to-end tests enqueue; real RQ workers import them. Each records what happened in
files under a directory the test gives, so the test can count bodies started and completed."""

from __future__ import annotations

import os
import time
from typing import Any

from rq import Retry
from rq.timeouts import JobTimeoutException

import zombieguard
from tests.support.job_bodies import (  # noqa: F401 - enqueued by name as tests.support.rq_jobs.<body>
    beats_then_stalls,
    checkpointed,
    dies_the_first_times,
    hang_on_socket,
    kills_its_process,
    long_job,
    loses_its_lease_then_dies,
    loses_its_lease_then_hangs,
    note,
    notes,
    reports_progress,
    runs_a_program,
    starts_programs,
    stuck_in_c_code,
    works_in_steps,
)

if os.environ.get("ZG_SENTRY_DSN"):  # tests/e2e/test_sentry_workers.py: a local envelope endpoint
    import sentry_sdk
    from sentry_sdk.integrations.rq import RqIntegration

    from zombieguard.integrations.sentry import ZombieGuardIntegration

    sentry_sdk.init(
        dsn=os.environ["ZG_SENTRY_DSN"],
        integrations=[ZombieGuardIntegration(), RqIntegration()],
        send_default_pii=os.environ.get("ZG_SENTRY_PII") == "1",
    )


def add(x: int, y: int) -> int:
    """A healthy job."""
    return x + y


def sleep_then_return(directory: str, seconds: float) -> str:
    """Runs for a while, then succeeds."""
    note(directory, "started")
    time.sleep(seconds)
    note(directory, "completed")
    return "slept"


def cleans_up_on_soft_timeout(directory: str) -> str:
    """Catches the soft limit and finishes cleanly."""
    note(directory, "started")
    try:
        time.sleep(30)
    except zombieguard.SoftTimeLimitExceeded:
        note(directory, "cleaned-up")
        return "cleaned up"
    return "never"


def cleans_up_on_rq_timeout(directory: str) -> None:
    """Catches RQ's own timeout exception to clean up, then lets it fail the job."""
    note(directory, "started")
    try:
        time.sleep(30)
    except JobTimeoutException as exc:
        note(directory, "cleaned-up", type(exc).__name__)
        raise


def fails(directory: str) -> None:
    """Raises an ordinary exception."""
    note(directory, "started")
    raise ValueError("boom")


def returns_retry(directory: str) -> Any:
    """Asks RQ to retry it once, then succeeds."""
    note(directory, "started")
    if len(notes(directory, "started")) < 2:
        return Retry(max=2)
    return "second time"


@zombieguard.guard(hard_timeout=3)
def guarded_longer_than_rq(directory: str) -> str:
    """Its policy allows 3 s; RQ's job_timeout says 1 s: the policy wins."""
    note(directory, "started")
    time.sleep(1.5)
    return "policy wins"


def on_failure(job: Any, connection: Any, exc_type: Any, exc: Any, tb: Any) -> None:
    """RQ failure callback: records the exception type."""
    note(job.args[0], "on_failure", exc_type.__name__)


def on_success(job: Any, connection: Any, result: Any) -> None:
    """RQ success callback."""
    note(job.args[0], "on_success", repr(result))
