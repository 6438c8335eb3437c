"""The absence of success: per queue, an alert when no job of it completed for ``silence_alert``
seconds while jobs of it waited or ran, and another when it recovers.

Every sweeper looks (at most every :func:`period` seconds); the transitions are taken in Redis
(``HSETNX`` / ``HDEL`` on ``{prefix}:silence``), so that of many sweepers exactly one sends each alert.
Completions are recorded by the release of a completed attempt, in the same script (no extra round
trip); a queue that never completed a job starts its clock when a sweeper first sees it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from zombieguard.adapter import JobAdapter
from zombieguard.containment import log
from zombieguard.events import QueueEvent, QueueRecovered, QueueSilent, emit
from zombieguard.leases import LeaseStore, text


def period(silence_alert: float) -> float:
    """How often sweepers look: a quarter of the alert's threshold, at most every 5 s."""
    return min(5.0, silence_alert / 4)


def check_silence(store: LeaseStore, adapters: Mapping[str, JobAdapter], sender: str) -> list[QueueEvent]:
    """Look at every queue of ``adapters``; send and return the alerts this call took. Raises RedisError."""
    threshold = store.settings.silence_alert
    if threshold is None:
        return []
    client = store.client
    queues = {text(q): text(a) for q, a in client.hgetall(store.queues_key).items()}
    now = store.server_time()
    completed = {text(q): float(text(t)) for q, t in client.hgetall(store.completed_key).items()}
    silent = {text(q) for q in client.hkeys(store.silence_key)}
    running: dict[str, int] = {}
    for record in store.active()[0]:
        running[record.queue] = running.get(record.queue, 0) + 1
    sent: list[QueueEvent] = []
    for queue, adapter_name in sorted(queues.items()):
        adapter = adapters.get(adapter_name)
        if adapter is None:
            continue  # its own integration's sweepers look at it
        last = completed.get(queue)
        if last is None:
            client.hsetnx(store.completed_key, queue, repr(now))  # the clock starts now
            continue
        waiting = None
        with contextlib.suppress(Exception):
            waiting = adapter.waiting(queue)
        busy = running.get(queue, 0) > 0 or bool(waiting)
        silent_for = now - last
        fields = {"queue": queue, "adapter": adapter_name, "silent_for": silent_for}
        counts = {"running": running.get(queue, 0), "waiting": waiting}
        if silent_for >= threshold and busy and queue not in silent:
            if client.hsetnx(store.silence_key, queue, repr(now)):
                event: QueueEvent = QueueSilent(**fields, **counts)  # type: ignore[arg-type]
                log.error(
                    "queue %s: no job completed for %.0f s (%d running, %s waiting)",
                    queue,
                    silent_for,
                    counts["running"],
                    "?" if waiting is None else waiting,
                )
                emit(sender, event)
                sent.append(event)
        elif (
            queue in silent and (silent_for < threshold or not busy) and client.hdel(store.silence_key, queue)
        ):
            event = QueueRecovered(**fields, **counts)  # type: ignore[arg-type]
            log.warning("queue %s: completing jobs again (or idle)", queue)
            emit(sender, event)
            sent.append(event)
    return sent
