"""The chaos run's workload, drawn from the seed alone: which jobs, of which kind, how long, when sent."""

from __future__ import annotations

import random
from dataclasses import dataclass

LEASE_TTL = 3.0
HEARTBEAT_INTERVAL = 1.0
MAX_STALLS = 3
SWEEP_INTERVAL = 0.2
"""zombieguard's settings in every guarded run (the job kinds' limits are in tests.chaos.jobs)."""

MINOR_SHARE = 0.05
"""Share of each of the long, hung and poison kinds (at least one job of each); the rest are normal."""
SUBMIT_SHARE = 0.5
"""Jobs are sent over this first share of the run's fault period."""


@dataclass(frozen=True)
class PlannedJob:
    """One job of the workload."""

    job_id: str
    kind: str
    seconds: float
    """How long its body works (beating) before it commits (hung: before it stops beating)."""
    submit_at: float
    """Seconds after the start of the fault period."""


def plan(seed: int, jobs: int, duration: float, tag: str) -> list[PlannedJob]:
    """``jobs`` jobs, about 85 % normal, in the order they are sent; ``tag`` names the run in job ids."""
    rng = random.Random(seed)
    minor = max(1, round(jobs * MINOR_SHARE))
    kinds = ["long"] * minor + ["hung"] * minor + ["poison"] * minor
    kinds += ["normal"] * max(0, jobs - len(kinds))
    rng.shuffle(kinds)
    times = sorted(rng.uniform(0, duration * SUBMIT_SHARE) for _ in kinds)
    out = []
    for index, (kind, at) in enumerate(zip(kinds, times, strict=True)):
        if kind == "normal":
            seconds = rng.uniform(0.3, 2.0)
        elif kind == "long":
            seconds = rng.uniform(2 * LEASE_TTL, 3 * LEASE_TTL)
        elif kind == "hung":
            seconds = rng.uniform(0.4, 0.8)  # a few beats, then none
        else:
            seconds = 0.0
        out.append(PlannedJob(f"{tag}-{index:03d}-{kind}", kind, round(seconds, 3), round(at, 3)))
    return out
