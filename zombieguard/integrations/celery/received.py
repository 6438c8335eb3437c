"""The messages a worker received (main process), written down as kombu's Redis transport delivers
them, so that they are settled when the worker stops and handed back when it dies, not left in
kombu's ``unacked`` hash until its visibility timeout."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery

from zombieguard.containment import log
from zombieguard.integrations.celery import internals
from zombieguard.integrations.celery.app import recorded_end


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

    def reconnected(self, app: Celery, left: set[str]) -> None:
        """The consumer's connection broke and is back; ``left``: the delivery tags its old channel
        still held unacked. kombu puts those back in their queue as the channel closes, but not when
        Redis is away at that moment: they stay in its unacked hash until the visibility timeout,
        while Celery forgets the tasks among them it had not started (their delivery tags were the
        old channel's). Hand those back now, and settle those whose tasks ran here (see
        :func:`hand_back`), but for the tasks still running here. Redis unreachable: it raises, and
        they are settled when the worker stops."""
        running = {request.id for request in internals.active_requests()}
        forgotten = [m for m in self.read(self.path.parent) if m.tag in left and m.task_id not in running]
        if forgotten:
            log.warning(
                "celery: %d message(s) the lost connection held unacked and kombu did not put back: "
                "handing them back (%s)",
                len(forgotten),
                ", ".join(m.task_id for m in forgotten),
            )
            hand_back(app, forgotten, ran=self.started)

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


def restores_by_tag(app: Celery) -> bool:
    """Whether the app's broker keeps a dead consumer's messages until a timeout (kombu's Redis
    transport: its QoS puts one back by delivery tag), rather than returning them itself."""
    try:
        with app.connection_for_write() as connection:
            return internals.restores_by_tag(connection.transport)
    except Exception:  # a transport that cannot say: nothing is written down for it
        return False


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
            if task_id is not None and recorded_end(app, task_id):
                unacked.drop(message.tag)
            else:
                unacked.restore(message.tag)
