"""The adapter protocol: all the core knows about a job framework.

Each integration (``zombieguard.integrations.rq``, ``.celery``) implements it; the sweeper and the
CLI use nothing else. A method that raises is reported; the sweeper leaves the claim to expire so
that another sweep tries again (recovery is at least once, and fencing makes a repeat harmless).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from zombieguard.leases import LeaseRecord, Outcome
    from zombieguard.recovery.deadletter import DeadLetterEntry


class JobAdapter(Protocol):
    """How the core acts on one framework's jobs."""

    name: str
    """The integration's name; leases record it, and each sweeper claims only its adapters' leases."""

    republishes_unstarted: bool
    """Whether a requeued job that no worker starts at once is published again (up to three times,
    after 1, 2 and 4 s; see ``zombieguard.recovery.sweeper.REPUBLISH_AFTER``). For brokers that can hand the
    new message to a frozen consumer (RabbitMQ pushes to any consumer with prefetch room); safe only
    where each delivery carries its attempt number, so that the copies after the first are refused
    as stale."""

    reclaims: bool
    """Whether the framework keeps a taken job apart from its queue until a worker starts it (RQ's
    intermediate queue): then every sweep calls :meth:`reclaim`."""

    requeues_from_payload: bool
    """Whether :meth:`requeue` publishes the job again from its lease's payload (Celery's message),
    rather than from the framework's own record of it (RQ's job hash)."""

    def requeue(self, record: LeaseRecord) -> bool:
        """Put the job back on its queue as a new attempt, with the same job id.

        False when the framework says the job had already ended (its end was recorded, but its
        worker died before the lease's release was written): there is nothing to recover.
        """

    def fail(self, record: LeaseRecord, outcome: Outcome, reason: str) -> bool:
        """Mark the job failed in the framework (timed out, hung, dead-lettered), the framework's way.

        False when the job had already ended, as for :meth:`requeue`.
        """

    def stop(self, record: LeaseRecord) -> None:
        """Best effort: stop the attempt where it runs, if its worker is still there."""

    def waiting(self, queue: str) -> int | None:
        """How many jobs wait in ``queue`` (not started yet); None when the framework cannot say."""

    def republish(self, entry: DeadLetterEntry) -> None:
        """Enqueue a dead-lettered job again (``zombieguard dlq requeue``), as a fresh job."""

    def reclaim(self, queues: Sequence[str], leased: Callable[[str], bool]) -> list[str]:
        """Put back in their queues the jobs that a worker took from one of ``queues`` and never
        started (it died, or froze, in between), where the framework keeps them apart meanwhile (RQ's
        intermediate queue); the job ids put back. ``leased``: whether a job's lease is running or
        being recovered (its expiry recovers it: it is not put back here). Called at every sweep
        when :attr:`reclaims`: cheap when there are none."""

    def worker_gone(self, workdir: Path) -> None:
        """A worker of this integration died (its watchdog process, or a worker started after it on
        the same machine, tells): hand back at once what the broker still holds for it (messages it
        received and never finished), from what it left in ``workdir``, its working directory.
        Nothing for a broker that returns them by itself."""
