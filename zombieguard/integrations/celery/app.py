"""The Celery app as zombieguard reads it: its configuration, where the leases live, a task's policy,
the app found by name (``module:attribute``), and what its result backend says of a task."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import ssl
import sys
import urllib.parse
from collections.abc import Mapping
from typing import Any

from celery import Celery, states
from celery.app.task import Task
from celery.app.utils import find_app

from zombieguard.errors import ConfigurationError
from zombieguard.leases.connection import RedisTarget
from zombieguard.policy import Config, Policy, check_fields, current_config, guard_fields, guard_fields_above


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


def leases_target(app: Celery, config: Config) -> RedisTarget:
    """Where the leases live: ``redis_url``, else the broker when it is Redis (a Sentinel service
    included, with its ``master_name``, ``sentinel_kwargs`` and ``broker_use_ssl``), else the result
    backend when it is."""
    if config.settings.redis_url:
        return RedisTarget.from_url(config.settings.redis_url)
    conf = app.conf
    sources = (
        ("broker_url", conf.broker_url, conf.broker_transport_options, conf.broker_use_ssl),
        (
            "result_backend",
            conf.result_backend,
            conf.result_backend_transport_options,
            conf.redis_backend_use_ssl,
        ),
    )
    for name, url, transport_options, use_ssl in sources:
        if isinstance(url, str) and url.split("://")[0] in _REDIS_SCHEMES:
            return _redis_of(name, url, transport_options or {}, use_ssl)
    raise ConfigurationError(
        "app.conf.zombieguard: redis_url is not set, and neither broker_url nor result_backend is a "
        "Redis URL: zombieguard keeps its leases in Redis; set redis_url"
    )


_REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")
_CERT_REQS = {ssl.CERT_REQUIRED: "required", ssl.CERT_OPTIONAL: "optional", ssl.CERT_NONE: "none"}


def _redis_of(name: str, url: str, transport_options: Mapping[str, Any], use_ssl: Any) -> RedisTarget:
    """The Redis a Celery ``broker_url`` or ``result_backend`` names, as kombu reaches it: its first
    URL, or all of its ``sentinel://`` URLs (``;``-separated) for the primary of ``master_name``."""
    urls = [u for u in url.split(";") if u]
    first = urllib.parse.urlsplit(urls[0])
    if first.scheme != "sentinel":
        target = RedisTarget.from_url(urls[0].split("?")[0], name)
        options = {**target.options, **_query_tls_options(first.query), **_tls_options(name, use_ssl)}
        return dataclasses.replace(target, options=options)
    master = transport_options.get("master_name")
    if not master:
        option = "broker_transport_options" if name == "broker_url" else "result_backend_transport_options"
        raise ConfigurationError(f"app.conf.{option}: master_name is not set, and {name} is a Sentinel URL")
    nodes = tuple(
        (part.hostname or "localhost", part.port or 26379) for part in map(urllib.parse.urlsplit, urls)
    )
    options = _tls_options(name, use_ssl)
    for key, value in (transport_options.get("sentinel_kwargs") or {}).items():
        if key in ("username", "password") and value is not None:
            options[f"sentinel_{key}"] = value
    path = first.path.strip("/")
    return RedisTarget(
        "sentinel",
        nodes,
        service=str(master),
        db=int(path) if path.isdigit() else 0,
        username=urllib.parse.unquote(first.username) if first.username else None,
        password=urllib.parse.unquote(first.password) if first.password else None,
        tls=bool(use_ssl),
        options=options,
    )


_QUERY_TLS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def _query_tls_options(query: str) -> dict[str, Any]:
    """The certificates a ``rediss://`` URL's query gives kombu and Celery's Redis backend
    (``?ssl_cert_reqs=required`` or ``CERT_REQUIRED``, ``ssl_ca_certs=...``); its other options are
    theirs, not the leases'."""
    options: dict[str, Any] = {}
    for key, values in urllib.parse.parse_qs(query).items():
        if key in _QUERY_TLS:
            value = values[-1]
            options[key] = value.lower().removeprefix("cert_") if key == "ssl_cert_reqs" else value
    return options


def _tls_options(name: str, use_ssl: Any) -> dict[str, Any]:
    """Celery's ``broker_use_ssl`` / ``redis_backend_use_ssl`` as connection options."""
    if not isinstance(use_ssl, Mapping):
        return {}
    options = {k: v for k, v in use_ssl.items() if k.startswith("ssl_") and v is not None}
    if "ssl_cert_reqs" in options:
        reqs = options["ssl_cert_reqs"]
        options["ssl_cert_reqs"] = _CERT_REQS.get(reqs, str(reqs).lower().removeprefix("cert_"))
    return options


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
    decorator = {**task_option(task), **guard_fields_above(task.name), **guard_fields(task.run)}
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


def cli_configuration(spec: str) -> tuple[Config, RedisTarget]:
    """The zombieguard configuration of the app ``spec`` names (``module:app``), and where its leases
    live: what the CLI acts with when given ``-A``."""
    app = load_app(spec)
    config = app_config(app)
    return config, leases_target(app, config)


def load_app(spec: str) -> Celery:
    """The Celery app ``spec`` names, in every form ``celery -A`` takes (``proj``, ``proj.celery``,
    ``proj:app``, ``proj.celery:app``), found by Celery's own ``find_app``."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        app = find_app(spec)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"-A {spec!r} cannot be imported: {exc}") from None
    if not isinstance(app, Celery):
        raise ConfigurationError(f"-A {spec!r} is a {type(app).__name__}, not a Celery app")
    return app


def broker_key(app: Celery) -> str:
    """A short name of the broker the app's workers take messages from (its URL and key prefix): a
    worker hands back what a dead worker on its machine held only when both use the same broker
    (another app's worker would put it back in the wrong place, and delete the record of it)."""
    options = app.conf.broker_transport_options or {}
    broker = f"{app.conf.broker_url}|{options.get('global_keyprefix', '')}"
    return hashlib.sha256(broker.encode()).hexdigest()[:12]
