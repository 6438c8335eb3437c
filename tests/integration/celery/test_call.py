"""How a guarded worker calls a task's body, through Celery's own tracer (the worker's optimizations
on, as in a worker): as Celery calls the body of a task with no ``__call__`` of its own
(``task.run``), or through the ``__call__`` the app's task class defines; under the task's attempt
either way, with the request Celery pushed for it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery, Task
from celery.app.trace import build_tracer, reset_worker_optimizations, setup_worker_optimizations

from zombieguard.integrations.celery import CeleryRuntime, install
from zombieguard.worker.attempt import Attempt, require_attempt

seen: list[tuple[str, str, Attempt]] = []
"""(where, the request's task id, the running attempt), in the order the bodies ran."""


class AppContextTask(Task):  # type: ignore[misc]
    """An app's own task class with a ``__call__`` (as Flask apps wrap bodies in an app context)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        seen.append(("app's __call__", self.request.id, require_attempt("test")))
        return super().__call__(*args, **kwargs)


def _record(task: Any, depth: int = 0) -> str:
    """A bound task's body: records where it runs; calls itself directly once when ``depth``."""
    seen.append(("body", task.request.id, require_attempt("test")))
    if depth:
        task(depth - 1)
    return "done"


@pytest.fixture
def guarded_worker(redis_url: str, key_prefix: str) -> Iterator[Callable[[type[Task] | None], Celery]]:
    """Builds an app (with a task class of its own, or Celery's) and starts a threads worker's runtime
    for it in this process."""
    runtimes: list[CeleryRuntime] = []

    def start(task_cls: type[Task] | None) -> Celery:
        app = Celery(f"zgtest-call-{uuid.uuid4().hex[:6]}", set_as_current=False, task_cls=task_cls)
        install(app)
        app.conf.zombieguard = {"redis_url": redis_url, "key_prefix": key_prefix}
        app.task(name="zgtest.record", bind=True, shared=False)(_record)
        worker = SimpleNamespace(
            app=app, hostname="zgtest@call", pool_cls="celery.concurrency.thread:TaskPool", concurrency=2
        )
        runtime = CeleryRuntime(worker)
        runtime.start()
        runtimes.append(runtime)
        setup_worker_optimizations(app)
        return app

    seen.clear()
    try:
        yield start
    finally:
        reset_worker_optimizations()
        for runtime in runtimes:
            runtime.stop()


def _run(app: Celery, *args: Any) -> tuple[str, str]:
    """Run ``zgtest.record`` once the way a worker does; its state and its task id."""
    task = app.tasks["zgtest.record"]
    task_id = uuid.uuid4().hex
    delivery = {"exchange": "", "routing_key": "zgtest", "priority": 0, "redelivered": False}
    request = {"id": task_id, "delivery_info": delivery, "headers": {}, "is_eager": False}
    trace = build_tracer(task.name, task, app=app, eager=False)
    traced = trace(task_id, args, {}, request)
    return (traced.info.state if traced.info is not None else "SUCCESS"), task_id


def test_a_guarded_task_body_runs_under_its_attempt_with_the_request_celery_pushed(
    guarded_worker: Callable[[type[Task] | None], Celery],
) -> None:
    app = guarded_worker(None)
    state, task_id = _run(app)
    assert state == "SUCCESS"
    [(where, request_id, attempt)] = seen
    assert (where, request_id, attempt.job.job_id) == ("body", task_id, task_id)


def test_the_app_task_classs_own_call_runs_around_a_guarded_body(
    guarded_worker: Callable[[type[Task] | None], Celery],
) -> None:
    app = guarded_worker(AppContextTask)
    state, task_id = _run(app)
    assert state == "SUCCESS"
    assert [(where, request_id) for where, request_id, _ in seen] == [
        ("app's __call__", task_id),
        ("body", task_id),
    ]
    assert seen[0][2] is seen[1][2]
    assert seen[0][2].job.job_id == task_id


def test_a_task_calling_itself_directly_runs_the_inner_call_inside_the_same_attempt(
    guarded_worker: Callable[[type[Task] | None], Celery],
) -> None:
    app = guarded_worker(None)
    state, task_id = _run(app, 1)
    assert state == "SUCCESS"
    assert [(where, request_id) for where, request_id, _ in seen] == [("body", task_id), ("body", task_id)]
    assert seen[0][2] is seen[1][2]  # not a second attempt of the same task
