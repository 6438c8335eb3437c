"""What a Celery worker received and did not ack, settled as it stops or after it died: against a real
Redis broker (kombu's own consumer takes the messages, as a worker's does)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Queue

from tests.conftest import delete_prefixed
from zombieguard.integrations.celery import ReceivedLog, hand_back


@pytest.fixture
def app(redis_url: str, key_prefix: str) -> Iterator[Celery]:
    """A Celery app on the test Redis, under a key prefix of the test's own."""
    celery = Celery("received", set_as_current=False)
    celery.conf.update(broker_url=redis_url, broker_transport_options={"global_keyprefix": f"{key_prefix}:"})
    yield celery
    celery.close()
    client = redis.Redis.from_url(redis_url)
    delete_prefixed(client, f"{key_prefix}:*")
    client.close()


class _Request:
    """What ReceivedLog reads of a Celery request: its message's delivery tag."""

    def __init__(self, message: object) -> None:
        self.message = message


def _take(connection: Connection, queue: Queue, count: int) -> list[object]:
    """Have kombu's consumer deliver ``count`` messages and leave them unacked (in its unacked hash)."""
    taken: list[object] = []
    with connection.Consumer(queue, callbacks=[lambda body, message: taken.append(message)], no_ack=False):
        while len(taken) < count:
            connection.drain_events(timeout=5)
    return taken


def test_at_a_worker_s_stop_its_unacked_messages_go_back_unless_their_tasks_started_there(
    app: Celery, tmp_path: Path
) -> None:
    queue = Queue(f"q-{uuid.uuid4().hex[:8]}", Exchange("received", type="direct"), routing_key="r")
    with app.connection_for_write() as connection:
        producer = connection.Producer()
        for body in ("ran", "never-started"):
            producer.publish(body, exchange=queue.exchange, routing_key="r", declare=[queue])
        taken = _take(connection, queue, 2)
        unacked = connection.default_channel.unacked_key
        client = connection.default_channel.client
        assert client.hlen(unacked) == 2
        received = ReceivedLog(tmp_path)
        for message in taken:
            received(request=_Request(message))
        received.start(_Request(taken[0]))
        # The worker's connection breaks here: neither message is acked.
        received.settle(app)
        assert client.hlen(unacked) == 0
        with connection.SimpleQueue(queue) as simple:
            back = simple.get(timeout=5)
            assert back.payload == "never-started"  # handed back
            back.ack()
        assert client.llen(queue.name) == 0  # the one that ran is not back
    assert not (tmp_path / ReceivedLog.NAME).exists()


def test_a_dead_worker_s_unacked_messages_are_handed_back_by_the_next_one(
    app: Celery, tmp_path: Path
) -> None:
    queue = Queue(f"q-{uuid.uuid4().hex[:8]}", Exchange("received", type="direct"), routing_key="r")
    with app.connection_for_write() as connection:
        connection.Producer().publish(
            "lost-with-its-worker", exchange=queue.exchange, routing_key="r", declare=[queue]
        )
        [message] = _take(connection, queue, 1)
        ReceivedLog(tmp_path)(request=_Request(message))
        hand_back(app, ReceivedLog.read(tmp_path))
        with connection.SimpleQueue(queue) as simple:
            back = simple.get(timeout=5)
            assert back.payload == "lost-with-its-worker"
            back.ack()
