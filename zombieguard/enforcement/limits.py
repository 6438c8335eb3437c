"""The limits of one attempt, and which of them has passed: the one evaluator that every enforcer
uses (the watchdog thread, the prefork monitor, the watchdog process).

- :class:`Limit` names a limit, the outcome of an attempt stopped at it, and its policy field.
- :class:`Deadlines` holds when each limit passes and says which has passed, and when to look next.
- :class:`LimitClock` is one attempt's deadlines as the process that runs it sees them (its policy,
  its start, its last progress), for the watchdog thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from zombieguard.enforcement.slot import SlotState
from zombieguard.leases import Outcome
from zombieguard.policy import Policy


class Limit(str, Enum):
    """A limit an attempt can pass."""

    SOFT = "soft"
    HARD = "hard"
    PROGRESS = "progress"

    def __str__(self) -> str:
        return self.value

    @property
    def outcome(self) -> Outcome:
        """How an attempt stopped at this limit ends: timed out (hard) or hung (progress). A soft
        limit ends no attempt (ValueError)."""
        if self is Limit.SOFT:
            raise ValueError("a soft limit only warns: it ends no attempt")
        return Outcome.TIMED_OUT if self is Limit.HARD else Outcome.HUNG

    def seconds(self, policy: Policy) -> float | None:
        """This limit's value in ``policy`` (None: the policy sets none)."""
        if self is Limit.SOFT:
            return policy.soft_timeout
        return policy.hard_timeout if self is Limit.HARD else policy.progress_timeout


_PRECEDENCE = (Limit.HARD, Limit.PROGRESS, Limit.SOFT)
"""Which limit counts when several passed at once: the hard one supersedes the others."""


@dataclass(frozen=True)
class Deadlines:
    """When each limit of one attempt passes, on the monotonic clock of the process that enforces
    them (None: no such limit, or one not enforced here)."""

    hard: float | None = None
    progress: float | None = None
    soft: float | None = None

    @classmethod
    def of_slot(cls, state: SlotState, *, soft: bool = True) -> Deadlines:
        """The deadlines of the job a slot holds (``soft``: its soft limit too)."""
        progress = (
            state.last_progress + state.progress_timeout if state.progress_timeout is not None else None
        )
        return cls(state.hard_deadline, progress, state.soft_deadline if soft else None)

    def _at(self, limit: Limit) -> float | None:
        return {Limit.HARD: self.hard, Limit.PROGRESS: self.progress, Limit.SOFT: self.soft}[limit]

    def passed(self, now: float, grace: float = 0.0) -> Limit | None:
        """The limit passed at least ``grace`` seconds before ``now`` (see :data:`_PRECEDENCE`), or
        None."""
        for limit in _PRECEDENCE:
            at = self._at(limit)
            if at is not None and now >= at + grace:
                return limit
        return None

    def next(self, grace: float = 0.0) -> float:
        """When the first limit will have passed ``grace`` seconds before (infinite: no limit)."""
        return min(
            (at + grace for at in (self.hard, self.progress, self.soft) if at is not None),
            default=float("inf"),
        )


@dataclass
class LimitClock:
    """The limits of one attempt, on the monotonic clock of the process that enforces them."""

    policy: Policy
    started: float
    last_progress: Callable[[], float]
    """Monotonic time of the job's last beat or checkpoint."""
    soft_fired: bool = False

    def deadlines(self) -> Deadlines:
        """When each limit passes (the soft one no longer, once it fired)."""
        policy = self.policy
        return Deadlines(
            hard=self.started + policy.hard_timeout if policy.hard_timeout is not None else None,
            progress=self.last_progress() + policy.progress_timeout
            if policy.progress_timeout is not None
            else None,
            soft=self.started + policy.soft_timeout
            if policy.soft_timeout is not None and not self.soft_fired
            else None,
        )

    def due(self, now: float) -> tuple[Limit | None, float]:
        """The limit that has passed at ``now`` (None if none) and when to look next."""
        deadlines = self.deadlines()
        limit = deadlines.passed(now)
        return (limit, now) if limit is not None else (None, deadlines.next())
