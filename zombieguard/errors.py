"""Exceptions raised by zombieguard.

Two roots, on purpose:

- :class:`ZombieGuardError` (an ``Exception``) for ordinary errors: bad configuration, a checkpoint
  outside a guarded job, a missing integration.
- :class:`JobInterrupt` (a ``BaseException``) for what zombieguard raises *inside* a job to stop it.
  A job's ``except Exception:`` must not be able to swallow a hard time limit or a lost lease, the same
  reason ``KeyboardInterrupt`` and ``SystemExit`` are not ``Exception`` subclasses.
"""

from __future__ import annotations

import click


class ZombieGuardError(Exception):
    """Root of zombieguard's ordinary errors."""


class ConfigurationError(ZombieGuardError, click.ClickException, ValueError):
    """Invalid configuration: the message names the key, the value and the rule it breaks.

    Also a ``click.ClickException``: raised as Celery's or RQ's command starts a worker (both are
    click commands), it ends the start with this one line on stderr and exit code 2, not a traceback.
    """

    exit_code = 2

    def format_message(self) -> str:
        """The line a click command prints after ``Error:``."""
        return f"zombieguard: {self.message}"


class IntegrationNotAvailable(ZombieGuardError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class NotInGuardedJob(ZombieGuardError, RuntimeError):
    """A job-only call (``checkpoint()``) was made outside a guarded job."""


class CheckpointNotSerializable(ZombieGuardError, TypeError):
    """``checkpoint().save(value)`` was given a value that JSON cannot represent."""


class SoftTimeLimitExceeded(ZombieGuardError):
    """Raised inside a job when it passes ``soft_timeout``.

    An ordinary exception: the job may catch it to clean up before ``hard_timeout`` stops it for real.
    """


class DeadlineExceeded(ZombieGuardError, TimeoutError):
    """Raised by :func:`zombieguard.deadline` when its block has run for its whole allowance."""


class JobInterrupt(BaseException):
    """Root of the interrupts zombieguard raises inside a job to stop it; not an ``Exception``."""


class HardTimeLimitExceeded(JobInterrupt):
    """The job ran past ``hard_timeout`` and is being stopped."""


class JobHung(JobInterrupt):
    """The job made no progress (``beat()`` or a checkpoint) within ``progress_timeout``."""


class LeaseLost(JobInterrupt):
    """This attempt no longer holds the job's lease: a newer attempt exists, or the job was stopped.

    Raised by ``beat()`` and ``checkpoint().save()`` of a superseded attempt, and injected into the job
    when its worker learns the lease is gone. Writes carrying the old fencing token are refused.
    """

    def __init__(self, job_id: str, token: int, detail: str = "a newer attempt holds the lease") -> None:
        super().__init__(f"lease of job {job_id!r} lost (fencing token {token}): {detail}")
        self.job_id = job_id
        self.token = token
        self.detail = detail
