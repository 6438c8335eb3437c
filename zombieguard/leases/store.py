"""The lease store: every transition of a lease, one method per Lua script, and the queries (the
worker registry it inherits is :mod:`zombieguard.leases.registry`).

Every state change of a lease is one Lua script in ``zombieguard/leases/lua``: atomic, one round trip,
timed by the Redis server's clock.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis

from zombieguard.errors import LeaseLost
from zombieguard.leases import wire
from zombieguard.leases.connection import (
    RedisTarget,
    cluster_managed,
    failed_over,
    primary_of,
    sentinel_managed,
    serving_node,
)
from zombieguard.leases.records import (
    Acquired,
    AttemptRecord,
    Claimed,
    CorruptRecord,
    DeadWorker,
    DeferredRelease,
    FinishedState,
    JobSpec,
    LeaseRecord,
    Outcome,
    PresenceLook,
    RenewCode,
    Sweep,
    text,
)
from zombieguard.leases.registry import WorkerRegistry
from zombieguard.leases.scripts import SCRIPTS, load_script
from zombieguard.policy import Policy, Settings

log = logging.getLogger("zombieguard.leases")


ACQUIRE_PRIMARY_AGE = 1.0
"""On a Sentinel service, an acquire first asks the sentinels for the primary when this process
last asked more than this many seconds ago (see :func:`primary_of`): a process that slept through a
failover (frozen, or a pool process that only runs jobs) would otherwise start a job on the former
primary, which takes writes until Sentinel demotes it, while another worker runs the same job on
the new one."""

REPLICA_WAIT_MS = 200
"""How long a claim, or an attempt given up, on a Sentinel service's primary waits for a replica
to acknowledge it."""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _flat_pairs(raw: Sequence[Any]) -> dict[str, str]:
    return {text(raw[i]): text(raw[i + 1]) for i in range(0, len(raw), 2)}


class LeaseStore(WorkerRegistry):
    """Leases, their fencing tokens, checkpoints and the dead-letter index in one Redis.

    Thread-safe (redis-py's client is); after a fork, redis-py opens new connections by itself.
    """

    def __init__(self, client: redis.Redis, settings: Settings | None = None) -> None:
        self.client = client
        self.settings = settings or Settings()
        super().__init__(self.settings.key_prefix)
        self._scripts = {name: client.register_script(load_script(name)) for name in SCRIPTS}
        self._loaded = False
        self._packed_tails: dict[tuple[str, Policy], tuple[int, bytes]] = {}

    @classmethod
    def from_url(cls, url: str, settings: Settings | None = None) -> LeaseStore:
        """A store on its own connection pool to ``url`` (any URL :class:`RedisTarget` reads)."""
        return cls.from_target(RedisTarget.from_url(url), settings)

    @classmethod
    def from_target(cls, target: RedisTarget, settings: Settings | None = None) -> LeaseStore:
        """A store on its own connection pool to ``target``."""
        return cls(target.client(health_check_interval=30), settings)

    def serving(self, max_age: float = 0.0) -> tuple[str, int] | None:
        """The node that serves our keys where it can change (see :func:`serving_node`): a Sentinel
        service's primary, a Cluster's primary for the prefix's slot; None for one server."""
        return serving_node(self.client, self.fence_key, max_age)

    def node_client(self) -> redis.Redis:
        """A client of the one node that serves our keys, for what must reach that node itself:
        the presence connection (Redis counts a channel's subscribers per node), INFO, and the
        commands written by hand (:mod:`~zombieguard.leases.wire`). On a Cluster, the primary of
        the prefix's slot as last known (:meth:`serving` follows it); else the store's own client."""
        if cluster_managed(self.client):
            cluster: Any = self.client
            client: redis.Redis = cluster.get_redis_connection(cluster.get_node_from_key(self.fence_key))
            return client
        return self.client

    def _static_fields(
        self, job: JobSpec, worker: str, policy: Policy, tag: str = "", *, on_behalf: bool = False
    ) -> list[str]:
        fields = {
            "job": job.job_id,
            "adapter": job.adapter,
            "task": job.task,
            "queue": job.queue,
            "payload": job.payload,
            **self._policy_fields(worker, policy),
        }
        if tag:
            fields["tag"] = tag
        if on_behalf:
            fields["writer"] = "1"
        return [item for pair in fields.items() for item in pair]

    @staticmethod
    def _policy_fields(worker: str, policy: Policy) -> dict[str, str]:
        """The static fields an acquire writes that depend on the worker and the policy only."""
        return {
            "worker": worker,
            "lease_ttl": repr(policy.lease_ttl),
            "hard_timeout": "" if policy.hard_timeout is None else repr(policy.hard_timeout),
            "progress_timeout": "" if policy.progress_timeout is None else repr(policy.progress_timeout),
            "overdue_grace": repr(policy.overdue_grace),
            "max_stalls": str(policy.max_stalls),
            "dead_letter": "1" if policy.dead_letter else "0",
        }

    def _packed_acquire(
        self, job: JobSpec, worker: str, policy: Policy, delivery_attempt: int | None, tag: str = ""
    ) -> bytes:
        """The acquire as protocol bytes, the worker's and policy's part encoded once and reused: the
        generic encoder's per-argument work was most of an acquire's cost to the job."""
        tail = self._packed_tails.get((worker, policy))
        if tail is None:
            pairs = [item for pair in self._policy_fields(worker, policy).items() for item in pair]
            tail = self._packed_tails[(worker, policy)] = (len(pairs), b"".join(wire.bulk(p) for p in pairs))
        head = [
            "EVALSHA",
            self._scripts["acquire"].sha,
            "7",
            *self._acquire_keys(job, worker),
            "" if delivery_attempt is None else str(delivery_attempt),
            "job",
            job.job_id,
            "adapter",
            job.adapter,
            "task",
            job.task,
            "queue",
            job.queue,
            "payload",
            job.payload,
            *(("tag", tag) if tag else ()),
        ]
        count, encoded = tail
        return b"*%d\r\n" % (len(head) + count) + b"".join(wire.bulk(p) for p in head) + encoded

    def _packed_release(self, release: DeferredRelease) -> bytes:
        keys, args = self._release_call(release.job, release.token, release.outcome, release.reason, None)
        parts = ["EVALSHA", self._scripts["release"].sha, str(len(keys)), *keys, *args]
        return wire.command(parts)

    def _acquire_keys(self, job: JobSpec, worker: str) -> list[str]:
        """The seven keys the acquire script touches."""
        return [
            self.lease_key(job.job_id),
            self.due_key(job.adapter),
            self.fence_key,
            self.checkpoint_key(job.job_id),
            self.adapters_key,
            self.queues_key,
            self.held_key(worker),
        ]

    def _acquire_call(
        self,
        job: JobSpec,
        worker: str,
        policy: Policy,
        delivery_attempt: int | None,
        tag: str = "",
        *,
        on_behalf: bool = False,
    ) -> tuple[list[str], list[str]]:
        keys = self._acquire_keys(job, worker)
        args = [
            "" if delivery_attempt is None else str(delivery_attempt),
            *self._static_fields(job, worker, policy, tag, on_behalf=on_behalf),
        ]
        return keys, args

    def scripts_lost(self) -> None:
        """Redis answered NOSCRIPT to a packed command (it restarted): load the scripts again before
        the next one is sent."""
        self._loaded = False

    def acquire(
        self,
        job: JobSpec,
        worker: str,
        policy: Policy,
        delivery_attempt: int | None = None,
        *,
        tag: str = "",
        on_behalf: bool = False,
    ) -> Acquired:
        """Start a new attempt of ``job`` on ``worker``, unless a live or newer attempt exists.

        ``tag`` names one execution (see :func:`zombieguard.enforcement.slot.execution_tag`): a live running
        lease of ``worker`` under the same tag is that execution's own and is taken over (its token
        returned, the lease renewed). ``on_behalf``: the acquire is made for the execution by another
        of the worker's processes (its own could not run). A lease that passes from that process to
        the execution, or the other way, is marked adopted: the execution records its end (see
        :meth:`release`'s ``unless_adopted``)."""
        keys, args = self._acquire_call(job, worker, policy, delivery_attempt, tag, on_behalf=on_behalf)
        primary_of(self.client, ACQUIRE_PRIMARY_AGE)
        return Acquired.from_reply(job.job_id, self._scripts["acquire"](keys=keys, args=args))

    def send_acquire(
        self,
        job: JobSpec,
        worker: str,
        policy: Policy,
        releases: Sequence[DeferredRelease] = (),
        delivery_attempt: int | None = None,
        *,
        tag: str = "",
    ) -> wire.PendingAcquire:
        """Send :meth:`acquire` (after ``releases``, in the same round trip) without waiting for the reply.

        The caller does other work (the framework's own round trip) and then reads the reply with
        :meth:`~zombieguard.leases.wire.PendingAcquire.result`: the acquire costs the job no waiting
        of its own. ``tag``: as for :meth:`acquire` (an acquire sent again under the same tag, its
        reply lost, takes the lease the first one wrote).
        """
        primary_of(self.client, ACQUIRE_PRIMARY_AGE)
        node = self.node_client()
        if not self._loaded:
            for name in ("acquire", "release"):
                self._scripts[name].sha = text(node.script_load(self._scripts[name].script))
            self._loaded = True
        packed = b"".join(self._packed_release(r) for r in releases) + self._packed_acquire(
            job, worker, policy, delivery_attempt, tag
        )
        return wire.PendingAcquire(
            self,
            node.connection_pool,
            wire.send(node, packed),
            job,
            worker=worker,
            policy=policy,
            delivery_attempt=delivery_attempt,
            releases=list(releases),
            tag=tag,
        )

    def reestablish(
        self,
        job: JobSpec,
        worker: str,
        policy: Policy,
        *,
        token: int,
        attempt: int,
        stalls: int,
        started: float,
    ) -> bool:
        """Recreate a vanished lease with the same token; False when a record exists already."""
        keys = [
            self.lease_key(job.job_id),
            self.due_key(job.adapter),
            self.fence_key,
            self.adapters_key,
            self.held_key(worker),
        ]
        args = [
            str(token),
            str(attempt),
            str(stalls),
            repr(started),
            *self._static_fields(job, worker, policy),
        ]
        reply = self._scripts["reestablish"](keys=keys, args=args)
        return text(reply[0]) == "ok"

    def renew(
        self,
        adapter: str,
        worker: str,
        worker_ttl: float,
        leases: Sequence[tuple[str, int]],
        processes: Sequence[int | None] = (),
    ) -> list[RenewCode]:
        """Renew a worker's presence and all its leases in one round trip; one code per lease.
        ``processes``: per lease, how many processes run under its job now (None, or none given:
        not known, the lease keeps what it said)."""
        keys = [self.due_key(adapter), self.workers_key, *(self.lease_key(job_id) for job_id, _ in leases)]
        args: list[str] = [worker, repr(worker_ttl)]
        counts = list(processes) + [None] * (len(leases) - len(processes))
        for (job_id, token), count in zip(leases, counts, strict=True):
            args += [job_id, str(token), "" if count is None else str(count)]
        return [text(code) for code in self._scripts["renew"](keys=keys, args=args)]

    def progress(
        self,
        job: JobSpec,
        token: int,
        progress: str = "",
        message: str = "",
        checkpoint: str | None = None,
    ) -> str:
        """Record progress (and a checkpoint); return 'ok' or 'missing'. Raise LeaseLost when fenced off."""
        keys = [self.lease_key(job.job_id), self.due_key(job.adapter), self.checkpoint_key(job.job_id)]
        args = [
            str(token),
            job.job_id,
            progress,
            message,
            "0" if checkpoint is None else "1",
            checkpoint or "",
            str(_ms(self.settings.state_ttl)),
        ]
        reply = [text(item) for item in self._scripts["progress"](keys=keys, args=args)]
        return self._check_fenced(job.job_id, token, reply)

    def _release_call(
        self,
        job: JobSpec,
        token: int,
        outcome: Outcome,
        reason: str,
        stack: str | None,
        *,
        unless_adopted: bool = False,
    ) -> tuple[list[str], list[str]]:
        keys = [
            self.lease_key(job.job_id),
            self.due_key(job.adapter),
            self.checkpoint_key(job.job_id),
            self.completed_key,
        ]
        args = [
            str(token),
            job.job_id,
            outcome.value,
            reason,
            stack or "",
            str(_ms(self.settings.tombstone_ttl)),
            job.queue,
            "1" if unless_adopted else "",
        ]
        return keys, args

    def release(
        self,
        job: JobSpec,
        token: int,
        outcome: Outcome,
        reason: str = "",
        stack: str | None = None,
        *,
        unless_adopted: bool = False,
    ) -> str:
        """End an attempt; return 'ok' or 'missing'. Raise LeaseLost when a newer attempt exists.
        ``unless_adopted``: for a lease written on an execution's behalf (see :meth:`acquire`'s
        ``on_behalf``), only if it did not pass to the execution ('adopted': the execution records
        its own end)."""
        keys, args = self._release_call(job, token, outcome, reason, stack, unless_adopted=unless_adopted)
        reply = [text(item) for item in self._scripts["release"](keys=keys, args=args)]
        return self._check_fenced(job.job_id, token, reply)

    def release_many(self, releases: Sequence[DeferredRelease]) -> None:
        """Write deferred releases in one round trip (on a Cluster, one each: redis-py's Cluster
        pipelines do not all take scripts). A refused one (superseded) is logged, not raised."""
        calls = [self._release_call(r.job, r.token, r.outcome, r.reason, None) for r in releases]
        if cluster_managed(self.client):
            for release, (keys, args) in zip(releases, calls, strict=True):
                try:
                    raw = self._scripts["release"](keys=keys, args=args)
                except redis.RedisError as exc:
                    raw = exc
                wire.log_deferred_release(release, raw)
            return
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            self._scripts["release"](keys=keys, args=args, client=pipe)
        for release, raw in zip(releases, pipe.execute(raise_on_error=False), strict=True):
            wire.log_deferred_release(release, raw)

    def record_completed(self, adapter: str, queues: Sequence[str]) -> None:
        """Jobs of ``queues`` completed without leases written for them: record each queue's last
        success (what the silence watch and ``status`` read), as a completed release does."""
        named = [queue for queue in queues if queue]
        if named:
            self._scripts["completed"](
                keys=[self.completed_key, self.queues_key, self.adapters_key], args=[adapter, *named]
            )

    def abandon(
        self, job: JobSpec, token: int, reason: Outcome, stack: str | None = None, how: str = ""
    ) -> str:
        """Give an attempt up now (its process died or was killed): the sweeper acts on ``reason``
        (stalled: recover; timed out, hung: fail); ``how`` the process ended goes in the attempt's
        history. Raise LeaseLost when superseded.

        On a Sentinel service the job is then only in the lease (its framework lets go of it), so
        the write must outlive a failover: one no replica acknowledged, made on a primary the
        sentinels no longer name, is made again on the new one (:meth:`carry`)."""
        keys = [self.lease_key(job.job_id), self.due_key(job.adapter)]
        args = [str(token), job.job_id, reason.value, stack or "", how]
        if not sentinel_managed(self.client):
            reply = self._scripts["abandon"](keys=keys, args=args)
            return self._check_fenced(job.job_id, token, [text(item) for item in reply])
        # Asked now: the write goes where the pool connects now, and is compared with that below.
        primary = primary_of(self.client)
        pipe = self.client.pipeline(transaction=False)
        self._scripts["abandon"](keys=keys, args=args, client=pipe)
        pipe.hgetall(keys[0])
        pipe.execute_command("WAIT", 1, REPLICA_WAIT_MS)  # type: ignore[no-untyped-call]
        reply, lease, acknowledged = pipe.execute()
        code = self._check_fenced(job.job_id, token, [text(item) for item in reply])
        if code != "ok" or int(acknowledged) >= 1:
            return code
        new = failed_over(self.client, primary)
        if new is None:
            return code
        log.warning(
            "job %s: given up on %s:%s, no longer the primary; written again on %s:%s",
            job.job_id,
            *(primary or ("?", "?")),
            *new,
        )
        return self.carry(job, token, {text(field): text(value) for field, value in lease.items()})

    def carry(self, job: JobSpec, token: int, lease: dict[str, str]) -> str:
        """Write ``lease``, as a former primary held it, on the current one (see carry.lua)."""
        keys = [
            self.lease_key(job.job_id),
            self.due_key(job.adapter),
            self.fence_key,
            self.adapters_key,
            self.held_key(lease.get("worker", "")),
        ]
        args = [str(token), job.job_id, *(item for pair in lease.items() for item in pair)]
        reply = [text(item) for item in self._scripts["carry"](keys=keys, args=args)]
        return self._check_fenced(job.job_id, token, reply)

    def note_ended_processes(
        self, job_id: str, token: int | None, worker: str, processes: Sequence[str]
    ) -> bool:
        """Note on the lease of ``job_id`` the processes its attempt (of ``token``; None: whichever
        ``worker`` runs) started that were ended with it, for that attempt's history. False when
        that attempt no longer holds the lease."""
        args = ["" if token is None else str(token), worker, "\n".join(processes)]
        return text(self._scripts["ended"](keys=[self.lease_key(job_id)], args=args)) == "ok"

    def _check_fenced(self, job_id: str, token: int, reply: list[str]) -> str:
        code = reply[0]
        if code == "lost":
            state, holder = reply[1], reply[2]
            found = f"the lease is {state or 'gone'} under token {holder or '-'}"
            raise LeaseLost(job_id, token, self.why_lost(job_id, token, found))
        if code == "corrupt":
            raise LeaseLost(job_id, token, f"the lease record is corrupt ({reply[1]})")
        return code

    def claim(self, adapter: str, sweeper: str, limit: int | None = None) -> Sweep:
        """Claim due leases of one integration, and collect workers whose presence expired."""
        keys = [self.due_key(adapter), self.fence_key, self.workers_key, self.serving_key]
        args = [str(limit or self.settings.sweep_batch), repr(self.settings.claim_ttl), sweeper, self.prefix]
        replicated = True
        if not sentinel_managed(self.client):
            raw_claims, raw_dead = self._scripts["claim"](keys=keys, args=args)
        else:
            # On the same connection: WAIT answers for the writes of the connection it is sent on.
            pipe = self.client.pipeline(transaction=False)
            self._scripts["claim"](keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", 1, REPLICA_WAIT_MS)  # type: ignore[no-untyped-call]
            (raw_claims, raw_dead), acknowledged = pipe.execute()
            replicated = int(acknowledged) >= 1
        claimed: list[Claimed] = []
        corrupt: list[tuple[str, str]] = []
        for item in raw_claims:
            job_id, kind = text(item[0]), text(item[1])
            if kind == "corrupt":
                corrupt.append((job_id, text(item[2])))
                continue
            raw = _flat_pairs(item[2])
            try:
                record = LeaseRecord.from_hash(raw)
                reason = Outcome(raw.get("reason"))
            except (CorruptRecord, ValueError) as exc:
                # Unreadable once claimed: drop it from the due index so no sweeper loops on it.
                self.client.zrem(self.due_key(adapter), job_id)
                corrupt.append((job_id, str(exc)))
                continue
            claimed.append(
                Claimed(
                    record=record,
                    claim_token=record.token,
                    reason=reason,
                    checkpoint=None if item[3] is None else text(item[3]),
                    claimed_at=float(raw["claimed_at"]),
                )
            )
        dead = tuple(DeadWorker(text(entry[0]), _flat_pairs(entry[1])) for entry in raw_dead)
        return Sweep(tuple(claimed), tuple(corrupt), dead, replicated)

    def announce_presence(self, adapter: str, worker: str) -> None:
        """The worker's presence connection is subscribed to its channel: watch it from now on
        (``announce.lua``)."""
        self._scripts["announce"](keys=[self.presence_key(adapter), self.absent_key(adapter)], args=[worker])

    def look_at_presence(
        self,
        adapter: str,
        sweeper: str,
        *,
        seats: int,
        watcher_ttl: float,
        grace: float,
        restart_grace: float,
    ) -> PresenceLook:
        """Look at one integration's workers' presence connections, if ``sweeper`` holds or takes
        one of the ``seats`` watchers have: a worker whose connection stayed closed for ``grace``
        seconds is dead, its running leases given up as stalled (``presence.lua``)."""
        keys = [
            self.presence_key(adapter),
            self.absent_key(adapter),
            self.workers_key,
            *(self.watcher_key(adapter, seat) for seat in range(seats)),
        ]
        args = [sweeper, str(_ms(watcher_ttl)), repr(grace), repr(restart_grace), self.prefix]
        reply = self._scripts["presence"](keys=keys, args=args)
        if text(reply[0]) != "watching":
            return PresenceLook(watching=False)
        dead = tuple(DeadWorker(text(entry[0]), _flat_pairs(entry[1]), int(entry[2])) for entry in reply[2:])
        return PresenceLook(watching=True, workers=int(reply[1]), dead=dead)

    def seize(self, job_id: str, claimer: str, stopped_by: str) -> Claimed | None:
        """Claim a running lease now, to stop its job (``zombieguard kill``); None if not running."""
        record = self.record(job_id)
        if record is None:
            return None
        keys = [self.lease_key(job_id), self.due_key(record.adapter), self.fence_key]
        args = [job_id, claimer, repr(self.settings.claim_ttl), stopped_by]
        reply = self._scripts["seize"](keys=keys, args=args)
        if text(reply[0]) != "claimed":
            return None
        raw = _flat_pairs(reply[1])
        claimed = LeaseRecord.from_hash(raw)
        return Claimed(
            record=claimed,
            claim_token=claimed.token,
            reason=Outcome.STOPPED,
            checkpoint=None,
            claimed_at=float(raw["claimed_at"]),
        )

    def decide(self, claimed: Claimed, state: FinishedState) -> bool:
        """Write down the end a sweeper gives a claimed job before it records that end in the
        framework; False when its claim was taken over meanwhile."""
        reply = self._scripts["decide"](
            keys=[self.lease_key(claimed.record.job_id)], args=[str(claimed.claim_token), state.value]
        )
        return int(reply) == 1

    def finish(
        self,
        claimed: Claimed,
        state: FinishedState,
        ended: AttemptRecord | None,
        dead_letter_entry: str = "",
        republish_after: float | None = None,
    ) -> bool:
        """Record what a sweeper did with a claim; False when its claim was taken over meanwhile."""
        job_id = claimed.record.job_id
        keys = [
            self.lease_key(job_id),
            self.due_key(claimed.record.adapter),
            self.dlq_key,
            self.dlq_index_key,
        ]
        args = [
            str(claimed.claim_token),
            job_id,
            state.value,
            "" if ended is None else ended.to_json(),
            str(_ms(self.settings.tombstone_ttl)),
            str(_ms(self.settings.state_ttl)),
            dead_letter_entry,
            str(self.settings.dead_letter_max_entries),
            repr(self.settings.dead_letter_max_age),
            self.prefix,
            "" if republish_after is None else repr(republish_after),
        ]
        return text(self._scripts["finish"](keys=keys, args=args)[0]) == "ok"

    def record(self, job_id: str) -> LeaseRecord | None:
        """The lease record of one job, None when there is none; CorruptRecord when unreadable."""
        key = self.lease_key(job_id)
        if text(self.client.type(key)) != "hash":
            return None
        raw = self.client.hgetall(key)
        return LeaseRecord.from_hash(raw) if raw else None

    def why_lost(self, job_id: str, token: int, otherwise: str) -> str:
        """Why the attempt of ``token`` no longer holds the lease of ``job_id``, and what happens to
        the job now, read from its record (one more round trip, taken only then); ``otherwise`` when
        the record cannot be read."""
        try:
            record = self.record(job_id)
        except (redis.RedisError, CorruptRecord):
            record = None
        return otherwise if record is None else record.taken_from(token)

    def active(self, adapter: str | None = None) -> tuple[list[LeaseRecord], list[tuple[str, str]]]:
        """Running and recovering leases (of one integration, or all): (records, corrupt ones)."""
        adapters = [adapter] if adapter else sorted(text(a) for a in self.client.smembers(self.adapters_key))
        job_ids = [text(j) for a in adapters for j in self.client.zrange(self.due_key(a), 0, -1)]
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.lease_key(job_id))
        records: list[LeaseRecord] = []
        corrupt: list[tuple[str, str]] = []
        for job_id, raw in zip(job_ids, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(raw, Exception) or not raw:
                corrupt.append((job_id, f"lease record unreadable: {raw!r}"))
                continue
            try:
                records.append(LeaseRecord.from_hash(raw))
            except CorruptRecord as exc:
                corrupt.append((job_id, str(exc)))
        return records, corrupt

    def queues_of(self, adapter: str) -> list[str]:
        """The queues guarded jobs of ``adapter`` ran from (acquire records each)."""
        return sorted(text(q) for q, a in self.client.hgetall(self.queues_key).items() if text(a) == adapter)

    def eviction(self) -> tuple[int, str] | None:
        """Redis's ``maxmemory`` and ``maxmemory-policy`` when they let it evict our keys (a limit is
        set and the policy is not ``noeviction``; the ``volatile-*`` ones evict leases too, as they
        expire), else None. Read from ``INFO memory``, which managed Redis services answer where
        they refuse ``CONFIG GET``."""
        info: Any = self.node_client().info("memory")
        limit, policy = int(info.get("maxmemory") or 0), text(info.get("maxmemory_policy") or "noeviction")
        return (limit, policy) if limit and policy != "noeviction" else None

    def server_time(self) -> float:
        """The Redis server's clock, the one every lease is timed by."""
        reply: Any = self.client.time()
        return float(reply[0]) + float(reply[1]) / 1_000_000
