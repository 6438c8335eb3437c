"""Celery integration: one line in the module that builds the app.

    from zombieguard.integrations.celery import install
    install(app)

Configuration comes from ``app.conf.zombieguard = {...}`` (Django: ``CELERY_ZOMBIEGUARD``), else from
``zombieguard.configure()`` and ``ZOMBIEGUARD_*`` variables. Celery's own ``time_limit`` and
``soft_time_limit`` are the policy's limits when nothing else says otherwise. Per task:
``@app.task(zombieguard={...})`` or ``@zombieguard.guard(...)`` on the function under ``@app.task``.

What :func:`install` adds, all through Celery's extension points:

- a Task class (the app's own, subclassed): each task body runs under its lease, acquired in the
  process that runs it (a first delivery's behind, within ``lease_delay``, by that process's
  heartbeat thread; a task that ends sooner needs none); a delivery of an attempt already superseded
  is ignored (acked, not run);
- a Request class (worker main process): a pool process that dies mid-task is a stall, recovered by
  re-publishing the task, not Celery's failure or endless requeue; Celery's own time limits on prefork
  become a backstop 2 s past the policy's;
- a worker bootstep: the worker's presence, a sweeper, and per pool (docs/celery.md has the table):

  - **prefork**: each pool process writes its running task to a shared-memory slot; the main process
    renews those leases and enforces the limits (soft and hard interrupts by signal, SIGKILL 0.5 s
    later for a process stuck in C code, with its stack dumped first);
  - **threads**: a watchdog thread raises the interrupts in the task's thread; a thread that no
    interrupt reaches (a blocking call, C code) is failed at the limit and counted as a zombie thread;
    once ``zombie_thread_share`` of the pool is stuck, the worker shuts down warm and exits;
  - **solo**: interrupts by signal in the main thread; a watchdog process beside the worker kills it
    when the task is stuck in C code, and other guarded workers fail the task as timed out.

Events are sent in the process that detects them: limits and kills in the worker's main process
(prefork) or the worker process (threads, solo); started, completed and lease lost in the process
that runs the task; stalled, recovered, dead-lettered by the sweeper that acted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import operator
import os
import pickle
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from zombieguard.containment import contained, log
from zombieguard.errors import (
    ConfigurationError,
    HardTimeLimitExceeded,
    IntegrationNotAvailable,
    JobHung,
    JobInterrupt,
    LeaseLost,
    ZombieGuardError,
)
from zombieguard.errors import SoftTimeLimitExceeded as GuardSoftTimeLimitExceeded
from zombieguard.integrations import require

try:
    import billiard.process
    import celery
    from billiard.einfo import ExceptionInfo
    from billiard.exceptions import WorkerLostError
    from celery import Celery, bootsteps, signals, states
    from celery.app.task import Context, Task
    from celery.backends.base import BaseKeyValueStoreBackend
    from celery.exceptions import Ignore, Reject, Retry, Terminated, TimeLimitExceeded
    from celery.exceptions import SoftTimeLimitExceeded as CelerySoftTimeLimitExceeded
    from celery.utils.imports import symbol_by_name
    from kombu.transport.virtual import Channel as VirtualChannel
    from kombu.utils import json as kombu_json
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise IntegrationNotAvailable(
        f"zombieguard.integrations.celery needs Celery ({exc}): pip install 'zombieguard[celery]'"
    ) from exc

from zombieguard.attempt import Attempt, running
from zombieguard.deadletter import DeadLetterEntry
from zombieguard.events import JobCompleted, JobStarted, WorkerZombie, emit, listened
from zombieguard.heartbeat import Heartbeat
from zombieguard.integrations.celery import internals
from zombieguard.lease import (
    Acquired,
    AcquireStatus,
    CorruptRecord,
    DeferredRelease,
    FinishedState,
    JobSpec,
    LeaseRecord,
    LeaseStore,
    Outcome,
    text,
)
from zombieguard.lifecycle import (
    BACKSTOP_SECONDS,
    ESCALATE_AFTER,
    Interrupt,
    emit_limit,
    install_interrupt_handlers,
    record_end,
    wait_out_recovery,
)
from zombieguard.policy import Config, Policy, check_fields, current_config, guard_fields
from zombieguard.runtime import WorkerRuntime
from zombieguard.sidecar import lease_from_slot
from zombieguard.slot import PAYLOAD_ROOM, JobSlot, SlotState, execution_tag
from zombieguard.watchdog import (
    Limit,
    LimitClock,
    StackDumper,
    Watched,
    interrupt_thread,
    process_exited,
    thread_stack,
)

CELERY_VERSION = require("celery", celery.__version__)

_actual_ignore_result: Callable[[Task, Any], Any] | None = getattr(
    celery.app.task, "get_actual_ignore_result", None
)
"""How Celery's tracer tells whether a delivery stores its result (Celery 5.7; None before)."""

ADAPTER = "celery"
ATTEMPT_HEADER = "zombieguard_attempt"
"""Message header with the attempt number a delivery is for (absent: the first)."""
_ENDED = frozenset(
    {"done", FinishedState.FAILED.value, FinishedState.DEAD_LETTERED.value, FinishedState.ENDED.value}
)
"""Lease states in which the task's last attempt ended (no newer one is running or due)."""


MONITOR_PERIOD = 0.05
"""How often a prefork worker's main process reads its pool processes' slots."""
LATE_LEASE = 0.1
"""Prefork: how long past its ``lease_delay`` a pool process's task may go without its lease before
the main process writes it (no thread of the pool process can: C code holding the GIL)."""


class SoftTimeLimit(GuardSoftTimeLimitExceeded, CelerySoftTimeLimitExceeded):  # type: ignore[misc]
    """Raised in a task past its ``soft_timeout``: both zombieguard's and Celery's soft-limit exception,
    so that ``except celery.exceptions.SoftTimeLimitExceeded`` keeps working on every pool."""


# -- configuration --------------------------------------------------------------------------------


def app_config(app: Celery) -> Config:
    """The configuration of ``app``: ``app.conf.zombieguard`` if set, else ``configure()``/environment."""
    mapping = app.conf.get("zombieguard")
    if mapping is None:
        return current_config()
    if not isinstance(mapping, Mapping):
        raise ConfigurationError(
            f"app.conf.zombieguard={mapping!r} is invalid: it must be a mapping of settings, "
            "'defaults' and 'policies'"
        )
    return Config.from_mapping(mapping, source="app.conf.zombieguard")


def leases_url(app: Celery, config: Config) -> str:
    """Where the leases live: ``redis_url``, else the broker or result backend when it is Redis."""
    if config.settings.redis_url:
        return config.settings.redis_url
    for url in (app.conf.broker_url, app.conf.result_backend):
        if isinstance(url, str) and url.startswith(("redis://", "rediss://", "unix://")):
            return url.split(";")[0]
    raise ConfigurationError(
        "app.conf.zombieguard: redis_url is not set, and neither broker_url nor result_backend is a "
        "Redis URL: zombieguard keeps its leases in Redis; set redis_url"
    )


def task_option(task: Task) -> Mapping[str, Any]:
    """The task's ``zombieguard={...}`` option, checked (unknown keys and bad values name the task)."""
    option = getattr(task, "zombieguard", None) or {}
    if not isinstance(option, Mapping):
        raise ConfigurationError(
            f"task {task.name!r}: zombieguard={option!r} is invalid: it must be a mapping"
        )
    return check_fields(Policy, option, f"task {task.name!r} option zombieguard")


def task_policy(config: Config, task: Task, time_limits: Any = None) -> Policy:
    """The policy of one run of ``task``; ``time_limits`` is the message's ``(hard, soft)``, if any."""
    hard, soft = time_limits or (None, None)
    hard = hard or task.time_limit
    soft = soft or task.soft_time_limit
    framework: dict[str, Any] = {}
    if hard:
        framework["hard_timeout"] = float(hard)
    if soft:
        framework["soft_timeout"] = float(soft)
    decorator = {**task_option(task), **guard_fields(task.run)}
    return config.policy_for(task.name, framework=framework, decorator=decorator)


