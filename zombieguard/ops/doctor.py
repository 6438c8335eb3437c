"""``zombieguard doctor``: checks a live deployment and its configuration, naming each problem and
its fix. Each check returns findings; an empty list means the check passed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import redis
import redis.crc

from zombieguard.leases import LeaseStore
from zombieguard.leases.connection import CLUSTER, SENTINEL, RedisTarget
from zombieguard.policy import Config, Policy, Settings

CLOCK_SKEW_LIMIT = 1.0
"""Seconds between this machine's clock and Redis's past which ``doctor`` reports skew."""


@dataclass(frozen=True)
class Finding:
    """One problem: which check found it, what is wrong, and how to fix it."""

    check: str
    problem: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        """For ``--json``."""
        return asdict(self)


def check_redis(
    target: RedisTarget, connect: Callable[[RedisTarget], LeaseStore]
) -> tuple[LeaseStore | None, list[Finding]]:
    """The Redis holding the leases answers."""
    try:
        store = connect(target)
        store.client.ping()
    except (redis.RedisError, ValueError) as exc:
        return None, [
            Finding(
                "redis",
                f"Redis at {target.describe()} is unreachable ({exc}): no lease can be taken or renewed",
                "start Redis or point --redis-url / ZOMBIEGUARD_REDIS_URL at the one the workers use",
            )
        ]
    return store, []


def eviction_problem(store: LeaseStore, where: str) -> tuple[str, str] | None:
    """What is wrong, and the fix, when the Redis holding the leases (shown as ``where``) may evict
    them; None when it may not."""
    evicts = store.eviction()
    if evicts is None:
        return None
    limit, policy = evicts
    return (
        f"Redis at {where} has maxmemory {limit} with maxmemory-policy {policy}: it may evict leases, and "
        "a running job whose lease was evicted is invisible to the sweepers until its worker writes it "
        "again (a dead worker's, never)",
        "set maxmemory-policy noeviction on that Redis, or keep the leases in a Redis of their own "
        "(redis_url) that has it",
    )


def check_eviction(store: LeaseStore, where: str) -> list[Finding]:
    """The Redis holding the leases never evicts them."""
    problem = eviction_problem(store, where)
    return [] if problem is None else [Finding("eviction", *problem)]


def check_replicas(store: LeaseStore, target: RedisTarget) -> list[Finding]:
    """The node that serves our keys has a replica to fail over to: a Sentinel service's primary
    (a replica also acknowledges claims), or a Cluster's primary for the prefix's slot."""
    if target.kind not in (SENTINEL, CLUSTER):
        return []
    node = store.node_client()
    info: Any = node.info("replication")
    if int(info.get("connected_slaves") or 0) >= 1:
        return []
    if target.kind == SENTINEL:
        return [
            Finding(
                "sentinel",
                f"the primary of Sentinel service {target.service!r} has no replica connected: Sentinel "
                "has nothing to fail over to, and each sweeper waits 2 s before acting on a claim no "
                "replica acknowledged",
                "start a replica of it (replicaof), or point redis_url at a single server (redis://)",
            )
        ]
    host, port = store.serving() or ("?", "?")
    slot = redis.crc.key_slot(store.fence_key.encode())
    return [
        Finding(
            "cluster",
            f"the Cluster node {host}:{port}, which serves slot {slot} (every key of prefix "
            f"{store.settings.key_prefix!r}), has no replica: when it fails, the cluster cannot serve "
            "that slot and every guarded worker loses its leases",
            f"add a replica of it (redis-cli --cluster add-node NEW {host}:{port} --cluster-slave)",
        )
    ]


_PROBE = """
redis.call('SET', KEYS[1], '1', 'PX', 1000)
redis.call('HSET', KEYS[2], 'probe', '1')
redis.call('ZADD', KEYS[3], 0, 'probe')
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1
"""
"""The writes zombieguard's scripts make, on keys of the prefix."""


def refused(exc: redis.ResponseError) -> bool:
    """Whether Redis refused a command to this ACL user."""
    text = str(exc)
    return isinstance(exc, redis.exceptions.NoPermissionError) or any(
        mark in text for mark in ("NOPERM", "no permissions", "can't run this command")
    )


