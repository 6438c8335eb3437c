"""A Celery app for ``zombieguard doctor``: tasks acknowledged late on a Redis broker whose
visibility timeout is short, one limited below it and one not."""

from __future__ import annotations

import os

from celery import Celery

from zombieguard.integrations.celery import install

app = Celery("doctor_app", broker=os.environ["ZG_DOCTOR_BROKER"])
app.conf.task_acks_late = True
app.conf.broker_transport_options = {"visibility_timeout": 30}
install(app)


@app.task(time_limit=10)
def limited_below() -> None:
    """Its hard limit plus the grace ends before the broker would redeliver it."""


@app.task
def unlimited() -> None:
    """No limit: the broker redelivers it after 30 s while it may still run."""
