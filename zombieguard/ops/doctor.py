"""``zombieguard doctor``: checks a live deployment and its configuration, naming each problem and
its fix. Each check returns findings; an empty list means the check passed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import redis

from zombieguard.leases import LeaseStore
from zombieguard.policy import Config, Policy

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


def check_redis(url: str, connect: Callable[[str], LeaseStore]) -> tuple[LeaseStore | None, list[Finding]]:
    """The Redis holding the leases answers."""
    try:
        store = connect(url)
        store.client.ping()
    except (redis.RedisError, ValueError) as exc:
        return None, [
            Finding(
                "redis",
                f"Redis at {url} is unreachable ({exc}): no lease can be taken or renewed",
                "start Redis or point --redis-url / ZOMBIEGUARD_REDIS_URL at the one the workers use",
            )
        ]
    return store, []


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


def _check_policy(name: str, policy: Policy) -> list[Finding]:
    interval = policy.renew_every
    if interval <= policy.lease_ttl / 2:
        return []
    return [
        Finding(
            "heartbeat",
            f"{name}: heartbeat_interval {interval:g} s is more than half of"
            f" lease_ttl {policy.lease_ttl:g} s: one late renewal lets the lease expire"
            " and a live job be recovered (run twice)",
            f"set heartbeat_interval to at most {policy.lease_ttl / 3:.3g} s"
            " (a third of lease_ttl, the default)",
        )
    ]


def check_policies(config: Config) -> list[Finding]:
    """Every configured policy (defaults and each pattern) renews its lease often enough."""
    findings = _check_policy("defaults", config.policy_for(""))
    for pattern, _ in config.rules:
        findings += _check_policy(f"policies[{pattern!r}]", config.policy_for(pattern))
    return findings
