"""Threads pool: the threads stuck past a limit, its zombies. Each one's task is failed (or
forgotten, when a newer attempt holds it) as it is found stuck; once they reach
``zombie_thread_share`` of the pool, the worker shuts down warm and exits, for its supervisor to
restart it. Runs in the worker process."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

import redis
from celery import bootsteps

from zombieguard.containment import contained, log
from zombieguard.enforcement.limits import Limit
from zombieguard.enforcement.watchdog import Watched
from zombieguard.errors import LeaseLost
from zombieguard.events import WorkerZombie, emit
from zombieguard.integrations.celery import internals
from zombieguard.integrations.celery.adapter import ADAPTER
from zombieguard.integrations.celery.executor import Running
from zombieguard.integrations.celery.received import ReceivedLog, hand_back

if TYPE_CHECKING:
    from zombieguard.integrations.celery.worker import CeleryRuntime


class ZombieThreads:
    """The zombie threads of one worker's threads pool."""

    def __init__(self, runtime: CeleryRuntime) -> None:
        self.runtime = runtime
        self.by_thread: dict[int, str] = {}
        """Threads stuck past a limit, and the task each holds."""
        self._restarting = False

    def stuck(self, state: Running, ident: int, watched: Watched) -> None:
        """Threads pool: the task's thread ignored its interrupt (a blocking call, C code)."""
        attempt = state.attempt
        if self.runtime.pool != "threads" or state.body_done:
            return  # solo: the watchdog process beside the worker kills it
        passed = Limit.HARD if watched.stopped_by is Limit.HARD else Limit.PROGRESS
        limit = passed.seconds(attempt.policy)
        what = "hard_timeout" if passed is Limit.HARD else "progress_timeout"
        reason = f"ran past its {what} of {limit or 0:g} s; its thread is stuck"
        state.recorded = True
        superseded = False
        try:
            attempt.release(passed.outcome, reason, state.stack)
        except LeaseLost:
            superseded = True  # a newer attempt holds the task: nothing of this one is recorded
        except redis.RedisError as exc:
            log.warning("celery task %s: its timeout not written to its lease (%s)", attempt.job.job_id, exc)
        self.runtime.thread_slot(ident).clear()  # the watchdog process must not kill the worker for it
        job_id = attempt.job.job_id
        self.by_thread[ident] = attempt.job.job_id
        self._publish()
        share = len(self.by_thread) / self.runtime.pool_size
        emit(
            ADAPTER,
            WorkerZombie(
                self.runtime.name,
                ADAPTER,
                f"a thread is stuck in task {attempt.job.task}[{attempt.job.job_id}] past its limit",
                info=(
                    ("task", attempt.job.task),
                    ("job_id", attempt.job.job_id),
                    ("zombie_threads", str(len(self.by_thread))),
                    ("pool_size", str(self.runtime.pool_size)),
                ),
            ),
        )
        log.error(
            "celery worker %s: %d of %d threads are zombies (stuck past a limit)",
            self.runtime.name,
            len(self.by_thread),
            self.runtime.pool_size,
        )
        restart = share >= self.runtime.config.settings.zombie_thread_share and not self._restarting
        self._restarting = self._restarting or restart

        def record() -> None:  # the failure first: a warm shutdown stops the event loop
            if superseded:
                self.runtime.forget_request(job_id)
            else:
                self.runtime.record_timeout(job_id, limit or 0)
            if restart:
                self._restart()

        self.runtime.in_loop(record)

    def thread_ended(self, ident: int) -> None:
        """A pool thread's task ended (a zombie thread that came back is a thread again)."""
        if self.by_thread.pop(ident, None) is not None:
            self._publish()

    def _publish(self) -> None:
        """In the worker's description: how many of its threads are zombies (a metric reads it)."""
        with contextlib.suppress(redis.RedisError):
            self.runtime.store.client.hset(
                self.runtime.store.worker_key(self.runtime.name), "zombie_threads", str(len(self.by_thread))
            )

    def _unstarted_left(self, held: list[Any]) -> list[Any] | None:
        """Once only zombie threads run tasks: the requests of ``held`` (those the worker had
        received when it began to shut down) that never started and no thread will start now (all
        are zombies, or none is left to run); None while that may still change."""
        zombies = set(self.by_thread.values())
        active = {r.id for r in internals.active_requests()}
        if not active <= zombies or not self._consumer_stopped():
            return None
        waiting = [
            r for r in held if r.id not in active | zombies and not r.acknowledged and r.time_start is None
        ]
        if waiting and len(self.by_thread) < self.runtime.pool_size:
            return None  # a live thread runs them during the warm shutdown
        return waiting

    def _consumer_stopped(self) -> bool:
        """Whether the worker's consumer has stopped (a message handed back before could be taken
        again by it)."""
        blueprint = getattr(getattr(self.runtime.celery_worker, "consumer", None), "blueprint", None)
        return blueprint is None or blueprint.state == bootsteps.TERMINATE

    def _restart(self) -> None:
        """Warm shutdown, then exit once only zombie threads are left, for the supervisor to restart.
        The tasks it received and never started go back to the broker first (Celery forgets them
        as its consumer closes, and an exit that does not close the connection would leave them
        in kombu's unacked hash until the visibility timeout)."""
        log.error(
            "celery worker %s: zombie threads reached %g of the pool: shutting down warm to be restarted",
            self.runtime.name,
            self.runtime.config.settings.zombie_thread_share,
        )
        held = internals.held_requests()
        os.kill(os.getpid(), signal.SIGTERM)

        def exit_when_only_zombies() -> None:
            while (waiting := self._unstarted_left(held)) is None:
                time.sleep(0.2)
            log.warning(
                "celery worker %s: handing back %d task(s) it received and never started, then exiting",
                self.runtime.name,
                len(waiting),
            )
            with contained(f"celery worker {self.runtime.name}: handing its unstarted tasks back"):
                # Its connection closed first: kombu puts back what that channel holds, and no read
                # of the queue still pending on it takes a message handed back after.
                connection = getattr(
                    getattr(self.runtime.celery_worker, "consumer", None), "connection", None
                )
                if connection is not None:
                    connection.close()
                tags = {request.message.delivery_tag for request in waiting}
                hand_back(self.runtime.app, [m for m in ReceivedLog.read(self.runtime.dir) if m.tag in tags])
            self.runtime.stop()
            os._exit(1)

        threading.Thread(target=exit_when_only_zombies, name="zombieguard-restart", daemon=True).start()
