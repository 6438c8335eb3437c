"""``zombieguard doctor``: checks a live deployment and its configuration, naming each problem and
its fix. Each check returns findings; an empty list means the check passed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import redis

from zombieguard.lease import LeaseStore, text
from zombieguard.policy import Config, Policy

CLOCK_SKEW_LIMIT = 1.0
"""Seconds between this machine's clock and Redis's past which ``doctor`` reports skew."""


@dataclass(frozen=True)
class Finding:
    """One problem: which check found it, what is wrong, and how to fix it."""

    check: str
    problem: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        """For ``--json``."""
        return asdict(self)


def check_redis(url: str, connect: Callable[[str], LeaseStore]) -> tuple[LeaseStore | None, list[Finding]]:
    """The Redis holding the leases answers."""
    try:
        store = connect(url)
        store.client.ping()
    except (redis.RedisError, ValueError) as exc:
        return None, [
            Finding(
                "redis",
                f"Redis at {url} is unreachable ({exc}): no lease can be taken or renewed",
                "start Redis or point --redis-url / ZOMBIEGUARD_REDIS_URL at the one the workers use",
            )
        ]
    return store, []


def check_clock(store: LeaseStore, local_time: Callable[[], float] = time.time) -> list[Finding]:
    """This machine's clock agrees with Redis's (leases are timed by Redis's; ages and alerts shown
    here, and the sweepers' view of a worker's deadlines, assume the two agree)."""
    before = local_time()
    server = store.server_time()
    after = local_time()
    skew = server - (before + after) / 2
    if abs(skew) <= CLOCK_SKEW_LIMIT:
        return []
    return [
        Finding(
            "clock",
            f"this machine's clock is {abs(skew):.1f} s {'behind' if skew > 0 else 'ahead of'} Redis's",
            "synchronise the clocks (NTP, chrony) of every worker host and of the Redis host",
        )
    ]


def _check_policy(name: str, policy: Policy) -> list[Finding]:
    interval = policy.renew_every
    if interval <= policy.lease_ttl / 2:
        return []
    return [
        Finding(
            "heartbeat",
            f"{name}: heartbeat_interval {interval:g} s is more than half of"
            f" lease_ttl {policy.lease_ttl:g} s: one late renewal lets the lease expire"
            " and a live job be recovered (run twice)",
            f"set heartbeat_interval to at most {policy.lease_ttl / 3:.3g} s"
            " (a third of lease_ttl, the default)",
        )
    ]


def check_policies(config: Config) -> list[Finding]:
    """Every configured policy (defaults and each pattern) renews its lease often enough."""
    findings = _check_policy("defaults", config.policy_for(""))
    for pattern, _ in config.rules:
        findings += _check_policy(f"policies[{pattern!r}]", config.policy_for(pattern))
    return findings


def check_rq_workers(store: LeaseStore) -> list[Finding]:
    """Every RQ worker listening on a queue where guarded jobs run is a guarded one."""
    try:
        from rq import Worker  # noqa: PLC0415 - RQ is optional
    except ImportError:
        return []
    guarded_queues = {
        text(queue)
        for queue, adapter in store.client.hgetall(store.queues_key).items()
        if text(adapter) == "rq"
    }
    guarded_workers = set(store.workers())
    findings = []
    for worker in Worker.all(connection=store.client):
        shared = sorted(set(worker.queue_names()) & guarded_queues)
        if worker.name in guarded_workers or not shared:
            continue
        findings.append(
            Finding(
                "rq-workers",
                f"RQ worker {worker.name} ({worker.hostname}, pid {worker.pid}) is not guarded but"
                f" takes jobs from {', '.join(shared)}, where guarded jobs run:"
                " its jobs have no limits, leases or recovery",
                "start it with: rq worker -w zombieguard.integrations.rq.GuardedWorker",
            )
        )
    return findings


def check_celery(app: Any) -> list[Finding]:
    """Celery tasks acknowledged late on a broker with a visibility timeout are limited below it."""
    from zombieguard.integrations.celery.app import app_config, task_policy  # noqa: PLC0415

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
