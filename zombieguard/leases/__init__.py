"""The Redis data model of leases (docs/data-model.md): its records, its key layout, and the store
whose methods are its transitions, one Lua script each."""

from zombieguard.leases.keys import Keys
from zombieguard.leases.records import (
    Acquired,
    AcquireStatus,
    AttemptRecord,
    Claimed,
    Condition,
    CorruptRecord,
    DeadWorker,
    DeferredRelease,
    FinishedState,
    JobSpec,
    LeaseRecord,
    LeaseState,
    Outcome,
    PresenceLook,
    Sweep,
    text,
)
from zombieguard.leases.registry import WorkerRegistry, scored_members
from zombieguard.leases.store import LeaseStore
from zombieguard.leases.wire import PendingAcquire

__all__ = [
    "AcquireStatus",
    "Acquired",
    "AttemptRecord",
    "Claimed",
    "Condition",
    "CorruptRecord",
    "DeadWorker",
    "DeferredRelease",
    "FinishedState",
    "JobSpec",
    "Keys",
    "LeaseRecord",
    "LeaseState",
    "LeaseStore",
    "Outcome",
    "PendingAcquire",
    "PresenceLook",
    "Sweep",
    "WorkerRegistry",
    "scored_members",
    "text",
]
