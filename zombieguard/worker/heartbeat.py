"""One heartbeat thread per worker process: renews all of the process's leases in one round trip.

The thread never stops a job because Redis is unreachable: it logs, emits ``heartbeat_failed``,
retries with backoff, and once Redis answers again re-establishes leases that Redis lost. What it
cannot guarantee in that window: a lease whose renewals fail for longer than ``lease_ttl`` can be
claimed by a sweeper that still reaches Redis, and the job is then recovered elsewhere; the attempt
here learns it lost the lease at the next renewal and is stopped (``LeaseLost``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence

import redis

from zombieguard.containment import contained, log, report
from zombieguard.enforcement.children import JobProcesses, ProcessTree
from zombieguard.errors import LeaseLost
from zombieguard.events import HeartbeatFailed, emit
from zombieguard.leases import DeferredRelease, LeaseStore
from zombieguard.worker.attempt import Attempt

LostCallback = Callable[[Attempt, LeaseLost], None]

# Backoff after a failed round trip: doubles from the first value, capped by the renewal interval.
_FIRST_RETRY = 0.1
# Deferred releases usually ride along with the next acquire; when no job follows, this soon.
DEFERRED_FLUSH = 0.2
# Queues' last successes of jobs that ended before their leases were written: at most this often.
COMPLETED_EVERY = 1.0


class Heartbeat:
    """Renews a worker's presence and the leases of its running attempts."""

    def __init__(
        self,
        store: LeaseStore,
        adapter: str,
        worker: str,
        interval: float,
        on_lost: LostCallback | None = None,
        *,
        presence: bool = True,
    ) -> None:
        self.store = store
        self.presence = presence
        """False in a process that is not the worker itself (a Celery pool process): its releases are
        written, and its leases renewed if any are added, but it does not announce a worker."""
        self.adapter = adapter
        self.worker = worker
        self.interval = interval
        self.on_lost = on_lost
        self._attempts: dict[str, Attempt] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0
        """Round trips failed in a row."""
        self._deferred: list[DeferredRelease] = []
        self._pending: list[Attempt] = []
        self._completed: set[str] = set()
        self._completed_written = 0.0
        self._renew_now = False
        self._idle = True
        self._wake_at = 0.0
        """When the thread's current wait ends (monotonic)."""
        self._busy_delay = float("inf")
        """The shortest ``lease_delay`` of the pending leases while jobs keep coming: the thread then
        looks at least that often, so that no job has to wake it."""
        self._arrived = False
        """A pending lease was deferred since the thread last looked."""

    @property
    def worker_ttl(self) -> float:
        """How long the worker's presence lasts without a renewal: three missed intervals."""
        return self.interval * 3

    def add(self, attempt: Attempt) -> None:
        """Renew ``attempt``'s lease from now on; renews sooner when its policy asks for it."""
        with self._lock:
            self._attempts[attempt.job.job_id] = attempt
            if attempt.policy.renew_every < self.interval:
                self._renew_now = True
                self._wake.set()

    def remove(self, attempt: Attempt) -> None:
        """Stop renewing ``attempt``'s lease (it ended)."""
        with self._lock:
            if self._attempts.get(attempt.job.job_id) is attempt:
                del self._attempts[attempt.job.job_id]

    def defer(self, release: DeferredRelease) -> None:
        """Write this release later: with the next acquire (:meth:`take_deferred`), or soon."""
        with self._lock:
            self._deferred.append(release)
            idle = self._idle
            self._idle = False
        if idle:
            self._wake.set()

    def defer_acquire(self, attempt: Attempt) -> None:
        """Write ``attempt``'s pending lease by the end of its ``lease_delay``, if it runs for half
        of it (it may end before: :meth:`Attempt.finish_unleased`)."""
        delay = _delay(attempt)
        with self._lock:
            self._pending.append(attempt)
            self._busy_delay = min(self._busy_delay, delay)
            self._arrived = True
            # Woken only when it would look too late: not per job while jobs keep coming.
            wake = self._idle or attempt.started_monotonic + delay < self._wake_at
            self._idle = False
        if wake:
            self._wake.set()

    def drop(self, attempt: Attempt) -> None:
        """``attempt`` ended before its pending lease was written: forget it now, not at the next
        look, so that what it holds is freed as it ends (held until then, each job's objects would
        outlive it and set off the garbage collector every few dozen jobs)."""
        with self._lock:
            if attempt in self._pending:  # else the thread's last look took it (its lease written)
                self._pending.remove(attempt)

    def completed_unleased(self, queue: str) -> None:
        """A job of ``queue`` completed before its lease was written: record the queue's last
        success soon (within :data:`COMPLETED_EVERY`)."""
        if queue not in self._completed:
            with self._lock:
                self._completed.add(queue)

    def acquire_due(self, now: float | None = None) -> None:
        """Write the pending leases that are due (the others wait; ended ones are dropped)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            pending = [a for a in self._pending if a.pending]
            due = [a for a in pending if now - a.started_monotonic >= _half_delay(a)]
            self._pending = [a for a in pending if now - a.started_monotonic < _half_delay(a)]
        for index, attempt in enumerate(due):
            try:
                attempt.acquire_now()
            except redis.RedisError:
                with self._lock:
                    self._pending[:0] = due[index:]
                raise
            except Exception as exc:  # reported; the others' leases are written all the same
                report(f"heartbeat writing the lease of job {attempt.job.job_id}", exc)

    def take_deferred(self) -> list[DeferredRelease]:
        """The deferred releases not yet written; the caller writes them."""
        with self._lock:
            taken, self._deferred = self._deferred, []
        return taken

    def flush_deferred(self, *, now: float | None = None) -> None:
        """Write the deferred releases now (put back when Redis is unreachable), and the queues'
        last successes when :data:`COMPLETED_EVERY` passed (``now=None``: whatever the time)."""
        if self._completed and (now is None or now - self._completed_written >= COMPLETED_EVERY):
            with self._lock:
                queues, self._completed = self._completed, set()
            try:
                self.store.record_completed(self.adapter, sorted(queues))
            except redis.RedisError:
                with self._lock:
                    self._completed |= queues
                raise
            self._completed_written = time.monotonic() if now is None else now
        taken = self.take_deferred()
        if not taken:
            return
        try:
            self.store.release_many(taken)
        except redis.RedisError:
            with self._lock:
                self._deferred[:0] = taken
            raise

    def attempts(self) -> list[Attempt]:
        """The attempts being renewed."""
        with self._lock:
            return list(self._attempts.values())

    def _renewing(self, attempt: Attempt) -> bool:
        with self._lock:
            return self._attempts.get(attempt.job.job_id) is attempt

    def _poll(self, now: float) -> float:
        """How long to wait before looking for deferred work while jobs run (called holding the
        lock). A look writes the pending leases of jobs older than half their ``lease_delay``; the
        next one comes by the end of the delay of the youngest left, or, none left, one shortest
        delay later (a job starting meanwhile ends its delay after that). Jobs coming one after the
        other make the thread look once or twice a ``lease_delay``, whatever their number, and never
        wake it."""
        ends = (a.started_monotonic + _delay(a) - now for a in self._pending)
        return max(0.0, min(DEFERRED_FLUSH, self._busy_delay, *ends))

    def _period(self) -> float:
        with self._lock:
            return min([self.interval, *(a.policy.renew_every for a in self._attempts.values())])

    def beat_once(self) -> bool:
        """One round trip: renew everything; hand lost leases to ``on_lost``. False if Redis failed."""
        sent_at = time.monotonic()
        try:
            # Releases first, then the snapshot: an attempt released in between is not renewed.
            self.flush_deferred()
            attempts = self.attempts()
            if not attempts and not self.presence:
                return True
            codes = self.store.renew(
                self.adapter,
                self.worker,
                self.worker_ttl,
                [(a.job.job_id, a.token) for a in attempts],
                processes_under([a.processes for a in attempts]),
            )
        except redis.RedisError as exc:
            self.failures += 1
            if self.failures == 1 or self.failures % 10 == 0:
                log.warning("heartbeat of %s failed %d time(s) in a row: %s", self.worker, self.failures, exc)
            emit(self.adapter, HeartbeatFailed(self.worker, self.adapter, str(exc), failures=self.failures))
            return False
        if self.failures:
            log.warning("heartbeat of %s is back after %d failure(s)", self.worker, self.failures)
        self.failures = 0
        for attempt, code in zip(attempts, codes, strict=True):
            if code == "ok":
                attempt.confirm(sent_at)
                continue
            if not self._renewing(attempt) or (attempt.hooks.ending is not None and attempt.hooks.ending()):
                # It ended while the renewal was in flight: its release decides, not this.
                self.remove(attempt)
                continue
            if code == "missing":
                with contained("heartbeat re-establishing a lease"):
                    if attempt.reestablish():
                        continue
            lost = LeaseLost(
                attempt.job.job_id,
                attempt.token,
                self.store.why_lost(attempt.job.job_id, attempt.token, f"its renewal was refused ({code})"),
            )
            self.remove(attempt)
            attempt.mark_lost(lost)
            if self.on_lost is not None:
                with contained("heartbeat on_lost callback"):
                    self.on_lost(attempt, lost)
        return True

    def _run(self) -> None:
        retry = _FIRST_RETRY
        while not self._stop.is_set():
            ok = False
            with contained("heartbeat"):
                ok = self.beat_once()
            period = self._period()
            wait = period if ok else min(retry, period)
            retry = _FIRST_RETRY if ok else min(retry * 2, period)
            deadline = time.monotonic() + wait
            while not self._stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                with self._lock:
                    # While jobs run, look for deferred releases every DEFERRED_FLUSH; idle, sleep long
                    # (defer() wakes an idle thread). Never woken per job: that costs the job.
                    self._idle = not (self._attempts or self._deferred or self._pending or self._completed)
                    if not (self._arrived or self._pending):  # no job came during the last wait
                        self._busy_delay = float("inf")
                    self._arrived = False
                    renew_now, self._renew_now = self._renew_now, False
                    now = time.monotonic()
                    waiting = remaining if self._idle else min(remaining, self._poll(now))
                    self._wake_at = now + waiting
                if renew_now:
                    break
                if self._wake.wait(waiting):
                    self._wake.clear()
                    continue
                with contained("heartbeat writing deferred leases"), contextlib.suppress(redis.RedisError):
                    now = time.monotonic()
                    self.acquire_due(now)
                    self.flush_deferred(now=now)

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name=f"zombieguard-heartbeat-{self.worker}", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it (deferred releases are written first, if Redis answers)."""
        with contained("heartbeat writing deferred releases"), contextlib.suppress(redis.RedisError):
            self.flush_deferred()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def _delay(attempt: Attempt) -> float:
    return attempt.policy.lease_delay or 0.0


def _half_delay(attempt: Attempt) -> float:
    """A pending lease is written once its job has run for half its ``lease_delay``: a job shorter
    than that never needs one, a longer one has it within ``lease_delay``."""
    return _delay(attempt) / 2


def processes_under(jobs: Sequence[JobProcesses | None]) -> list[int | None]:
    """How many processes run under each job (None where its processes are not known): one reading
    of the system's processes for all of them."""
    if not any(jobs):
        return [None] * len(jobs)
    with contained("counting the processes under running jobs"):
        tree = ProcessTree.now()
        return [None if job is None else job.count(tree) for job in jobs]
    return [None] * len(jobs)
