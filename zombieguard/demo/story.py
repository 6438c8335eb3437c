"""What ``zombieguard demo`` tells: each run as the demo saw it, a framework's plain and guarded runs
side by side, what each zombie was, and a closing summary. Every time and outcome it prints is one
the demo measured in that run."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field

from zombieguard.demo import table

ZOMBIES = {
    "worker SIGKILLed": (
        "a healthy long job whose worker is SIGKILLed mid-job, as the OOM killer or a lost machine "
        "would: finishing it is the good outcome, and zombieguard sees within seconds that the "
        "worker is gone and runs the job again, as a new attempt on the other worker."
    ),
    "hung on a socket": (
        "the seed incident, a read from a server that accepted the connection and never answers: "
        "without a limit it waits forever and holds its worker, so failing at the hard_timeout is the "
        "good outcome, as it frees the worker and the failure says why."
    ),
    "stuck in C code": (
        "C code that holds the GIL, where no signal handler and no other thread of its process runs: "
        "only ending the process stops it, and failing at the hard_timeout is the good outcome, as the "
        "worker is free again."
    ),
    "poison pill": (
        "a payload that kills every process that runs it: after max_stalls recoveries zombieguard "
        "fails it and puts it in the dead-letter queue ('zombieguard dlq show' tells its story), "
        "which is the good outcome, as it takes down no more workers."
    ),
}
"""What each zombie of the demo is, and why the guarded outcome is the good one."""


@dataclass
class JobSeen:
    """One zombie in one run, as the demo saw it; times are seconds since the run's jobs were sent."""

    status: str = "queued"
    """What the framework said last: queued, started, finished or failed."""
    started: float | None = None
    """When it was first seen started."""
    ended: float | None = None
    """When it was first seen finished or failed."""
    attempt: int | None = None
    """Its attempt number, from its lease (None in a plain run: no lease)."""
    ran: float | None = None
    """How long its last attempt ran before it ended (guarded: from its lease, on the Redis clock;
    plain: between the polls that saw it start and end)."""
    error: str = ""
    """The exception it failed with: its class name (without its module), then its message."""
    worker_killed: float | None = None
    """When the demo SIGKILLed the worker running it, if it did."""


@dataclass
class RunSeen:
    """One run of the demo on one framework: plain or guarded workers, the same jobs."""

    framework: str
    """RQ or Celery."""
    guarded: bool
    elapsed: float
    """Seconds from sending the jobs to the last look at them."""
    normal_total: int
    normal_finished: int = 0
    normal_queued: int = 0
    normal_done: float | None = None
    """When every normal job had been seen finished."""
    zombies: dict[str, JobSeen] = field(default_factory=dict)

    @property
    def heading(self) -> str:
        """The run's column heading."""
        return "what zombieguard did" if self.guarded else f"what plain {self.framework} did"


def job_cell(job: JobSeen, elapsed: float) -> str:
    """What happened to one zombie in one run, in order, in one sentence."""
    parts = []
    if job.started is not None and (job.ended is None or job.worker_killed is not None):
        parts.append(f"started at {job.started:.1f} s")
    if job.worker_killed is not None:
        parts.append(f"its worker SIGKILLed at {job.worker_killed:.1f} s")
    if job.status in ("finished", "failed") and job.ended is not None:
        said = f"{job.status} at {job.ended:.1f} s"
        which = f"attempt {job.attempt}" if job.attempt is not None and job.attempt > 1 else "it"
        if job.ran is not None:
            said += f", {f'{job.ran:.1f} s' if job.ran >= 0.1 else 'under 0.1 s'} after {which} started"
        elif which != "it":
            said += f", on {which}"
        parts.append(said + (f", with {job.error}" if job.error else ""))
    elif job.status == "queued" and job.started is None:
        parts.append(f"never started: still queued at {elapsed:.1f} s")
    else:
        parts.append(f"still '{job.status}' at {elapsed:.1f} s")
    return "; ".join(parts)


def normal_cell(run: RunSeen) -> str:
    """What happened to the normal jobs in one run."""
    by = f" by {run.normal_done:.1f} s" if run.normal_done is not None else ""
    text = f"{run.normal_finished}/{run.normal_total} finished{by}"
    if run.normal_queued:
        text += f"; {run.normal_queued} still queued at {run.elapsed:.1f} s"
    return text


def side_by_side(runs: list[RunSeen]) -> list[str]:
    """A framework's runs as one table: a row per zombie, then the normal jobs; a column per run."""
    header = ["scenario", *(run.heading for run in runs)]
    rows = [[name, *(job_cell(run.zombies[name], run.elapsed) for run in runs)] for name in runs[0].zombies]
    rows.append([f"{runs[0].normal_total} normal jobs", *(normal_cell(run) for run in runs)])
    return table.render(header, rows)


def legend(names: Iterable[str]) -> list[str]:
    """What each zombie of ``names`` was, and why the guarded outcome is the good one: a wrapped
    paragraph each."""
    lines = ["What each zombie was, and why the guarded outcome is the good one:"]
    for name in names:
        lines += textwrap.wrap(
            f"{name}: {ZOMBIES[name]}", table.WIDTH - 10, initial_indent="- ", subsequent_indent="  "
        )
    return lines


def summary(runs: list[RunSeen]) -> list[str]:
    """Every run in one small table: normal jobs finished, zombies left started, jobs left queued."""
    header = ["summary", *(f"{run.framework}, {'guarded' if run.guarded else 'plain'}" for run in runs)]
    rows = [
        ["normal jobs finished", *(f"{run.normal_finished}/{run.normal_total}" for run in runs)],
        ["zombies left 'started'", *(str(_count(run, "started")) for run in runs)],
        ["jobs still queued", *(str(run.normal_queued + _count(run, "queued")) for run in runs)],
        ["watched for", *(f"{run.elapsed:.1f} s" for run in runs)],
    ]
    return table.render(header, rows)


def _count(run: RunSeen, status: str) -> int:
    return sum(job.status == status for job in run.zombies.values())
