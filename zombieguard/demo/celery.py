"""``zombieguard demo`` on Celery: the app its workers run (``celery -A zombieguard.demo.celery``),
configured from the environment the demo gives them, and the demo's Celery side.

The app is configured the way teams configure Celery for reliability: ``acks_late``,
``reject_on_worker_lost``, a hard ``time_limit``, one task prefetched per process; its tasks are
the job functions of :mod:`zombieguard.demo`. Guarded, ``install(app)``; unguarded, nothing else.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import redis
from celery import Celery

from zombieguard import demo
from zombieguard.integrations.celery import install
from zombieguard.leases import LeaseState, LeaseStore

_STATES = {
    "PENDING": "queued",
    "RETRY": "queued",
    "STARTED": "started",
    "SUCCESS": "finished",
    "FAILURE": "failed",
}


def make_app(url: str, prefix: str, guarded: bool) -> Celery:
    """The demo's app on the Redis at ``url``, its broker and result keys under ``prefix``."""
    app = Celery("zgdemo", broker=url, backend=url)
    keys = {"global_keyprefix": f"{prefix}:"}
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=True,
        task_time_limit=demo.HARD_TIMEOUT,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options=keys,
        result_backend_transport_options=keys,
    )
    if guarded:
        install(app)
    for function in (demo.normal, demo.fetch_report, demo.long_export, demo.poison, demo.crunch):
        app.task(name=f"zgdemo.{function.__name__}")(function)
    return app


def __getattr__(name: str) -> Celery:
    """``app``: the app the demo's workers run, built from their environment when ``celery -A``
    first asks for it (importing this module builds none)."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    built = make_app(
        os.environ.get("ZOMBIEGUARD_REDIS_URL", "redis://127.0.0.1:6379/0"),
        os.environ.get("ZOMBIEGUARD_KEY_PREFIX", "zgdemo"),
        guarded=os.environ.get("ZGDEMO_UNGUARDED") != "1",
    )
    globals()["app"] = built
    return built


class CeleryDemo(demo.Framework):
    """The demo on Celery: two prefork workers, concurrency 2 each."""

    title = "Celery"
    plain = "plain Celery prefork"
    guarded = "Celery prefork with install(app)"

    def __init__(self, client: redis.Redis, url: str, store: LeaseStore, tag: str, unguarded: bool) -> None:
        super().__init__(client, url, store, tag, unguarded)
        self.app = make_app(url, store.settings.key_prefix, guarded=not unguarded)

    def worker_command(self, name: str) -> list[str]:
        return [
            *(sys.executable, "-m", "celery", "-A", f"{__name__}:app", "worker"),
            *("--pool", "prefork", "--concurrency", "2", "--hostname", f"{name}@%h"),
            *("--queues", self.queue, "--loglevel", "warning"),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        ]

    def submit(self, function: str, *args: Any) -> str:
        return str(self.app.send_task(f"zgdemo.{function}", args=args, queue=self.queue).id)

    def status(self, job_id: str) -> str:
        try:
            state = str(self.app.AsyncResult(job_id).state)
        except Exception:
            return "gone"
        status = _STATES.get(state, state.lower())
        if status == "started":
            with contextlib.suppress(Exception):
                record = self.store.record(job_id)
                if record is not None and record.state in (LeaseState.RECOVERING, LeaseState.QUEUED):
                    return "queued"  # recovered: published again, its next attempt not started yet
        return status

    def running_on(self, job_id: str) -> str | None:
        with contextlib.suppress(Exception):
            info = self.app.AsyncResult(job_id).info
            if isinstance(info, dict) and info.get("hostname"):
                return str(info["hostname"]).split("@", 1)[0]
        return None

    def verdict(self, job_id: str) -> str:
        with contextlib.suppress(Exception):
            exc = self.app.AsyncResult(job_id).result
            if isinstance(exc, BaseException):
                detail = str(exc.args[0]) if exc.args else ""
                return f"{type(exc).__name__}: {detail}".splitlines()[0]
        return ""

    def cleanup(self) -> None:
        self.app.pool.force_close_all()
        self.app.close()
