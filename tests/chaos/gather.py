"""Reading the final state of every job: the framework's view, zombieguard's lease records and its
dead-letter queue, straight from Redis (and RabbitMQ), as docs/data-model.md lays them out."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis

from tests.chaos.history import Copy, DeadLetter, FrameworkState, LeaseState

ATTEMPT_HEADER = "zombieguard_attempt"
"""The message header with the attempt a Celery delivery is for (absent: the first)."""
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
"""kombu's Redis transport keeps a queue's messages of priority p > 0 in the list ``queue<sep>p``."""


def text(value: Any) -> str:
    """A Redis reply as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _last_line(message: str) -> str:
    lines = [ln for ln in message.strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else ""


# -- zombieguard ---------------------------------------------------------------------------------


def lease_states(
    client: redis.Redis, key_prefix: str, job_ids: Sequence[str]
) -> dict[str, LeaseState | None]:
    """Each job's lease record (None when there is none: a first attempt that completed leaves none)."""
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hgetall("{" + key_prefix + "}:lease:" + job_id)
    out: dict[str, LeaseState | None] = {}
    for job_id, raw in zip(job_ids, pipe.execute(), strict=True):
        out[job_id] = LeaseState.from_hash({text(k): text(v) for k, v in raw.items()}) if raw else None
    return out


def lease_hashes(client: redis.Redis, key_prefix: str, job_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """The raw lease hashes (payloads left out), for the report of a broken job."""
    out = {}
    for job_id in job_ids:
        raw = client.hgetall("{" + key_prefix + "}:lease:" + job_id)
        out[job_id] = {text(k): text(v)[:2000] for k, v in raw.items() if text(k) != "payload"}
    return out


def dead_letters(client: redis.Redis, key_prefix: str) -> dict[str, DeadLetter]:
    """Dead-letter entries by job id (unreadable ones skipped)."""
    out = {}
    for job_id, raw in client.hgetall("{" + key_prefix + "}:dlq").items():
        with contextlib.suppress(ValueError, TypeError):
            out[text(job_id)] = DeadLetter.from_json(text(raw))
    return out


# -- RQ --------------------------------------------------------------------------------------------

RQ_PLACES = {
    "started": "wip",
    "scheduled": "scheduled",
    "deferred": "deferred",
}
"""Where an RQ job that has not ended may sit: place -> registry key's name (``rq:<name>:<queue>``)."""


def rq_states(client: redis.Redis, queue: str, job_ids: Sequence[str]) -> dict[str, FrameworkState]:
    """Each RQ job's status, and where RQ holds it: its queue, the intermediate queue (taken by a
    worker that has not started it yet), the started, scheduled, deferred registries; and whether it
    is in the finished and the failed registries."""
    from rq.exceptions import NoSuchJobError  # noqa: PLC0415 - only RQ runs need RQ
    from rq.job import Job  # noqa: PLC0415

    pipe = client.pipeline(transaction=False)
    pipe.lrange(f"rq:queue:{queue}", 0, -1)
    pipe.lrange(f"rq:queue:{queue}:intermediate", 0, -1)
    for name in (*RQ_PLACES.values(), "finished", "failed", "canceled"):
        pipe.zrange(f"rq:{name}:{queue}", 0, -1)
    for job_id in job_ids:
        pipe.hget(f"rq:job:{job_id}", "status")
    replies = pipe.execute()
    queued = [text(j) for j in replies[0]]
    intermediate = [text(j) for j in replies[1]]
    registries = {}
    for index, name in enumerate((*RQ_PLACES, "finished", "failed", "canceled")):
        registries[name] = {text(m).partition(":")[0] for m in replies[2 + index]}
    statuses = replies[2 + len(registries) :]
    out = {}
    for job_id, raw_status in zip(job_ids, statuses, strict=True):
        status = text(raw_status) if raw_status is not None else "missing"
        copies = [Copy("queue") for j in queued if j == job_id]
        copies += [Copy("intermediate") for j in intermediate if j == job_id]
        copies += [Copy(place) for place in RQ_PLACES if job_id in registries[place]]
        completed = status == "finished" or job_id in registries["finished"]
        failed = status in ("failed", "stopped", "canceled") or bool(
            job_id in registries["failed"] or job_id in registries["canceled"]
        )
        failure = ""
        if failed:
            with contextlib.suppress(NoSuchJobError, redis.RedisError, ValueError):
                result = Job.fetch(job_id, connection=client).latest_result()
                failure = _last_line(getattr(result, "exc_string", "") or "") if result else ""
        out[job_id] = FrameworkState(status, completed, failed, failure, tuple(copies))
    return out


# -- Celery ----------------------------------------------------------------------------------------


def _message_of(raw: Any) -> tuple[str, int] | None:
    """(task id, attempt) of a kombu message as the Redis transport stores it; None if unreadable."""
    try:
        message = json.loads(text(raw))
        if isinstance(message, list):  # an unacked entry: [message, exchange, routing key]
            message = message[0]
        headers = message.get("headers") or {}
        return str(headers["id"]), int(headers.get(ATTEMPT_HEADER) or 1)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def celery_results(client: redis.Redis, job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """(state, failure) of each task in the Redis result backend (``PENDING`` when it has none)."""
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.get(f"celery-task-meta-{job_id}")
    out = {}
    for job_id, raw in zip(job_ids, pipe.execute(), strict=True):
        state, failure = "PENDING", ""
        if raw is not None:
            with contextlib.suppress(ValueError, TypeError):
                meta = json.loads(text(raw))
                state = str(meta.get("status", "PENDING"))
                result = meta.get("result")
                if state in ("FAILURE", "REVOKED") and isinstance(result, Mapping):
                    failure = _last_line(f"{result.get('exc_type', '')}: {result.get('exc_message', '')}")
        out[job_id] = (state, failure)
    return out


def celery_redis_copies(client: redis.Redis, queue: str) -> list[tuple[str, Copy]]:
    """(task id, copy) of every message in the queue's lists and in kombu's ``unacked`` hash."""
    out = []
    for priority in KOMBU_PRIORITY_STEPS:
        key = queue if priority == 0 else f"{queue}{KOMBU_PRIORITY_SEP}{priority}"
        for raw in client.lrange(key, 0, -1):
            found = _message_of(raw)
            if found:
                out.append((found[0], Copy("queue", found[1])))
    for raw in client.hvals("unacked"):
        found = _message_of(raw)
        if found:
            out.append((found[0], Copy("unacked", found[1])))
    return out


def rabbitmq_copies(url: str, queue: str) -> list[tuple[str, Copy]]:
    """(task id, copy) of every message left in a RabbitMQ queue, taken off it (the queue is deleted
    afterwards). Call it once no consumer is left: unacked messages are back in the queue then."""
    from kombu.connection import Connection  # noqa: PLC0415 - only Celery runs need kombu

    out = []
    with Connection(url, connect_timeout=5) as conn:
        channel = conn.default_channel
        # A killed consumer's unacked messages go back to the queue once RabbitMQ sees its
        # connection close: wait for that (bounded) before reading the queue.
        deadline = time.monotonic() + 10
        while channel.queue_declare(queue, passive=True).consumer_count and time.monotonic() < deadline:
            time.sleep(0.1)
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            headers = message.headers or {}
            if "id" in headers:
                out.append((str(headers["id"]), Copy("queue", int(headers.get(ATTEMPT_HEADER) or 1))))
    return out


def rabbitmq_unacked(queue: str) -> int:
    """Messages of a RabbitMQ queue delivered to a consumer and not acked yet, as ``rabbitmqctl``
    (on this machine) says: AMQP itself counts only the ready ones. 0 when it cannot say."""
    try:
        listed = subprocess.run(
            ["rabbitmqctl", "list_queues", "-q", "name", "messages_unacknowledged"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    for line in listed.splitlines():
        name, _, count = line.rpartition("\t")
        if name == queue and count.isdigit():
            return int(count)
    return 0


CELERY_DONE = {"SUCCESS": "completed", "FAILURE": "failed", "REVOKED": "failed"}


def celery_states(
    results: Mapping[str, tuple[str, str]], copies: Iterable[tuple[str, Copy]]
) -> dict[str, FrameworkState]:
    """Each Celery task's state from its result and the message copies found."""
    by_job: dict[str, list[Copy]] = {}
    for job_id, copy in copies:
        by_job.setdefault(job_id, []).append(copy)
    out = {}
    for job_id, (state, failure) in results.items():
        done = CELERY_DONE.get(state, "")
        out[job_id] = FrameworkState(
            state, done == "completed", done == "failed", failure, tuple(by_job.get(job_id, ()))
        )
    return out
