"""The Celery app the end-to-end tests run real ``celery worker`` processes on.

Built from environment variables the test harness sets: the broker, the result backend, a key prefix
of the test's own (``global_keyprefix``) and a queue of its own. Tasks record what happened in files
under a directory the test gives, so the test can count bodies started and completed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.signals import task_failure, task_received

import zombieguard
from tests.support import job_bodies as bodies
from tests.support.job_bodies import note
from zombieguard.integrations.celery import install

PREFIX = os.environ.get("ZG_CELERY_PREFIX", "zgtest-celery")
# A Sentinel broker and backend (sentinel:// URLs): the service the sentinels monitor.
MASTER = (
    {"master_name": os.environ["ZG_CELERY_MASTER_NAME"]} if os.environ.get("ZG_CELERY_MASTER_NAME") else {}
)

app = Celery("zgtests")
app.conf.update(
    broker_url=os.environ.get("ZG_CELERY_BROKER", "redis://127.0.0.1:6379/9"),
    result_backend=os.environ.get("ZG_CELERY_BACKEND", "redis://127.0.0.1:6379/9"),
    broker_transport_options={"global_keyprefix": f"{PREFIX}:", **MASTER},
    result_backend_transport_options={"global_keyprefix": f"{PREFIX}:", **MASTER},
    task_default_queue=os.environ.get("ZG_CELERY_QUEUE", "zgq"),
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=int(os.environ.get("ZG_CELERY_PREFETCH", "1")),
    worker_max_tasks_per_child=int(os.environ.get("ZG_CELERY_MAX_TASKS_PER_CHILD", "0")) or None,
    worker_hijack_root_logger=False,
    result_extended=True,
)
if os.environ.get("ZG_CELERY_CONF"):
    app.conf.zombieguard = json.loads(os.environ["ZG_CELERY_CONF"])

if os.environ.get("ZG_SENTRY_DSN"):  # tests/e2e/test_sentry_workers.py: a local envelope endpoint
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration

    from zombieguard.integrations.sentry import ZombieGuardIntegration

    sentry_sdk.init(
        dsn=os.environ["ZG_SENTRY_DSN"],
        integrations=[ZombieGuardIntegration(), CeleryIntegration()],
        send_default_pii=os.environ.get("ZG_SENTRY_PII") == "1",
    )

if not os.environ.get("ZG_CELERY_UNGUARDED"):  # bench/celery.py measures plain Celery too
    install(app)
    install(app)  # idempotent


@task_failure.connect
def _count_task_failure(
    sender: Any = None, task_id: str = "", exception: Any = None, args: Any = (), **_: Any
) -> None:
    if args and isinstance(args[0], str) and Path(args[0]).is_dir():
        note(args[0], "task_failure", type(exception).__name__)


@task_received.connect
def _die_on_first_receipt(request: Any = None, **_: Any) -> None:
    """``kills_its_worker_on_receipt``: the first worker to receive it dies there, after kombu
    delivered its message and before the rest of Celery's handling (as a worker killed then would)."""
    if request is not None and request.name == "tests.support.celery_app.kills_its_worker_on_receipt":
        marker = Path(request.args[0]) / "killed-on-receipt"
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)


@zombieguard.events.job_timed_out.connect
def _count_timed_out(sender: str, event: Any) -> None:
    directory = os.environ.get("ZG_EVENTS_DIR")
    if directory:
        note(directory, f"event-{event.kind}-{getattr(event, 'limit', '')}", f"{event.job_id} {os.getpid()}")
        if event.processes:
            note(directory, "event-processes", " | ".join(event.processes))


@zombieguard.events.queue_silent.connect
@zombieguard.events.queue_recovered.connect
def _note_queue_event(sender: str, event: Any) -> None:
    directory = os.environ.get("ZG_EVENTS_DIR")
    if directory:
        note(directory, "queue-events", f"{event.kind} {event.queue} {event.running} {event.waiting}")


