"""Celery: healthy tasks behave exactly as without zombieguard; progress, soft limits, checkpoints."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from celery import chain, chord, group

from tests.support.celery_harness import CeleryHarness
from tests.support.waiting import wait_until

LEASE_TTL = 2.0  # the harness's ZOMBIEGUARD_LEASE_TTL

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_results_retries_rejects_chains_groups_and_chords_are_untouched(
    celery_harness: CeleryHarness, pool: str
) -> None:
    celery_harness.start_worker(pool, concurrency=4 if pool != "solo" else 1)
    (Path(celery_harness.notes) / "reject").mkdir()
    sig = celery_harness.app.signature
    assert celery_harness.send("add", 2, 2).get(timeout=15) == 4
    assert celery_harness.send("retries_once", celery_harness.notes).get(timeout=15) == "second time"
    assert [line.split()[1] for line in celery_harness.notes_of("started")] == ["0", "1"]
    pipeline = chain(sig("tests.support.celery_app.add", (1, 2)), sig("tests.support.celery_app.add", (3,)))
    assert pipeline.apply_async(queue=celery_harness.queue).get(timeout=15) == 6
    # A body that sets its request's chain to None stops the chain (the sleeper never starts).
    chained = Path(celery_harness.notes) / "chain"
    chained.mkdir()
    stopped = chain(
        sig("tests.support.celery_app.stops_its_chain", (str(chained),)),
        sig("tests.support.celery_app.sleeper", (0,)),
    ).apply_async(queue=celery_harness.queue)
    assert stopped.parent is not None
    assert stopped.parent.get(timeout=15) == str(chained)
    fanout = group(sig("tests.support.celery_app.echo", (i,)) for i in range(4))
    assert fanout.apply_async(queue=celery_harness.queue).get(timeout=15) == [0, 1, 2, 3]
    gathered = chord(
        (sig("tests.support.celery_app.echo", (i,)) for i in range(3)), sig("tests.support.celery_app.total")
    )
    assert gathered.apply_async(queue=celery_harness.queue).get(timeout=20) == 3
    # A task that hands its message back runs again (the same delivery is not taken for a stale one).
    assert (
        celery_harness.send("rejects_once", celery_harness.notes + "/reject").get(timeout=15)
        == "second delivery"
    )
    assert not list(chained.iterdir()), "the stopped chain went on"  # its next step long sent by now
    # Completions leave no lease behind.
    wait_until(
        lambda: not celery_harness.client.zcard("{" + celery_harness.key_prefix + "}:due:celery"),
        5,
        what="every lease released",
    )


def test_an_eta_task_waiting_in_a_worker_is_not_running_and_revoke_still_works(
    celery_harness: CeleryHarness,
) -> None:
    celery_harness.start_worker("prefork")
    later = celery_harness.send("add", 5, 5, countdown=4)
    revoked = celery_harness.send("sleeper", celery_harness.notes, 1.0, countdown=3)
    time.sleep(1.5)
    # Waiting for its ETA in the worker's memory: no lease, nothing "running".
    assert not celery_harness.client.zcard("{" + celery_harness.key_prefix + "}:due:celery")
    celery_harness.app.control.revoke(revoked.id)
    assert later.get(timeout=15) == 10
    celery_harness.wait_state(revoked, {"REVOKED"}, 10)
    assert celery_harness.notes_of("started") == []


def test_a_running_task_revoked_with_terminate_ends_revoked_and_is_not_run_again(
    celery_harness: CeleryHarness,
) -> None:
    celery_harness.start_worker("prefork")
    running = celery_harness.send("sleeper", celery_harness.notes, 30.0)
    wait_until(lambda: celery_harness.notes_of("started"), 15, what="started")
    celery_harness.app.control.revoke(running.id, terminate=True, signal="SIGKILL")
    celery_harness.wait_state(running, {"REVOKED"}, 10)
    marker = celery_harness.send("add", 1, 1)
    assert marker.get(timeout=15) == 2
    time.sleep(LEASE_TTL + 1)  # past a lease expiry and a sweep: nothing brings it back
    assert len(celery_harness.notes_of("started")) == 1
    assert celery_harness.state(running) == "REVOKED"
    assert "recovering it" not in celery_harness.log()


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_a_task_that_stops_beating_is_stopped_as_hung_on_every_pool(
    celery_harness: CeleryHarness, pool: str
) -> None:
    celery_harness.start_worker(
        pool, concurrency=4 if pool == "threads" else 2, env={"ZOMBIEGUARD_PROGRESS_TIMEOUT": "1"}
    )
    result = celery_harness.send("beats_then_stalls", celery_harness.notes, 5)
    stopped_beating = float(
        wait_until(lambda: celery_harness.notes_of("stopped-beating"), 15, what="stopped beating")[0].split()[
            0
        ]
    )
    celery_harness.wait_state(result, {"FAILURE"}, 10)
    assert time.time() - stopped_beating < 2.5
    assert "progress_timeout" in str(result.result)


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_celery_s_own_soft_and_hard_limits_start_working_on_threads_and_solo(
    celery_harness: CeleryHarness, black_hole: int, pool: str
) -> None:
    celery_harness.start_worker(pool, concurrency=4 if pool == "threads" else 1)
    soft = celery_harness.send(
        "cleans_up_on_soft_timeout", celery_harness.notes, soft_time_limit=1, time_limit=5
    )
    assert soft.get(timeout=15) == "cleaned up"
    hard = celery_harness.send(
        "celery_limited_hang", celery_harness.notes, black_hole
    )  # time_limit=2 on the task
    celery_harness.wait_state(hard, {"FAILURE"}, 10)
    assert type(hard.result).__name__ == "TimeLimitExceeded"


def test_a_checkpointed_task_resumes_where_its_killed_attempt_left_off(celery_harness: CeleryHarness) -> None:
    celery_harness.start_worker("prefork")
    result = celery_harness.send("checkpointed", celery_harness.notes, 6, 3)
    assert result.get(timeout=20) == [3, 4, 5]
    items = [int(line.split()[1]) for line in celery_harness.notes_of("item")]
    assert items == [0, 1, 2, 3, 4, 5]  # nothing done twice, nothing skipped


def test_the_guard_decorator_beats_the_task_option_which_beats_the_defaults(
    celery_harness: CeleryHarness,
) -> None:
    celery_harness.start_worker("prefork")
    result = celery_harness.send("guarded_twice", celery_harness.notes)
    started = float(wait_until(lambda: celery_harness.notes_of("started"), 15)[0].split()[0])
    celery_harness.wait_state(result, {"FAILURE"}, 10)
    assert 1.9 < time.time() - started < 3.0  # @guard's 2 s, not the option's 3 s


def test_rate_limits_still_hold_for_guarded_tasks(celery_harness: CeleryHarness) -> None:
    celery_harness.start_worker("prefork")
    results = [celery_harness.send("rate_limited", celery_harness.notes) for _ in range(8)]
    for result in results:
        result.get(timeout=20)
    ran = sorted(float(line.split()[0]) for line in celery_harness.notes_of("ran"))
    assert len(ran) == 8
    assert ran[-1] - ran[0] >= 1.0  # 4/s: eight take well over a second


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_tasks_that_end_within_lease_delay_write_no_lease_and_record_their_queue_s_last_success(
    celery_harness: CeleryHarness, pool: str
) -> None:
    # The throughput of short tasks: no round trip to Redis for a lease they never needed.
    celery_harness.start_worker(pool, env={"ZOMBIEGUARD_LEASE_DELAY": "1.5"})
    results = [celery_harness.send("add", i, i) for i in range(20)]
    assert [result.get(timeout=15) for result in results] == [2 * i for i in range(20)]
    prefix = "{" + celery_harness.key_prefix + "}"
    assert not celery_harness.client.exists(f"{prefix}:fence")  # no fencing token was ever drawn
    wait_until(
        lambda: celery_harness.client.hget(f"{prefix}:completed", celery_harness.queue),
        5,
        what="the queue's last success",
    )
    # A task that runs longer than half its lease_delay holds a lease from then on.
    long = celery_harness.send("long_task", celery_harness.notes, 3.0)
    wait_until(lambda: celery_harness.notes_of("started"), 15, what="started")
    started = time.monotonic()
    celery_harness.wait_leased(long.id, 5)
    assert 0.5 <= time.monotonic() - started < 1.5 + 0.5
    assert long.get(timeout=15) == "done"


def test_a_pool_process_that_exits_after_its_task_still_records_its_queue_s_last_success(
    celery_harness: CeleryHarness,
) -> None:
    # max_tasks_per_child=1: each pool process exits right after its one task, long before its
    # heartbeat would have written the queue's last success.
    celery_harness.start_worker(
        "prefork", env={"ZOMBIEGUARD_LEASE_DELAY": "1.5", "ZG_CELERY_MAX_TASKS_PER_CHILD": "1"}
    )
    assert celery_harness.send("add", 1, 1).get(timeout=15) == 2
    prefix = "{" + celery_harness.key_prefix + "}"
    wait_until(
        lambda: celery_harness.client.hget(f"{prefix}:completed", celery_harness.queue),
        3,
        what="the queue's last success",
    )
