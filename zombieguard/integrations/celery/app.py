"""The Celery app as zombieguard reads it: its configuration, where the leases live, a task's policy,
the app found by name (``module:attribute``), and what its result backend says of a task."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Mapping
from typing import Any

from celery import Celery, states
from celery.app.task import Task
from celery.utils.imports import symbol_by_name

from zombieguard.errors import ConfigurationError
from zombieguard.policy import Config, Policy, check_fields, current_config, guard_fields


def app_config(app: Celery) -> Config:
    """The configuration of ``app``: ``app.conf.zombieguard`` if set, else ``configure()``/environment."""
    mapping = app.conf.get("zombieguard")
    if mapping is None:
        return current_config()
    if not isinstance(mapping, Mapping):
        raise ConfigurationError(
            f"app.conf.zombieguard={mapping!r} is invalid: it must be a mapping of settings, "
            "'defaults' and 'policies'"
        )
    return Config.from_mapping(mapping, source="app.conf.zombieguard")


def leases_url(app: Celery, config: Config) -> str:
    """Where the leases live: ``redis_url``, else the broker or result backend when it is Redis."""
    if config.settings.redis_url:
        return config.settings.redis_url
    for url in (app.conf.broker_url, app.conf.result_backend):
        if isinstance(url, str) and url.startswith(("redis://", "rediss://", "unix://")):
            return url.split(";")[0]
    raise ConfigurationError(
        "app.conf.zombieguard: redis_url is not set, and neither broker_url nor result_backend is a "
        "Redis URL: zombieguard keeps its leases in Redis; set redis_url"
    )


def task_option(task: Task) -> Mapping[str, Any]:
    """The task's ``zombieguard={...}`` option, checked (unknown keys and bad values name the task)."""
    option = getattr(task, "zombieguard", None) or {}
    if not isinstance(option, Mapping):
        raise ConfigurationError(
            f"task {task.name!r}: zombieguard={option!r} is invalid: it must be a mapping"
        )
    return check_fields(Policy, option, f"task {task.name!r} option zombieguard")


def task_policy(config: Config, task: Task, time_limits: Any = None) -> Policy:
    """The policy of one run of ``task``; ``time_limits`` is the message's ``(hard, soft)``, if any."""
    hard, soft = time_limits or (None, None)
    hard = hard or task.time_limit
    soft = soft or task.soft_time_limit
    framework: dict[str, Any] = {}
    if hard:
        framework["hard_timeout"] = float(hard)
    if soft:
        framework["soft_timeout"] = float(soft)
    decorator = {**task_option(task), **guard_fields(task.run)}
    return config.policy_for(task.name, framework=framework, decorator=decorator)


def recorded_end(app: Celery, task_id: str) -> bool:
    """Whether the result backend says the task ended (False when there is no backend)."""
    with contextlib.suppress(Exception):
        return app.AsyncResult(task_id).state in states.READY_STATES
    return False


def app_spec(app: Celery) -> str | None:
    """``module:attribute`` naming ``app`` among the modules imported (as ``celery -A`` found it),
    for another process to import it; None when no module holds it."""
    for name, module in list(sys.modules.items()):
        if name == "__main__" or module is None or name.startswith(("celery.", "zombieguard.")):
            continue
        for attribute, value in list(vars(module).items()):
            if value is app and not attribute.startswith("_"):
                return f"{name}:{attribute}"
    return None


def cli_configuration(spec: str) -> tuple[Config, str]:
    """The zombieguard configuration of the app ``spec`` names (``module:app``), and where its leases
    live: what the CLI acts with when given ``--celery-app``."""
    app = load_app(spec)
    config = app_config(app)
    return config, leases_url(app, config)


def load_app(spec: str) -> Celery:
    """The Celery app named ``module:attribute``, found like ``celery -A`` finds it."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        app = symbol_by_name(spec)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"--celery-app {spec!r} cannot be imported: {exc}") from None
    if not isinstance(app, Celery):
        raise ConfigurationError(f"--celery-app {spec!r} is a {type(app).__name__}, not a Celery app")
    return app


def broker_key(app: Celery) -> str:
    """A short name of the broker the app's workers take messages from (its URL and key prefix): a
    worker hands back what a dead worker on its machine held only when both use the same broker
    (another app's worker would put it back in the wrong place, and delete the record of it)."""
    options = app.conf.broker_transport_options or {}
    broker = f"{app.conf.broker_url}|{options.get('global_keyprefix', '')}"
    return hashlib.sha256(broker.encode()).hexdigest()[:12]
