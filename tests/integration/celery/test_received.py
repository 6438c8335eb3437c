"""What a Celery worker received and did not ack, settled as it stops or after it died: against a real
Redis broker (kombu's own consumer takes the messages, as a worker's does)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kombu import Connection, Exchange, Queue

import zombieguard.integrations.celery.received as received_module
from zombieguard.integrations.celery import internals
from zombieguard.integrations.celery.received import ReceivedLog, hand_back


class _Request:
    """What ReceivedLog reads of a Celery request: its task's id, its message's delivery tag."""

    def __init__(self, message: Any) -> None:
        self.message = message
        self.id = message.headers["id"]


def _take(connection: Connection, queue: Queue, count: int, received: ReceivedLog) -> list[Any]:
    """Have kombu's consumer deliver ``count`` messages, written down in ``received`` as a worker's
    are, and leave them unacked (in its unacked hash)."""
    internals.on_delivery(connection.default_channel, received.delivering, received.delivered)
    taken: list[Any] = []
    with connection.Consumer(queue, callbacks=[lambda body, message: taken.append(message)], no_ack=False):
        while len(taken) < count:
            connection.drain_events(timeout=5)
    return taken


def test_at_a_worker_s_stop_its_unacked_messages_go_back_unless_their_tasks_ended_there(
    app: Celery, tmp_path: Path
) -> None:
    queue = Queue(f"q-{uuid.uuid4().hex[:8]}", Exchange("received", type="direct"), routing_key="r")
    with app.connection_for_write() as connection:
        producer = connection.Producer()
        for body in ("ended", "started", "never-started"):
            headers = {"id": f"t-{uuid.uuid4().hex}"}
            producer.publish(body, exchange=queue.exchange, routing_key="r", declare=[queue], headers=headers)
        received = ReceivedLog(tmp_path)
        taken = _take(connection, queue, 3, received)
        unacked = connection.default_channel.unacked_key
        client = connection.default_channel.client
        assert client.hlen(unacked) == 3
        requests = [_Request(message) for message in taken]
        received.start(requests[0])
        received.start(requests[1])
        app.backend.mark_as_done(requests[0].id, "done")  # it ended; the other started, no end recorded
        # The worker's connection breaks here: no message is acked.
        received.settle(app)
        assert client.hlen(unacked) == 0
        with connection.SimpleQueue(queue) as simple:
            back = [simple.get(timeout=5) for _ in range(2)]
            assert sorted(m.payload for m in back) == ["never-started", "started"]  # handed back
            for message in back:
                message.ack()
        assert client.llen(queue.name) == 0  # the one that ended is not back
    assert not (tmp_path / ReceivedLog.NAME).exists()


def test_a_dead_worker_s_unacked_messages_are_handed_back_by_the_next_one_unless_delivered_again(
    app: Celery, tmp_path: Path
) -> None:
    queue = Queue(f"q-{uuid.uuid4().hex[:8]}", Exchange("received", type="direct"), routing_key="r")
    with app.connection_for_write() as connection:
        connection.Producer().publish(
            "lost-with-its-worker",
            exchange=queue.exchange,
            routing_key="r",
            declare=[queue],
            headers={"id": "t-1"},
        )
        _take(connection, queue, 1, ReceivedLog(tmp_path))
        [written] = ReceivedLog.read(tmp_path)
        assert written.task_id == "t-1"
        hand_back(app, ReceivedLog.read(tmp_path))
        with app.connection_for_write() as other, other.SimpleQueue(queue) as simple:
            back = simple.get(timeout=5)  # delivered again: to this other consumer, same tag
            assert back.payload == "lost-with-its-worker"
            hand_back(app, ReceivedLog.read(tmp_path))  # the dead worker's entry is older: not its own
            assert connection.default_channel.client.hlen(connection.default_channel.unacked_key) == 1
            back.ack()


def test_a_dead_worker_s_messages_are_handed_back_once_not_again_when_delivered_again_at_once(
    app: Celery, tmp_path: Path
) -> None:
    # Its watchdog process hands back first, then the worker started after it reads the same
    # directory: a message delivered again meanwhile to a live worker stays with that worker.
    queue = Queue(f"q-{uuid.uuid4().hex[:8]}", Exchange("received", type="direct"), routing_key="r")
    with app.connection_for_write() as connection:
        connection.Producer().publish(
            "lost-with-its-worker",
            exchange=queue.exchange,
            routing_key="r",
            declare=[queue],
            headers={"id": "t-2"},
        )
        _take(connection, queue, 1, ReceivedLog(tmp_path))
        written = ReceivedLog.read(tmp_path)
        siblings = sorted(tmp_path.parent.iterdir())
        assert ReceivedLog.hand_back_for(app, tmp_path) == 1
        with app.connection_for_write() as other, other.SimpleQueue(queue) as simple:
            back = simple.get(timeout=5)
            assert ReceivedLog.hand_back_for(app, tmp_path) == 0  # taken: not handed back twice
            assert not (tmp_path / ReceivedLog.NAME).exists()
            assert sorted(tmp_path.parent.iterdir()) == siblings  # the taker's own directory removed
            hand_back(app, written)  # written once in kombu's unacked hash: its time tells it apart
            assert other.default_channel.client.hlen(other.default_channel.unacked_key) == 1
            back.ack()


def test_a_worker_s_log_rewritten_keeps_the_messages_it_still_holds_as_first_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    received = ReceivedLog(tmp_path)
    for tag in ("a", "b", "c"):
        received.delivering(tag, f"t-{tag}")
        received.delivered(tag, f"t-{tag}")
    before = {m.tag: m for m in ReceivedLog.read(tmp_path)}
    received.unacked_here = lambda: {"b"}  # a and c were acked
    monkeypatch.setattr(received_module, "RECEIVED_LOG_BYTES", 0)
    received.delivering("d", "t-d")
    after = {m.tag: m for m in ReceivedLog.read(tmp_path)}
    assert set(after) == {"b", "d"}
    assert after["b"] == before["b"]
    assert after["b"].exact
    assert not after["d"].exact  # written before kombu's own write only
    received.close()