class Recorded(app.Task):  # type: ignore[misc,name-defined]
    """Records on_failure calls."""

    def on_failure(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if args and isinstance(args[0], str):
            note(args[0], "on_failure", type(exc).__name__)


class HangsOnSuccess(app.Task):  # type: ignore[misc,name-defined]
    """An ``on_success`` that hangs: it runs after the body, outside zombieguard's limits."""

    def on_success(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(60)


@app.task(base=HangsOnSuccess)
def hangs_after_it_returns() -> str:
    return "done"


class FreezesItsWorkerOnReturn(app.Task):  # type: ignore[misc,name-defined]
    """Freezes its whole worker (SIGSTOP to the worker's process group: a paused VM) once its body
    returned and its result is stored, before Celery acks its message (``acks_late``)."""

    def after_return(self, *args: Any, **kwargs: Any) -> None:
        os.killpg(os.getpgrp(), signal.SIGSTOP)


@app.task(base=FreezesItsWorkerOnReturn, acks_late=True)
def freezes_its_worker_on_return(directory: str) -> str:
    note(directory, "ran")
    time.sleep(0.3)  # past its lease_delay: its lease is written
    return "done"


@app.task
def add(x: int, y: int) -> int:
    """A healthy task."""
    return x + y


@app.task
def kills_its_worker_on_receipt(directory: str) -> str:
    """Healthy, once a worker takes it (see ``_die_on_first_receipt``)."""
    note(directory, "ran")
    return "ran"


@app.task
def noop() -> None:
    """For throughput."""


@app.task
def work(seconds: float) -> None:
    """For throughput with some work: waits ``seconds`` (I/O, as most tasks do)."""
    time.sleep(seconds)


@app.task(base=Recorded)
def cleans_up_on_soft_timeout(directory: str) -> str:
    """Catches Celery's soft-limit exception and finishes cleanly. Sleeps in short steps: an interrupt
    reaches a pool thread only between bytecodes, never inside one blocking call."""
    note(directory, "started")
    try:
        for _ in range(600):
            time.sleep(0.05)
    except SoftTimeLimitExceeded:
        note(directory, "cleaned-up")
        return "cleaned up"
    return "never"


@app.task(acks_late=True)
def changes_its_arguments(directory: str, items: list[str], seconds: float) -> str:
    """Notes the arguments it was given, changes them in place, then runs as long_task does."""
    note(directory, "given", ",".join(items))
    items.append("changed")
    result: str = bodies.long_job(directory, seconds)
    return result


@zombieguard.guard(hard_timeout=1.5)
@app.task(acks_late=True)
def guarded_above_its_task(directory: str, seconds: float) -> str:
    """long_task with ``@zombieguard.guard`` written above ``@app.task``."""
    result: str = bodies.long_job(directory, seconds)
    return result


@app.task
def long_task_early_ack(directory: str, seconds: float) -> str:
    """long_task without acks_late: Celery acks it on receipt."""
    result: str = bodies.long_job(directory, seconds)
    return result


@app.task(bind=True, max_retries=3, default_retry_delay=0)
def retries_once(self: Any, directory: str) -> str:
    """Retries itself once (``self.retry``), then succeeds."""
    note(directory, "started", str(self.request.retries))
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return "second time"


@app.task(time_limit=2)
def celery_limited_hang(directory: str, port: int) -> None:
    """Celery's own time_limit, no zombieguard policy: it is the policy's hard_timeout."""
    bodies.hang_on_socket(directory, port)


@app.task(zombieguard={"hard_timeout": 3})
@zombieguard.guard(hard_timeout=2)
def guarded_twice(directory: str) -> str:
    """The decorator beats the task option."""
    note(directory, "started")
    time.sleep(30)
    return "never"


@app.task
def sleeper(directory: str, seconds: float) -> str:
    """Runs for a while, then succeeds."""
    note(directory, "started")
    time.sleep(seconds)
    note(directory, "completed")
    return "slept"


@app.task
def echo(value: Any) -> Any:
    """Returns its argument (for chains, groups, chords)."""
    return value


@app.task(bind=True)
def stops_its_chain(self: Any, directory: str) -> str:
    """Ends the chain it is in, the Celery way: the rest of the chain is never sent."""
    self.request.chain = None
    return directory


@app.task
def total(values: list[int]) -> int:
    """A chord callback."""
    return sum(values)


def _register(body: Any, **options: Any) -> Any:
    """A shared job body (tests.support.job_bodies) as a task of this app, named
    ``tests.support.celery_app.<name>``."""
    return app.task(name=f"{__name__}.{options.pop('name', body.__name__)}", **options)(body)


hang_on_socket = _register(bodies.hang_on_socket, base=Recorded)
stuck_in_c_code = _register(bodies.stuck_in_c_code, base=Recorded)
holds_the_gil = _register(bodies.holds_the_gil)
beats_then_stalls = _register(bodies.beats_then_stalls, base=Recorded)
long_task = _register(bodies.long_job, name="long_task", acks_late=True)
works_in_steps = _register(bodies.works_in_steps, acks_late=True)
kills_its_process = _register(bodies.kills_its_process, acks_late=True, reject_on_worker_lost=True)
checkpointed = _register(bodies.checkpointed, acks_late=True)
dies_the_first_times = _register(bodies.dies_the_first_times, acks_late=True, reject_on_worker_lost=True)
loses_its_lease_then_dies = _register(
    bodies.loses_its_lease_then_dies, acks_late=True, reject_on_worker_lost=True
)
starts_programs = _register(bodies.starts_programs, base=Recorded)
runs_a_program = _register(bodies.runs_a_program)


@app.task(bind=True, acks_late=True)
def rejects_once(self: Any, directory: str) -> str:
    """Hands its message back to the broker once (``Reject(requeue=True)``), then succeeds."""
    note(directory, "started")
    if len(bodies.notes(directory, "started")) == 1:
        raise Reject("not now", requeue=True)
    return "second delivery"


@app.task(rate_limit="4/s")
def rate_limited(directory: str) -> None:
    """At most four a second per worker."""
    note(directory, "ran")


@app.task(track_started=True)
def fails(directory: str) -> None:
    """Raises an ordinary exception: the job's own bug. Recorded STARTED when it starts."""
    note(directory, "started")
    raise ValueError("the task's own bug")
