"""The worker registry: each guarded worker's description, and its presence, a score in the workers
sorted set that the worker's renewal of its leases renews too (``renew``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import redis

from zombieguard.leases.keys import Keys
from zombieguard.leases.records import RenewCode, text


def scored_members(client: redis.Redis, key: str) -> list[tuple[str, float]]:
    """Every member of a sorted set with its score, lowest first."""
    reply: list[Any] = client.zrange(key, 0, -1, withscores=True)
    return [(text(member), float(score)) for member, score in reply]


class WorkerRegistry(Keys):
    """The workers present; :class:`~zombieguard.leases.store.LeaseStore` is one."""

    client: redis.Redis

    if TYPE_CHECKING:

        def renew(
            self, adapter: str, worker: str, worker_ttl: float, leases: Sequence[tuple[str, int]]
        ) -> list[RenewCode]: ...

    def register_worker(self, name: str, info: Mapping[str, str], ttl: float) -> None:
        """Announce a worker: its description (with ``ttl``, for the sweepers), and its presence
        until ``ttl`` from now (server time)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(self.worker_key(name))
        description: dict[Any, Any] = {**info, "ttl": repr(ttl)}
        pipe.hset(self.worker_key(name), mapping=description)
        pipe.execute()
        self.renew(info.get("adapter", "core"), name, ttl, [])

    def deregister_worker(self, name: str) -> None:
        """A worker leaves cleanly: it is not a zombie."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(self.workers_key, name)
        pipe.delete(self.worker_key(name), self.held_key(name))
        pipe.execute()

    def withdraw_presence(self, adapter: str, worker: str) -> None:
        """The worker leaves: its presence connection, about to close, is not watched any more."""
        pipe = self.client.pipeline(transaction=False)
        pipe.srem(self.presence_key(adapter), worker)
        pipe.hdel(self.absent_key(adapter), worker)
        pipe.execute()

    def workers(self) -> dict[str, tuple[float, dict[str, str]]]:
        """Live workers: name -> (presence expiry, description)."""
        entries = scored_members(self.client, self.workers_key)
        pipe = self.client.pipeline(transaction=False)
        for name, _ in entries:
            pipe.hgetall(self.worker_key(name))
        infos = pipe.execute()
        return {
            name: (expiry, {text(k): text(v) for k, v in info.items()})
            for (name, expiry), info in zip(entries, infos, strict=True)
        }
