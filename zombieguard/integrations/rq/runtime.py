"""What one guarded RQ worker process runs beside RQ, for its whole life: the lease store, the
heartbeat, the sweeper, the watchdog thread and, for a worker that runs jobs itself, the watchdog
process. Runs in the worker process."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from rq.job import Job

from zombieguard.enforcement.slot import JobSlot
from zombieguard.enforcement.stacks import StackDumper
from zombieguard.errors import LeaseLost
from zombieguard.integrations.rq.adapter import RQAdapter
from zombieguard.leases import LeaseStore
from zombieguard.leases.connection import RedisTarget
from zombieguard.policy import Policy, current_config, guard_fields
from zombieguard.worker.attempt import Attempt
from zombieguard.worker.runtime import WorkerRuntime

DIR_PREFIX = "zombieguard-rq-"


class RQRuntime(WorkerRuntime):
    """What one guarded worker process runs beside RQ: leases, heartbeat, sweeper, watchdog."""

    def __init__(
        self, worker: Any, with_watchdog_process: bool, on_lost: Callable[[Attempt, LeaseLost], None]
    ) -> None:
        config = current_config()
        settings = config.settings
        # The leases follow the worker's own connection (a Sentinel one included) unless redis_url
        # names another Redis.
        own = RedisTarget.from_client(worker.connection)
        target = RedisTarget.from_url(settings.redis_url) if settings.redis_url else own
        self.client = target.client() if settings.redis_url else worker.connection
        self.default_policy = config.policy_for("")
        self.adapter = RQAdapter(
            worker.connection,
            job_class=worker.job_class,
            queue_class=worker.queue_class,
            serializer=worker.serializer,
            queues=worker.queue_names(),
        )
        super().__init__(
            LeaseStore(self.client, settings),
            self.adapter,
            worker=worker.name,
            renew_every=self.default_policy.renew_every,
            children_grace=self.default_policy.kill_children_grace,
            target=target,
            on_lost=on_lost,
            dir_prefix=DIR_PREFIX,
            watchdog_name=f"zombieguard-watchdog-{worker.name}",
        )
        self.dumper = StackDumper(self.dir / "stacks.txt")
        self.dumper.path.touch()
        # A file, so that the next worker started here finds the job this one ran if it dies.
        self.slot = JobSlot(self.dir / "slot")
        if with_watchdog_process:
            # Jobs run in this process: the watchdog process asks it for its stacks before killing it.
            self.dumper.install()
            self.start_watchdog_process(
                slot=self.dir / "slot",
                dump=self.dumper.path,
                adapter="zombieguard.integrations.rq:watchdog_process_adapter",
                adapter_arg=own.to_json() if settings.redis_url else "",
            )
        # Before RQ's own maintenance runs: the first sweep recovers what dead workers left, so that
        # RQ's abandoned-job cleanup does not fail it first.
        self.launch({"class": type(worker).__name__, "queues": ",".join(worker.queue_names())})

    def policy_of(self, job: Job) -> tuple[str, Policy]:
        """The job's task name and its policy: configuration, RQ's own ``job_timeout`` and the
        ``@zombieguard.guard`` decorator of its function."""
        try:
            task = str(job.func_name)
        except Exception:
            return "", self.default_policy
        framework = {"hard_timeout": float(job.timeout)} if job.timeout and job.timeout > 0 else {}
        decorator: Any = {}
        with contextlib.suppress(Exception):  # an import error is the job's to report, the RQ way
            decorator = guard_fields(job.func)
        # Read now, after the import above: a configure() in the job's module applies to its jobs.
        return task, current_config().policy_for(task, framework=framework, decorator=decorator)

    def close(self) -> None:
        """Stop everything, leave cleanly (not a zombie)."""
        self.shutdown()
        self.dumper.close()
        self.slot.close()
        self.remove_dir()
