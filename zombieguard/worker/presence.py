"""A worker's presence connection: one connection to Redis, subscribed to the worker's own channel
for as long as the worker's process lives.

When the process dies (SIGKILL, the OOM killer, a crash), the kernel closes its sockets and Redis
drops the subscription at once; the watching sweepers (:mod:`zombieguard.recovery.presence`) then
recover the worker's jobs within ``presence_grace``, whatever the lease TTL. A frozen process (a
paused VM, SIGSTOP) keeps its connection open, so a freeze is still told apart only by its leases
expiring. When the connection alone closes (a Redis restart, ``CLIENT KILL``, a proxy), this thread
subscribes again at once.

Processes forked from the worker (RQ's horse, Celery's pool processes) inherit the connection's
socket: Redis sees it close when the last of them exits.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from zombieguard.containment import contained, log
from zombieguard.leases import LeaseStore
from zombieguard.leases.connection import PRIMARY_MAX_AGE

_RETRY_FIRST = 0.02
_RETRY_MAX = 1.0
_READ_FOR = 0.25
"""How long one read waits for a message (none ever comes): how soon the thread notices it is to stop."""
_ANNOUNCE_EVERY = 5.0
"""How often a subscribed worker announces its presence again (Redis may have lost the set)."""


class _PrimaryMoved(Exception):
    """Another node serves our keys (the sentinels name another primary, or a Cluster moved the
    slot): subscribe there."""


class Presence:
    """Keeps one worker's presence connection subscribed, in a thread of its own."""

    def __init__(self, store: LeaseStore, adapter: str, worker: str) -> None:
        self.store = store
        self.adapter = adapter
        self.worker = worker
        self.channel = store.presence_channel(worker)
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        self._pubsub: Any = None
        self._primary: tuple[str, int] | None = None
        self.subscriptions = 0
        """How many times the connection was subscribed (1 + the times it was opened again)."""

    def start(self, wait: float = 2.0) -> bool:
        """Open the connection and announce the worker once it is subscribed; waits up to ``wait``
        seconds for that (Redis away: the thread keeps trying). Whether it is subscribed."""
        self._thread = threading.Thread(target=self._run, name="zombieguard-presence", daemon=True)
        self._thread.start()
        return self._subscribed.wait(wait)

    def stop(self) -> None:
        """The worker leaves: close the connection, and stop being watched."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3)
            self._thread = None
        with contained(f"{self.adapter} worker {self.worker}: withdrawing its presence"):
            try:
                self.store.withdraw_presence(self.adapter, self.worker)
            except redis.RedisError as exc:
                log.warning("%s worker %s: presence not withdrawn (%s)", self.adapter, self.worker, exc)

    def _run(self) -> None:
        delay = _RETRY_FIRST
        failures = 0
        while not self._stop.is_set():
            pubsub: Any = None
            try:
                self._primary = self.store.serving()
                pubsub = self.store.node_client().pubsub()
                self._serve(pubsub)
            except _PrimaryMoved:
                log.info(
                    "%s worker %s: presence connection follows our keys to %s:%s",
                    self.adapter,
                    self.worker,
                    *(self._primary or ("?", "?")),
                )
                continue
            except (redis.RedisError, OSError) as exc:
                self._subscribed.clear()
                failures += 1
                if failures == 1 or failures % 60 == 0:
                    log.warning(
                        "%s worker %s: presence connection to Redis lost (%s); opening it again",
                        self.adapter,
                        self.worker,
                        exc,
                    )
                self._stop.wait(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            finally:
                if pubsub is not None:
                    with contained("closing the presence connection"):
                        pubsub.close()
            delay, failures = _RETRY_FIRST, 0

    def _serve(self, pubsub: Any) -> None:
        """Subscribe, announce, and read until told to stop (reading is what notices a closed
        connection; a subscription confirmed again means redis-py reconnected by itself)."""
        asked = time.monotonic()
        pubsub.subscribe(self.channel)
        announced = 0.0
        while not self._stop.is_set():
            if self._primary is not None and time.monotonic() - asked >= PRIMARY_MAX_AGE:
                # A failover leaves the former primary up, and this connection on it, until Sentinel
                # makes it a replica; a Cluster's slot moved leaves it on the former owner: the
                # watchers on the new node would find no subscriber.
                asked = time.monotonic()
                try:
                    primary = self.store.serving(max_age=PRIMARY_MAX_AGE)
                except redis.RedisError:
                    # The sentinels (or the cluster) did not answer from here: this connection
                    # stays where it is, watched, until another node is named.
                    primary = self._primary
                if primary != self._primary:
                    self._primary = primary
                    raise _PrimaryMoved
            message = pubsub.get_message(timeout=_READ_FOR)
            if message is not None and message.get("type") == "subscribe":
                self.store.announce_presence(self.adapter, self.worker)
                announced = time.monotonic()
                self.subscriptions += 1
                self._subscribed.set()
            elif self._subscribed.is_set() and time.monotonic() - announced >= _ANNOUNCE_EVERY:
                self.store.announce_presence(self.adapter, self.worker)
                announced = time.monotonic()
