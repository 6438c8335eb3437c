"""The Celery app the chaos runner's workers run, configured as a careful user would for reliability.

Built from environment variables the runner sets: ``ZG_CHAOS_BROKER``, ``ZG_CHAOS_BACKEND``,
``ZG_CHAOS_QUEUE``, ``ZG_CHAOS_ZOMBIEGUARD`` (the ``app.conf.zombieguard`` mapping, as JSON) and
``ZG_CHAOS_PLAIN`` (set: plain Celery, no ``install(app)``). Its tasks are the bodies of
``tests.chaos.jobs`` under their own names, with Celery's own time limits set to the same values as
their policies' hard limits, so that plain runs have them too.
"""

from __future__ import annotations

import json
import os

from celery import Celery

from tests.chaos import jobs

PLAIN = bool(os.environ.get("ZG_CHAOS_PLAIN"))

app = Celery("zgchaos")
app.conf.update(
    broker_url=os.environ.get("ZG_CHAOS_BROKER", "redis://127.0.0.1:6379/0"),
    result_backend=os.environ.get("ZG_CHAOS_BACKEND", "redis://127.0.0.1:6379/0"),
    task_default_queue=os.environ.get("ZG_CHAOS_QUEUE", "zgchaos"),
    # What reliability asks of plain Celery: ack after the task, give a killed child's task back,
    # reserve no more than the pool can run, retry storing results.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # A result the backend could not store while Redis restarts is stored once it answers again,
    # instead of the task being recorded FAILURE with the ConnectionError.
    result_backend_always_retry=True,
    result_extended=True,
    broker_connection_retry_on_startup=True,
)

if not PLAIN:
    from zombieguard.integrations.celery import install

    app.conf.zombieguard = json.loads(os.environ.get("ZG_CHAOS_ZOMBIEGUARD", "{}"))
    install(app)

for _kind, _body in jobs.BODIES.items():
    app.task(name=f"{jobs.__name__}.{_kind}", time_limit=jobs.KIND_LIMITS[_kind])(_body)
