"""The Celery and kombu internals zombieguard relies on (``zombieguard.integrations.celery.internals``,
listed in docs/internals.md), pinned against the installed Celery and kombu on real Redis: a release
that changes one fails here, by name."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import billiard.pool
import billiard.util
from celery import Celery, states
from celery.app.task import Context, Task
from celery.contrib.testing.mocks import TaskMessage
from celery.worker import state as worker_state
from celery.worker.request import Request
from kombu import Exchange, Queue

from zombieguard.integrations.celery import internals


def _request(app: Celery, task: Task, **headers: Any) -> Request:
    """A worker's request for ``task``, built from a message as Celery's consumer builds one."""
    message = TaskMessage(task.name, id=f"t-{uuid.uuid4().hex}", args=(2, 3), **headers)
    return Request(message, app=app, task=task)


def test_a_request_s_context_is_the_task_context_its_message_came_with(app: Celery) -> None:
    @app.task(name="internals.add")
    def add(a: int, b: int) -> int:
        return a + b

    request = _request(app, add, retries=2, zombieguard_attempt=3)
    context = internals.request_context(request)
    assert isinstance(context, Context)
    assert (context.id, context.retries, context.args) == (request.id, 2, (2, 3))
    assert context.zombieguard_attempt == 3


def test_a_stored_result_written_back_raw_is_read_as_it_was_with_its_expiry(app: Celery) -> None:
    backend = app.backend
    task_id = f"t-{uuid.uuid4().hex}"
    backend.mark_as_failure(task_id, ValueError("its own error"))
    key = backend.get_key_for_task(task_id)
    raw = backend.get(key)
    backend.mark_as_started(task_id)
    assert app.AsyncResult(task_id).state == states.STARTED

    internals.store_raw_result(backend, task_id, raw, states.FAILURE)

    assert backend.get(key) == raw
    assert app.AsyncResult(task_id).state == states.FAILURE
    assert 0 < backend.client.ttl(key) <= app.conf.result_expires.total_seconds()


def test_only_a_task_that_defines_after_return_is_said_to_have_one(app: Celery) -> None:
    class Cleans(Task):  # type: ignore[misc]
        def after_return(self, *args: Any, **kwargs: Any) -> None:
            """Clean up."""

    @app.task(name="internals.plain")
    def plain() -> None:
        """Nothing."""

    @app.task(name="internals.cleans", base=Cleans)
    def cleans() -> None:
        """Nothing."""

    assert not internals.has_custom_after_return(plain)
    assert internals.has_custom_after_return(cleans)


def test_the_worker_s_request_state_reads_reserved_active_revoked_and_ready(app: Celery) -> None:
    @app.task(name="internals.noop")
    def task(a: int, b: int) -> None:
        """Nothing."""

    held, running = _request(app, task), _request(app, task)
    worker_state.task_reserved(held)
    worker_state.task_reserved(running)
    worker_state.task_accepted(running)
    try:
        assert {held, running} <= set(internals.held_requests())  # reserved until ready, started or not
        assert internals.active_requests() == [running]
        assert internals.request_by_id(held.id) is held
        assert not internals.revoked(running.id)
        worker_state.revoked.add(running.id)
        assert internals.revoked(running.id)
        internals.task_ready(running)
        assert internals.active_requests() == []
        assert internals.request_by_id(running.id) is None
    finally:
        worker_state.revoked.discard(running.id)
        for request in (held, running):
            worker_state.task_ready(request)


def test_kombu_s_redis_transport_restores_an_unacked_message_by_tag_and_rabbitmq_s_does_not_need_to(
    app: Celery,
) -> None:
    with app.connection_for_write() as connection:
        assert internals.restores_by_tag(connection.transport)
    assert not internals.restores_by_tag(
        Celery(broker="amqp://127.0.0.1:1//").connection_for_write().transport
    )

    queue = Queue(f"q-{uuid.uuid4().hex[:8]}", Exchange("internals", type="direct"), routing_key="r")
    with app.connection_for_write() as connection:
        producer = connection.Producer()
        producer.publish("first", exchange=queue.exchange, routing_key="r", declare=[queue])
        channel = connection.default_channel
        message = channel.basic_get(queue.name, no_ack=False)  # delivered: in the unacked hash now
        assert message is not None
        producer.publish("second", exchange=queue.exchange, routing_key="r", declare=[queue])
        tag = message.delivery_tag
        with internals.unacked(app) as unacked:
            assert unacked is not None
            delivered = unacked.delivered_at(tag)
            assert delivered is not None
            assert delivered > 0
            unacked.restore(tag)
            assert unacked.delivered_at(tag) is None
        again = channel.basic_get(queue.name, no_ack=False)
        assert again is not None
        assert again.body == message.body  # back at the front: before the one sent after it
        with internals.unacked(app) as unacked:
            assert unacked is not None
            unacked.drop(again.delivery_tag)
            assert unacked.delivered_at(again.delivery_tag) is None
        last = channel.basic_get(queue.name, no_ack=True)
        assert last is not None
        assert last.body != message.body
        assert channel.basic_get(queue.name, no_ack=False) is None  # the first was dropped for good
        assert channel.client.hlen(channel.unacked_key) == 0


def test_a_republished_task_is_moved_to_the_front_of_its_kombu_redis_queue_and_taken_next(
    app: Celery,
) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"

    @app.task(name="internals.front")
    def front(n: int) -> int:
        return n

    first = front.apply_async((1,), queue=queue)
    recovered = front.apply_async((2,), queue=queue, headers={"zombieguard_attempt": 2})
    urgent = front.apply_async((3,), queue=queue, priority=9, headers={"zombieguard_attempt": 2})
    last = front.apply_async((4,), queue=queue)
    assert not internals.move_to_front(app, queue, recovered.id, 3)  # another attempt: not this one
    assert internals.move_to_front(app, queue, recovered.id, 2)
    assert internals.move_to_front(app, queue, urgent.id, 2)  # within the list of its priority
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        taken = [channel.basic_get(queue, no_ack=True) for _ in range(4)]
    # kombu's Redis transport serves the list of priority 0 first, each from its right end.
    assert [message.headers["id"] if message else None for message in taken] == [
        recovered.id,
        first.id,
        last.id,
        urgent.id,
    ]
    assert not internals.move_to_front(Celery(broker="memory://"), queue, recovered.id, 2)


def test_a_delivery_is_noted_before_and_after_it_enters_kombu_s_unacked_hash_and_held_until_acked(
    app: Celery,
) -> None:
    queue = Queue(f"q-{uuid.uuid4().hex[:8]}", Exchange("internals", type="direct"), routing_key="r")
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        noted: list[tuple[str, str, str, bool]] = []

        def note(when: str) -> Callable[[str, str], None]:
            def record(tag: str, task_id: str) -> None:
                noted.append((when, tag, task_id, channel.client.hget(channel.unacked_key, tag) is not None))

            return record

        internals.on_delivery(channel, note("before"), note("after"))
        internals.on_delivery(channel, note("before"), note("after"))  # once per channel
        producer = connection.Producer()
        producer.publish(
            "a task", exchange=queue.exchange, routing_key="r", declare=[queue], headers={"id": "t-1"}
        )
        taken: list[Any] = []
        with connection.Consumer(queue, callbacks=[lambda body, message: taken.append(message)]):
            connection.drain_events(timeout=5)
            [message] = taken
            tag = message.delivery_tag
            assert noted == [("before", tag, "t-1", False), ("after", tag, "t-1", True)]
            assert internals.delivered_tags(channel) == {tag}
            message.ack()


_POOL = textwrap.dedent(
    """
    import json, os, sys, time
    import billiard.pool
    from zombieguard.integrations.celery import internals

    def index_here(_):
        time.sleep(0.1)
        return os.getpid(), internals.pool_process_index()

    if __name__ == "__main__":
        pool = billiard.pool.Pool(processes=2)
        seen = {}
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:  # until both processes took a task
            for pid, index in pool.map(index_here, range(4), chunksize=1):
                seen.setdefault(pid, set()).add(index)
        with open(sys.argv[1], "w") as out:
            json.dump(sorted(sorted(indices) for indices in seen.values()), out)
        os._exit(0)  # the test ends the pool's processes: billiard < 4.2 may take 30 s to
    """
)


def test_each_billiard_pool_process_knows_its_own_place_in_the_pool(tmp_path: Path) -> None:
    assert internals.pool_process_index() == 0  # not in a pool
    script = tmp_path / "pool.py"
    script.write_text(_POOL)
    result = tmp_path / "indices.json"
    process = subprocess.Popen([sys.executable, str(script), str(result)], start_new_session=True)
    try:
        assert process.wait(timeout=60) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the pool's processes, left by os._exit
    assert json.loads(result.read_text()) == [[0], [1]]


def test_billiard_logs_a_pool_process_s_abnormal_exit_with_the_format_zombieguard_rewords() -> None:
    assert billiard.util.LOGGER_NAME == "multiprocessing"
    assert repr(internals.POOL_PROCESS_EXITED) in inspect.getsource(billiard.pool.Pool._join_exited_workers)
