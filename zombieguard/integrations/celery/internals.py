"""What the Celery integration relies on in Celery and kombu beyond their public API.

Each function here is the one place its internal is used, so that a release that changes it breaks
here and nowhere else; docs/internals.md lists each with the test that pins it
(``tests/integration/celery/test_internals.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import billiard.process
import redis
from celery import Celery
from celery.app.task import Task
from celery.app.trace import task_has_custom
from celery.backends.base import BaseKeyValueStoreBackend
from celery.worker import state as worker_state

POOL_PROCESS_EXITED = "Process %r pid:%r exited with %r"
"""The format of the error billiard's pool logs (logger ``multiprocessing``) for a pool process that
exited with neither success nor a recycle: where zombieguard killed it, its line says so instead."""


def pool_process_index() -> int:
    """This prefork pool process's place in its pool (0 to concurrency - 1; 0 outside a pool):
    billiard's ``Process.index``, which its pool sets on each process it starts."""
    return int(getattr(billiard.process.current_process(), "index", 0) or 0)


def request_context(request: Any) -> Any:
    """The task's context as its message came (``Request._context``: what Celery itself passes to
    the result backend as ``request=``)."""
    return request._context


def store_raw_result(backend: BaseKeyValueStoreBackend, task_id: str, raw: bytes | str, status: str) -> None:
    """Write a result exactly as the backend had stored it, with the expiry and notifications of an
    ordinary store (``BaseKeyValueStoreBackend._set_with_state``)."""
    backend._set_with_state(backend.get_key_for_task(task_id), raw, status)


def has_custom_after_return(task: Task) -> bool:
    """Whether the task defines its own ``after_return`` (Celery's tracer calls it only then)."""
    return bool(task_has_custom(task, "after_return"))


# The worker's global request state (``celery.worker.state``), read in the worker's main process.


def active_requests() -> list[Any]:
    """The requests the worker's pool is running."""
    return list(worker_state.active_requests)


def held_requests() -> list[Any]:
    """The requests the worker received and has not done with: reserved (a request stays reserved
    while it runs, until it is ready) and, with an ETA or countdown, scheduled (a set Celery 5.3
    does not keep)."""
    return [*worker_state.reserved_requests, *getattr(worker_state, "scheduled_requests", ())]


def request_by_id(task_id: str) -> Any | None:
    """The worker's request for ``task_id``, if it still holds one."""
    return worker_state.requests.get(task_id)


def revoked(task_id: str) -> bool:
    """Whether ``task_id`` was revoked (by ``revoke`` or ``terminate``) in this worker."""
    return task_id in worker_state.revoked


def task_ready(request: Any) -> None:
    """Tell the worker a request is done with (it leaves the active and reserved sets)."""
    worker_state.task_ready(request)


# kombu's Redis transport: its QoS keeps a delivered message in the ``unacked`` hash, indexed by the
# time of delivery in ``unacked_index``, until it is acked or the visibility timeout passes.


def restores_by_tag(transport: Any) -> bool:
    """Whether a kombu transport's QoS can put an unacked message back by its delivery tag (the
    Redis transport's can; py-amqp's has no QoS class of its own)."""
    return hasattr(getattr(getattr(transport, "Channel", None), "QoS", None), "restore_by_tag")


def on_delivery(channel: Any, before: Callable[[str, str], None], after: Callable[[str, str], None]) -> None:
    """Call ``before(delivery_tag, task_id)`` for each message ``channel`` delivers, just before kombu's
    Redis transport writes it to its unacked hash (``QoS.append``, which the channel calls before
    handing the message to its consumer), and ``after`` once it has. Once per channel."""
    qos = channel.qos
    if getattr(qos.append, "_zg_notes", False):
        return
    append = qos.append

    def noting(message: Any, delivery_tag: str) -> Any:
        task_id = str((message.headers or {}).get("id") or "-")
        before(delivery_tag, task_id)
        appended = append(message, delivery_tag)
        after(delivery_tag, task_id)
        return appended

    noting._zg_notes = True  # type: ignore[attr-defined]
    qos.append = noting


def delivered_tags(channel: Any) -> set[str]:
    """The delivery tags of the messages ``channel`` delivered and has not acked (``QoS._delivered``;
    an ack leaves it there until kombu's next flush)."""
    return set(channel.qos._delivered)


class Unacked:
    """The unacked messages of kombu's Redis transport, through one channel."""

    def __init__(self, channel: Any) -> None:
        self._qos = channel.qos
        # The index's key as stored (kombu's prefixing client does not prefix ZSCORE).
        self._index = redis.Redis(connection_pool=channel.client.connection_pool)
        self._index_key = channel.global_keyprefix + channel.unacked_index_key

    def delivered_at(self, tag: str) -> float | None:
        """When the message was last delivered (None: acked, or never delivered)."""
        score = self._index.zscore(self._index_key, tag)
        return None if score is None else float(score)

    def restore(self, tag: str) -> None:
        """Put the message back at the front of its queue (the end its consumers pop from: kombu
        pushes on the left and pops on the right, so ``leftmost`` is the back)."""
        self._qos.restore_by_tag(tag, leftmost=False)

    def drop(self, tag: str) -> None:
        """Remove the message for good."""
        self._qos.reject(tag, requeue=False)


@contextmanager
def unacked(app: Celery) -> Iterator[Unacked | None]:
    """The app's unacked messages, through a connection of its own; None when its broker keeps
    none for this (RabbitMQ returns a consumer's unacked messages itself when it goes)."""
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        yield Unacked(channel) if hasattr(getattr(channel, "qos", None), "restore_by_tag") else None


# A recovered task is published again as a new message, which kombu's Redis transport pushes on the
# left of its queue's list (one list per priority step); consumers pop on the right. This script
# moves it from where it was pushed to the end consumers pop from. It finds the message by its task
# id and attempt among the newest few (a consumer may have taken it already: then nothing moves).
_TO_FRONT = """
for _, key in ipairs(KEYS) do
  for _, item in ipairs(redis.call('LRANGE', key, 0, tonumber(ARGV[3]) - 1)) do
    local ok, message = pcall(cjson.decode, item)
    if ok and type(message) == 'table' and type(message.headers) == 'table'
        and message.headers.id == ARGV[1] and tostring(message.headers.zombieguard_attempt) == ARGV[2] then
      redis.call('LREM', key, 1, item)
      redis.call('RPUSH', key, item)
      return 1
    end
  end
end
return 0
"""


def move_to_front(app: Celery, queue: str, task_id: str, attempt: int, newest: int = 16) -> bool:
    """On kombu's Redis transport, move the message just published for attempt ``attempt`` of task
    ``task_id`` to the front of ``queue`` (the next one its consumers take). False on a broker
    without such lists (RabbitMQ), or when the message is not among the ``newest`` of its list (a
    consumer took it, or it went to another queue)."""
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        if not hasattr(channel, "_q_for_pri"):
            return False
        lists = dict.fromkeys(channel._q_for_pri(queue, step) for step in channel.priority_steps)
        keys = [channel.global_keyprefix + name for name in lists]
        client = redis.Redis(connection_pool=channel.client.connection_pool)
        return bool(client.eval(_TO_FRONT, len(keys), *keys, task_id, str(attempt), str(newest)))
