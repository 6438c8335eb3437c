"""Fixtures shared by every test: a real Redis, per-test key isolation, contained-error checks."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.support.cleanup import delete_prefixed
from zombieguard import containment
from zombieguard.demo.embedded import EmbeddedRedis
from zombieguard.leases import LeaseStore
from zombieguard.policy import Settings, reset_config

# On a shared Redis the tests keep to a database of their own, and within it to key prefixes of
# their own, which they delete afterwards. Nothing else is ever flushed.
SHARED_REDIS = "redis://127.0.0.1:6379/9"


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """ZG_TEST_REDIS_URL, else the local Redis (db 9), else a throwaway redis-server."""
    explicit = os.environ.get("ZG_TEST_REDIS_URL")
    if explicit:
        yield explicit
    elif _answers(SHARED_REDIS):
        yield SHARED_REDIS
    else:
        with EmbeddedRedis() as server:
            yield server.url


@pytest.fixture
def key_prefix() -> str:
    """A key prefix no other test (or user) has."""
    return f"zgtest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the test Redis."""
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def settings(key_prefix: str) -> Settings:
    """Settings with the test's own key prefix and quick sweeps."""
    return Settings(key_prefix=key_prefix, sweep_interval=0.1, claim_ttl=5.0)


@pytest.fixture
def store(client: redis.Redis, settings: Settings) -> Iterator[LeaseStore]:
    """A LeaseStore under the test's own prefix; its keys are deleted afterwards."""
    yield LeaseStore(client, settings)
    delete_prefixed(client, "{" + settings.key_prefix + "}*")


@pytest.fixture(autouse=True)
def _contained_errors_fail_the_test(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """zombieguard contains its own errors so as not to hurt the host; in tests they must not hide."""
    seen: list[str] = []

    def observe(where: str, exc: BaseException) -> None:
        seen.append(f"{where}: {exc!r}")

    containment.add_observer(observe)
    yield seen
    containment.remove_observer(observe)
    if seen and request.node.get_closest_marker("contained_errors_expected") is None:
        pytest.fail("zombieguard contained internal errors:\n" + "\n".join(seen))


@pytest.fixture(autouse=True)
def _fresh_config() -> Iterator[None]:
    reset_config()
    yield
    reset_config()


@pytest.fixture
def private_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server of the test's own, which the test may stop and restart."""
    server = EmbeddedRedis().start()
    yield server
    with contextlib.suppress(Exception):
        server.close()