def _attempt_header(request: Any) -> Any:
    """The attempt number a delivery carries (zombieguard's requeue, ``self.retry``), or None."""
    value = getattr(request, ATTEMPT_HEADER, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(ATTEMPT_HEADER)
    return value


def _first_delivery(request: Any) -> bool:
    """Whether nothing can have run this delivery's task before: no attempt number (zombieguard's
    requeue, ``self.retry``) and not redelivered by the broker (a restored or requeued message)."""
    if _attempt_header(request) is not None:
        return False
    return not ((request.delivery_info or {}).get("redelivered") or getattr(request, "redelivered", False))


def _delivery_attempt(request: Any) -> int:
    value = _attempt_header(request)
    try:
        return max(1, int(value)) if value is not None else 1
    except (TypeError, ValueError):
        return 1


def _queue_of(request: Any) -> str:
    info = getattr(request, "delivery_info", None) or {}
    return str(info.get("routing_key") or info.get("queue") or "")


# -- the adapter: how sweepers and the CLI act on Celery tasks ------------------------------------


class CeleryAdapter:
    """Requeue, fail, stop and republish Celery tasks, through the app's own producer and backend."""

    name = ADAPTER
    republishes_unstarted = True
    reclaims = False

    def __init__(self, app: Celery) -> None:
        self.app = app

    @staticmethod
    def _signature(payload: str) -> dict[str, Any]:
        try:
            data = kombu_json.loads(payload)  # type: ignore[no-untyped-call]
            signature = data["signature"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ZombieGuardError(f"the lease holds no task message to act on ({exc})") from None
        if not isinstance(signature, dict):
            raise ZombieGuardError("the lease holds no task message to act on")
        return signature

    def _ended(self, task_id: str) -> bool:
        """Whether the result backend says the task ended (False when there is no backend)."""
        return _recorded_end(self.app, task_id)

    def _publish(self, signature: dict[str, Any], attempt: int | None) -> None:
        sig = self.app.signature(signature)
        headers = dict(sig.options.get("headers") or {})
        headers.pop(ATTEMPT_HEADER, None)
        if attempt is not None:
            headers[ATTEMPT_HEADER] = attempt
        sig.apply_async(headers=headers)

    def requeue(self, record: LeaseRecord) -> bool:
        """Publish the task again, same id, arguments, routing and options, as the next attempt."""
        if self._ended(record.job_id):
            return False
        self._publish(self._signature(record.payload), record.attempt + 1)
        return True

    def fail(self, record: LeaseRecord, outcome: str, reason: str) -> bool:
        """Record the task failed the Celery way: FAILURE with ``TimeLimitExceeded``, errbacks,
        ``on_failure``, ``task_failure``. False if the result backend says it ended already."""
        if self._ended(record.job_id):
            return False
        signature = self._signature(record.payload)
        options = signature.get("options") or {}
        args, kwargs = list(signature.get("args") or ()), dict(signature.get("kwargs") or {})
        message = f"zombieguard: {reason}" + (
            f"\n\nStack when it was stopped:\n{record.stack}" if record.stack else ""
        )
        # A limit is Celery's TimeLimitExceeded; a dead-lettered task lost its worker every time; a
        # task stopped by an operator was terminated.
        exc: Exception
        if outcome in ("timed_out", "hung"):
            exc = TimeLimitExceeded(message)
        elif outcome == "stopped":
            exc = Terminated(message)
        else:
            exc = WorkerLostError(message)
        try:
            raise exc
        except Exception:
            einfo = ExceptionInfo()
        context = Context(
            id=record.job_id,
            task=record.task,
            args=args,
            kwargs=kwargs,
            root_id=options.get("root_id"),
            parent_id=options.get("parent_id"),
            group=options.get("group_id"),
            group_index=options.get("group_index"),
            chord=options.get("chord"),
            callbacks=options.get("link"),
            errbacks=options.get("link_error"),
            reply_to=options.get("reply_to"),
            ignore_result=options.get("ignore_result", False),
            delivery_info={"routing_key": record.queue},
        )
        task = self.app.tasks.get(record.task)
        backend = task.backend if task is not None else self.app.backend
        backend.mark_as_failure(record.job_id, exc, traceback=einfo.traceback, request=context)
        if task is not None:
            task.request_stack.push(context)
            try:
                with contained(f"on_failure of celery task {record.job_id}"):
                    task.on_failure(exc, record.job_id, args, kwargs, einfo)
                signals.task_failure.send(
                    sender=task,
                    task_id=record.job_id,
                    exception=exc,
                    args=args,
                    kwargs=kwargs,
                    traceback=einfo.tb,
                    einfo=einfo,
                )
            finally:
                task.request_stack.pop()
        return True

    def stop(self, record: LeaseRecord) -> None:
        """Nothing to send: the claim fenced the attempt off, and its worker stops it at the next
        renewal (within ``heartbeat_interval``). Celery's own ``revoke(terminate=True)`` would record
        the task REVOKED over the failure the claimer records."""

    def waiting(self, queue: str) -> int | None:
        """Messages ready in the broker's queue. On RabbitMQ a passive declare (it creates nothing);
        on kombu's virtual transports (Redis) a plain declare, which only reads the queue's length
        there (their passive declare says "not found" for an empty queue, and under
        ``global_keyprefix`` for every queue)."""
        with self.app.connection_for_read() as connection:
            channel = connection.default_channel
            try:
                declared = channel.queue_declare(queue=queue, passive=not isinstance(channel, VirtualChannel))
            except connection.channel_errors as exc:
                if getattr(exc, "reply_code", None) == 404:  # RabbitMQ: no such queue, nothing waits
                    return 0
                raise
        return int(declared.message_count)

    def reclaim(self, queues: Sequence[str], leased: Callable[[str], bool]) -> list[str]:
        """Nothing (never called: :attr:`reclaims` is False): a message a consumer took stays in the
        broker until it is acked (a dead worker's are handed back by :meth:`worker_gone`)."""
        return []

    def worker_gone(self, workdir: Path) -> None:
        """Put the messages a dead worker received back in their queues now (see :func:`hand_back`):
        every delivery tag it wrote down (:class:`ReceivedLog`) that is still unacked."""
        received = ReceivedLog.hand_back_for(self.app, workdir)
        if received:
            log.warning(
                "celery: handed back what a worker that died (%s) still held of the %d message(s) it "
                "had received",
                workdir.name,
                received,
            )

    def republish(self, entry: DeadLetterEntry) -> None:
        """Send a dead-lettered task again (``send_task`` with its original options), same id."""
        signature = self._signature(entry.payload)
        options = dict(signature.get("options") or {})
        options.pop("headers", None)
        headers = {
            k: v
            for k, v in (signature.get("options", {}).get("headers") or {}).items()
            if k != ATTEMPT_HEADER
        }
        self.app.send_task(
            signature["task"],
            args=signature.get("args") or (),
            kwargs=signature.get("kwargs") or {},
            headers=headers or None,
            **options,
        )


def _recorded_end(app: Celery, task_id: str) -> bool:
    """Whether the result backend says the task ended (False when there is no backend)."""
    with contextlib.suppress(Exception):
        return app.AsyncResult(task_id).state in states.READY_STATES
    return False


def sidecar_adapter(connection: redis.Redis, app_spec: str) -> CeleryAdapter:
    """The adapter the watchdog process beside a threads or solo worker loads when it must act for
    the worker's tasks (``app_spec``: ``module:attribute`` of the worker's app)."""
    return CeleryAdapter(load_app(app_spec))


def app_spec(app: Celery) -> str | None:
    """``module:attribute`` naming ``app`` among the modules imported (as ``celery -A`` found it),
    for another process to import it; None when no module holds it."""
    for name, module in list(sys.modules.items()):
        if name == "__main__" or module is None or name.startswith(("celery.", "zombieguard.")):
            continue
        for attribute, value in list(vars(module).items()):
            if value is app and not attribute.startswith("_"):
                return f"{name}:{attribute}"
    return None


@dataclass(frozen=True)
class Received:
    """A message a worker received, as its :class:`ReceivedLog` wrote it down."""

    tag: str
    """Its delivery tag (kombu's Redis transport keeps one per message, across its redeliveries)."""
    task_id: str
    at: float
    """When the worker wrote it down (``time.time()``)."""
    exact: bool = True
    """Written once kombu had put it in its unacked hash (``at`` is then later than kombu's own time
    of the delivery); False: written just before, and the worker went no further."""


def _copied(read: Callable[[], Iterable[str]]) -> set[str]:
    """A copy of a set other threads change (Celery's request sets, kombu's delivered messages)."""
    for _ in range(10):
        with contextlib.suppress(RuntimeError):  # it changed size while being copied
            return set(read())
    return set(read())


class ReceivedLog:
    """The messages a worker received, written down as they come (main process, a line as kombu
    delivers each, just before it enters the unacked hash, and another once it has), so that they
    can be settled when the worker stops without acking them, or handed back when it dies (see
    :func:`hand_back`). Only for a broker that does not return them itself (kombu's Redis
    transport). The file is rewritten with the messages still held when it grows past
    :data:`RECEIVED_LOG_BYTES`."""

    NAME = "received"

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / self.NAME
        self._file = self.path.open("ab", buffering=0)
        self._written = 0
        self._lines: dict[str, bytes] = {}
        """The last line written of each message (what a rewrite keeps of those still held)."""
        self.started: dict[str, str] = {}
        """The messages whose tasks started here, by delivery tag: their task ids (kept in memory
        only: see :meth:`settle`)."""
        self.unacked_here: Callable[[], Iterable[str]] = tuple
        """The delivery tags the worker's task channel holds unacked (set by :class:`DeliveryLogStep`)."""

    def delivering(self, tag: str, task_id: str) -> None:
        """kombu is delivering a message to this worker (see :func:`internals.on_delivery`)."""
        self._write(tag, task_id, "")

    def delivered(self, tag: str, task_id: str) -> None:
        """kombu has put the message in its unacked hash."""
        self._write(tag, task_id, " +")

    def _write(self, tag: str, task_id: str, mark: str) -> None:
        """Write a line down. Never raises: the delivery goes on whatever happens here."""
        if self._file.closed:
            return  # the worker settled what it received: it takes no more
        line = f"{tag} {task_id} {time.time():.6f}{mark}\n".encode()
        try:
            if self._written > RECEIVED_LOG_BYTES:
                self._compact()
            self._file.write(line)
        except Exception as exc:
            log.warning("celery: message %s for task %s not written down (%r)", tag, task_id, exc)
            return
        self._written += len(line)
        self._lines[tag] = line

    def _compact(self) -> None:
        held = _copied(lambda: (r.message.delivery_tag for r in internals.held_requests()))
        held |= _copied(self.unacked_here)
        self._lines = {tag: line for tag, line in self._lines.items() if tag in held}
        text = b"".join(self._lines.values())
        temporary = self.path.with_suffix(".new")
        temporary.write_bytes(text)
        temporary.replace(self.path)
        self._file.close()
        self._file = self.path.open("ab", buffering=0)
        self._written = len(text)
        self.started = {tag: task_id for tag, task_id in self.started.items() if tag in held}

    def start(self, request: Any) -> None:
        """A task started here (its request accepted by the pool)."""
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if tag:
            self.started[tag] = request.id

    def close(self) -> None:
        """Stop writing."""
        self._file.close()

    def settle(self, app: Celery) -> None:
        """The worker is stopping, its tasks done: each message it received that it still holds
        unacked (its consumer's connection broke, say, and with it the ack) is dropped if its task
        started here and its end is recorded, else goes back to its queue (see :func:`hand_back`);
        then the log is deleted. Redis unreachable: it raises, and the log stays, for a worker
        started later on this machine."""
        self.close()
        hand_back(app, self.read(self.path.parent), ran=self.started)
        self.path.unlink(missing_ok=True)

    @classmethod
    def read(cls, workdir: Path) -> list[Received]:
        """What a worker wrote down in ``workdir`` (nothing when it wrote nothing)."""
        return cls._read(workdir / cls.NAME)

    @staticmethod
    def _read(path: Path) -> list[Received]:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return []
        out: dict[str, Received] = {}
        for line in lines:
            parts = line.split()
            with contextlib.suppress(ValueError, IndexError):
                out[parts[0]] = Received(parts[0], parts[1], float(parts[2]), exact=parts[3:] == ["+"])
        return list(out.values())

    @classmethod
    def hand_back_for(cls, app: Celery, workdir: Path) -> int:
        """Hand back what a dead worker wrote down in ``workdir`` (see :func:`hand_back`), once:
        whoever comes first (its watchdog process, or one of the workers started after it) takes the
        file, moving it into a working directory of its own, so that no one hands back again a
        message delivered since to a live worker, nor deletes the file with ``workdir`` before it is
        read. Redis unreachable: it raises, and the file stays in that directory, for a worker
        started after this process to find (as a dead process's). Returns how many messages were
        written down."""
        # Working directories are named <prefix><pid>-<random>, and mkdtemp's random part has no "-".
        prefix = workdir.name.rsplit("-", 2)[0] + "-"
        taken = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=workdir.parent))
        try:
            (workdir / cls.NAME).rename(taken / cls.NAME)
        except OSError:
            taken.rmdir()
            return 0  # nothing written down, or taken already
        received = cls._read(taken / cls.NAME)
        if received:
            hand_back(app, received)
        (taken / cls.NAME).unlink()
        taken.rmdir()
        return len(received)


DELIVERY_SLACK = 1.0
"""For a delivery a worker wrote down only before kombu took its own time of it (the worker went no
further): the seconds after which kombu's time is that of a later delivery (kombu takes its time
microseconds after, unless the process froze there)."""

RECEIVED_LOG_BYTES = 1 << 20
"""How large a worker's :class:`ReceivedLog` grows before it is rewritten with the tags still held."""


def _restores_by_tag(app: Celery) -> bool:
    """Whether the app's broker keeps a dead consumer's messages until a timeout (kombu's Redis
    transport: its QoS puts one back by delivery tag), rather than returning them itself."""
    try:
        with app.connection_for_write() as connection:
            return internals.restores_by_tag(connection.transport)
    except Exception:  # a transport that cannot say: nothing is written down for it
        return False


def cli_adapter(connection: redis.Redis, app: str | None) -> CeleryAdapter:
    """The adapter the CLI loads, acting through the Celery app ``app`` (``module:attribute``)."""
    spec = app
    if not spec:
        raise ZombieGuardError(
            "acting on Celery tasks needs the Celery app: pass --celery-app module:app "
            "(or set ZOMBIEGUARD_CELERY_APP)"
        )
    return CeleryAdapter(load_app(spec))


def load_app(spec: str) -> Celery:
    """The Celery app named ``module:attribute``, found like ``celery -A`` finds it."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        app = symbol_by_name(spec)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"--celery-app {spec!r} cannot be imported: {exc}") from None
    if not isinstance(app, Celery):
        raise ConfigurationError(f"--celery-app {spec!r} is a {type(app).__name__}, not a Celery app")
    return app


# -- per process: what runs task bodies -----------------------------------------------------------

_guard: WorkerGuard | None = None
"""This worker's guard (main process; inherited by prefork pool processes)."""
_executor: Executor | None = None
"""What runs task bodies under their leases in this process (set where tasks run)."""


@dataclass(slots=True)
class _Running:
    """The attempt running in one thread, and how it is being stopped."""

    attempt: Attempt
    generation: int = 0
    """Its start's generation in its slot (names it to an interrupt aimed at it)."""
    interrupt: str | None = None
    body_done: bool = False
    stack: str | None = None
    recorded: bool = False
    """Its end was recorded for it (threads pool: failed at its limit while its thread was stuck);
    whatever the thread does when it comes back is not recorded."""
    slot: JobSlot | None = None
    """Threads and solo: the slot of the thread running it."""


