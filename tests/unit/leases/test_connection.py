"""Where a Redis is: the URLs read, what is shown of them, and what travels to a worker's helpers."""

from __future__ import annotations

import pytest
import redis
import redis.sentinel

from zombieguard.errors import ConfigurationError
from zombieguard.leases.connection import RedisTarget, masked
from zombieguard.policy import Settings


@pytest.mark.parametrize(
    ("url", "described"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://h", "redis://h:6379/0"),
        ("rediss://app:s3cret@h:6380/2?ssl_ca_certs=/ca.pem", "rediss://app:***@h:6380/2"),
        ("unix:///run/redis.sock?db=3", "unix:///run/redis.sock?db=3"),
        ("redis+sentinel://:pw@a:26379,b/mymaster/1", "redis+sentinel://:***@a:26379,b:26379/mymaster/1"),
        ("rediss+sentinel://a/svc", "rediss+sentinel://a:26379/svc/0"),
        ("redis+sentinel://a:1,[::1]:2/s", "redis+sentinel://a:1,[::1]:2/s/0"),
        ("redis+cluster://u:pw@a:7000,b", "redis+cluster://u:***@a:7000,b:6379"),
        ("rediss+cluster://a:7000/0?ssl_ca_certs=/ca.pem", "rediss+cluster://a:7000"),
    ],
)
def test_every_url_form_is_read_and_shown_without_its_password(url: str, described: str) -> None:
    target = RedisTarget.from_url(url)
    assert target.describe() == described
    assert RedisTarget.from_json(target.to_json()) == target  # what a worker's helpers receive


def test_a_sentinel_url_names_the_service_the_database_and_the_sentinels_own_password() -> None:
    target = RedisTarget.from_url("redis+sentinel://u:p%40ss@s1:1,s2:2/primary/4?sentinel_password=sp")
    assert (target.kind, target.nodes, target.service, target.db) == (
        "sentinel",
        (("s1", 1), ("s2", 2)),
        "primary",
        4,
    )
    assert (target.username, target.password) == ("u", "p@ss")
    assert target.options == {"sentinel_password": "sp"}


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis:/nope", "the scheme must be one of"),
        ("http://h/0", "the scheme must be one of"),
        ("redis://h:port/0", "the port 'port' is not a number"),
        ("redis://h/zero", "the database 'zero' is not a number"),
        ("redis:///0", "the host is missing"),
        ("redis://a,b/0", "one host only"),
        ("redis://h/0?sokcet_timeout=1", "option 'sokcet_timeout' is not an option known here"),
        ("redis://h/0?ssl_ca_certs=/ca.pem", "option 'ssl_ca_certs' needs TLS"),
        ("rediss://h/0?ssl_cert_reqs=maybe", "option ssl_cert_reqs='maybe' is not valid"),
        ("redis://h/0?sentinel_password=x", "is for a Sentinel URL only"),
        ("redis+sentinel://a:26379", "the Sentinel service's name is missing"),
        ("redis+cluster://a:7000/1", "a Redis Cluster has database 0 only"),
        ("redis+cluster://a:7000/0?sentinel_password=x", "is for a Sentinel URL only"),
        ("unix://h/run/redis.sock", "a unix URL has no host"),
    ],
)
def test_a_malformed_url_is_refused_naming_the_setting_and_what_is_wrong(url: str, why: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RedisTarget.from_url(url, "redis_url")
    assert str(caught.value).startswith("redis_url=")
    assert why in str(caught.value)


def test_a_malformed_redis_url_setting_fails_where_it_is_configured_without_its_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(redis_url="redis://:hunter2@h:63x9/0")
    assert "Settings(redis_url=...): redis_url='redis://:***@h:63x9/0' is invalid: the port '63x9'" in str(
        caught.value
    )
    assert "hunter2" not in str(caught.value)


def test_masked_hides_the_password_and_secret_options() -> None:
    url = "rediss://u:pw@h/0?ssl_password=kp&ssl_ca_certs=/ca"
    assert masked(url) == "rediss://u:***@h/0?ssl_password=***&ssl_ca_certs=/ca"


def test_a_client_s_target_is_read_back_from_its_pool() -> None:
    plain = RedisTarget.from_client(
        redis.Redis(host="h", port=7, db=2, username="u", password="pw", socket_timeout=3)
    )
    assert (plain.describe(), plain.password, plain.options["socket_timeout"]) == (
        "redis://u:***@h:7/2",
        "pw",
        3,
    )
    tls = redis.Redis(host="h", ssl=True, ssl_ca_certs="/ca.pem")
    assert RedisTarget.from_client(tls).describe() == "rediss://h:6379/0"
    assert RedisTarget.from_client(tls).options["ssl_ca_certs"] == "/ca.pem"
    socket = redis.Redis(unix_socket_path="/run/r.sock", db=1)
    assert RedisTarget.from_client(socket).describe() == "unix:///run/r.sock?db=1"


def test_a_sentinel_managed_client_s_target_is_its_sentinels_and_service() -> None:
    # What RQ's SENTINEL settings build: the sentinels are not contacted until a command is sent.
    manager = redis.sentinel.Sentinel(
        [("s1", 26379), ("s2", 26380)], sentinel_kwargs={"password": "sp"}, db=3, password="pw"
    )
    target = RedisTarget.from_client(manager.master_for("primary"))
    assert target == RedisTarget(
        "sentinel",
        (("s1", 26379), ("s2", 26380)),
        service="primary",
        db=3,
        password="pw",
        options={"sentinel_password": "sp"},
    )
    again = RedisTarget.from_client(target.client())
    assert again == target
