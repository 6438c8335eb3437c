"""RQAdapter on real Redis: a zombie's failure recorded the RQ way, with each supported RQ."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import redis
from rq import Queue
from rq.job import JobStatus

from zombieguard.integrations.rq import RQ_VERSION, RQAdapter
from zombieguard.leases import AcquireStatus, JobSpec, LeaseStore, Outcome
from zombieguard.policy import Policy


def test_a_timed_out_job_is_failed_the_rq_way_with_its_reason(
    client: redis.Redis, store: LeaseStore, rq_markers: list[str]
) -> None:
    queue = Queue(f"zgq-{uuid.uuid4().hex[:10]}", connection=client)
    job = queue.enqueue("tests.support.rq_jobs.add", 1, 1)
    rq_markers += [queue.name, job.id]
    spec = JobSpec(job.id, "rq", "tests.support.rq_jobs.add", queue.name, '{"description": "add(1, 1)"}')
    acquired = store.acquire(spec, "zgw-pinned", Policy(hard_timeout=2))
    assert acquired.status is AcquireStatus.ACQUIRED
    record = store.record(job.id)
    assert record is not None

    assert RQAdapter(client).fail(record, Outcome.TIMED_OUT, "ran past its hard_timeout of 2 s")

    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert job.id in queue.failed_job_registry.get_job_ids()
    result = job.latest_result()
    assert result is not None
    assert result.exc_string is not None
    assert result.exc_string.startswith("zombieguard.HardTimeLimitExceeded: ran past its hard_timeout of 2 s")
    if RQ_VERSION >= (2, 5):
        assert result.worker_name == "zgw-pinned"
    assert not RQAdapter(client).fail(record, Outcome.TIMED_OUT, "again"), (
        "a job that ended is not failed twice"
    )


_STOP_HORSE = textwrap.dedent(
    """
    import subprocess, sys
    import redis
    from rq import Queue
    from zombieguard.integrations.rq import GuardedWorker

    class Worker(GuardedWorker):
        horse = 0

        @property
        def horse_pid(self):
            return self.horse

    client = redis.Redis.from_url(sys.argv[1])
    worker = Worker([Queue("zg-no-queue", connection=client)], connection=client)
    worker._zg_kill_horse()  # RQ reaped the horse: horse_pid is 0
    horse = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    worker.horse = horse.pid  # not yet in a session of its own
    worker._zg_kill_horse()
    print(horse.wait(5), "alive")
    """
)


def test_stopping_a_lost_attempt_never_kills_the_worker_itself_only_its_horse(redis_url: str) -> None:
    # The worker leads a process group of its own (as under a supervisor): the stop must not hit it,
    # whether RQ reaped the horse already or the horse has not left the worker's group yet.
    run = subprocess.run(
        [sys.executable, "-c", _STOP_HORSE, redis_url],
        check=False,
        start_new_session=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (run.returncode, run.stdout.split()) == (0, ["-9", "alive"]), run.stderr
