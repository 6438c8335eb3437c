"""The presence watch: two sweepers per integration look at its workers' presence connections
(:mod:`zombieguard.worker.presence`) every ``presence_interval``; the others stand by, trying for a
seat every ``sweep_interval``. A worker whose connection stayed closed for ``presence_grace`` is
dead: its running leases are given up as stalled (``presence.lua``) and the watching sweeper sweeps
at once, so that its jobs are recovered (or dead-lettered) within about half a second of its death.
"""

from __future__ import annotations

import threading
import time

import redis

from zombieguard.containment import contained, log
from zombieguard.events import WorkerZombie, emit
from zombieguard.leases import LeaseStore, PresenceLook
from zombieguard.leases.connection import PRIMARY_MAX_AGE, primary_of
from zombieguard.recovery.sweeper import Sweeper

SEATS = 2
"""How many sweepers watch one integration's presence connections at a time."""


class PresenceWatch:
    """Watches one integration's presence connections for a sweeper, in a thread of its own."""

    def __init__(self, store: LeaseStore, sweeper: Sweeper, adapter: str) -> None:
        settings = store.settings
        if settings.presence_grace is None:
            raise ValueError("presence_grace is None: the presence watch is off")
        self.store = store
        self.sweeper = sweeper
        self.adapter = adapter
        self.grace = settings.presence_grace
        self.interval = settings.presence_interval
        self.standby_interval = max(settings.sweep_interval, settings.presence_interval)
        # A seat outlives a few missed looks (a busy machine), not a dead watcher by much.
        self.watcher_ttl = max(1.0, 5 * settings.presence_interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.watching = False

    def look(self) -> PresenceLook:
        """One look (if this sweeper holds or takes a seat); a dead worker's jobs are swept at once.
        Raises ``redis.RedisError``."""
        settings = self.store.settings
        # On a Sentinel service, look at the primary the sentinels name now: the presence connections
        # leave a former one (still up until Sentinel demotes it) once they name another.
        primary_of(self.store.client, max_age=0.0 if self.watching else PRIMARY_MAX_AGE)
        seen = self.store.look_at_presence(
            self.adapter,
            self.sweeper.name,
            seats=SEATS,
            watcher_ttl=self.watcher_ttl,
            grace=self.grace,
            restart_grace=settings.presence_restart_grace,
        )
        self.watching = seen.watching
        for dead in seen.dead:
            log.warning(
                "%s worker %s died (its presence connection to Redis closed %g s ago and stayed "
                "closed); recovering its %d running job(s)",
                self.adapter,
                dead.name,
                self.grace,
                dead.given_up,
            )
            emit(
                self.sweeper.sender,
                WorkerZombie(
                    dead.name,
                    dead.info.get("adapter", self.adapter),
                    "died: its connection to Redis closed without it leaving",
                    tuple(sorted(dead.info.items())),
                ),
            )
        if any(dead.given_up for dead in seen.dead):
            self.sweeper.sweep_once()
        return seen

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            started = time.monotonic()
            with contained(f"presence watch of {self.sweeper.name}"):
                try:
                    self.look()
                    failures = 0
                except redis.RedisError as exc:
                    self.watching = False
                    failures += 1
                    if failures == 1 or failures % 100 == 0:
                        log.warning("presence watch of %s: Redis unreachable (%s)", self.sweeper.name, exc)
            period = self.interval if self.watching else self.standby_interval
            self._stop.wait(max(0.0, period - (time.monotonic() - started)))

    def start(self) -> None:
        """Watch in a background thread."""
        self._thread = threading.Thread(target=self._run, name="zombieguard-presence-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
