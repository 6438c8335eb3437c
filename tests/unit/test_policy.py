"""Policy validation and resolution of configuration sources."""

from __future__ import annotations

import logging

import pytest

import zombieguard
from zombieguard import ConfigurationError, Policy
from zombieguard.policy import Config, Settings, current_config, fix_settings, guard_fields, reset_config


def test_defaults_live_in_the_fields_and_heartbeat_is_a_third_of_the_lease() -> None:
    policy = Policy()
    assert policy.lease_ttl == 30.0
    assert policy.heartbeat_interval == 10.0
    assert Policy(lease_ttl=3).heartbeat_interval == 1.0
    assert policy.hard_timeout is None


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"hard_timeout": -1}, ["hard_timeout=-1", "positive"]),
        ({"lease_ttl": 0}, ["lease_ttl=0", "positive"]),
        ({"progress_timeout": float("nan")}, ["progress_timeout=nan"]),
        ({"lease_ttl": 3, "heartbeat_interval": 3}, ["heartbeat_interval=3", "lease_ttl=3"]),
        ({"lease_ttl": 10, "heartbeat_interval": 5.5}, ["heartbeat_interval=5.5", "at most half", "3.33"]),
        ({"hard_timeout": 10, "soft_timeout": 10}, ["soft_timeout=10", "hard_timeout=10"]),
        ({"max_stalls": -1}, ["max_stalls=-1", "negative"]),
        ({"max_stalls": True}, ["max_stalls=True", "whole number"]),
        ({"dead_letter": "yes"}, ["dead_letter='yes'", "True or False"]),
        ({"lease_ttl": None}, ["lease_ttl=None", "cannot be switched off"]),
    ],
)
def test_an_invalid_policy_is_refused_naming_the_field_the_value_and_the_rule(
    fields: dict[str, object], names: list[str]
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Policy(**fields)  # type: ignore[arg-type]
    for name in names:
        assert name in str(caught.value)


def test_an_unknown_key_is_refused_with_the_nearest_valid_key_and_the_list() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Policy.from_mapping({"hard_timout": 5}, source="policies['x']")
    message = str(caught.value)
    assert "policies['x']" in message
    assert "'hard_timout'" in message
    assert "did you mean 'hard_timeout'?" in message
    assert "lease_ttl" in message


def test_environment_variables_set_policy_and_settings_fields_parsed_and_validated() -> None:
    config = Config.build(
        environ={
            "ZOMBIEGUARD_HARD_TIMEOUT": "120",
            "ZOMBIEGUARD_DEAD_LETTER": "off",
            "ZOMBIEGUARD_PROGRESS_TIMEOUT": "none",
            "ZOMBIEGUARD_SWEEP_INTERVAL": "0.5",
            "ZOMBIEGUARD_REDIS_URL": "redis://h:1/2",
            "UNRELATED": "1",
        }
    )
    policy = config.policy_for("any.task")
    assert policy.hard_timeout == 120.0
    assert policy.dead_letter is False
    assert policy.progress_timeout is None
    assert config.settings.sweep_interval == 0.5
    assert config.settings.redis_url == "redis://h:1/2"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("ZOMBIEGUARD_HARD_TIMEOUT", "soon", "a number of seconds"),
        ("ZOMBIEGUARD_LEASE_TTL", "-4", "positive"),
        ("ZOMBIEGUARD_MAX_STALLS", "2.5", "a whole number"),
        ("ZOMBIEGUARD_DEAD_LETTER", "maybe", "true or false"),
    ],
)
def test_a_bad_environment_variable_fails_at_start_up_naming_it(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Config.build(environ={name: value})
    assert name in str(caught.value)
    assert expected in str(caught.value)


def test_sources_apply_in_order_framework_env_configure_rules_decorator() -> None:
    config = Config.build(
        environ={"ZOMBIEGUARD_HARD_TIMEOUT": "100", "ZOMBIEGUARD_LEASE_TTL": "20"},
        defaults={"hard_timeout": 200},
        policies={
            "billing.*": {"hard_timeout": 300, "max_stalls": 1},
            "billing.charge": {"hard_timeout": 400},
        },
    )
    # framework < environment < configure defaults
    assert config.policy_for("other", framework={"hard_timeout": 50}).hard_timeout == 200
    assert config.policy_for("other", framework={"soft_timeout": 50}).soft_timeout == 50
    # rules: a glob, and the most specific pattern wins whatever the order given
    assert config.policy_for("billing.refund").hard_timeout == 300
    charge = config.policy_for("billing.charge")
    assert (charge.hard_timeout, charge.max_stalls, charge.lease_ttl) == (400, 1, 20)
    # the decorator beats everything
    assert config.policy_for("billing.charge", decorator={"hard_timeout": 500}).hard_timeout == 500


def test_the_framework_limit_counts_when_no_zombieguard_source_sets_one() -> None:
    config = Config.build(environ={})
    assert config.policy_for("t", framework={"hard_timeout": 180}).hard_timeout == 180


def test_an_explicit_none_switches_a_limit_off_and_an_explicit_zero_is_not_mistaken_for_unset() -> None:
    config = Config.build(environ={}, policies={"reports.*": {"progress_timeout": 60}})
    assert config.policy_for("reports.daily").progress_timeout == 60
    assert config.policy_for("reports.daily", decorator={"progress_timeout": None}).progress_timeout is None
    with pytest.raises(ConfigurationError, match="lease_ttl=0 is invalid"):
        Config.build(environ={}, policies={"reports.*": {"lease_ttl": 0}})
    assert Config.build(environ={}, defaults={"max_stalls": 0}).policy_for("x").max_stalls == 0


def test_a_rule_that_makes_an_invalid_policy_is_reported_by_its_pattern_at_start_up() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Config.build(environ={}, defaults={"hard_timeout": 10}, policies={"slow.*": {"soft_timeout": 20}})
    assert "policies['slow.*']" in str(caught.value)
    assert "soft_timeout=20" in str(caught.value)


def test_a_mapping_such_as_django_settings_is_read_case_insensitively_and_checked() -> None:
    config = Config.from_mapping(
        {"REDIS_URL": "redis://x/1", "DEFAULTS": {"HARD_TIMEOUT": 9}, "POLICIES": {"a.*": {"max_stalls": 2}}},
        source="settings.ZOMBIEGUARD",
        environ={},
    )
    assert config.settings.redis_url == "redis://x/1"
    assert config.policy_for("a.b").hard_timeout == 9
    assert config.policy_for("a.b").max_stalls == 2
    with pytest.raises(
        ConfigurationError, match=r"settings.ZOMBIEGUARD: unknown key 'redis_ulr'; did you mean"
    ):
        Config.from_mapping({"REDIS_ULR": "x"}, source="settings.ZOMBIEGUARD", environ={})


def test_guard_validates_at_import_time_and_records_only_the_fields_it_was_given() -> None:
    @zombieguard.guard(hard_timeout=30, progress_timeout=None)
    def job() -> None:
        """A job."""

    assert dict(guard_fields(job)) == {"hard_timeout": 30, "progress_timeout": None}
    with pytest.raises(ConfigurationError, match=r"@zombieguard\.guard on .*soft_timeout=9"):
        zombieguard.guard(hard_timeout=5, soft_timeout=9)(job)
    with pytest.raises(ConfigurationError, match="unknown key 'timeout'"):
        zombieguard.guard(timeout=5)(job)


def test_configure_sets_the_process_configuration_and_validates_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOMBIEGUARD_LEASE_TTL", "12")
    config = zombieguard.configure(redis_url="redis://127.0.0.1:1/3", defaults={"hard_timeout": 7})
    assert current_config() is config
    assert config.policy_for("t").lease_ttl == 12
    assert config.settings.redis_url == "redis://127.0.0.1:1/3"
    with pytest.raises(ConfigurationError, match="sweep_interval=0"):
        zombieguard.configure(sweep_interval=0)
    with pytest.raises(ConfigurationError, match="did you mean 'key_prefix'"):
        zombieguard.configure(key_prefx="x")


def test_settings_validate_like_policies() -> None:
    with pytest.raises(ConfigurationError, match="key_prefix=''"):
        Settings(key_prefix="")
    with pytest.raises(ConfigurationError, match="dead_letter_max_entries=-1"):
        Settings(dead_letter_max_entries=-1)


def test_a_heartbeat_of_exactly_half_the_lease_is_accepted() -> None:
    assert Policy(lease_ttl=10, heartbeat_interval=5).renew_every == 5


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ZOMBIEGUARD_HARDTIMEOUT", "did you mean ZOMBIEGUARD_HARD_TIMEOUT?"),
        ("ZOMBIEGUARD_LEASETTL", "did you mean ZOMBIEGUARD_LEASE_TTL?"),
        ("ZOMBIEGUARD_REDIS", "did you mean ZOMBIEGUARD_REDIS_URL?"),
        ("ZOMBIEGUARD_WHATEVER", "unset it, or rename it"),
    ],
)
def test_an_unknown_zombieguard_variable_fails_naming_it_and_the_nearest_one(
    name: str, expected: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Config.build(environ={name: "5"})
    assert f"{name} (environment) is not a zombieguard setting; {expected}" in str(caught.value)


def test_the_celery_app_variable_of_the_cli_is_not_taken_for_a_mistake() -> None:
    Config.build(environ={"ZOMBIEGUARD_CELERY_APP": "proj.celery:app", "ZOMBIEGUARD_LEASE_TTL": "5"})


def test_configure_after_a_worker_started_says_which_settings_it_cannot_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fix_settings(Settings(key_prefix="started"))
    try:
        with caplog.at_level(logging.WARNING, logger="zombieguard"):
            zombieguard.configure(key_prefix="started", policies={"jobs.*": {"hard_timeout": 3}})
            assert not caplog.records  # policies only: they apply from the next job on
            zombieguard.configure(key_prefix="elsewhere", sweep_interval=2)
        assert "the settings it changes (key_prefix, sweep_interval) were fixed" in caplog.text
    finally:
        reset_config()
