"""Celery's ``task_prerun`` costs every task of a worker once a receiver is connected: zombieguard
connects one only for the guarded tasks recorded ``STARTED`` (to keep such a task's recorded end for
a stale copy), in the worker's main process before its pool starts; other tasks do not call it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery import Celery, signals
from celery.utils.dispatch.signal import _make_id

from zombieguard.integrations.celery import WorkerGuard, _before_started, install


def _body() -> None:
    """A task's body."""


def _senders() -> set[object]:
    """The sender ids zombieguard's receiver of ``task_prerun`` is connected for."""
    return {key[1] for key, receiver in signals.task_prerun.receivers if receiver is _before_started}


@pytest.mark.parametrize("track_started", [False, True])
def test_a_worker_listens_to_task_prerun_only_for_its_guarded_tasks_recorded_started(
    redis_url: str, key_prefix: str, track_started: bool
) -> None:
    app = install(Celery(f"zgtest-prerun-{track_started}", set_as_current=False))
    app.conf.zombieguard = {"redis_url": redis_url, "key_prefix": key_prefix}
    plain = app.task(name="zgtest.plain", shared=False)(_body)
    tracked = app.task(name="zgtest.tracked", shared=False, track_started=track_started)(_body)
    app.task(name="zgtest.tracked-no-result", shared=False, track_started=True, ignore_result=True)(_body)
    worker = SimpleNamespace(
        app=app, hostname="zgtest@prerun", pool_cls="celery.concurrency.thread:TaskPool", concurrency=2
    )
    guard = WorkerGuard(worker)
    try:
        assert _senders() == ({_make_id(tracked)} if track_started else set())
        assert _before_started not in signals.task_prerun._live_receivers(plain)
    finally:
        guard.counter.close()
        guard.remove_dir()
        for task in app.tasks.values():
            signals.task_prerun.disconnect(_before_started, sender=task)
