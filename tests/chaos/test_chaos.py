"""The promise under random combined faults, with real worker processes: every job ends exactly once.

Each test is one chaos run (``tests.chaos.runner``): a private Redis, three guarded workers under a
supervisor, a seeded workload of normal, long, hung and poison jobs, and seeded faults (whole workers
SIGKILLed or frozen, pool processes killed, Redis connections killed, Redis restarted). A fixed seed
runs the same workload and fault choices every time; a random one explores, and is printed, and put
in the failure message with the command that replays it.
"""

from __future__ import annotations

import random

import pytest

from tests.chaos.faults import SENTINEL_FAILOVER
from tests.chaos.history import Verdict
from tests.chaos.runner import Report, RunConfig, run

pytestmark = pytest.mark.slow

FIXED_SEED = 20240607
JOBS = 30
DURATION = 18.0
"""Seconds of faults per run; with start-up and the drain a run takes 25-75 s."""
DRAIN = 50.0
"""Covers the slowest documented recovery: a sweeper that dies mid-recovery leaves its claim for
claim_ttl (30 s) before another sweeper recovers the job."""
RUN_TIMEOUT = 150
"""A run is bounded by its duration, the drain's bound and start-up; this bounds the test."""


def random_seed() -> int:
    """A fresh seed, printed so that a passing run can be replayed too."""
    seed = random.SystemRandom().randrange(1, 10**6)
    print(f"chaos seed: {seed}")
    return seed


def assert_every_job_ended_exactly_once(report: Report) -> None:
    """No job lost, stuck, phantom, committed by a zombie, or ended the wrong way."""
    print(report.render())
    assert report.judgements, "the run judged no job"
    broken = {v: [j.job_id for j in report.broken if j.verdict is v] for v in Verdict if v is not Verdict.OK}
    assert report.ok, (
        f"seed {report.seed}: the promise broke: { ({v.value: ids for v, ids in broken.items() if ids}) }\n"
        f"{report.render()}\n(run directory kept: {report.run_dir})"
    )


@pytest.mark.timeout(RUN_TIMEOUT)
@pytest.mark.parametrize("seed", [FIXED_SEED, None], ids=["fixed-seed", "random-seed"])
def test_every_rq_job_ends_exactly_once_under_random_crashes_freezes_and_redis_faults(
    seed: int | None,
) -> None:
    config = RunConfig(
        framework="rq",
        seed=seed if seed is not None else random_seed(),
        jobs=JOBS,
        duration=DURATION,
        drain=DRAIN,
        workers=("GuardedWorker", "GuardedWorker", "GuardedSimpleWorker"),
    )
    assert_every_job_ended_exactly_once(run(config))


@pytest.mark.timeout(RUN_TIMEOUT)
@pytest.mark.parametrize("seed", [FIXED_SEED, None], ids=["fixed-seed", "random-seed"])
def test_every_celery_job_ends_exactly_once_under_random_crashes_freezes_and_redis_faults(
    seed: int | None,
) -> None:
    config = RunConfig(
        framework="celery",
        seed=seed if seed is not None else random_seed(),
        jobs=JOBS,
        duration=DURATION,
        drain=DRAIN,
        pools=("prefork", "threads", "solo"),
        broker="redis",
    )
    assert_every_job_ended_exactly_once(run(config))


@pytest.mark.timeout(RUN_TIMEOUT)
def test_every_celery_job_on_rabbitmq_ends_exactly_once_under_random_crashes_freezes_and_redis_faults() -> (
    None
):
    from tests.support.celery_harness import RABBITMQ_URL, rabbitmq_answers  # noqa: PLC0415 - Celery only

    if not rabbitmq_answers():
        pytest.skip(f"no RabbitMQ answers at {RABBITMQ_URL}")
    config = RunConfig(
        framework="celery",
        seed=FIXED_SEED,
        jobs=20,
        duration=15.0,
        drain=DRAIN,
        pools=("prefork", "threads", "solo"),
        broker="rabbitmq",
    )
    assert_every_job_ended_exactly_once(run(config))


@pytest.mark.timeout(RUN_TIMEOUT)
@pytest.mark.parametrize("framework", ["rq", "celery"])
def test_every_job_ends_exactly_once_when_the_leases_sentinel_fails_over_among_the_faults(
    framework: str,
) -> None:
    config = RunConfig(
        framework=framework,
        seed=FIXED_SEED,
        jobs=JOBS,
        duration=DURATION,
        drain=DRAIN,
        sentinel=True,
    )
    report = run(config)
    assert any(f.cls == SENTINEL_FAILOVER for f in report.faults), "the run failed the leases' Redis over"
    assert_every_job_ended_exactly_once(report)
