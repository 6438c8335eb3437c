"""How sweepers, the CLI and the watchdog process act on Celery tasks: requeue, fail, stop,
republish, and hand back what a dead worker held (runs wherever they run, with the app loaded)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis
from billiard.einfo import ExceptionInfo
from billiard.exceptions import WorkerLostError
from celery import Celery, signals
from celery.app.task import Context
from celery.exceptions import Terminated, TimeLimitExceeded
from kombu.transport.virtual import Channel as VirtualChannel
from kombu.utils import json as kombu_json

from zombieguard.containment import contained, log
from zombieguard.errors import ZombieGuardError
from zombieguard.integrations.celery import internals
from zombieguard.integrations.celery.app import load_app, recorded_end
from zombieguard.integrations.celery.message import ATTEMPT_HEADER
from zombieguard.integrations.celery.received import ReceivedLog
from zombieguard.leases import LeaseRecord, Outcome
from zombieguard.recovery.deadletter import DeadLetterEntry

ADAPTER = "celery"


class CeleryAdapter:
    """Requeue, fail, stop and republish Celery tasks, through the app's own producer and backend."""

    name = ADAPTER
    republishes_unstarted = True
    reclaims = False
    requeues_from_payload = True

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
        return recorded_end(self.app, task_id)

    def _publish(self, signature: dict[str, Any], attempt: int | None) -> None:
        sig = self.app.signature(signature)
        headers = dict(sig.options.get("headers") or {})
        headers.pop(ATTEMPT_HEADER, None)
        if attempt is not None:
            headers[ATTEMPT_HEADER] = attempt
        sig.apply_async(headers=headers)

    def requeue(self, record: LeaseRecord) -> bool:
        """Publish the task again, same id, arguments, routing and options, as the next attempt; on
        the Redis broker, at the front of its queue (the next task its workers take)."""
        if self._ended(record.job_id):
            return False
        self._publish(self._signature(record.payload), record.attempt + 1)
        try:
            internals.move_to_front(self.app, record.queue, record.job_id, record.attempt + 1)
        except Exception as exc:  # the broker away a moment: the task waits its turn instead
            log.warning("celery task %s: left at the back of its queue (%r)", record.job_id, exc)
        return True

    def fail(self, record: LeaseRecord, outcome: Outcome, reason: str) -> bool:
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
        if outcome in (Outcome.TIMED_OUT, Outcome.HUNG):
            exc = TimeLimitExceeded(message)
        elif outcome is Outcome.STOPPED:
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


def watchdog_process_adapter(connection: redis.Redis, app_spec: str) -> CeleryAdapter:
    """The adapter the watchdog process beside a threads or solo worker loads when it must act for
    the worker's tasks (``app_spec``: ``module:attribute`` of the worker's app)."""
    return CeleryAdapter(load_app(app_spec))


def cli_adapter(connection: redis.Redis, app: str | None) -> CeleryAdapter:
    """The adapter the CLI loads, acting through the Celery app ``app`` (``module:attribute``)."""
    spec = app
    if not spec:
        raise ZombieGuardError(
            "acting on Celery tasks needs the Celery app: pass -A proj (as celery -A takes it) "
            "(or set ZOMBIEGUARD_CELERY_APP)"
        )
    return CeleryAdapter(load_app(spec))
