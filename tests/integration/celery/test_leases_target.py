"""Where a Celery app's leases live: named, or following its broker (a Sentinel service included)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from celery import Celery

from zombieguard.errors import ConfigurationError
from zombieguard.integrations.celery.app import app_config, leases_target
from zombieguard.leases.connection import RedisTarget


def _target(**conf: Any) -> RedisTarget:
    app = Celery("zg-target", set_as_current=False)
    app.conf.update(conf)
    return leases_target(app, app_config(app))


def test_the_leases_follow_a_tls_broker_with_its_certificates() -> None:
    target = _target(
        broker_url="rediss://:pw@broker:6380/1",
        broker_use_ssl={
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
            "ssl_ca_certs": "/ca.pem",
            "ssl_certfile": "/c.pem",
        },
    )
    assert target.describe() == "rediss://:***@broker:6380/1"
    assert target.options == {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": "/ca.pem",
        "ssl_certfile": "/c.pem",
    }
    assert target.password == "pw"


@pytest.mark.parametrize("reqs", ["required", "CERT_REQUIRED"])
def test_the_leases_follow_a_tls_result_backend_with_the_certificates_its_url_gives(reqs: str) -> None:
    target = _target(
        broker_url="amqp://guest@localhost//",
        result_backend=f"rediss://:pw@backend:6380/2?ssl_cert_reqs={reqs}&ssl_ca_certs=/ca.pem&x=1",
    )
    assert target.describe() == "rediss://:***@backend:6380/2"
    assert target.options == {"ssl_cert_reqs": "required", "ssl_ca_certs": "/ca.pem"}


def test_the_leases_follow_a_sentinel_broker_to_the_primary_of_its_master_name() -> None:
    target = _target(
        broker_url="sentinel://:pw@s1:26379/2;sentinel://s2:26380/2",
        broker_transport_options={"master_name": "primary", "sentinel_kwargs": {"password": "sp"}},
    )
    assert target == RedisTarget(
        "sentinel",
        (("s1", 26379), ("s2", 26380)),
        service="primary",
        db=2,
        password="pw",
        options={"sentinel_password": "sp"},
    )


def test_a_sentinel_broker_without_master_name_is_refused_naming_the_option() -> None:
    with pytest.raises(ConfigurationError, match=r"broker_transport_options: master_name is not set"):
        _target(broker_url="sentinel://s1:26379")


def test_the_leases_follow_a_redis_result_backend_when_the_broker_is_not_redis() -> None:
    target = _target(broker_url="amqp://guest@localhost//", result_backend="redis://backend:6379/4")
    assert target.describe() == "redis://backend:6379/4"


def test_redis_url_wins_over_the_broker() -> None:
    target = _target(broker_url="redis://broker/0", zombieguard={"redis_url": "redis+sentinel://s1/leases/3"})
    assert target.describe() == "redis+sentinel://s1:26379/leases/3"


def test_without_any_redis_the_app_is_refused_naming_redis_url() -> None:
    with pytest.raises(ConfigurationError, match="set redis_url"):
        _target(broker_url="amqp://guest@localhost//", result_backend="rpc://")
