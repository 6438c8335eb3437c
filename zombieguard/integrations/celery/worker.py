"""The worker's runtime (main process): presence, heartbeat, sweeper and per-pool enforcement, built
by a worker bootstep; the consumer bootstep that keeps the delivery log."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from celery import Celery, bootsteps, signals
from celery.app.task import Task

from zombieguard.containment import contained, log
from zombieguard.enforcement.slot import JobSlot, SlotState
from zombieguard.enforcement.stacks import StackDumper
from zombieguard.errors import LeaseLost
from zombieguard.integrations.celery import internals
from zombieguard.integrations.celery.adapter import ADAPTER, CeleryAdapter, watchdog_process_adapter
from zombieguard.integrations.celery.app import app_config, app_spec, broker_key, leases_target, task_policy
from zombieguard.integrations.celery.hooks import before_started
from zombieguard.integrations.celery.inprocess import InProcessExecutor
from zombieguard.integrations.celery.message import message_payload, payload_from_slot
from zombieguard.integrations.celery.monitor import SlotMonitor
from zombieguard.integrations.celery.process import this_process
from zombieguard.integrations.celery.received import ReceivedLog, restores_by_tag
from zombieguard.integrations.celery.task import GuardedTask
from zombieguard.integrations.celery.zombies import ZombieThreads
from zombieguard.leases import LeaseStore
from zombieguard.policy import Policy
from zombieguard.worker.attempt import Attempt
from zombieguard.worker.onbehalf import write_again, write_lease
from zombieguard.worker.runtime import WorkerRuntime

_POLICIES_CACHED = 1024


_DIR_PREFIX = "zombieguard-celery-"
"""Working directories are named ``<prefix><broker key>-<pid>-<random>`` (see :func:`broker_key`)."""


def _pool_kind(pool_cls: Any) -> str:
    module = (pool_cls if isinstance(pool_cls, str) else getattr(pool_cls, "__module__", "")) or ""
    for kind, marker in (
        ("prefork", "prefork"),
        ("threads", "thread"),
        ("solo", "solo"),
        ("gevent", "gevent"),
        ("eventlet", "eventlet"),
    ):
        if marker in module:
            return kind
    return "prefork" if "processes" in module else "unknown"


class CeleryRuntime(WorkerRuntime):
    """What one Celery worker runs beside Celery: presence, heartbeat, sweeper, enforcement."""

    def __init__(self, worker: Any) -> None:
        app: Celery = worker.app
        self.app = app
        self.config = app_config(app)
        unguarded, self.guarded = [], 0
        for name, task in app.tasks.items():
            task_policy(self.config, task)  # bad configuration fails the worker's start, naming the task
            if name.startswith("celery."):
                continue
            if isinstance(task, GuardedTask):
                self.guarded += 1
            else:
                unguarded.append(name)
        self.unguarded = sorted(unguarded)
        if unguarded:
            log.warning(
                "zombieguard: tasks not guarded (their base class does not derive from app.Task as it was "
                "after install(app)): %s",
                ", ".join(sorted(unguarded)),
            )
        if any(isinstance(task, GuardedTask) and task.track_started for task in app.tasks.values()):
            # Only a task Celery records STARTED needs its recorded end kept before Celery does. With a
            # receiver of task_prerun connected, Celery's tracer sends it for every task (one receiver
            # for all: Celery looks a signal's receivers up through every connection, per task).
            signals.task_prerun.connect(before_started, weak=False)
        self.name: str = worker.hostname
        self.pool = _pool_kind(worker.pool_cls)
        self.pool_size = int(worker.concurrency or 1)
        self.default_policy = self.config.policy_for("")
        self.adapter = CeleryAdapter(app)
        target = leases_target(app, self.config)
        super().__init__(
            LeaseStore.from_target(target, self.config.settings),
            self.adapter,
            worker=self.name,
            renew_every=self.default_policy.renew_every,
            children_grace=self.default_policy.kill_children_grace,
            target=target,
            on_lost=self._lost,
            dir_prefix=f"{_DIR_PREFIX}{broker_key(app)}-",
            watchdog_name="zombieguard-watchdog",
        )
        self.monitor = SlotMonitor(self) if self.pool == "prefork" else None
        self.hub = getattr(worker, "hub", None)
        self.celery_worker = worker
        self.received: ReceivedLog | None = None
        self.slots_dir = self.dir / "slots"
        self._thread_slots: dict[int, JobSlot] = {}
        self._slots_lock = threading.Lock()
        self.dumper: StackDumper | None = None
        self.zombie_threads = ZombieThreads(self)
        self._policies: dict[str | tuple[str, tuple[Any, ...]], Policy] = {}

    def policy(self, task: Task, time_limits: Any = None) -> Policy:
        """:func:`task_policy` for this worker's configuration, which is fixed: cached."""
        # A message without time limits of its own carries [None, None]: keyed by the name alone.
        own = time_limits and time_limits.count(None) != len(time_limits)
        key: str | tuple[str, tuple[Any, ...]] = (task.name, tuple(time_limits)) if own else task.name
        policy = self._policies.get(key)
        if policy is None:
            if len(self._policies) >= _POLICIES_CACHED:  # messages' own time limits vary without bound
                self._policies.clear()
            policy = self._policies[key] = task_policy(self.config, task, time_limits)
        return policy

    # -- lifetime ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Register, sweep once, start the threads (and the executor where tasks run here)."""
        if self.pool not in ("prefork", "threads", "solo"):
            log.warning(
                "zombieguard: the %s pool is not supported; this worker's tasks run unguarded "
                "(its sweeper still recovers other workers' tasks)",
                self.pool,
            )
        if restores_by_tag(self.app):
            self.received = ReceivedLog(self.dir)
            signals.worker_shutdown.connect(self._settle_received, sender=self.celery_worker, weak=False)
        if self.pool in ("threads", "solo"):
            self.slots_dir.mkdir()
            self.dumper = StackDumper(self.dir / "stacks.txt")
            self.dumper.path.touch()
            self.dumper.install()
            spec = app_spec(self.app)
            if spec is None:
                log.warning(
                    "zombieguard: the Celery app is found in no module; the watchdog process cannot "
                    "act for this worker's tasks when it dies (the other workers' sweepers do, later)"
                )
            self.start_watchdog_process(
                slot=self.slots_dir,
                dump=self.dumper.path,
                adapter=f"{watchdog_process_adapter.__module__}:{watchdog_process_adapter.__name__}"
                if spec
                else ADAPTER,
                adapter_arg=spec or "",
                # Threads: a thread stuck in a blocking call is this process's to handle, 0.5 s past
                # its limit; the watchdog process acts only when no thread here can (C code, the GIL).
                grace="0.5" if self.pool == "solo" else "0.8",
                slot_payload=f"{payload_from_slot.__module__}:payload_from_slot",
            )
            this_process.executor = InProcessExecutor(self, signals_main_thread=self.pool == "solo")
        self.launch({"pool": self.pool, "concurrency": str(self.pool_size)})
        if self.monitor is not None:
            self.monitor.start()
        tasks = f"{self.guarded} guarded" + (
            f"; not guarded: {', '.join(self.unguarded)}" if self.unguarded else ""
        )
        self.announce(f"{self.pool} pool, concurrency {self.pool_size}", self.default_policy, tasks)

    def stop(self) -> None:
        """Stop everything and leave cleanly (not a zombie)."""
        if self.monitor is not None:
            self.monitor.stop()
        self.shutdown()
        if self.dumper is not None:
            self.dumper.close()
        # The log of what it received stays until the worker's tasks are done (worker_shutdown).
        self.remove_dir(keep=ReceivedLog.NAME if self.received is not None else None)

    def _settle_received(self, **_: Any) -> None:
        """``worker_shutdown`` (its tasks are done): settle what it received and did not ack (see
        :meth:`ReceivedLog.settle`), then remove the working directory."""
        received = self.received
        if received is None:
            return
        with contained(f"celery worker {self.name}: settling the messages it did not ack"):
            try:
                received.settle(self.app)
            except Exception as exc:  # the broker unreachable: a worker started later settles it
                log.warning("celery worker %s: messages it did not ack left unsettled (%r)", self.name, exc)
                return
            self.remove_dir()

    def thread_slot(self, ident: int) -> JobSlot:
        """The slot of one pool thread (created at its first task)."""
        slot = self._thread_slots.get(ident)
        if slot is not None:
            return slot
        with self._slots_lock:
            slot = self._thread_slots.get(ident)
            if slot is None:
                slot = JobSlot(self.slots_dir / f"slot-{len(self._thread_slots)}")
                self._thread_slots[ident] = slot
            return slot

    def in_loop(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` where Celery runs its request callbacks: the prefork worker's event loop
        (kombu < 5.7 wakes it only at its next poll, within a second); in place on the threads pool,
        whose request callbacks Celery itself runs from pool threads."""
        if self.hub is not None and self.pool == "prefork":
            self.hub.call_soon(callback)
        else:
            callback()

    def record_timeout(self, job_id: str, limit: float) -> None:
        """In the event loop: record a killed task as timed out, Celery's way (once)."""
        for request in internals.active_requests():
            if request.id == job_id:
                with contained(f"failing celery task {job_id}"):
                    request.zg_timed_out(limit)

    def forget_request(self, job_id: str) -> None:
        """The running attempt of ``job_id`` here no longer holds the task (a newer attempt does):
        its request is done with and its message acked, and nothing of it is recorded."""
        for request in internals.active_requests():
            if request.id == job_id:
                internals.task_ready(request)
                request.acknowledge()

    # -- events from the pool ----------------------------------------------------------------------
    def _lost(self, attempt: Attempt, error: LeaseLost) -> None:
        if isinstance(this_process.executor, InProcessExecutor):
            this_process.executor.lost(attempt)

    def request_payload(self, job_id: str) -> str | None:
        """Prefork: the payload of the task ``job_id`` as its message came (Celery's request for it
        in this process), for a lease written here; None when no request is left."""
        request = internals.request_by_id(job_id)
        return None if request is None else message_payload(request)

    def write_lease_for(self, state: SlotState, payload: str) -> int:
        """Prefork: write, on its execution's behalf, the lease of the task a pool process's slot
        shows (see :func:`zombieguard.worker.onbehalf.write_lease`), under its task's policy; its token,
        or 0 when another attempt holds the task. Raises ``redis.RedisError``."""
        return write_lease(
            self.store, state, payload, adapter=ADAPTER, worker=self.name, policy=self._slot_policy(state)
        )

    def write_again_for(self, state: SlotState, token: int, payload: str) -> bool:
        """Prefork: write again the lease (of ``token``) of the task a dead pool process's slot
        showed, when Redis no longer has it (see :func:`zombieguard.worker.onbehalf.write_again`).
        Raises ``redis.RedisError``."""
        policy = self._slot_policy(state)
        return write_again(
            self.store, state, token, payload, adapter=ADAPTER, worker=self.name, policy=policy
        )

    def _slot_policy(self, state: SlotState) -> Policy:
        task = self.app.tasks.get(state.task)
        if task is None:
            return self.default_policy
        return self.policy(task, (state.hard_timeout, state.soft_timeout))


class RuntimeStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """The worker bootstep :func:`install` adds: builds the :class:`CeleryRuntime` (bad configuration
    fails the worker's start here), after the pool is created and before its processes start."""

    label = "zombieguard"
    requires = ("celery.worker.components:Pool",)

    def create(self, worker: Any) -> CeleryRuntime:
        """Build the runtime (pool processes forked later inherit it)."""
        this_process.runtime = CeleryRuntime(worker)
        return this_process.runtime


class DeliveryLogStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """The consumer bootstep :func:`install` adds: has the worker's :class:`ReceivedLog` write down
    each message its task consumer's channel delivers, as it delivers it. It starts again with the
    consumer's every new connection (after a lost one, a new channel)."""

    label = "zombieguard delivery log"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, consumer: Any) -> None:
        """Note the deliveries of the consumer's task channel (when the worker keeps a log); after a
        lost connection, hand back what the old channel still held (see :meth:`ReceivedLog.reconnected`)."""
        runtime = this_process.runtime
        task_consumer = getattr(consumer, "task_consumer", None)
        if runtime is not None and runtime.received is not None and task_consumer is not None:
            received = runtime.received
            left = received.unacked_here()  # the old channel's, after a lost connection
            channel = task_consumer.channel
            internals.on_delivery(channel, received.delivering, received.delivered)
            received.unacked_here = lambda: internals.delivered_tags(channel)
            if left:
                with contained(f"celery worker {runtime.name}: handing back what its lost connection held"):
                    received.reconnected(runtime.app, set(left))
