"""What ``zombieguard doctor`` checks of the RQ part of a deployment."""

from __future__ import annotations

import redis
from rq import Worker

from zombieguard.leases import LeaseStore, text
from zombieguard.ops.doctor import Finding, refused


def check(store: LeaseStore | None, app: str | None) -> list[Finding]:
    """Every RQ worker listening on a queue where guarded jobs run is a guarded one (``app``: unused,
    RQ has no application object). Nothing to check without the leases' Redis (``store`` None), nor
    when its user may not read RQ's keys there (an ACL user for the leases alone)."""
    if store is None:
        return []
    try:
        return _unguarded(store)
    except redis.ResponseError as exc:
        if refused(exc):
            return []
        raise


def _unguarded(store: LeaseStore) -> list[Finding]:
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
