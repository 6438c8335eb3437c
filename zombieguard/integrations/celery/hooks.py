"""The receivers of Celery's signals, connected once per process by :func:`install`: the executor of
each prefork pool process, the recorded end kept before ``STARTED``, a retry's attempt number, and
a pool process's deferred releases written before it exits."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import celery
import redis
from celery import signals
from celery.app.task import Task

from zombieguard.containment import contained
from zombieguard.integrations.celery import internals
from zombieguard.integrations.celery.message import ATTEMPT_HEADER, first_delivery
from zombieguard.integrations.celery.prefork import PoolProcessExecutor
from zombieguard.integrations.celery.process import this_process
from zombieguard.integrations.celery.task import GuardedTask

_actual_ignore_result: Callable[[Task, Any], Any] | None = getattr(
    celery.app.task, "get_actual_ignore_result", None
)
"""How Celery's tracer tells whether a delivery stores its result (Celery 5.7; None before)."""


_connected = False


_connect_lock = threading.Lock()


def _on_pool_process_init(**_: Any) -> None:
    """In each prefork pool process: the executor that runs task bodies under their leases."""
    runtime = this_process.runtime
    if runtime is None or runtime.pool != "prefork":
        return
    this_process.executor = PoolProcessExecutor(runtime, internals.pool_process_index())


def before_started(task_id: str = "", task: Any = None, **_: Any) -> None:
    """``task_prerun``, where the task runs, before Celery may record it ``STARTED``: for a delivery
    that may be a stale copy (it carries an attempt number, or the broker redelivered it), keep the
    task's recorded end, to put back if the copy is refused."""
    executor = this_process.executor
    if executor is None or not isinstance(task, GuardedTask) or not task.track_started:
        return  # Celery records no STARTED (every task pays for this receiver: the cheap tests first)
    request = task.request
    if _ignores_result(task, request):
        return  # nor for this delivery
    if first_delivery(request):
        return  # no earlier end to keep
    with contained(f"celery task {task_id}: its recorded end not kept"):
        executor.keep_result(task, task_id)


def _ignores_result(task: Task, request: Any) -> bool:
    """Whether Celery stores no result (and no ``STARTED``) for this delivery of ``task``: as its
    tracer decides (Celery 5.7: the request's own ``ignore_result`` wins; before: the task's)."""
    if _actual_ignore_result is not None:
        return bool(_actual_ignore_result(task, request))
    return bool(task.ignore_result)


def _stamp_retry(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """A task re-publishing itself (``self.retry``) publishes the next attempt."""
    executor = this_process.executor
    if executor is None or headers is None:
        return
    state = executor.current
    if state is not None and headers.get("id") == state.attempt.job.job_id:
        headers[ATTEMPT_HEADER] = state.attempt.number + 1


def _on_pool_process_exit(**_: Any) -> None:
    """``worker_process_shutdown``, in a prefork pool process about to exit (``max_tasks_per_child``,
    a shrinking pool): write what its heartbeat still holds (releases, queues' last successes)."""
    executor = this_process.executor
    if isinstance(executor, PoolProcessExecutor):
        with contained("pool process writing its deferred releases"), contextlib.suppress(redis.RedisError):
            executor.releases.flush_deferred()


def connect_signals() -> None:
    global _connected
    with _connect_lock:
        if _connected:
            return
        signals.worker_process_init.connect(_on_pool_process_init, weak=False)
        signals.worker_process_shutdown.connect(_on_pool_process_exit, weak=False)
        signals.before_task_publish.connect(_stamp_retry, weak=False)
        _connected = True
