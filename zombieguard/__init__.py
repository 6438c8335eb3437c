"""zombieguard: zombie-job and zombie-worker protection for existing Celery and RQ deployments.

Inside a job: :func:`beat` proves progress, :func:`checkpoint` saves and resumes it, :func:`deadline`
bounds any block. Around it: :class:`Policy`, :func:`configure` and :func:`guard` set the limits;
:mod:`zombieguard.signals` tells you what happened.
"""

from zombieguard import events as signals
from zombieguard.checkpoint import Checkpoint, checkpoint
from zombieguard.deadline import deadline
from zombieguard.errors import (
    CheckpointNotSerializable,
    ConfigurationError,
    DeadlineExceeded,
    HardTimeLimitExceeded,
    IntegrationNotAvailable,
    JobHung,
    JobInterrupt,
    LeaseLost,
    NotInGuardedJob,
    SoftTimeLimitExceeded,
    ZombieGuardError,
)
from zombieguard.policy import Config, Policy, Settings, configure, guard
from zombieguard.worker.attempt import beat

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointNotSerializable",
    "Config",
    "ConfigurationError",
    "DeadlineExceeded",
    "HardTimeLimitExceeded",
    "IntegrationNotAvailable",
    "JobHung",
    "JobInterrupt",
    "LeaseLost",
    "NotInGuardedJob",
    "Policy",
    "Settings",
    "SoftTimeLimitExceeded",
    "ZombieGuardError",
    "__version__",
    "beat",
    "checkpoint",
    "configure",
    "deadline",
    "guard",
    "signals",
]
