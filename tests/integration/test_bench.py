"""The benchmarks stay runnable: their set-up uses the store as the workers do, and each imports."""

from __future__ import annotations

import importlib

import pytest

from bench.core import NoopAdapter, fill
from zombieguard.leases import LeaseState, LeaseStore
from zombieguard.recovery.sweeper import Sweeper


def test_the_core_benchmark_fills_redis_with_real_running_leases_and_sweeps_them(store: LeaseStore) -> None:
    leases = fill(store, 3, "bench-test-")
    report = Sweeper(store, {"bench": NoopAdapter()}, name="bench-test").sweep_once()
    assert report.errors == []
    assert [job_id for job_id, _ in leases] == ["bench-test-0", "bench-test-1", "bench-test-2"]
    for job_id, token in leases:
        record = store.record(job_id)
        assert record is not None
        assert (record.state, record.token) == (LeaseState.RUNNING, token)


@pytest.mark.parametrize(
    ("module", "framework"), [("bench.rq", "rq"), ("bench.celery", "celery"), ("bench.cluster", "redis")]
)
def test_each_framework_benchmark_imports_against_the_current_package(module: str, framework: str) -> None:
    pytest.importorskip(framework)
    importlib.import_module(module)
