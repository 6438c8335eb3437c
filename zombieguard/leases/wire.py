"""Commands written as Redis protocol bytes, and their replies read, by hand: for the acquire, where
redis-py's generic encoder was most of its cost, and to send it with the deferred releases in one
round trip. The only place that uses redis-py's connection internals (docs/internals.md)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis

from zombieguard.leases.records import Acquired, DeferredRelease, JobSpec, text
from zombieguard.policy import Policy

if TYPE_CHECKING:
    from zombieguard.leases.store import LeaseStore

log = logging.getLogger("zombieguard.leases")


def connection_from(pool: Any) -> Any:
    """A connection of the pool for our own use (redis-py < 5.3 wants a command name, later ones not)."""
    try:
        return pool.get_connection()
    except TypeError:
        return pool.get_connection("EVALSHA")


_SEND_AGAIN = (redis.exceptions.NoScriptError, redis.exceptions.AskError, redis.exceptions.TryAgainError)
"""Replies that say a command was not run where it was sent, and goes through the ordinary call:
NOSCRIPT after a Redis restart, MOVED or ASK (AskError is MOVED's base) when a Cluster's slot moved,
TRYAGAIN while it moves."""


def bulk(value: str) -> bytes:
    """One argument of a command, as the Redis protocol's bulk string."""
    data = value.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def send(client: redis.Redis, packed: bytes) -> Any:
    """Send ``packed`` (whole commands) on a connection of ``client``'s pool, and return that
    connection, its replies not yet read: the caller reads them and gives it back to the pool."""
    pool = client.connection_pool
    connection: Any = connection_from(pool)
    try:
        connection.send_packed_command([packed])
    except BaseException:
        connection.disconnect()
        pool.release(connection)
        raise
    return connection


def command(parts: Sequence[str]) -> bytes:
    """A whole command, as the Redis protocol's array of bulk strings."""
    return b"*%d\r\n" % len(parts) + b"".join(bulk(p) for p in parts)


def log_deferred_release(release: DeferredRelease, raw: Any) -> None:
    """Report a deferred release that did not go through (it is harmless: see the sweeper)."""
    if isinstance(raw, Exception):
        log.warning("job %s: deferred end not written (%s)", release.job.job_id, raw)
    elif text(raw[0]) not in ("ok", "missing"):
        log.warning("job %s: deferred end refused (%s)", release.job.job_id, [text(x) for x in raw])


class PendingAcquire:
    """An acquire sent by :meth:`LeaseStore.send_acquire`, its reply not yet read."""

    def __init__(
        self,
        store: LeaseStore,
        pool: Any,
        connection: Any,
        job: JobSpec,
        *,
        worker: str,
        policy: Policy,
        delivery_attempt: int | None,
        releases: list[DeferredRelease],
        tag: str = "",
    ) -> None:
        self._store = store
        self._pool = pool
        self._connection = connection
        self._call = (job, worker, policy, delivery_attempt, tag)
        self._releases = releases

    def result(self) -> Acquired:
        """Read the replies (the releases sent along are logged when refused) and return the acquire's."""
        job, worker, policy, delivery_attempt, tag = self._call
        pool = self._pool
        replies: list[Any] = []
        try:
            for _ in range(len(self._releases) + 1):
                try:
                    replies.append(self._connection.read_response())
                except redis.ResponseError as exc:  # one command's error; the others' replies still follow
                    replies.append(exc)
        except BaseException:
            self._connection.disconnect()
            raise
        finally:
            pool.release(self._connection)
        for release, raw in zip(self._releases, replies, strict=False):
            if isinstance(raw, _SEND_AGAIN):
                self._store.release_many([release])
            else:
                log_deferred_release(release, raw)
        if isinstance(replies[-1], redis.ResponseError):
            # NOSCRIPT, MOVED, ASK, TRYAGAIN (see _SEND_AGAIN): the ordinary call loads the script
            # again, and follows the slot.
            self._store.scripts_lost()
            return self._store.acquire(job, worker, policy, delivery_attempt, tag=tag)
        return Acquired.from_reply(job.job_id, replies[-1])
