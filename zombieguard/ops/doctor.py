"""``zombieguard doctor``: checks a live deployment and its configuration, naming each problem and
its fix. Each check returns findings; an empty list means the check passed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import redis

from zombieguard.leases import LeaseStore
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
    """Every configured policy (defaults and each pattern) renews its lease often enough, and a dead
    worker is found before its jobs' limits pass (lease_ttl, the limits and presence_grace agree)."""
    named = [("defaults", config.policy_for(""))]
    named += [(f"policies[{pattern!r}]", config.policy_for(pattern)) for pattern, _ in config.rules]
    findings: list[Finding] = []
    for name, policy in named:
        findings += _check_policy(name, policy) + _check_durations(name, policy, config.settings)
    return findings