_POLICIES_CACHED = 1024

_MUTABLE = ("chain", "callbacks", "errbacks", "chord", "headers", "delivery_info")
"""A task request's fields that a body may change in place (``self.request.chain = None`` stops a
chain), kept as they were at the start for the payload computed later."""
_mutable_fields = operator.attrgetter(*_MUTABLE)
"""Their values, in one call (Celery's request context defines each)."""


class Executor:
    """Runs task bodies under their leases, in the process that runs them.

    Subclasses say how the running attempt is announced to its enforcer and renewed: through a slot
    that the worker's main process reads (prefork), or the worker's own heartbeat and watchdog
    (threads, solo).
    """

    def __init__(self, guard: WorkerGuard, releases: Heartbeat) -> None:
        self.guard = guard
        self.store = guard.store
        self.releases = releases
        """Writes deferred leases and releases: this process's heartbeat."""
        self.pid = os.getpid()
        """This process (an executor is made where it runs tasks, after any fork)."""
        self._local = threading.local()
        self._on_refused = self.refused  # bound once, given to every pending attempt

    @property
    def current(self) -> _Running | None:
        """The attempt running in this thread."""
        running_now: _Running | None = getattr(self._local, "running", None)
        return running_now

    def run(self, task: Task, request: Any, body: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """Run ``body(*args, **kwargs)`` (the body of ``task``, for ``request``) under the task's lease."""
        try:
            policy = self.guard.policy(task, getattr(request, "timelimit", None))
        except ConfigurationError as exc:
            log.error("celery task %s[%s] runs unguarded: %s", task.name, request.id, exc)
            return body(*args, **kwargs)
        attempt = self._start(task, policy, request)
        if attempt is None:
            return body(*args, **kwargs)
        state = _Running(attempt)
        self._local.running = state
        self.begin(state)
        if attempt.pending:
            self.releases.defer_acquire(attempt)
        try:
            with running(attempt):
                result = body(*args, **kwargs)
            state.body_done = True
        except JobInterrupt as exc:
            state.body_done = True
            self._interrupted(state, exc)
        except Retry:
            state.body_done = True
            self._release(state, Outcome.FAILED, "retry")
            raise
        except Reject as exc:
            state.body_done = True
            self._release(
                state, Outcome.REQUEUED if exc.requeue else Outcome.FAILED, f"rejected: {exc.reason}"
            )
            raise
        except BaseException as exc:
            state.body_done = True
            if not self._release(state, Outcome.FAILED, f"{type(exc).__name__}: {exc}"[:500]):
                raise Ignore() from None
            raise
        finally:
            unleased = attempt.finish_unleased()  # after this, its lease is never written
            if unleased:
                self.releases.drop(attempt)
            self.end(state)
            self._local.running = None
        if state.recorded:
            raise Ignore()
        self._succeeded(state, unleased)
        return result

    def _start(self, task: Task, policy: Policy, request: Any) -> Attempt | None:
        """The task's attempt: pending for a first delivery (``lease_delay``), else acquired now."""
        spec = JobSpec(request.id, ADAPTER, task.name, _queue_of(request))
        if policy.lease_delay is not None and _first_delivery(request):
            # Nothing can have run it before: its lease is written only if it runs long enough.
            attempt = Attempt(self.store, spec, self.guard.name, policy, None)
            if self.describe_later(attempt, task, request):
                attempt.on_refused = self._on_refused
                if listened(JobStarted):
                    emit(ADAPTER, attempt.event(JobStarted))
                return attempt
            spec = attempt.described()
        else:
            # The payload before the body runs: a body may change its arguments in place.
            spec = JobSpec(spec.job_id, ADAPTER, spec.task, spec.queue, _payload(task, request))
        return self._acquire(task, spec, policy, _delivery_attempt(request))

    def describe_later(self, attempt: Attempt, task: Task, request: Any) -> bool:
        """Give a pending attempt its payload, or the means to compute it when its lease is written.
        False when the attempt must not be pending (its payload, then computed, is kept)."""
        raise NotImplementedError

    def _succeeded(self, state: _Running, unleased: bool) -> None:
        """Record a body that returned (raises ``Ignore`` when the end is not this attempt's)."""
        attempt = state.attempt
        if unleased:
            self.releases.completed_unleased(attempt.job.queue)
            self._completed(attempt)
        elif attempt.safe_to_finish():
            self.releases.defer(DeferredRelease(attempt.job, attempt.token, Outcome.COMPLETED))
            self._completed(attempt)
        elif not self._release(state, Outcome.COMPLETED):
            raise Ignore()

    def _acquire(self, task: Task, spec: JobSpec, policy: Policy, delivery: int) -> Attempt | None:
        """The lease, as a new attempt; None to run unguarded (Redis away). Ignore when not to run."""
        worker = self.guard.name
        releases = self.releases.take_deferred()
        sent_at = time.monotonic()

        def again() -> Acquired:
            nonlocal sent_at
            sent_at = time.monotonic()
            return self.store.acquire(spec, worker, policy, delivery)

        def waits(acquired: Acquired) -> bool:
            # A recovery being recorded, or a retry published before its attempt's end was written.
            busy = acquired.status is AcquireStatus.BUSY
            return busy and (acquired.holder_state == "recovering" or acquired.attempt < delivery)

        try:
            first = self.store.send_acquire(spec, worker, policy, releases, delivery).result()
            acquired = wait_out_recovery(first, again, waits)
        except redis.RedisError as exc:
            for release in releases:
                self.releases.defer(release)
            log.warning("celery task %s runs unguarded: Redis for leases unreachable (%s)", spec.job_id, exc)
            return None
        if acquired.status is not AcquireStatus.ACQUIRED:
            if acquired.status is AcquireStatus.STALE and acquired.holder_state in _ENDED:
                with contained(f"celery task {spec.job_id}: its recorded end not put back"):
                    self._put_back_result(task, spec.job_id)
            log.warning(
                "celery task %s[%s] not run: delivery of attempt %d is %s (attempt %d is %s on %s)",
                spec.task,
                spec.job_id,
                delivery,
                acquired.status.value,
                acquired.attempt,
                acquired.holder_state or "superseded",
                acquired.holder or "-",
            )
            raise Ignore()
        attempt = Attempt(self.store, spec, worker, policy, acquired, sent_at=sent_at)
        emit(ADAPTER, attempt.event(JobStarted))
        return attempt

    def keep_result(self, task: Task, task_id: str) -> None:
        """Before Celery records a copy of a recovered attempt ``STARTED`` (``task_track_started``):
        keep the failure the result backend holds for the task, for whichever copy is refused.

        Kept in Redis, not in this process: two copies running at once in two processes would
        otherwise see each other's ``STARTED`` and the last one would leave it there.
        """
        backend = task.backend
        if not isinstance(backend, BaseKeyValueStoreBackend):
            return
        raw = backend.get(backend.get_key_for_task(task_id))
        # Celery never overwrites a SUCCESS itself; a FAILURE or REVOKED it does.
        if raw is not None and backend.decode_result(raw).get("status") in states.PROPAGATE_STATES:
            ttl = int(self.store.settings.tombstone_ttl * 1000)
            self.store.client.set(self.store.kept_result_key(task_id), raw, px=ttl)

    def _put_back_result(self, task: Task, task_id: str) -> None:
        """A copy refused as stale, its task ended: Celery has just recorded it ``STARTED`` over
        that end. Put the end back, as Celery stores one (expiry included)."""
        backend = task.backend
        raw = self.store.client.get(self.store.kept_result_key(task_id))
        if raw is None or not isinstance(backend, BaseKeyValueStoreBackend):
            return
        status = backend.decode_result(raw).get("status")
        internals.store_raw_result(backend, task_id, raw, status)

    def _interrupted(self, state: _Running, exc: JobInterrupt) -> None:
        """Turn zombieguard's interrupt into Celery's outcome (raises)."""
        policy = state.attempt.policy
        stack = state.stack or "".join(traceback.format_exception(exc))
        if isinstance(exc, LeaseLost) or state.interrupt == "lost":
            raise Ignore() from None  # superseded: nothing of this attempt is recorded
        if isinstance(exc, HardTimeLimitExceeded) or state.interrupt == "hard":
            reason = f"ran past its hard_timeout of {policy.hard_timeout:g} s"
            if not self._release(state, Outcome.TIMED_OUT, reason, stack):
                raise Ignore() from None
            raise TimeLimitExceeded(f"zombieguard: {reason}") from None
        reason = f"made no progress within its progress_timeout of {policy.progress_timeout:g} s"
        if not self._release(state, Outcome.HUNG, reason, stack):
            raise Ignore() from None
        raise TimeLimitExceeded(f"zombieguard: {reason}") from None

    def _release(self, state: _Running, outcome: Outcome, reason: str = "", stack: str | None = None) -> bool:
        """End the attempt; False when its end is not this thread's to record: a newer attempt holds
        the task (this one's end is refused), or it was recorded already (a zombie thread's task)."""
        if state.recorded:
            return False
        return record_end(ADAPTER, state.attempt, outcome, reason, stack)

    @staticmethod
    def _completed(attempt: Attempt) -> None:
        if not listened(JobCompleted):
            return
        duration = time.monotonic() - attempt.started_monotonic
        emit(ADAPTER, attempt.event(JobCompleted, reason=Outcome.COMPLETED.value, duration=duration))

    def begin(self, state: _Running) -> None:
        """Announce the attempt to whatever renews its lease and enforces its limits."""
        raise NotImplementedError

    def refused(self, attempt: Attempt) -> None:
        """A first delivery's lease, written after its body started, was refused (another attempt
        holds the task): stop the body; nothing of it is recorded."""
        raise NotImplementedError

    def end(self, state: _Running) -> None:
        """The attempt ended: stop renewing and enforcing."""
        raise NotImplementedError

    def aimed_at(self, state: _Running) -> bool:
        """Whether the interrupt signal being handled was sent for ``state``'s attempt (a signal
        sent for the task before may arrive in the next one)."""
        raise NotImplementedError

    def raise_interrupt(self, kind: Interrupt) -> None:
        """In the thread running a task: raise zombieguard's interrupt ``kind`` (from a signal)."""
        state = self.current
        if state is None or state.body_done:
            return  # no task, or it returned just before the limit: its end is being recorded
        if kind != "lost" and not self.aimed_at(state):
            log.warning(
                "celery task %s: a %s interrupt meant for the task before it ignored",
                state.attempt.job.job_id,
                kind,
            )
            return
        if kind == "lost":
            # The main process saw a renewal refused; the signal may be late, meant for an attempt
            # that ended before this one began in the same process: only Redis can tell.
            state.attempt.verify()  # raises LeaseLost when this attempt is superseded
            return
        policy = state.attempt.policy
        state.interrupt = kind
        if kind == "soft":
            raise SoftTimeLimit(f"task passed its soft_timeout of {policy.soft_timeout:g} s")
        if kind == "hard":
            raise HardTimeLimitExceeded(f"task passed its hard_timeout of {policy.hard_timeout:g} s")
        if kind == "hung":
            raise JobHung(
                f"task made no progress within its progress_timeout of {policy.progress_timeout:g} s"
            )


def _payload(task: Task, request: Any, args: Any = None, kwargs: Any = None) -> str:
    """What a sweeper needs to publish the task again (and ``status`` shows); ``args`` and
    ``kwargs``: the ones to publish, when not the request's."""
    try:
        signature = dict(task.signature_from_request(request, args, kwargs))
        return str(kombu_json.dumps({"signature": signature}))  # type: ignore[no-untyped-call]
    except Exception as exc:  # e.g. arguments only pickle can carry
        log.warning("celery task %s: cannot be recovered by re-publishing (%s)", request.id, exc)
        return json.dumps({"unpublishable": str(exc)})


def _message_payload(request: Any) -> str:
    """The payload of the task a worker's main-process ``Request`` describes, as its message came."""
    return _payload(request.task, internals.request_context(request), request.args, request.kwargs)


class _Snapshot:
    """A pending attempt's payload, computed when first needed from its request as it was at the
    start, pickled: what a body changes in place later (its arguments, ``self.request.chain``) is
    not republished. The pickle also goes into the task's slot, for the watchdog process."""

    def __init__(self, task: Task, request: Any, pickled: bytes) -> None:
        self.task = task
        self.request = request
        self.pickled = pickled

    def __call__(self) -> str:
        try:
            return _pickled_payload(self.task, self.pickled)
        except Exception as exc:  # e.g. an argument's own __setstate__
            log.warning(
                "celery task %s: the copy of its request does not load (%s); its payload takes it as "
                "it is now",
                self.request.id,
                exc,
            )
            return _payload(self.task, self.request)


def _pickled_payload(task: Task, pickled: bytes) -> str:
    """The payload of a request pickled as ``vars(request)`` (raises what loading it raises)."""
    return _payload(task, Context(pickle.loads(pickled)))


def payload_from_slot(state: SlotState, kept: bytes) -> str:
    """In the watchdog process, which has no Celery app: the payload of a task whose lease it must
    write, from the pickled request its slot keeps (``""`` when the slot keeps none)."""
    if not kept:
        return ""
    app = Celery("zombieguard-watchdog", set_as_current=False)
    task = app.task(name=state.task, shared=False)(_never_run)
    try:
        return _pickled_payload(task, kept)
    except Exception as exc:  # e.g. an argument of a class this process cannot import
        log.warning(
            "celery task %s: its request, as its slot keeps it, does not load (%s)", state.job_id, exc
        )
        return json.dumps({"unpublishable": f"its request did not load in the watchdog process: {exc}"})


def _never_run() -> None:
    """The body of the stand-in task :func:`payload_from_slot` builds signatures with."""


def announce(slot: JobSlot, attempt: Attempt, pid: int, *, keep_payload: bool) -> int:
    """Write ``attempt`` (run by process ``pid``: this one) to ``slot``, for the process that renews
    or enforces from outside; ``keep_payload``: with the pickled request of a pending attempt, for a
    process that may have to write its lease (the watchdog process, when no thread of the task's
    process can run).

    A pending attempt's lease may be written by that other process (the main process, or the
    watchdog process) when this one's threads do not write it in time (C code holding the GIL):
    under the attempt's tag, so that this process adopts it. Returns the slot's generation for it."""
    policy, started = attempt.policy, attempt.started_monotonic
    generation = slot.start(
        attempt.job.job_id,
        attempt.token,
        started,
        hard_deadline=started + policy.hard_timeout if policy.hard_timeout is not None else None,
        soft_deadline=started + policy.soft_timeout if policy.soft_timeout is not None else None,
        progress_timeout=policy.progress_timeout,
        confirmed_until=attempt.confirmed_until,
        started_at=attempt.started_at,
        attempt=attempt.number,
        stalls=attempt.stalls,
        pid=pid,
        lease_ttl=policy.lease_ttl,
        task=attempt.job.task,
        queue=attempt.job.queue,
        payload=attempt.describe.pickled
        if keep_payload and attempt.pending and isinstance(attempt.describe, _Snapshot)
        else b"",
        lease_delay=policy.lease_delay if attempt.pending else None,
        max_stalls=policy.max_stalls,
        dead_letter=policy.dead_letter,
        overdue_grace=policy.overdue_grace,
    )
    attempt.tag = execution_tag(slot.nonce, generation)
    return generation


class PoolProcessExecutor(Executor):
    """Prefork: a pool process. The worker's main process renews and enforces through the slot."""

    def __init__(self, guard: WorkerGuard, index: int) -> None:
        releases = Heartbeat(
            guard.store, ADAPTER, guard.name, guard.default_policy.renew_every, presence=False
        )
        super().__init__(guard, releases)
        self.slot = JobSlot(guard.dir / f"slot-{index}")
        # Bound once, given to every attempt.
        self._progress, self._confirmations = self.slot.progress, self.slot.confirmed_until
        self._on_acquired = self._acquired
        self.dumper = StackDumper(guard.dir / f"stacks-{index}.txt")
        self.dumper.install()
        install_interrupt_handlers(self.raise_interrupt)
        releases.start()

    def begin(self, state: _Running) -> None:
        """Write the slot: the main process renews the lease and watches the limits from it (the
        limits at once; the lease once it is written, when the token reaches the slot)."""
        attempt = state.attempt
        state.generation = announce(self.slot, attempt, self.pid, keep_payload=False)
        attempt.on_progress, attempt.confirmations = self._progress, self._confirmations
        attempt.on_acquired = self._on_acquired

    def describe_later(self, attempt: Attempt, task: Task, request: Any) -> bool:
        """Only a snapshot of what a body may change in place now (its arguments, its request's
        chain, callbacks and headers): the payload is computed from it if the lease is written,
        which most tasks end before. A pool process that dies before is recovered from Celery's
        request in the main process."""
        try:
            snapshot = (request.args, request.kwargs, _mutable_fields(request))
            frozen = pickle.dumps(snapshot, pickle.HIGHEST_PROTOCOL)
        except Exception:  # what only a serializer of its own can carry: the payload now
            payload = _payload(task, request)
            attempt.describe = lambda: payload
            return True

        def describe() -> str:
            try:
                args, kwargs, values = pickle.loads(frozen)
            except Exception as exc:  # e.g. an argument's own __setstate__
                log.warning(
                    "celery task %s: the copy of its arguments does not load (%s); its payload "
                    "takes them as they are now",
                    request.id,
                    exc,
                )
                return _payload(task, request)
            fields = dict(zip(_MUTABLE, values, strict=True))
            return _payload(task, Context(vars(request), **fields), args, kwargs)

        attempt.describe = describe
        return True

    def _acquired(self, attempt: Attempt) -> None:
        self.slot.set_token(attempt.token)
        self.slot.confirm(attempt.confirmed_until)

    def aimed_at(self, state: _Running) -> bool:
        """The main process names the task an interrupt is for in the slot before it signals."""
        return self.slot.aimed_at(state.generation)

    def refused(self, attempt: Attempt) -> None:
        """Interrupt the task in the main thread (the signal handler raises ``LeaseLost``)."""
        log.warning("celery task %s: %s; stopping it", attempt.job.job_id, attempt.lost)
        os.kill(os.getpid(), Interrupt.LOST.signal)

    def end(self, state: _Running) -> None:
        """Clear the slot."""
        self.slot.clear()


class InProcessExecutor(Executor):
    """Threads and solo pools: the worker's own heartbeat renews, its watchdog enforces."""

    def __init__(self, guard: WorkerGuard, signals_main_thread: bool) -> None:
        super().__init__(guard, guard.heartbeat)
        self.signals_main_thread = signals_main_thread
        self._watched: dict[int, Watched] = {}
        self._states: dict[int, _Running] = {}
        if signals_main_thread:
            install_interrupt_handlers(self.raise_interrupt)

    def begin(self, state: _Running) -> None:
        """Renew the lease with the worker's heartbeat; enforce the limits with its watchdog."""
        guard, attempt = self.guard, state.attempt
        ident = threading.get_ident()
        if not attempt.pending:
            guard.heartbeat.add(attempt)
        self._states[ident] = state
        if attempt.policy.limited:  # else the watchdog has nothing to enforce
            clock = LimitClock(
                attempt.policy, attempt.started_monotonic, lambda: attempt.last_progress_monotonic
            )
            watched = Watched(
                clock,
                stop=lambda w, limit, stack: self._stop(state, ident, limit, stack),
                capture=lambda: thread_stack(ident),
                escalate=lambda w: guard.stuck(state, ident, w),
                escalate_after=ESCALATE_AFTER,
                label=attempt.job.job_id,
                stalled=lambda w: self._stalled(state, ident),
            )
            self._watched[ident] = guard.watchdog.watch(watched)
        # The watchdog process beside the worker reads it, for when no thread of this one can run.
        slot = state.slot = guard.thread_slot(ident)
        state.generation = announce(slot, attempt, self.pid, keep_payload=True)
        attempt.on_progress = slot.progress
        attempt.on_acquired = lambda written: self._acquired(written, slot)

    def describe_later(self, attempt: Attempt, task: Task, request: Any) -> bool:
        """The request, pickled now (a few microseconds, where the payload costs tens): the payload
        is computed from it if the lease is written, which most tasks end before; the slot keeps it
        for the watchdog process, which writes the lease when no thread here can (C code holding the
        GIL). False, the payload computed now, when it does not pickle or fit the slot."""
        try:
            pickled = pickle.dumps(vars(request), pickle.HIGHEST_PROTOCOL)
        except Exception:  # what only a serializer of its own can carry
            pickled = b""
        if not pickled or len(pickled) > PAYLOAD_ROOM:
            payload = _payload(task, request)
            attempt.describe = lambda: payload
            return False
        attempt.describe = _Snapshot(task, request, pickled)
        return True

    def _acquired(self, attempt: Attempt, slot: JobSlot) -> None:
        self.guard.heartbeat.add(attempt)
        slot.set_token(attempt.token)

    def aimed_at(self, state: _Running) -> bool:
        """Solo: the watchdog thread names the task an interrupt is for before it signals."""
        return state.slot is not None and state.slot.aimed_at(state.generation)

    def refused(self, attempt: Attempt) -> None:
        """Interrupt the task's thread, as for a lease found superseded."""
        log.warning("celery task %s: %s; stopping it", attempt.job.job_id, attempt.lost)
        self.lost(attempt)

    def end(self, state: _Running) -> None:
        """Stop renewing and enforcing."""
        guard, ident = self.guard, threading.get_ident()
        self._states.pop(ident, None)
        watched = self._watched.pop(ident, None)
        if watched is not None:
            guard.watchdog.unwatch(watched)
        if state.attempt.token:  # its lease was written (and renewed since): no longer
            guard.heartbeat.remove(state.attempt)
        if state.slot is not None:
            state.slot.clear()
        guard.thread_ended(ident)

    def _stop(self, state: _Running, ident: int, limit: Limit, stack: str | None) -> None:
        attempt = state.attempt
        kind = {Limit.SOFT: "soft", Limit.HARD: "hard", Limit.PROGRESS: "hung"}[limit]
        policy = attempt.policy
        seconds = {Limit.SOFT: policy.soft_timeout, Limit.HARD: policy.hard_timeout}.get(
            limit, policy.progress_timeout
        )
        emit_limit(ADAPTER, attempt.event, limit, seconds, stack)
        if limit is not Limit.SOFT:
            state.stack = stack
        if self.signals_main_thread:
            if state.slot is not None:
                state.slot.aim(state.generation)
            os.kill(os.getpid(), Interrupt(kind).signal)
            return
        if state.body_done or self._states.get(ident) is not state:
            return  # it ended meanwhile: an interrupt now would land in the thread's next task
        state.interrupt = kind
        exc_type: type[BaseException] = {
            "soft": SoftTimeLimit,
            "hard": HardTimeLimitExceeded,
            "hung": JobHung,
        }[kind]
        interrupt_thread(ident, exc_type)

    def _stalled(self, state: _Running, ident: int) -> None:
        """The worker was frozen past the task's lease and a limit (see :attr:`Watched.stalled`):
        a stall, not a timeout. The lease is given up as stalled (written first if it was still
        pending), the task recovered at once, and this attempt stopped as superseded: nothing of it
        is recorded."""
        if state.body_done or self._states.get(ident) is not state:
            return
        attempt = state.attempt
        why = "its worker was frozen past the task's lease and a limit: a stall, not a timeout"
        with contained(f"celery task {attempt.job.job_id}: giving it up as stalled"):
            try:
                attempt.acquire_now()
            except redis.RedisError as exc:
                log.warning("celery task %s: %s; its lease not written (%s)", attempt.job.job_id, why, exc)
            if attempt.token and attempt.lost is None:
                # The attempt stopped before the sweep (a round trip to the broker): the watchdog
                # process, woken with this one, would take a job still running past its limit for
                # one stuck in C code.
                self.guard.recover_stalled(
                    attempt.described(), attempt.token, why, before_sweep=lambda: self.lost(attempt)
                )
                return
        self.lost(attempt)

    def lost(self, attempt: Attempt) -> None:
        """The heartbeat found this attempt superseded: stop it."""
        for ident, state in list(self._states.items()):
            if state.attempt is not attempt or state.body_done:
                continue
            if self.signals_main_thread:
                os.kill(os.getpid(), Interrupt.LOST.signal)
            else:
                state.interrupt = "lost"
                interrupt_thread(ident, JobInterrupt)


# -- the worker's main process --------------------------------------------------------------------


@dataclass
class _Tracked:
    """A pool process's running attempt, as the worker's main process follows it."""

    path: Path
    state: SlotState
    renewed: float
    soft_fired: bool = False
    stopped: str | None = None
    stopped_at: float = 0.0
    stack: str | None = None
    killed: bool = False
    written: int = 0
    """The token of the lease this process wrote for the task, its pool process late to write it
    (0: none); the pool process adopts it when it runs again (see :func:`announce`)."""
    tried: bool = False
    """This process tried to write the task's lease and had an answer from Redis."""
    retry_at: float = 0.0
    """When to try again, Redis not having answered (monotonic)."""

    @property
    def token(self) -> int:
        """The task's lease token, whoever wrote the lease (0 while none is written)."""
        return self.state.token or self.written


class SlotMonitor:
    """Prefork: renews the leases of the pool processes' attempts and enforces their limits."""

    def __init__(self, guard: WorkerGuard) -> None:
        self.guard = guard
        self.slots: dict[Path, JobSlot] = {}
        self.tracked: dict[Path, _Tracked] = {}
        self.killed: dict[str, str] = {}
        """Tasks whose pool process this monitor killed, and why (timed_out, hung, lost), or saw die
        (stalled: recovered)."""
        self.unleased: dict[str, SlotState] = {}
        """Tasks whose pool process died before their lease was written, to recover in the event
        loop (from Celery's request) by whichever comes first: this monitor's news or Celery's."""
        self.to_release: list[_Tracked] = []
        """Tasks that ended after this process wrote their leases for them: each lease is released
        as completed unless the pool process adopted it (then it records its own end). Kept until
        Redis answers."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listed = 0.0
        self.looked = time.monotonic()
        """When this monitor last looked at the slots (monotonic), or was made."""
        self._unanswered = False
        """Redis did not answer the last write or release of a lease this process wrote for a task
        (logged once until it answers again)."""

    def _refresh(self, now: float, *, force: bool = False) -> None:
        if now - self._listed < 1.0 and not force:
            return
        self._listed = now
        for path in self.guard.dir.glob("slot-*"):
            if path not in self.slots:
                with contextlib.suppress(OSError, ValueError):
                    self.slots[path] = JobSlot(path)

    def check(self, now: float) -> None:
        """One look at every slot: renew what is due, act on every limit that passed."""
        self._refresh(now)
        due: list[_Tracked] = []
        late: list[_Tracked] = []
        died: list[tuple[SlotState, int]] = []
        with self._lock:
            since, self.looked = now - self.looked, now
            for path, slot in list(self.slots.items()):
                state = slot.read()
                tracked = self.tracked.get(path)
                if tracked is not None and (not state.active or state.generation != tracked.state.generation):
                    if tracked.written:
                        self.to_release.append(tracked)
                    del self.tracked[path]
                    tracked = None
                if not state.active:
                    continue
                gone = process_exited(state.pid) and _died_by_itself(state, tracked)
                if not gone and _woke_past_its_lease(state, tracked, now, since):
                    log.warning(
                        "celery task %s[%s]: its worker was frozen %.1f s, past the task's lease and a "
                        "limit: a stall, killed and recovered, not timed out",
                        state.task,
                        state.job_id,
                        since,
                    )
                    _signal(state.pid, signal.SIGKILL)
                    gone = True
                if gone:
                    token = state.token or (tracked.written if tracked is not None else 0)
                    # Marked before the slot is cleared: Celery's report, if it comes in between,
                    # must find the task handled here (or to be handled), not take it for one with
                    # no lease.
                    if token:
                        self.killed[state.job_id] = "stalled"
                    else:
                        self.unleased[state.job_id] = state
                    died.append((state, token))
                    slot.clear()
                    self.tracked.pop(path, None)
                    continue
                if tracked is None:
                    # The acquire itself set the lease's expiry: the first renewal is due a third in.
                    tracked = self.tracked[path] = _Tracked(path, state, renewed=state.started)
                tracked.state = state
                with contained(f"prefork monitor, task {state.job_id}"):
                    self._enforce(tracked, now)
                if tracked.token and not tracked.killed and now - tracked.renewed >= state.lease_ttl / 3:
                    due.append(tracked)
                elif _lease_late(tracked, now):
                    late.append(tracked)
        self._act(now, due, late, died)

    def _act(
        self, now: float, due: list[_Tracked], late: list[_Tracked], died: list[tuple[SlotState, int]]
    ) -> None:
        """What a look found to do in Redis (outside the lock)."""
        if self.to_release:
            self._release_written()
        for tracked in late:
            self._write_lease(tracked, now)
        if due:
            self._renew(due)
        for state, token in died:
            self._died(state, token)

    def _write_lease(self, tracked: _Tracked, now: float) -> None:
        """Write the lease of a task whose pool process has not written it past its ``lease_delay``
        (no thread of it can run: C code holding the GIL), with the payload of Celery's request for
        it, under the task's execution tag: the pool process adopts it if it runs again. A task
        that ends meanwhile has it released (:meth:`_release_written`)."""
        state = tracked.state
        tracked.tried = True
        with contained(f"celery task {state.job_id}: writing its lease for its pool process"):
            payload = self.guard.request_payload(state.job_id)
            if payload is None:
                return
            try:
                token = self.guard.write_lease_for(state, payload)
            except redis.RedisError as exc:
                tracked.tried, tracked.retry_at = False, now + 1.0
                self._answered(exc)
                return
            self._answered(None)
            if not token:
                return  # another attempt holds the task: this copy's own acquire is refused
            with self._lock:
                tracked.written = token
                tracked.renewed = now
                if self.tracked.get(tracked.path) is not tracked:  # it ended meanwhile
                    self.to_release.append(tracked)
            log.info(
                "celery task %s[%s]: its pool process %d had not written its lease %.2f s after it "
                "started (C code holding the GIL, or a busy machine); written by the worker's main "
                "process",
                state.task,
                state.job_id,
                state.pid,
                now - state.started,
            )

    def _answered(self, exc: redis.RedisError | None) -> None:
        """Log a failed write or release of a lease written for a task once, until Redis answers."""
        if exc is not None and not self._unanswered:
            log.warning(
                "celery worker %s: leases written for its tasks wait for Redis (%s)", self.guard.name, exc
            )
        elif exc is None and self._unanswered:
            log.warning("celery worker %s: Redis answers again", self.guard.name)
        self._unanswered = exc is not None

    def _release_written(self) -> None:
        """Release, as completed, the leases this process wrote for tasks that ended without
        adopting them (the body returned before its process wrote or adopted the lease)."""
        with self._lock:
            ended, self.to_release = self.to_release, []
        for index, tracked in enumerate(ended):
            state = tracked.state
            spec = JobSpec(state.job_id, ADAPTER, state.task, state.queue)
            revoked = internals.revoked(state.job_id)
            try:
                self.guard.store.release(
                    spec,
                    tracked.written,
                    Outcome.STOPPED if revoked else Outcome.COMPLETED,
                    "revoked" if revoked else "ended before its pool process took over its lease",
                    unless_adopted=True,
                )
            except LeaseLost:
                continue  # ended, recovered or superseded: recorded by whoever did that
            except redis.RedisError as exc:
                self._answered(exc)
                with self._lock:
                    self.to_release[:0] = ended[index:]
                return
            self._answered(None)

    def _died(self, state: SlotState, token: int) -> None:
        """A pool process died mid-task, and Celery has not said so yet (under load its pool notices
        only every few seconds): recover the task now. Celery's news of it, when it comes, finds the
        task handled (``pool_process_lost`` returns ``stalled``). A task that died before its lease
        was written is recovered in the event loop, from Celery's request for it."""
        if not token:
            job_id = state.job_id
            self.guard.in_loop(lambda: self.guard.recover_unleased(job_id))
            return
        spec = JobSpec(state.job_id, ADAPTER, state.task, state.queue)
        if not self.guard.recover_stalled(spec, token):
            self.killed.pop(state.job_id, None)  # Celery's news came first: it was handled then

    def _event(self, state: SlotState) -> Callable[..., Any]:
        """Events about a pool process's task; the job's description is read from its lease (the slot
        does not hold it), one round trip, only when a limit fires."""
        payload = ""
        with contextlib.suppress(redis.RedisError):
            payload = text(
                self.guard.store.client.hget(self.guard.store.lease_key(state.job_id), "payload") or ""
            )

        def make(kind: type[Any], reason: str = "", stack: str | None = None, **extra: Any) -> Any:
            return kind(
                job_id=state.job_id,
                task=state.task,
                queue=state.queue,
                attempt=state.attempt,
                worker=self.guard.name,
                adapter=ADAPTER,
                reason=reason,
                started_at=state.started_at,
                stack=stack,
                payload=payload,
                **extra,
            )

        return make

    def _enforce(self, tracked: _Tracked, now: float) -> None:
        state = tracked.state
        if tracked.stopped is not None:
            if not tracked.killed and now >= tracked.stopped_at + ESCALATE_AFTER:
                self._kill(tracked)
            return
        if state.hard_deadline is not None and now >= state.hard_deadline:
            self._stop_task(tracked, "timed_out", now)
        elif state.progress_timeout is not None and now >= state.last_progress + state.progress_timeout:
            self._stop_task(tracked, "hung", now)
        elif state.soft_deadline is not None and not tracked.soft_fired and now >= state.soft_deadline:
            tracked.soft_fired = True
            emit_limit(ADAPTER, self._event(state), Limit.SOFT, None, None)
            self.slots[tracked.path].aim(state.generation)
            _signal(state.pid, Interrupt.SOFT.signal)

    def _dumper(self, tracked: _Tracked) -> StackDumper:
        return _dumper_of(self.guard.dir, tracked.path)

    def _stop_task(self, tracked: _Tracked, kind: str, now: float) -> None:
        state = tracked.state
        stack = self._dumper(tracked).request(state.pid)
        limit = Limit.HARD if kind == "timed_out" else Limit.PROGRESS
        emit_limit(ADAPTER, self._event(state), limit, _seconds(state, kind), stack)
        tracked.stopped, tracked.stopped_at, tracked.stack = kind, time.monotonic(), stack
        self.slots[tracked.path].aim(state.generation)
        _signal(state.pid, (Interrupt.HARD if kind == "timed_out" else Interrupt.HUNG).signal)

    def _kill(self, tracked: _Tracked) -> None:
        """The task did not end after its interrupt (C code holding the GIL): kill its process."""
        state = tracked.state
        tracked.killed = True
        kind = tracked.stopped or "timed_out"
        self.killed[state.job_id] = kind
        log.error("celery task %s[%s] %s: killing pool process %d", state.task, state.job_id, kind, state.pid)
        if kind == "lost":
            _signal(state.pid, signal.SIGKILL)
            return
        limit = _seconds(state, kind)
        what = "hard_timeout" if kind == "timed_out" else "progress_timeout"
        reason = f"ran past its {what} of {limit:g} s and was killed (stuck where no Python code runs)"
        spec = JobSpec(state.job_id, ADAPTER, state.task, state.queue)
        superseded = False
        if tracked.token:  # else no lease was written (stuck within its lease_delay): Celery's record only
            try:
                self.guard.store.release(spec, tracked.token, Outcome(kind), reason, tracked.stack)
            except LeaseLost:
                superseded = True  # a newer attempt holds the task: nothing of this one is recorded
                self.killed[state.job_id] = "lost"
            except redis.RedisError as exc:
                log.warning("celery task %s: its timeout not written to its lease (%s)", state.job_id, exc)
        _signal(state.pid, signal.SIGKILL)
        if not superseded:
            job_id = state.job_id
            self.guard.in_loop(lambda: self.guard.record_timeout(job_id, limit))

    def _renew(self, due: list[_Tracked]) -> None:
        guard = self.guard
        sent_at = time.monotonic()
        try:
            codes = guard.store.renew(
                ADAPTER,
                guard.name,
                guard.heartbeat.worker_ttl,
                [(t.state.job_id, t.token) for t in due],
            )
        except redis.RedisError as exc:
            log.warning("celery worker %s: renewing pool processes' leases failed: %s", guard.name, exc)
            return
        for tracked, code in zip(due, codes, strict=True):
            state = tracked.state
            if code == "ok":
                tracked.renewed = sent_at
                self.slots[tracked.path].confirm(sent_at + state.lease_ttl)
            elif code == "missing":
                # Redis lost it (restart without persistence); the attempt re-establishes it when it
                # next writes. Renewing again later is harmless.
                tracked.renewed = sent_at
            elif tracked.stopped is None and self._still_running(tracked):
                log.warning(
                    "celery task %s[%s]: a newer attempt holds it; stopping this one",
                    state.task,
                    state.job_id,
                )
                tracked.stopped, tracked.stopped_at = "lost", time.monotonic()
                _signal(state.pid, Interrupt.LOST.signal)

    def _still_running(self, tracked: _Tracked) -> bool:
        """Whether the task a renewal was sent for is still in its slot (it may have ended since)."""
        state = self.slots[tracked.path].read()
        return state.active and state.generation == tracked.state.generation

    def woke_past_lease(self, job_id: str) -> bool:
        """Whether the task ``job_id`` is (or is being) given up as a stall because its worker was
        frozen past its lease and a limit (see :func:`_woke_past_its_lease`): this monitor did so,
        or has not looked since the worker woke and will."""
        now = time.monotonic()
        with self._lock:
            if self.killed.get(job_id) == "stalled" or job_id in self.unleased:
                return True
            since = now - self.looked
            for path, slot in self.slots.items():
                state = slot.read()
                if state.active and state.job_id == job_id:
                    return _woke_past_its_lease(state, self.tracked.get(path), now, since)
        return False

    def running(self, job_id: str) -> SlotState | None:
        """The slot of the pool process running ``job_id`` (its token: the lease this process wrote
        for it, when its own is not written), None when no pool process runs it."""
        with self._lock:
            for tracked in self.tracked.values():
                if tracked.state.active and tracked.state.job_id == job_id:
                    return dataclasses.replace(tracked.state, token=tracked.token)
        return None

    def stacks(self, pid: int) -> str | None:
        """The stacks of pool process ``pid``, dumped now; None when it has no slot here, or nothing
        came within half a second."""
        with self._lock:
            slots = list(self.slots.items())
        for path, slot in slots:
            if slot.read().pid == pid:
                return _dumper_of(self.guard.dir, path).request(pid)
        return None

    def forget(self, job_id: str) -> SlotState | None:
        """A pool process died: clear the slot it left for ``job_id``; its state, if it had one."""
        with self._lock:
            # A pool process started since the last listing has a slot this monitor does not know.
            self._refresh(time.monotonic(), force=True)
            for path, slot in list(self.slots.items()):
                state = slot.read()
                if state.active and state.job_id == job_id:
                    slot.clear()
                    self.tracked.pop(path, None)
                    return state
        return None

    def _run(self) -> None:
        while not self._stop.wait(MONITOR_PERIOD):
            with contained("prefork monitor"):
                self.check(time.monotonic())

    def start(self) -> None:
        """Start the thread."""
        self._thread = threading.Thread(target=self._run, name="zombieguard-prefork-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, after a last look (the leases it wrote for tasks that ended since are
        released)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with contained("prefork monitor's last look"):
            self.check(time.monotonic())


def _holds(record: LeaseRecord, worker: str, state: SlotState | None) -> bool:
    """Whether the lease ``record`` is the one of the attempt ``worker`` runs (``state``: its slot, if
    known), still running or ended by that attempt itself (``done``). Not when another worker or
    token holds it, or a sweeper claimed, requeued or ended it: then the attempt is superseded. An
    attempt whose lease is not written yet holds the task unless the lease is a newer attempt's."""
    if state is not None and not state.token:
        return record.attempt < state.attempt or (record.attempt == state.attempt and record.worker == worker)
    own = record.state in ("running", "done") and record.worker == worker
    return own and (state is None or record.token == state.token)


def _dumper_of(directory: Path, slot: Path) -> StackDumper:
    """Where the pool process of the slot file ``slot`` dumps its stacks."""
    index = slot.name.removeprefix("slot-")
    return StackDumper(directory / f"stacks-{index}.txt")


def _superseded(record: LeaseRecord, worker: str, state: SlotState | None) -> bool:
    """Whether the attempt ``worker`` runs (``state``: its slot, if known) no longer holds its task:
    a newer attempt or a sweeper has it, or its lease, still running, was given up for a sweeper to
    act on (see :func:`_holds`)."""
    return record.given_up or not _holds(record, worker, state)


def _lease_late(tracked: _Tracked, now: float) -> bool:
    """Whether a pool process's task is past its ``lease_delay`` with no lease written for it (and
    the main process has not tried to write it)."""
    state = tracked.state
    return (
        not tracked.token
        and not tracked.tried
        and tracked.stopped is None
        and state.lease_delay is not None
        and now >= max(state.started + state.lease_delay + LATE_LEASE, tracked.retry_at)
    )


def _woke_past_its_lease(state: SlotState, tracked: _Tracked | None, now: float, since: float) -> bool:
    """Whether a task's hard or progress limit passed while the worker was frozen (or starved: its
    monitor did not look for ``since`` seconds) longer than the task's lease lives. Its lease lapsed
    before the limit passed: a sweeper elsewhere takes that for a stall, and so does this worker
    (the task is run again, not failed), whether or not one did. A task stopped already is not."""
    if since <= state.lease_ttl or (tracked is not None and tracked.stopped is not None):
        return False
    hard = state.hard_deadline is not None and now >= state.hard_deadline
    hung = state.progress_timeout is not None and now >= state.last_progress + state.progress_timeout
    return hard or hung


def _died_by_itself(state: SlotState, tracked: _Tracked | None) -> bool:
    """Whether a pool process that exited mid-task died on its own: not killed by this monitor (at
    a limit, or superseded) nor terminated by ``revoke(terminate=True)``, both of which Celery's
    report of the death settles."""
    return not (tracked is not None and tracked.killed) and not internals.revoked(state.job_id)


def _seconds(state: SlotState, kind: str) -> float:
    """The limit a slot's task passed: its hard_timeout (``timed_out``) or progress_timeout."""
    if kind == "timed_out":
        return (state.hard_deadline or state.started) - state.started
    return state.progress_timeout or 0.0


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


_DIR_PREFIX = "zombieguard-celery-"


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


class WorkerGuard(WorkerRuntime):
    """What one Celery worker runs beside Celery: presence, heartbeat, sweeper, enforcement."""

    def __init__(self, worker: Any) -> None:
        app: Celery = worker.app
        self.app = app
        self.config = app_config(app)
        unguarded = []
        for name, task in app.tasks.items():
            task_policy(self.config, task)  # bad configuration fails the worker's start, naming the task
            if not isinstance(task, GuardedTask) and not name.startswith("celery."):
                unguarded.append(name)
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
            signals.task_prerun.connect(_before_started, weak=False)
        self.name: str = worker.hostname
        self.pool = _pool_kind(worker.pool_cls)
        self.pool_size = int(worker.concurrency or 1)
        self.default_policy = self.config.policy_for("")
        self.adapter = CeleryAdapter(app)
        super().__init__(
            LeaseStore.from_url(leases_url(app, self.config), self.config.settings),
            self.adapter,
            worker=self.name,
            renew_every=self.default_policy.renew_every,
            on_lost=self._lost,
            dir_prefix=_DIR_PREFIX,
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
        self.zombies: dict[int, str] = {}
        """Threads stuck past a limit, and the task each holds."""
        self._policies: dict[str | tuple[str, tuple[Any, ...]], Policy] = {}
        self._restarting = False

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
        global _executor
        if self.pool not in ("prefork", "threads", "solo"):
            log.warning(
                "zombieguard: the %s pool is not supported; this worker's tasks run unguarded "
                "(its sweeper still recovers other workers' tasks)",
                self.pool,
            )
        if _restores_by_tag(self.app):
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
            self.start_sidecar(
                slot=self.slots_dir,
                dump=self.dumper.path,
                redis_url=leases_url(self.app, self.config),
                adapter=f"{__name__}:sidecar_adapter" if spec else ADAPTER,
                adapter_arg=spec or "",
                # Threads: a thread stuck in a blocking call is this process's to handle, 0.5 s past
                # its limit; the watchdog process acts only when no thread here can (C code, the GIL).
                grace="0.5" if self.pool == "solo" else "0.8",
                slot_payload=f"{__name__}:payload_from_slot",
            )
            _executor = InProcessExecutor(self, signals_main_thread=self.pool == "solo")
        self.launch({"pool": self.pool, "concurrency": str(self.pool_size)})
        if self.monitor is not None:
            self.monitor.start()

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
        if isinstance(_executor, InProcessExecutor):
            _executor.lost(attempt)

    def pool_process_lost(self, request: Any, terminated: bool) -> str | None:
        """Prefork: the process running ``request`` died. What zombieguard makes of it:

        ``timed_out`` / ``hung`` (this worker killed it at a limit), ``lost`` (superseded),
        ``stalled`` (it died by itself: recovered or dead-lettered), None (Celery's own handling).
        """
        if self.monitor is None:
            return None
        job_id = request.id
        # The slot first: the monitor records what it saw (killed, or dead before its lease was
        # written) before it clears a slot, under the same lock.
        state = self.monitor.forget(job_id)
        killed = self.monitor.killed.pop(job_id, None)
        unleased = self.monitor.unleased.pop(job_id, None)  # seen dead by the monitor, not recovered
        state = state or unleased
        if killed is not None:
            return killed
        return self._died_verdict(request, state, terminated)

    def _died_verdict(self, request: Any, state: SlotState | None, terminated: bool) -> str | None:
        """:meth:`pool_process_lost` for a pool process this worker did not kill, from the lease."""
        job_id = request.id
        record = None
        with contextlib.suppress(Exception):
            record = self.store.record(job_id)
        if record is None and state is not None and not state.token and not terminated:
            # Its lease not written yet (within its lease_delay): write it, recover.
            return "stalled" if self._recover_unleased(state, request) else None
        if record is None:
            return None
        if not _holds(record, self.name, state):
            # A newer attempt (or a sweeper) holds the task: nothing of this one is recorded.
            log.warning("celery task %s: its pool process died; its attempt no longer holds the task", job_id)
            return "lost"
        if record.state == "done":
            return None  # it died after its attempt's end was written: Celery's own handling
        token = state.token if state is not None and state.token else record.token
        spec = JobSpec(job_id, ADAPTER, record.task, record.queue)
        if not terminated:
            self.recover_stalled(spec, token)
            return "stalled"
        try:  # revoked: Celery records it so; the lease ends stopped
            self.store.release(spec, token, Outcome.STOPPED, "revoked with terminate=True")
        except (redis.RedisError, LeaseLost) as exc:
            log.warning("celery task %s: its stop not recorded (%s)", job_id, exc)
        return None

    def superseded(self, job_id: str) -> bool:
        """Prefork: whether the attempt of ``job_id`` that this worker runs no longer holds the task
        (see :func:`_superseded`): then nothing of it may be recorded, by whatever path notices its
        end. False when Redis cannot tell."""
        state = self.monitor.running(job_id) if self.monitor is not None else None
        try:
            record = self.store.record(job_id)
        except (redis.RedisError, CorruptRecord) as exc:
            log.warning("celery task %s: could not check its lease (%s)", job_id, exc)
            return False
        return record is not None and _superseded(record, self.name, state)

    def recover_unleased(self, job_id: str) -> None:
        """In the event loop: recover a task whose pool process the monitor saw die before its lease
        was written, unless Celery's news of it came first (``pool_process_lost`` recovered it)."""
        state = self.monitor.unleased.pop(job_id, None) if self.monitor is not None else None
        if state is None:
            return
        request = internals.request_by_id(job_id)
        if request is None:
            log.warning("celery task %s: its pool process died; no request left to recover it", job_id)
            return
        # Celery's news of the death runs in this thread too, so it comes before or after, not
        # during (a prefork worker without an event loop, on a transport that has none, runs this in
        # the monitor's thread: there the two may overlap).
        with contained(f"celery task {job_id}: recovering it"):
            if self._recover_unleased(state, request) and self.monitor is not None:
                self.monitor.killed[job_id] = "stalled"  # Celery's news, when it comes: handled

    def request_payload(self, job_id: str) -> str | None:
        """Prefork: the payload of the task ``job_id`` as its message came (Celery's request for it
        in this process), for a lease written here; None when no request is left."""
        request = internals.request_by_id(job_id)
        return None if request is None else _message_payload(request)

    def _recover_unleased(self, state: SlotState, request: Any) -> bool:
        """Write the lease of a task whose pool process died before it could, with the payload of
        Celery's request for it (the message as it came), and recover the task."""
        leased = self.lease_from_slot(state, _message_payload(request))
        return leased is not None and self.recover_stalled(*leased)

    def lease_from_slot(self, state: SlotState, payload: str) -> tuple[JobSpec, int] | None:
        """Prefork: write the lease of a task whose pool process died before writing it (within its
        ``lease_delay``), from its slot and ``payload``; its spec and token, or None when another
        attempt holds the task or Redis is away."""
        try:
            token = self.write_lease_for(state, payload)
        except (ConfigurationError, redis.RedisError) as exc:
            log.warning("celery task %s: its lease not written for recovery (%s)", state.job_id, exc)
            return None
        spec = JobSpec(state.job_id, ADAPTER, state.task, state.queue, payload)
        return (spec, token) if token else None

    def write_lease_for(self, state: SlotState, payload: str) -> int:
        """Prefork: write, on its execution's behalf, the lease of the task a pool process's slot
        shows (see :func:`zombieguard.sidecar.lease_from_slot`), under its task's policy; its token,
        or 0 when another attempt holds the task. Raises ``redis.RedisError``."""
        task = self.app.tasks.get(state.task)
        policy = (
            self.policy(task, (state.hard_timeout, state.soft_timeout))
            if task is not None
            else self.default_policy
        )
        return lease_from_slot(self.store, state, payload, adapter=ADAPTER, worker=self.name, policy=policy)

    def recover_stalled(
        self,
        spec: JobSpec,
        token: int,
        why: str = "its pool process died",
        before_sweep: Callable[[], object] = tuple,
    ) -> bool:
        """A pool process died in the middle of ``spec``'s task (or ``why``): give its lease up as
        stalled, call ``before_sweep``, and sweep at once (the task is recovered or dead-lettered).
        False when it was given up already."""
        log.warning("celery task %s[%s]: %s; recovering it", spec.task, spec.job_id, why)
        try:
            self.store.abandon(spec, token, "stalled")
        except LeaseLost:
            return False
        except redis.RedisError as exc:
            log.warning("celery task %s: lease not given up (%s); it expires instead", spec.job_id, exc)
            return True
        finally:
            before_sweep()
        try:
            self.sweeper.sweep_once()
        except redis.RedisError as exc:
            log.warning(
                "celery task %s: not swept at once (%s); the next sweep recovers it", spec.job_id, exc
            )
        return True

    def stuck(self, state: _Running, ident: int, watched: Watched) -> None:
        """Threads pool: the task's thread ignored its interrupt (a blocking call, C code)."""
        attempt = state.attempt
        if self.pool != "threads" or state.body_done:
            return  # solo: the watchdog process beside the worker kills it
        kind = "timed_out" if watched.stopped_by is Limit.HARD else "hung"
        policy = attempt.policy
        limit = policy.hard_timeout if kind == "timed_out" else policy.progress_timeout
        what = "hard_timeout" if kind == "timed_out" else "progress_timeout"
        reason = f"ran past its {what} of {limit:g} s; its thread is stuck"
        state.recorded = True
        superseded = False
        try:
            attempt.release(Outcome(kind), reason, state.stack)
        except LeaseLost:
            superseded = True  # a newer attempt holds the task: nothing of this one is recorded
        except redis.RedisError as exc:
            log.warning("celery task %s: its timeout not written to its lease (%s)", attempt.job.job_id, exc)
        self.thread_slot(ident).clear()  # the watchdog process must not kill the worker for it
        job_id = attempt.job.job_id
        self.zombies[ident] = attempt.job.job_id
        self._publish_zombie_threads()
        share = len(self.zombies) / self.pool_size
        emit(
            ADAPTER,
            WorkerZombie(
                self.name,
                ADAPTER,
                f"a thread is stuck in task {attempt.job.task}[{attempt.job.job_id}] past its limit",
                info=(
                    ("task", attempt.job.task),
                    ("job_id", attempt.job.job_id),
                    ("zombie_threads", str(len(self.zombies))),
                    ("pool_size", str(self.pool_size)),
                ),
            ),
        )
        log.error(
            "celery worker %s: %d of %d threads are zombies (stuck past a limit)",
            self.name,
            len(self.zombies),
            self.pool_size,
        )
        restart = share >= self.config.settings.zombie_thread_share and not self._restarting
        self._restarting = self._restarting or restart

        def record() -> None:  # the failure first: a warm shutdown stops the event loop
            if superseded:
                self.forget_request(job_id)
            else:
                self.record_timeout(job_id, limit or 0)
            if restart:
                self._restart()

        self.in_loop(record)

    def thread_ended(self, ident: int) -> None:
        """A pool thread's task ended (a zombie thread that came back is a thread again)."""
        if self.zombies.pop(ident, None) is not None:
            self._publish_zombie_threads()

    def _publish_zombie_threads(self) -> None:
        """In the worker's description: how many of its threads are zombies (a metric reads it)."""
        with contextlib.suppress(redis.RedisError):
            self.store.client.hset(self.store.worker_key(self.name), "zombie_threads", str(len(self.zombies)))

    def _unstarted_left(self, held: list[Any]) -> list[Any] | None:
        """Once only zombie threads run tasks: the requests of ``held`` (those the worker had
        received when it began to shut down) that never started and no thread will start now (all
        are zombies, or none is left to run); None while that may still change."""
        zombies = set(self.zombies.values())
        active = {r.id for r in internals.active_requests()}
        if not active <= zombies or not self._consumer_stopped():
            return None
        waiting = [
            r for r in held if r.id not in active | zombies and not r.acknowledged and r.time_start is None
        ]
        if waiting and len(self.zombies) < self.pool_size:
            return None  # a live thread runs them during the warm shutdown
        return waiting

    def _consumer_stopped(self) -> bool:
        """Whether the worker's consumer has stopped (a message handed back before could be taken
        again by it)."""
        blueprint = getattr(getattr(self.celery_worker, "consumer", None), "blueprint", None)
        return blueprint is None or blueprint.state == bootsteps.TERMINATE

    def _restart(self) -> None:
        """Warm shutdown, then exit once only zombie threads are left, for the supervisor to restart.
        The tasks it received and never started go back to the broker first (Celery forgets them
        as its consumer closes, and an exit that does not close the connection would leave them
        in kombu's unacked hash until the visibility timeout)."""
        log.error(
            "celery worker %s: zombie threads reached %g of the pool: shutting down warm to be restarted",
            self.name,
            self.config.settings.zombie_thread_share,
        )
        held = internals.held_requests()
        os.kill(os.getpid(), signal.SIGTERM)

        def exit_when_only_zombies() -> None:
            while (waiting := self._unstarted_left(held)) is None:
                time.sleep(0.2)
            log.warning(
                "celery worker %s: handing back %d task(s) it received and never started, then exiting",
                self.name,
                len(waiting),
            )
            with contained(f"celery worker {self.name}: handing its unstarted tasks back"):
                # Its connection closed first: kombu puts back what that channel holds, and no read
                # of the queue still pending on it takes a message handed back after.
                connection = getattr(getattr(self.celery_worker, "consumer", None), "connection", None)
                if connection is not None:
                    connection.close()
                tags = {request.message.delivery_tag for request in waiting}
                hand_back(self.app, [m for m in ReceivedLog.read(self.dir) if m.tag in tags])
            self.stop()
            os._exit(1)

        threading.Thread(target=exit_when_only_zombies, name="zombieguard-restart", daemon=True).start()


def hand_back(app: Celery, received: Iterable[Received], ran: Mapping[str, str] | None = None) -> None:
    """Settle, now, messages a worker received and never acked: put each back at the front of its
    queue, or drop it when its task started there (``ran``: task ids by delivery tag) and the result
    backend has its end (only its ack was lost, with the worker's connection). A message delivered
    again since (kombu restored it, and some worker took it: later than :data:`DELIVERY_SLACK` after
    this worker wrote it down) is not this one's to settle, nor one acked already.

    kombu's Redis transport keeps a delivered message in its ``unacked`` hash (with the time of the
    delivery in ``unacked_index``) until it is acked, or until the ``visibility_timeout`` passes (an
    hour by default) when the worker that had it exits without closing its channel; its QoS puts one
    back by delivery tag (``restore_by_tag``) or drops it (``reject``). RabbitMQ returns a consumer's
    unacked messages itself when its connection closes. Through a connection of its own: the
    worker's channel may be closed, or its process gone.
    """
    with internals.unacked(app) as unacked:
        if unacked is None:
            return
        for message in received:
            delivered = unacked.delivered_at(message.tag)
            if delivered is None or delivered > message.at + (0 if message.exact else DELIVERY_SLACK):
                continue  # acked, or delivered again since to some worker
            task_id = (ran or {}).get(message.tag)
            if task_id is not None and _recorded_end(app, task_id):
                unacked.drop(message.tag)
            else:
                unacked.restore(message.tag)


class WorkerGuardStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """The worker bootstep :func:`install` adds: builds the :class:`WorkerGuard` (bad configuration
    fails the worker's start here), after the pool is created and before its processes start."""

    label = "zombieguard"
    requires = ("celery.worker.components:Pool",)

    def create(self, worker: Any) -> WorkerGuard:
        """Build the guard (pool processes forked later inherit it)."""
        global _guard
        _guard = WorkerGuard(worker)
        return _guard


class DeliveryLogStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """The consumer bootstep :func:`install` adds: has the worker's :class:`ReceivedLog` write down
    each message its task consumer's channel delivers, as it delivers it. It starts again with the
    consumer's every new connection (after a lost one, a new channel)."""

    label = "zombieguard delivery log"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, consumer: Any) -> None:
        """Note the deliveries of the consumer's task channel (when the worker keeps a log)."""
        guard = _guard
        task_consumer = getattr(consumer, "task_consumer", None)
        if guard is not None and guard.received is not None and task_consumer is not None:
            channel = task_consumer.channel
            internals.on_delivery(channel, guard.received.delivering, guard.received.delivered)
            guard.received.unacked_here = lambda: internals.delivered_tags(channel)


# -- the Task and Request classes -----------------------------------------------------------------


class GuardedTask(Task):  # type: ignore[misc]
    """Runs the body under the task's lease in a guarded worker; unchanged anywhere else."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The task's body, under its lease when a guarded worker runs it."""
        executor = _executor
        request = self.request
        if executor is None or request.called_directly or request.is_eager or executor.current is not None:
            return super().__call__(*args, **kwargs)  # not from Celery's tracer in a guarded worker
        body = self.run if _calls_run(type(self)) else super().__call__
        return executor.run(self, request, body, args, kwargs)


_CALLS_RUN: dict[type, bool] = {}


def _calls_run(cls: type) -> bool:
    """Whether no class between :class:`GuardedTask` and Celery's ``Task`` in ``cls``'s MRO defines
    ``__call__``: then the body is called as Celery's tracer calls the body of a task with no
    ``__call__`` of its own (``task.run``), not through Celery's ``__call__`` (which, in a worker,
    looks the request up again to find that it has nothing to do)."""
    known = _CALLS_RUN.get(cls)
    if known is None:
        mro = cls.__mro__
        between = mro[mro.index(GuardedTask) + 1 : mro.index(Task)]
        known = _CALLS_RUN[cls] = not any("__call__" in vars(base) for base in between)
    return known


class GuardedRequestMixin:
    """The worker main process's view of one task message, guarded."""

    _zg_limits: Any = None
    _zg_timed_out = False

    if TYPE_CHECKING:
        id: str
        task: Task
        args: Any
        kwargs: Any
        store_errors: bool
        worker_pid: int | None

        def acknowledge(self) -> None: ...
        def reject(self, requeue: bool = False) -> Any: ...
        def send_event(self, type: str, **fields: Any) -> None: ...

    def on_accepted(self, pid: int, time_accepted: float) -> None:
        """Celery's; the worker notes that this message's task started here (see :class:`ReceivedLog`)."""
        super().on_accepted(pid, time_accepted)  # type: ignore[misc]
        guard = _guard
        if guard is not None and guard.received is not None:
            guard.received.start(self)

    @property
    def time_limits(self) -> Any:
        """Celery's own time limits, moved past the policy's: the prefork pool's timer is a backstop."""
        hard, soft = self._zg_limits or (None, None)
        guard = _guard
        if guard is None or guard.pool != "prefork":
            return (hard, soft)
        try:
            policy = guard.policy(self.task, self._zg_limits)
        except Exception:  # an invalid policy: the task runs unguarded, under Celery's own limits
            return (hard, soft)
        if policy.hard_timeout is not None:
            hard = int(policy.hard_timeout) + 1 + BACKSTOP_SECONDS
        if policy.soft_timeout is not None:
            soft = int(policy.soft_timeout) + 1 + BACKSTOP_SECONDS
        return (hard, soft)

    @time_limits.setter
    def time_limits(self, value: Any) -> None:
        self._zg_limits = value

    def on_timeout(self, soft: bool, timeout: float) -> None:
        """Celery's, once per task for the hard limit (whoever noticed it first); nothing for an
        attempt that no longer holds the task (its worker was frozen past its lease, say): a
        superseded attempt never writes the task's state."""
        if not soft:
            if self._zg_timed_out or self._zg_stalled_frozen() or self._zg_superseded(timeout):
                return
            self._zg_timed_out = True
            self._zg_log_stacks(timeout)
        super().on_timeout(soft, timeout)  # type: ignore[misc]

    def _zg_log_stacks(self, limit: object) -> None:
        """Celery's hard limit passed before zombieguard's own stopped the task (its limits are set
        past zombieguard's): log where the pool process is, before Celery kills it."""
        guard, pid = _guard, self.worker_pid
        if guard is None or guard.monitor is None or not pid:
            return
        stacks = None
        with contained(f"celery task {self.id}: stacks at Celery's hard limit"):
            stacks = guard.monitor.stacks(pid)
        log.error(
            "celery task %s[%s]: Celery's own hard time limit (%s) passed; pool process %d was at:\n%s",
            self.task.name,
            self.id,
            limit,
            pid,
            stacks or "(no stacks came)",
        )

    def _zg_stalled_frozen(self) -> bool:
        """Celery's hard time limit passed while the whole worker was frozen past the task's lease
        (a paused VM): a stall, as the prefork monitor judges it (the task is recovered, this attempt
        records nothing), whichever of the two notices first. True when handled so."""
        guard = _guard
        if guard is None or guard.monitor is None or not guard.monitor.woke_past_lease(self.id):
            return False
        verdict = None
        with contained(f"celery task {self.id}: frozen past its lease"):
            verdict = guard.pool_process_lost(self, terminated=False)
        if verdict not in ("stalled", "lost"):
            return False
        self._zg_timed_out = True  # settled: Celery's other report of the limit records nothing
        internals.task_ready(self)
        self.acknowledge()
        return True

    def _zg_superseded(self, limit: object) -> bool:
        """Celery's hard time limit passed: when this attempt no longer holds the task (its worker
        was frozen past its lease, say), the request is done with, its message acked, nothing is
        recorded, and True."""
        guard = _guard
        if guard is None or not guard.superseded(self.id):
            return False
        log.warning(
            "celery task %s[%s]: Celery's hard time limit (%s) passed for an attempt that no longer "
            "holds the task; nothing recorded",
            self.task.name,
            self.id,
            limit,
        )
        self._zg_timed_out = True
        internals.task_ready(self)
        self.acknowledge()
        return True

    def zg_timed_out(self, limit: float) -> None:
        """Record the task as past its hard limit, once, as Celery 5.7 records a prefork hard timeout:
        FAILURE with ``TimeLimitExceeded``, ``on_failure``, ``after_return``, ``task_failure``, the
        ``task-failed`` event, then the ack (Celery before 5.7 runs none of the hooks itself)."""
        if self._zg_timed_out:
            return
        self._zg_timed_out = True
        task = self.task
        internals.task_ready(self)
        log.error("Hard time limit (%ss) exceeded for %s[%s]", limit, task.name, self.id)
        exc = TimeLimitExceeded(limit)
        task.backend.mark_as_failure(
            self.id, exc, request=internals.request_context(self), store_result=self.store_errors
        )
        try:
            raise exc
        except TimeLimitExceeded:
            einfo = ExceptionInfo()
        with contained(f"on_failure of celery task {self.id}"):
            task.on_failure(exc, self.id, self.args, self.kwargs, einfo)
            if internals.has_custom_after_return(task):
                task.after_return(states.FAILURE, exc, self.id, self.args, self.kwargs, None)
        signals.task_failure.send(
            sender=task,
            task_id=self.id,
            exception=exc,
            args=self.args,
            kwargs=self.kwargs,
            traceback=einfo.tb,
            einfo=einfo,
        )
        self.send_event("task-failed", exception=repr(exc), traceback=einfo.traceback)
        if task.acks_late:
            if getattr(task, "acks_on_timeout", task.acks_on_failure_or_timeout):
                self.acknowledge()
            else:
                self.reject(requeue=True)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        """Celery's, except where zombieguard has the verdict: a pool process that died in a guarded
        task is a stall (recovered, not failed or requeued forever) or a kill at a limit (timed out,
        recorded once); Celery's own hard limit passing for an attempt that no longer holds the task
        records nothing (the pool reports it here first, then to :meth:`on_timeout`)."""
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # ExceptionWithTraceback
        if self._zg_timed_out:
            internals.task_ready(self)
            return  # already recorded as timed out; the late news of its process is not another failure
        pool_limit = isinstance(exc, TimeLimitExceeded) and not return_ok  # a task's own: return_ok
        if pool_limit and (self._zg_stalled_frozen() or self._zg_superseded(exc)):
            return
        guard = _guard
        lost = isinstance(exc, WorkerLostError | SystemExit | KeyboardInterrupt)
        terminated = type(exc).__name__ == "Terminated"
        if guard is not None and (lost or terminated):
            verdict = None
            with contained(f"celery task {self.id}: its pool process died"):
                verdict = guard.pool_process_lost(self, terminated)
            if verdict in ("timed_out", "hung"):
                policy = guard.policy(self.task, self._zg_limits)
                limit = policy.hard_timeout if verdict == "timed_out" else policy.progress_timeout
                self.zg_timed_out(limit or 0)
                return
            if verdict in ("stalled", "lost"):
                internals.task_ready(self)
                self.acknowledge()
                return
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)  # type: ignore[misc]


