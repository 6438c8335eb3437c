"""The RQ internals zombieguard relies on (``zombieguard.integrations.rq.internals``, listed in
docs/internals.md), pinned against the installed RQ on real Redis: an RQ release that changes one
fails here, by name."""

from __future__ import annotations

import inspect
import uuid

import pytest
import redis
from rq import Queue, Worker
from rq.command import handle_stop_job_command
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from zombieguard.integrations.rq import RQ_VERSION, internals
from zombieguard.leases import text


@pytest.fixture
def queue(client: redis.Redis, rq_markers: list[str]) -> Queue:
    """A queue of the test's own."""
    q = Queue(f"zgq-{uuid.uuid4().hex[:10]}", connection=client)
    rq_markers.append(q.name)
    return q


@pytest.fixture
def worker(client: redis.Redis, queue: Queue, rq_markers: list[str]) -> Worker:
    """An RQ worker of that queue (not started: the test calls what RQ's worker calls)."""
    w = Worker([queue], connection=client, name=f"zgw-{uuid.uuid4().hex[:10]}")
    rq_markers.append(w.name)
    return w


def _enqueue(queue: Queue, rq_markers: list[str], *args: int) -> Job:
    job = queue.enqueue("tests.support.rq_jobs.add", *args)
    rq_markers.append(job.id)
    return job


def test_rq_s_private_handle_failure_takes_a_worker_name_exactly_where_zombieguard_passes_one() -> None:
    parameters = inspect.signature(Job._handle_failure).parameters
    assert list(parameters)[:3] == ["self", "exc_string", "pipeline"]
    assert ("worker_name" in parameters) is (RQ_VERSION >= (2, 5))


def test_record_failure_puts_the_job_in_the_failed_registry_with_a_failure_result(
    client: redis.Redis, queue: Queue, rq_markers: list[str]
) -> None:
    job = _enqueue(queue, rq_markers, 1, 1)
    with client.pipeline() as pipe:
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        internals.record_failure(job, "zombieguard.JobHung: no progress", pipe, "zgw-internals")
        pipe.execute()
    assert job.id in queue.failed_job_registry.get_job_ids()
    result = job.latest_result()
    assert result is not None
    assert result.exc_string == "zombieguard.JobHung: no progress"


def test_rq_s_stop_command_marks_the_job_zombieguard_reads_as_stopped_on_request(
    worker: Worker, queue: Queue, rq_markers: list[str]
) -> None:
    job = _enqueue(queue, rq_markers, 1, 1)
    assert internals.stop_requested_for(worker) is None
    worker.prepare_execution(job)  # what RQ's worker does before it forks the horse (RQ 3: current job)
    if RQ_VERSION < (3,):
        worker.set_current_job_id(job.id)  # type: ignore[attr-defined]  # RQ 2 only; what RQ 2's horse does as it prepares the job
    killed: list[bool] = []
    worker.kill_horse = lambda *_, **__: killed.append(True)  # type: ignore[method-assign]
    handle_stop_job_command(worker, {"job_id": job.id})
    assert killed == [True]
    assert internals.stop_requested_for(worker) == job.id


def test_forget_executions_removes_what_rq_s_worker_wrote_for_a_started_job(
    client: redis.Redis, worker: Worker, queue: Queue, rq_markers: list[str]
) -> None:
    job, other = _enqueue(queue, rq_markers, 1, 1), _enqueue(queue, rq_markers, 2, 2)
    execution = worker.prepare_execution(job)
    kept = worker.prepare_execution(other)
    registry = StartedJobRegistry(queue.name, connection=client)
    members = {text(m) for m in client.zrange(registry.key, 0, -1)}
    assert members == {f"{job.id}:{execution.id}", f"{other.id}:{kept.id}"}
    assert client.exists(execution.key)

    with client.pipeline() as pipe:
        internals.forget_executions(client, job.id, queue.name, pipe)
        pipe.execute()

    assert [text(m) for m in client.zrange(registry.key, 0, -1)] == [f"{other.id}:{kept.id}"]
    assert not client.exists(execution.key)
    assert client.exists(kept.key)


def test_a_job_rq_took_into_its_intermediate_list_is_put_back_at_the_front_of_its_queue(
    client: redis.Redis, queue: Queue, rq_markers: list[str]
) -> None:
    taken, waiting = _enqueue(queue, rq_markers, 1, 1), _enqueue(queue, rq_markers, 2, 2)
    dequeued = Queue.dequeue_any([queue], timeout=1, connection=client)
    assert dequeued is not None
    assert dequeued[0].id == taken.id
    intermediate = internals.Intermediate(client, Job)
    assert intermediate.job_ids(queue) == [taken.id]

    assert intermediate.put_back(queue, taken.id) == "requeued"
    assert intermediate.job_ids(queue) == []
    assert queue.get_job_ids() == [taken.id, waiting.id]
    assert intermediate.put_back(queue, taken.id) == "gone"


@pytest.mark.parametrize(
    ("status", "reply"), [(JobStatus.STARTED, "started"), (JobStatus.FINISHED, "dropped")]
)
def test_a_job_that_started_or_ended_is_not_put_back_from_the_intermediate_list(
    client: redis.Redis, queue: Queue, rq_markers: list[str], status: JobStatus, reply: str
) -> None:
    job = _enqueue(queue, rq_markers, 1, 1)
    assert Queue.dequeue_any([queue], timeout=1, connection=client) is not None
    job.set_status(status)
    intermediate = internals.Intermediate(client, Job)

    assert intermediate.put_back(queue, job.id) == reply
    assert queue.get_job_ids() == []
    assert intermediate.job_ids(queue) == ([job.id] if reply == "started" else [])


def test_rq_logs_a_horse_that_ended_without_its_say_with_the_words_zombieguard_replaces() -> None:
    assert internals.UNEXPECTED_END in inspect.getsource(Worker.monitor_work_horse)
