"""The key layout of the lease data model (docs/data-model.md).

Every key starts with ``{<key_prefix>}``: one hash tag, so that on Redis Cluster all of zombieguard's
keys live in one slot and every script may touch any of them.
"""

from __future__ import annotations


class Keys:
    """The names of zombieguard's keys under one prefix."""

    def __init__(self, key_prefix: str) -> None:
        self.prefix = "{" + key_prefix + "}"

    def lease_key(self, job_id: str) -> str:
        """The hash holding a job's lease."""
        return f"{self.prefix}:lease:{job_id}"

    def checkpoint_key(self, job_id: str) -> str:
        """The string holding a job's last checkpoint (JSON)."""
        return f"{self.prefix}:checkpoint:{job_id}"

    def due_key(self, adapter: str) -> str:
        """The sorted set of one integration's running leases, scored by when a sweeper must look."""
        return f"{self.prefix}:due:{adapter}"

    def kept_result_key(self, job_id: str) -> str:
        """A Celery task's recorded end, kept while stale copies of it may be delivered (see
        ``integrations.celery``); expires with the lease's tombstone."""
        return f"{self.prefix}:kept-result:{job_id}"

    @property
    def fence_key(self) -> str:
        """The counter fencing tokens come from."""
        return f"{self.prefix}:fence"

    @property
    def serving_key(self) -> str:
        """The replication id of the primary the sweepers last saw, and since when it serves (a
        string ``"<replid> <server time>"``): no lease is taken for stalled within its ``lease_ttl``
        of a restart or a failover."""
        return f"{self.prefix}:serving"

    @property
    def adapters_key(self) -> str:
        """The set of integrations that hold leases here."""
        return f"{self.prefix}:adapters"

    @property
    def queues_key(self) -> str:
        """The hash of the queues guarded jobs ran from, and the integration of each."""
        return f"{self.prefix}:queues"

    @property
    def completed_key(self) -> str:
        """The hash of when a job of each queue last completed (server time)."""
        return f"{self.prefix}:completed"

    @property
    def silence_key(self) -> str:
        """The hash of the queues now alerted as silent, and since when."""
        return f"{self.prefix}:silence"

    @property
    def workers_key(self) -> str:
        """The sorted set of live workers, scored by when their presence expires."""
        return f"{self.prefix}:workers"

    def worker_key(self, name: str) -> str:
        """The hash describing one worker."""
        return f"{self.prefix}:worker:{name}"

    def held_key(self, worker: str) -> str:
        """The set of the jobs whose leases one worker acquired (some may have ended since): where
        a dead worker's running leases are found (``presence.lua``)."""
        return f"{self.prefix}:held:{worker}"

    def presence_key(self, adapter: str) -> str:
        """The set of one integration's workers that keep a presence connection (see
        :mod:`zombieguard.worker.presence`)."""
        return f"{self.prefix}:presence:{adapter}"

    def presence_channel(self, worker: str) -> str:
        """The channel a worker's presence connection subscribes to: its subscriber count tells
        whether the connection is open."""
        return f"{self.prefix}:alive:{worker}"

    def absent_key(self, adapter: str) -> str:
        """The hash of one integration's workers whose presence connection is closed, and since when
        (server time)."""
        return f"{self.prefix}:absent:{adapter}"

    def watcher_key(self, adapter: str, seat: int) -> str:
        """One of the seats of the sweepers that watch one integration's presence connections (the
        sweeper holding it, expiring)."""
        return f"{self.prefix}:watcher:{adapter}:{seat}"

    @property
    def dlq_key(self) -> str:
        """The hash of dead-letter entries by job id."""
        return f"{self.prefix}:dlq"

    @property
    def dlq_index_key(self) -> str:
        """The sorted set of dead-letter entries, scored by when they were dead-lettered."""
        return f"{self.prefix}:dlq:index"