# -- install -------------------------------------------------------------------------------------

_connected = False
_connect_lock = threading.Lock()


def _on_pool_process_init(**_: Any) -> None:
    """In each prefork pool process: the executor that runs task bodies under their leases."""
    global _executor
    guard = _guard
    if guard is None or guard.pool != "prefork":
        return
    index = int(getattr(billiard.process.current_process(), "index", 0) or 0)
    _executor = PoolProcessExecutor(guard, index)


def _before_started(task_id: str = "", task: Any = None, **_: Any) -> None:
    """``task_prerun``, where the task runs, before Celery may record it ``STARTED``: for a delivery
    that may be a stale copy (it carries an attempt number, or the broker redelivered it), keep the
    task's recorded end, to put back if the copy is refused."""
    executor = _executor
    if executor is None or not isinstance(task, GuardedTask) or not task.track_started:
        return  # Celery records no STARTED (every task pays for this receiver: the cheap tests first)
    request = task.request
    if _ignores_result(task, request):
        return  # nor for this delivery
    if _first_delivery(request):
        return  # no earlier end to keep
    with contained(f"celery task {task_id}: its recorded end not kept"):
        executor.keep_result(task, task_id)


def _ignores_result(task: Task, request: Any) -> bool:
    """Whether Celery stores no result (and no ``STARTED``) for this delivery of ``task``: as its
    tracer decides (Celery 5.7: the request's own ``ignore_result`` wins; before: the task's)."""
    if _actual_ignore_result is not None:
        return bool(_actual_ignore_result(task, request))
    return bool(task.ignore_result)


