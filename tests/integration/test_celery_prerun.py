"""Celery's ``task_prerun`` costs every task of a worker once a receiver is connected: zombieguard
connects one only where a guarded task is recorded ``STARTED`` (to keep that task's recorded end for
a stale copy), in the worker's main process before its pool starts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery import Celery, signals

from zombieguard.integrations.celery import WorkerGuard, _before_started, install


def _body() -> None:
    """A task's body."""


def _receives() -> bool:
    return any(receiver is _before_started for _, receiver in signals.task_prerun.receivers)


@pytest.mark.parametrize("track_started", [False, True])
def test_a_worker_listens_to_task_prerun_only_when_one_of_its_guarded_tasks_is_recorded_started(
    redis_url: str, key_prefix: str, track_started: bool
) -> None:
    signals.task_prerun.disconnect(_before_started)
    app = install(Celery(f"zgtest-prerun-{track_started}", set_as_current=False))
    app.conf.zombieguard = {"redis_url": redis_url, "key_prefix": key_prefix}
    app.task(name="zgtest.plain", shared=False)(_body)
    app.task(name="zgtest.tracked", shared=False, track_started=track_started)(_body)
    worker = SimpleNamespace(
        app=app, hostname="zgtest@prerun", pool_cls="celery.concurrency.thread:TaskPool", concurrency=2
    )
    guard = WorkerGuard(worker)
    try:
        assert _receives() is track_started
    finally:
        guard.counter.close()
        guard.remove_dir()
        signals.task_prerun.disconnect(_before_started)
