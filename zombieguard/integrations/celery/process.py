"""What this process is to the Celery integration: the worker's runtime, and what runs task bodies here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zombieguard.integrations.celery.executor import Executor
    from zombieguard.integrations.celery.worker import CeleryRuntime


@dataclass
class ThisProcess:
    """The integration's per-process state, set by the worker bootstep and the pool's signals."""

    runtime: CeleryRuntime | None = None
    """This worker's runtime (main process; inherited by prefork pool processes)."""
    executor: Executor | None = None
    """What runs task bodies under their leases in this process (set where tasks run)."""


this_process = ThisProcess()
"""This process's."""