def _stamp_retry(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """A task re-publishing itself (``self.retry``) publishes the next attempt."""
    executor = _executor
    if executor is None or headers is None:
        return
    state = executor.current
    if state is not None and headers.get("id") == state.attempt.job.job_id:
        headers[ATTEMPT_HEADER] = state.attempt.number + 1


def _on_pool_process_exit(**_: Any) -> None:
    """``worker_process_shutdown``, in a prefork pool process about to exit (``max_tasks_per_child``,
    a shrinking pool): write what its heartbeat still holds (releases, queues' last successes)."""
    executor = _executor
    if isinstance(executor, PoolProcessExecutor):
        with contained("pool process writing its deferred releases"), contextlib.suppress(redis.RedisError):
            executor.releases.flush_deferred()


def _connect_signals() -> None:
    global _connected
    with _connect_lock:
        if _connected:
            return
        signals.worker_process_init.connect(_on_pool_process_init, weak=False)
        signals.worker_process_shutdown.connect(_on_pool_process_exit, weak=False)
        signals.before_task_publish.connect(_stamp_retry, weak=False)
        _connected = True


def install(app: Celery) -> Celery:
    """Guard ``app``'s tasks in its workers. Idempotent; call it where the app is built, before its
    tasks are defined (tasks with a ``base=`` class of their own need it to derive from ``app.Task``)."""
    if app.__dict__.get("_zombieguard_installed"):
        return app
    base = app.Task
    if not issubclass(base, GuardedTask):
        request_base = symbol_by_name(base.Request)
        request_cls = type("GuardedRequest", (GuardedRequestMixin, request_base), {"__module__": __name__})
        app.Task = type(
            base.__name__,
            (GuardedTask, base),
            {"__module__": base.__module__, "Request": request_cls, "__qualname__": base.__qualname__},
        )
    app.steps["worker"].add(WorkerGuardStep)
    app.steps["consumer"].add(DeliveryLogStep)
    _connect_signals()
    app.__dict__["_zombieguard_installed"] = True
    return app


__all__ = ["CeleryAdapter", "GuardedTask", "SoftTimeLimit", "WorkerGuard", "install"]
