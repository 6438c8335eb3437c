"""What the RQ integration relies on in RQ beyond its public API.

Each function here is the one place its internal is used, so that a release that changes it breaks
here and nowhere else; docs/internals.md lists each with the test that pins it
(``tests/integration/rq/test_internals.py``).
"""

from __future__ import annotations

from typing import Any

import redis
import rq
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.registry import StartedJobRegistry

from zombieguard.integrations import version_tuple
from zombieguard.leases import text

RQ3 = version_tuple(rq.__version__) >= (3,)
"""Whether RQ is 3 or newer (its callbacks module, an execution passed to ``perform_job``)."""

UNEXPECTED_END = "Work-horse terminated unexpectedly"
"""The words RQ's worker logs (and records as the failure) for a horse that ended without RQ's
say: where zombieguard killed the horse, its log line says so instead."""

_FAILURE_NAMES_WORKER = version_tuple(rq.__version__) >= (2, 5)
"""Whether ``Job._handle_failure`` takes ``worker_name`` (added in RQ 2.5)."""


def record_failure(job: Job, exc_string: str, pipe: Any, worker_name: str) -> None:
    """RQ's own worker-less failure path, as its abandoned-job cleanup takes it: the failed registry
    and a failure ``Result``, so that ``job.latest_result()`` tells why (``Job._handle_failure``;
    RQ before 2.5 records no worker name)."""
    if _FAILURE_NAMES_WORKER:
        job._handle_failure(exc_string, pipe, worker_name=worker_name)
    else:
        job._handle_failure(exc_string, pipe)


def stop_requested_for(worker: Any) -> str | None:
    """The id of the job ``send_stop_job_command`` asked the worker to stop (``Worker._stopped_job_id``,
    set by RQ's command handler before it kills the horse), if any."""
    stopped = getattr(worker, "_stopped_job_id", None)
    return None if stopped is None else str(stopped)


def forget_executions(connection: redis.Redis, job_id: str, queue_name: str, pipe: Any) -> None:
    """Queue on ``pipe`` the removal of a job's executions from its queue's started registry, and of
    their hashes. The registry's members are ``<job id>:<execution id>``; it holds the running jobs
    only, so reading it whole is cheap."""
    registry_key = StartedJobRegistry(queue_name, connection=connection).key
    for member in connection.zrange(registry_key, 0, -1):
        member_id, _, execution_id = text(member).partition(":")
        if member_id == job_id and execution_id:
            pipe.zrem(registry_key, member)
            pipe.delete(Execution(execution_id, job_id, connection=connection).key)


_RECLAIM = """
-- A job id found in RQ's intermediate queue, unstarted: its worker took it from the queue and died
-- (or froze) before preparing it. KEYS: intermediate, queue, job hash; ARGV: id.
if not redis.call('LPOS', KEYS[1], ARGV[1]) then return 'gone' end
local status = redis.call('HGET', KEYS[3], 'status')
if status == 'started' then return 'started' end  -- its lease and RQ's started registry cover it
redis.call('LREM', KEYS[1], 1, ARGV[1])
if status ~= 'queued' or redis.call('LPOS', KEYS[2], ARGV[1]) then return 'dropped' end
redis.call('LPUSH', KEYS[2], ARGV[1])  -- the front, as RQ puts back what it gives up on
return 'requeued'
"""


class Intermediate:
    """RQ's intermediate list of a queue: where a worker of that one queue moves a job it pops
    (``BLMOVE``), until it has prepared the job. RQ's own maintenance fails what stays there."""

    def __init__(self, connection: redis.Redis, job_class: type[Job]) -> None:
        self._connection = connection
        self._job_class = job_class
        self._reclaim = connection.register_script(_RECLAIM)

    def job_ids(self, queue: Queue) -> list[str]:
        """The ids in the queue's intermediate list."""
        raw = self._connection.lrange(queue.intermediate_queue_key, 0, -1)
        return [text(r) for r in raw]

    def put_back(self, queue: Queue, job_id: str) -> str:
        """Move the job from the intermediate list back to the front of its queue, atomically:
        ``requeued``; ``dropped`` (only the stale entry removed: the job ended, or waits in its
        queue already); ``started`` (left alone); ``gone`` (no longer there)."""
        keys = [queue.intermediate_queue_key, queue.key, self._job_class.key_for(job_id)]
        reply = self._reclaim(keys=keys, args=[job_id])
        return text(reply)
