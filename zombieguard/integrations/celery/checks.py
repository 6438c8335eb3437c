"""What ``zombieguard doctor`` checks of the Celery part of a deployment."""

from __future__ import annotations

from celery import Celery

from zombieguard.integrations.celery.app import app_config, load_app, task_policy
from zombieguard.leases import LeaseStore
from zombieguard.ops.doctor import Finding


def check(store: LeaseStore | None, app: str | None) -> list[Finding]:
    """Celery tasks acknowledged late on a broker with a visibility timeout are limited below it, in
    the app ``app`` names (``module:app``; nothing to check without one). ``store``: unused, every
    check here reads the app."""
    if app is None:
        return []
    return check_visibility(load_app(app))


def check_visibility(app: Celery) -> list[Finding]:
    """:func:`check`, on the loaded app."""
    scheme = str(app.conf.broker_url or "").partition("://")[0]
    if scheme not in {"redis", "rediss", "sqs", "sentinel"}:
        return []  # AMQP brokers redeliver only when the connection drops
    timeout = float((app.conf.broker_transport_options or {}).get("visibility_timeout", 3600))
    config = app_config(app)
    findings = []
    for name in sorted(app.tasks):
        task = app.tasks[name]
        if name.startswith("celery.") or not task.acks_late:
            continue
        policy = task_policy(config, task)
        limit = policy.hard_timeout
        if limit is not None and limit + policy.overdue_grace < timeout:
            continue
        what = "has no hard limit" if limit is None else f"may run {limit + policy.overdue_grace:g} s"
        findings.append(
            Finding(
                "celery-visibility",
                f"task {name} is acknowledged late (acks_late) and {what}, but the broker's"
                f" visibility_timeout is {timeout:g} s: the broker hands it to another worker"
                " while it still runs (a duplicate)",
                f"give it a hard_timeout (or time_limit) below {timeout - policy.overdue_grace:g} s, or raise"
                " broker_transport_options['visibility_timeout'] above its limit",
            )
        )
    return findings