def check_access(store: LeaseStore, target: RedisTarget) -> list[Finding]:
    """The Redis user may do what the workers, the sweepers and the CLI do, on the prefix's keys and
    channels: run scripts that write its keys and read TIME, INFO and PUBSUB NUMSUB; load scripts;
    WAIT; SUBSCRIBE. An ACL user missing one of them fails later, where a worker needs it."""
    prefix = store.prefix
    keys = [f"{prefix}:doctor:{kind}" for kind in ("string", "hash", "zset")]
    channel = store.presence_channel("doctor")
    node = store.node_client()
    probes: list[tuple[str, Callable[[], object]]] = [
        ("run its scripts, which write its keys", lambda: store.client.eval(_PROBE, len(keys), *keys)),
        ("load its scripts (SCRIPT LOAD)", lambda: node.script_load("return 1")),
        ("read the server's clock (TIME)", node.time),
        ("read INFO, as its scripts do", lambda: node.info("replication")),
        ("count a channel's subscribers (PUBSUB NUMSUB)", lambda: node.pubsub_numsub(channel)),
        ("wait for a replica (WAIT)", lambda: node.execute_command("WAIT", 0, 1)),  # type: ignore[no-untyped-call]
        ("hold its presence connection (SUBSCRIBE)", lambda: _subscribe(node, channel)),
    ]
    user = target.username or "default"
    findings: list[Finding] = []
    for what, probe in probes:
        try:
            probe()
        except redis.ResponseError as exc:
            if not refused(exc):
                raise
            findings.append(
                Finding(
                    "acl",
                    f"the Redis user {user!r} may not {what} ({exc}); zombieguard needs it on the "
                    f"keys and channels of prefix {store.settings.key_prefix!r}",
                    f"ACL SETUSER {user} ~{prefix}* &{prefix}* +@all",
                )
            )
    return findings


def _subscribe(node: redis.Redis, channel: str) -> None:
    pubsub = node.pubsub()
    try:
        pubsub.subscribe(channel)
        pubsub.get_message(timeout=1.0)
    finally:
        pubsub.close()


def check_tls(target: RedisTarget) -> list[Finding]:
    """A TLS connection to the leases' Redis checks its certificate (else anyone on the path can
    pose as that Redis, and read the user's password)."""
    if not target.tls or target.options.get("ssl_cert_reqs") != "none":
        return []
    return [
        Finding(
            "tls",
            f"the TLS connection to Redis at {target.describe()} does not verify its certificate "
            "(ssl_cert_reqs=none): whoever is on the path can pose as that Redis and read its password",
            "give the CA that signed the server's certificate (ssl_ca_certs=/path/ca.pem) and drop "
            "ssl_cert_reqs=none (required is the default)",
        )
    ]


def check_clock(store: LeaseStore, local_time: Callable[[], float] = time.time) -> list[Finding]:
    """This machine's clock agrees with Redis's (leases are timed by Redis's; ages and alerts shown
    here, and the sweepers' view of a worker's deadlines, assume the two agree)."""
    before = local_time()
    server = store.server_time()
    after = local_time()
    skew = server - (before + after) / 2
    if abs(skew) <= CLOCK_SKEW_LIMIT:
        return []
    return [
        Finding(
            "clock",
            f"this machine's clock is {abs(skew):.1f} s {'behind' if skew > 0 else 'ahead of'} Redis's",
            "synchronise the clocks (NTP, chrony) of every worker host and of the Redis host",
        )
    ]


def _check_durations(name: str, policy: Policy, settings: Settings) -> list[Finding]:
    """A dead worker's job must be found dead before one of its limits passes unwatched: else the
    sweeper takes the worker's silence for a job its worker failed to stop, and fails it."""
    if settings.presence_grace is not None:
        if settings.presence_grace < policy.lease_ttl:
            return []
        return [
            Finding(
                "durations",
                f"{name}: presence_grace {settings.presence_grace:g} s is not shorter than lease_ttl"
                f" {policy.lease_ttl:g} s: a dead worker's jobs come back only when their leases expire",
                f"set presence_grace well under lease_ttl (the default, 0.4 s, recovers a dead worker's"
                f" jobs in about half a second, and lease_ttl {policy.lease_ttl:g} s still covers a freeze)",
            )
        ]
    limits = [
        (field, value)
        for field, value in (
            ("progress_timeout", policy.progress_timeout),
            ("hard_timeout", policy.hard_timeout),
        )
        if value is not None and value < policy.lease_ttl
    ]
    if not limits:
        return []
    field, value = min(limits, key=lambda item: item[1])
    return [
        Finding(
            "durations",
            f"{name}: with presence off (presence_grace=None), a dead worker is found only when its"
            f" leases expire, lease_ttl {policy.lease_ttl:g} s after its last renewal; its job's"
            f" {field} of {value:g} s passes first, and the job is failed as if its worker had been"
            " alive and failed to stop it, instead of recovered",
            "turn presence on (presence_grace, default 0.4 s: a dead worker is found by its closed"
            f" connection) or make lease_ttl shorter than {field}",
        )
    ]


def check_policies(config: Config) -> list[Finding]:
    """For every configured policy (defaults and each pattern), a dead worker is found before its
    jobs' limits pass (lease_ttl, the limits and presence_grace agree)."""
    named = [("defaults", config.policy_for(""))]
    named += [(f"policies[{pattern!r}]", config.policy_for(pattern)) for pattern, _ in config.rules]
    findings: list[Finding] = []
    for name, policy in named:
        findings += _check_durations(name, policy, config.settings)
    return findings
