"""RQ integration: guarded workers, by worker-class substitution.

    rq worker -w zombieguard.integrations.rq.GuardedWorker high default low
    rq worker -w zombieguard.integrations.rq.GuardedSimpleWorker default

Nothing else changes: same queues, same jobs, same constructor arguments. Configuration comes from
``ZOMBIEGUARD_*`` variables or ``zombieguard.configure()`` (e.g. in a module the worker imports);
leases live in the worker's own Redis unless ``redis_url`` names another.

What each worker does (docs/guarantees.md has the whole table):

- **GuardedWorker** (forks a horse per job). The parent holds the job's lease and renews it; its
  watchdog enforces the limits on the horse: at a limit it captures the horse's stack (faulthandler,
  works in C code too), raises the interrupt in the horse through a signal (the job then fails the RQ
  way: failed registry, ``on_failure``, ``Retry``), and SIGKILLs the horse 0.5 s later if it did not
  end (C code holding the GIL). A horse that dies by itself (OOM, segfault, a poison payload) is a
  stall: the job is recovered as a new attempt, or dead-lettered after ``max_stalls``. A horse whose
  parent dies is killed by the kernel (``PR_SET_PDEATHSIG``).
- **GuardedSimpleWorker** (runs the job in its own main thread). Limits are raised in the main thread
  by a signal; when the job is stuck in C code no thread of the worker can run, so a small watchdog
  process beside it (:mod:`zombieguard.enforcement.watchdog_process`) kills the worker 0.5 s past the
  limit and fails the job as timed out; the worker's supervisor restarts it.
- Both: a sweeper thread recovers the jobs of dead or frozen workers within ``lease_ttl`` plus a sweep,
  and removes their executions from RQ's started registry, so that RQ's abandoned-job cleanup never
  fails or retries them as well. A superseded attempt's completion is refused.

The modules: :mod:`.worker` (the worker classes: RQ's hooks, in the worker process and its horse),
:mod:`.runtime` (what the worker process runs beside RQ), :mod:`.acquire` (a job's lease, before it
starts), :mod:`.horse` (in the process that runs the job), :mod:`.verdict` (what RQ records when an
execution fails), :mod:`.failure` (how a stopped job fails the RQ way), :mod:`.adapter` (sweepers,
the CLI, the watchdog process), and :mod:`.internals` (the private RQ attributes relied on, each in
one place).
"""

from __future__ import annotations

from zombieguard.errors import IntegrationNotAvailable
from zombieguard.integrations import require

try:
    import rq
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise IntegrationNotAvailable(
        f"zombieguard.integrations.rq needs RQ ({exc}): pip install 'zombieguard[rq]'"
    ) from exc

RQ_VERSION = require("rq", rq.__version__)

from zombieguard.integrations.rq.adapter import RQAdapter, watchdog_process_adapter  # noqa: E402
from zombieguard.integrations.rq.failure import JobTimeoutException  # noqa: E402
from zombieguard.integrations.rq.worker import GuardedSimpleWorker, GuardedWorker  # noqa: E402

__all__ = [
    "GuardedSimpleWorker",
    "GuardedWorker",
    "JobTimeoutException",
    "RQAdapter",
    "watchdog_process_adapter",
]
