"""Celery's ``task_prerun`` costs every task of a worker once a receiver is connected: zombieguard
connects one only where a guarded task is recorded ``STARTED`` (to keep that task's recorded end for
a stale copy), in the worker's main process before its pool starts."""

from __future__ import annotations

from types import SimpleNamespace

import celery.app.task
import pytest
from celery import Celery, signals
from celery.app.task import Context

from zombieguard.integrations.celery import CeleryRuntime, install
from zombieguard.integrations.celery.hooks import _ignores_result, before_started


def _body() -> None:
    """A task's body."""


def _receives() -> bool:
    return any(receiver is before_started for _, receiver in signals.task_prerun.receivers)


@pytest.mark.parametrize("track_started", [False, True])
def test_a_worker_listens_to_task_prerun_only_when_one_of_its_guarded_tasks_is_recorded_started(
    redis_url: str, key_prefix: str, track_started: bool
) -> None:
    signals.task_prerun.disconnect(before_started)
    app = install(Celery(f"zgtest-prerun-{track_started}", set_as_current=False))
    app.conf.zombieguard = {"redis_url": redis_url, "key_prefix": key_prefix}
    app.task(name="zgtest.plain", shared=False)(_body)
    app.task(name="zgtest.tracked", shared=False, track_started=track_started)(_body)
    worker = SimpleNamespace(
        app=app, hostname="zgtest@prerun", pool_cls="celery.concurrency.thread:TaskPool", concurrency=2
    )
    runtime = CeleryRuntime(worker)
    try:
        assert _receives() is track_started
    finally:
        runtime.counter.close()
        runtime.remove_dir()
        signals.task_prerun.disconnect(before_started)


@pytest.mark.skipif(
    not hasattr(celery.app.task, "get_actual_ignore_result"), reason="Celery < 5.7: the task's setting alone"
)
def test_a_delivery_s_own_ignore_result_decides_whether_its_recorded_end_is_kept() -> None:
    app = install(Celery("zgtest-prerun-ignore", set_as_current=False))
    ignoring = app.task(name="zgtest.ignoring", shared=False, track_started=True, ignore_result=True)(_body)
    storing = app.task(name="zgtest.storing", shared=False, track_started=True)(_body)
    assert _ignores_result(ignoring, Context({}))
    assert not _ignores_result(ignoring, Context({"ignore_result": False}))  # Celery records STARTED
    assert not _ignores_result(storing, Context({}))
    assert _ignores_result(storing, Context({"ignore_result": True}))
