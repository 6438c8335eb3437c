"""What zombieguard enforces on a job (:class:`Policy`), how a deployment is set up (:class:`Settings`),
and how both are resolved from their sources.

Sources, later overriding earlier:

1. the defaults in the field definitions below (and nowhere else);
2. the job framework's own limit for this job (Celery ``time_limit``, RQ ``job_timeout``), so that a
   limit the user already wrote keeps meaning something when no zombieguard source says otherwise;
3. environment variables ``ZOMBIEGUARD_<FIELD>``;
4. ``zombieguard.configure(...)``, Celery ``app.conf.zombieguard`` or Django ``settings.ZOMBIEGUARD``;
5. per-task-name glob rules (``{"billing.*": {...}}``), the most specific pattern last;
6. ``@zombieguard.guard(...)`` on the job function.

A source *sets* a field by naming it; an explicit ``None`` therefore switches an optional limit off
(``guard(progress_timeout=None)`` beats a rule that set one), and an explicit ``0`` is never mistaken
for "not set": it is rejected as the invalid duration it is.

A mistake stops a worker as it starts, with one line naming the key and its fix (Celery's and RQ's
commands print it and exit with 2): an invalid value, a ``heartbeat_interval`` over half of
``lease_ttl``, an unknown ``ZOMBIEGUARD_*`` variable (``ZOMBIEGUARD_CELERY_APP``, the Celery app the
CLI acts through, aside). ``@zombieguard.guard`` works above or below Celery's ``@app.task``.

``configure()`` sets the whole process's configuration, the last call winning. Called in a job's
module, which an RQ worker imports as it takes that module's first job, its policies apply from that
job on; the settings it would change (``redis_url``, ``key_prefix``, ...) stay those the worker
started with, and the worker logs so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fnmatch
import logging
import math
import os
import threading
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from zombieguard.errors import ConfigurationError

log = logging.getLogger("zombieguard")

ENV_PREFIX = "ZOMBIEGUARD_"
OTHER_ENV_NAMES = frozenset({"CELERY_APP"})
"""``ZOMBIEGUARD_*`` variables that are not fields: the Celery app the CLI acts through."""


@dataclass(frozen=True)
class Policy:
    """What zombieguard enforces on one job. Every duration is in seconds.

    Build it from a mapping with :meth:`Policy.from_mapping` to get unknown keys reported; the
    constructor validates the values either way.
    """

    hard_timeout: float | None = None
    """Wall-clock limit of one attempt; past it the job is stopped for real. ``None``: no limit."""
    soft_timeout: float | None = None
    """Past it, ``SoftTimeLimitExceeded`` is raised in the job, which may catch it to clean up."""
    progress_timeout: float | None = None
    """A job that calls neither ``beat()`` nor ``checkpoint().save()`` for this long is hung."""
    lease_ttl: float = 30.0
    """How long a lease lives without renewal: a dead or frozen worker's job is recovered after it."""
    heartbeat_interval: float | None = None
    """How often the worker renews its leases, at most half of ``lease_ttl`` so that a lease outlives
    one late renewal; ``None`` derives a third of ``lease_ttl``."""
    max_stalls: int = 3
    """Recoveries after stalls before the job is dead-lettered (a poison pill)."""
    dead_letter: bool = True
    """Send exhausted jobs to the dead-letter queue; ``False`` fails them in the framework instead."""
    overdue_grace: float = 5.0
    """How long past a hard or progress limit a sweeper waits for the worker to stop the job itself."""
    kill_children: bool = True
    """When zombieguard ends the job (a hard or progress limit, ``zombieguard kill``, a lost lease),
    it ends every process the job started too, and the worker's death ends them as well. ``False``
    leaves them running: for a job that starts programs meant to outlive it."""
    kill_children_grace: float = 1.0
    """Seconds between the SIGTERM and the SIGKILL sent to the processes a job started."""
    capture_stack: bool = True
    """Capture the job's stack before stopping it, for the event and the dead-letter record."""
    lease_delay: float | None = 0.05
    """Celery: a task's first delivery starts at once, and its lease is written once it has run for
    half of this (so within it). A task that ends sooner costs no round trip to Redis; a whole worker
    killed or frozen within this window leaves that task to the broker. ``None``: every lease is
    written before its task starts. RQ always writes it first."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_value(f.name, getattr(self, f.name), f"Policy({f.name}=...)")
        if self.heartbeat_interval is None:
            object.__setattr__(self, "heartbeat_interval", self.lease_ttl / 3)
        elif self.heartbeat_interval > self.lease_ttl / 2:
            raise ConfigurationError(
                f"heartbeat_interval={self.heartbeat_interval!r} is invalid: it must be at most half of "
                f"lease_ttl={self.lease_ttl!r}, or one late renewal lets a live job's lease expire and "
                f"the job run twice; set it to {self.lease_ttl / 3:.3g} or less, or leave it unset "
                "(a third of lease_ttl)"
            )
        if self.lease_delay is not None and self.lease_delay >= self.lease_ttl:
            raise ConfigurationError(
                f"lease_delay={self.lease_delay!r} is invalid: it must be shorter than "
                f"lease_ttl={self.lease_ttl!r}"
            )
        if (
            self.soft_timeout is not None
            and self.hard_timeout is not None
            and self.soft_timeout >= self.hard_timeout
        ):
            raise ConfigurationError(
                f"soft_timeout={self.soft_timeout!r} is invalid: it must be shorter than "
                f"hard_timeout={self.hard_timeout!r}, or the job never gets its chance to clean up"
            )

    @property
    def limited(self) -> bool:
        """Whether the policy sets a limit (hard, soft or progress) for a watchdog to enforce."""
        limits = (self.hard_timeout, self.soft_timeout, self.progress_timeout)
        return limits != (None, None, None)

    @property
    def children_grace(self) -> float | None:
        """Seconds from SIGTERM to SIGKILL for the processes the job started when it is ended; None
        when they are left running (``kill_children=False``)."""
        return self.kill_children_grace if self.kill_children else None

    @property
    def renew_every(self) -> float:
        """The heartbeat interval in seconds, derived or explicit."""
        assert self.heartbeat_interval is not None  # set by __post_init__
        return self.heartbeat_interval

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "policy") -> Policy:
        """Build a policy from a mapping, rejecting unknown keys with the nearest valid one."""
        return cls(**check_fields(cls, values, source))


@dataclass(frozen=True)
class Settings:
    """How a deployment is set up: where the leases live and how the background work runs."""

    redis_url: str | None = None
    """Redis holding leases, as a ``redis://``, ``rediss://`` (TLS), ``unix://``,
    ``redis+sentinel://`` or ``redis+cluster://`` URL with redis-py's connection options
    (docs/deployment.md); ``None`` lets
    an integration use its framework's own Redis connection (a Sentinel one included)."""
    key_prefix: str = "zombieguard"
    """Every key is ``{<key_prefix>}:...``: one hash tag, so the layout works on Redis Cluster."""
    sweep_interval: float = 1.0
    """How often each sweeper looks for expired leases (one round trip when none has expired)."""
    presence_grace: float | None = 0.4
    """How long a worker's presence connection to Redis may stay closed before the worker is taken
    for dead and its running jobs are recovered: a process that dies (SIGKILL, OOM, a crash) has
    its connections closed at once, and a live worker whose connection alone closed opens it again
    well within this. None: off (a dead worker's jobs come back when their leases expire)."""
    presence_interval: float = 0.1
    """How often a watching sweeper looks at the presence connections (two sweepers per integration
    watch; the others stand by, trying for a seat every ``sweep_interval``)."""
    presence_restart_grace: float = 5.0
    """After Redis (re)starts, or fails over to a replica, how long the live workers have to open
    their presence connections again before any worker is taken for dead by its closed connection."""
    sweep_batch: int = 100
    """Most leases one sweep claims; the rest wait for the next sweep."""
    claim_ttl: float = 30.0
    """How long a sweeper owns a claimed lease; one that dies mid-recovery is replaced after it."""
    tombstone_ttl: float = 7200.0
    """How long a finished job's record blocks late redeliveries of an attempt it superseded."""
    state_ttl: float = 604800.0
    """How long an unfinished job's checkpoint and recovery state are kept without being touched."""
    dead_letter_max_entries: int = 10000
    """Entries kept in the dead-letter queue; the oldest go first."""
    dead_letter_max_age: float = 2592000.0
    """Age in seconds past which dead-letter entries are dropped."""
    silence_alert: float | None = None
    """Alert (``queue_silent``) when no job of a queue completed for this many seconds while jobs
    of it waited or ran, and again (``queue_recovered``) when one does. None: off."""
    zombie_thread_share: float = 0.5
    """Celery threads pool: once this share of the pool's threads is stuck past a hard limit where
    no interrupt reaches (a blocking call, C code), the worker shuts down warm and exits, for its
    supervisor to start a fresh one."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_value(f.name, getattr(self, f.name), f"Settings({f.name}=...)")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "settings") -> Settings:
        """Build settings from a mapping, rejecting unknown keys with the nearest valid one."""
        return cls(**check_fields(cls, values, source))


POLICY_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Policy))
SETTINGS_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Settings))

# Which fields hold what: read once from the annotations, the one typed source.
_HINTS: dict[str, Any] = {**typing.get_type_hints(Policy), **typing.get_type_hints(Settings)}


def _field_kind(name: str) -> tuple[type, bool]:
    """(base type, optional?) of a Policy or Settings field."""
    hint = _HINTS[name]
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        base = next(a for a in args if a is not type(None))
        return base, type(None) in args
    return hint, False


def _check_value(name: str, value: Any, source: str) -> None:  # noqa: PLR0912 - one branch per kind
    base, optional = _field_kind(name)
    if value is None:
        if optional:
            return
        raise ConfigurationError(f"{source}: {name}=None is invalid: {name} cannot be switched off")
    if name.endswith("_share"):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise ConfigurationError(f"{source}: {name}={value!r} is invalid: it must be a share in (0, 1]")
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigurationError(f"{source}: {name}={value!r} is invalid: it must be a number of seconds")
        if not math.isfinite(value) or value <= 0:
            raise ConfigurationError(
                f"{source}: {name}={value!r} is invalid: a duration must be a positive number of seconds"
                + (" (use None to switch it off)" if optional else "")
            )
    elif base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"{source}: {name}={value!r} is invalid: it must be a whole number")
        if value < 0:
            raise ConfigurationError(f"{source}: {name}={value!r} is invalid: it must not be negative")
    elif base is bool:
        if not isinstance(value, bool):
            raise ConfigurationError(f"{source}: {name}={value!r} is invalid: it must be True or False")
    elif base is str and (not isinstance(value, str) or not value):
        raise ConfigurationError(f"{source}: {name}={value!r} is invalid: it must be a non-empty string")
    if name == "redis_url":
        from zombieguard.leases.connection import RedisTarget  # noqa: PLC0415 - the leases import this module

        try:
            RedisTarget.from_url(value, name)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{source}: {exc}") from None


def _unknown_key(key: str, valid: Iterable[str], source: str) -> ConfigurationError:
    valid = list(valid)
    near = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ConfigurationError(f"{source}: unknown key {key!r}{hint} Valid keys: {', '.join(sorted(valid))}")


def check_fields(
    cls: type[Policy] | type[Settings], values: Mapping[str, Any], source: str
) -> dict[str, Any]:
    """Validate a partial mapping of ``cls`` fields (names lower-cased) and return it as a dict."""
    valid = POLICY_FIELDS if cls is Policy else SETTINGS_FIELDS
    out: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).lower()
        if key not in valid:
            raise _unknown_key(key, valid, source)
        _check_value(key, value, source)
        out[key] = value
    return out


def flag(text: str) -> bool:
    """A yes/no written as text (``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``);
    ValueError for anything else."""
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(text)


def _parse_env_value(name: str, text: str, env_name: str) -> Any:
    base, optional = _field_kind(name)
    stripped = text.strip()
    if optional and stripped.lower() in {"", "none", "off"}:
        return None
    try:
        if base is bool:
            return flag(stripped)
        if base is float:
            return float(stripped)
        if base is int:
            return int(stripped)
    except ValueError:
        kind = {bool: "true or false", float: "a number of seconds", int: "a whole number"}[base]
        raise ConfigurationError(f"{env_name}={text!r} is invalid: it must be {kind}") from None
    return stripped


def check_env_names(environ: Mapping[str, str]) -> None:
    """Every ``ZOMBIEGUARD_*`` variable names a field (or one of :data:`OTHER_ENV_NAMES`): a
    misspelled one would otherwise leave its protection silently off."""
    valid = {*POLICY_FIELDS, *SETTINGS_FIELDS}
    for env_name in sorted(environ):
        if not env_name.startswith(ENV_PREFIX):
            continue
        name = env_name[len(ENV_PREFIX) :]
        if name.lower() in valid or name in OTHER_ENV_NAMES:
            continue
        names = [ENV_PREFIX + n.upper() for n in sorted({*valid, *(o.lower() for o in OTHER_ENV_NAMES)})]
        near = difflib.get_close_matches(env_name, names, n=1, cutoff=0.75)
        fix = f"did you mean {near[0]}?" if near else "unset it, or rename it"
        raise ConfigurationError(
            f"{env_name} (environment) is not a zombieguard setting; {fix}"
            " (docs/configuration.md lists every variable)"
        )


def layer_from_env(environ: Mapping[str, str], names: Iterable[str]) -> dict[str, Any]:
    """The fields among ``names`` that ``ZOMBIEGUARD_<FIELD>`` variables set, parsed and validated."""
    out: dict[str, Any] = {}
    known = set(names)
    for env_name, text in environ.items():
        if not env_name.startswith(ENV_PREFIX):
            continue
        name = env_name[len(ENV_PREFIX) :].lower()
        if name in known:
            value = _parse_env_value(name, text, env_name)
            _check_value(name, value, f"{env_name} (environment)")
            out[name] = value
    return out


def resolve(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Merge partial layers, later overriding earlier; a layer sets a field by naming it."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return merged


def _specificity(pattern: str) -> tuple[int, int]:
    literal = sum(1 for ch in pattern if ch not in "*?[]")
    return (0 if any(ch in pattern for ch in "*?[") else 1, literal)


F = TypeVar("F", bound=Callable[..., Any])

GUARD_ATTRIBUTE = "__zombieguard_policy__"


def guard(**fields: Any) -> Callable[[F], F]:
    """Set policy fields on one job function, overriding every other source.

    ``@zombieguard.guard(hard_timeout=60, progress_timeout=20)`` goes on a function RQ enqueues, or
    on a Celery task, below or above ``@app.task``. Unknown keys and invalid values fail here, at
    import time.
    """

    def decorate(func: F) -> F:
        above_task = _is_celery_task(func)
        # A task is not touched here: its proxy would make the task before the app is configured.
        name = "a Celery task" if above_task else getattr(func, "__qualname__", repr(func))
        layer = check_fields(Policy, fields, f"@zombieguard.guard on {name}")
        # Cross-field rules (soft < hard) are checked on the layer alone now, and again once merged.
        try:
            Policy(**layer)
        except ConfigurationError as exc:
            raise ConfigurationError(f"@zombieguard.guard on {name}: {exc}") from None
        if above_task:
            with _lock:
                _above_tasks.append((func, types.MappingProxyType(layer)))
        else:
            setattr(func, GUARD_ATTRIBUTE, types.MappingProxyType(layer))
        return func

    return decorate


_above_tasks: list[tuple[object, Mapping[str, Any]]] = []
"""The Celery tasks (or the proxies ``@app.task`` returned) that ``@guard`` was put above, with their
fields: the task hides its function, so they are kept here (see :func:`guard_fields_above`)."""


def guard_fields_above(task_name: str) -> Mapping[str, Any]:
    """The fields ``@guard`` set above ``@app.task`` on the Celery task named ``task_name``, once the
    app has made its tasks (empty when it has none)."""
    with _lock:
        above = list(_above_tasks)
    for task, layer in above:
        with contextlib.suppress(Exception):  # a proxy whose task cannot be made
            if cast(Any, task).name == task_name:
                return layer
    return types.MappingProxyType({})


def _is_celery_task(obj: object) -> bool:
    """Whether ``obj`` is a Celery task, or the proxy ``@app.task`` returns before the app is
    finalized (told by its type alone: touching a proxy would create the task now)."""
    kind = type(obj)
    return kind.__module__ == "celery.local" or any(
        (base.__module__, base.__name__) == ("celery.app.task", "Task") for base in kind.__mro__
    )


def guard_fields(func: object) -> Mapping[str, Any]:
    """The fields ``@guard`` set on ``func`` (empty when it has none)."""
    layer: Mapping[str, Any] = getattr(func, GUARD_ATTRIBUTE, types.MappingProxyType({}))
    return layer


@dataclass(frozen=True)
class Config:
    """A deployment's resolved configuration: settings plus the policy layers above the defaults."""

    settings: Settings = field(default_factory=Settings)
    env_policy: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    rules: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    _cache: dict[Any, Policy] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        *,
        environ: Mapping[str, str] | None = None,
        settings: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
        policies: Mapping[str, Mapping[str, Any]] | None = None,
        source: str = "configure()",
    ) -> Config:
        """Resolve every source once, validating it all now rather than at the first stall."""
        env = os.environ if environ is None else environ
        check_env_names(env)
        settings_layer = resolve(
            layer_from_env(env, SETTINGS_FIELDS),
            check_fields(Settings, settings or {}, source),
        )
        env_policy = layer_from_env(env, POLICY_FIELDS)
        default_layer = check_fields(Policy, defaults or {}, f"{source} defaults")
        rules: list[tuple[str, Mapping[str, Any]]] = []
        for pattern, layer in (policies or {}).items():
            if not isinstance(pattern, str) or not pattern:
                raise ConfigurationError(
                    f"{source} policies: pattern {pattern!r} is invalid: it must be a task-name glob"
                )
            if not isinstance(layer, Mapping):
                raise ConfigurationError(
                    f"{source} policies[{pattern!r}]={layer!r} is invalid: it must be a mapping of fields"
                )
            rules.append((pattern, check_fields(Policy, layer, f"{source} policies[{pattern!r}]")))
        rules.sort(key=lambda rule: _specificity(rule[0]))
        config = cls(Settings(**settings_layer), env_policy, default_layer, tuple(rules))
        # Every rule must make a valid policy on its own over the defaults; report it by pattern.
        for pattern, layer in config.rules:
            try:
                Policy(**resolve(config.env_policy, config.defaults, layer))
            except ConfigurationError as exc:
                raise ConfigurationError(f"{source} policies[{pattern!r}]: {exc}") from None
        Policy(**resolve(config.env_policy, config.defaults))
        return config

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], source: str, environ: Mapping[str, str] | None = None
    ) -> Config:
        """Build from one mapping such as ``app.conf.zombieguard`` or Django's ``ZOMBIEGUARD``.

        Keys are case-insensitive: ``defaults``, ``policies``, and any :class:`Settings` field.
        """
        lowered = {str(k).lower(): v for k, v in values.items()}
        defaults = lowered.pop("defaults", None)
        policies = lowered.pop("policies", None)
        for key in lowered:
            if key not in SETTINGS_FIELDS:
                raise _unknown_key(key, (*SETTINGS_FIELDS, "defaults", "policies"), source)
        return cls.build(
            environ=environ, settings=lowered, defaults=defaults, policies=policies, source=source
        )

    def policy_for(
        self,
        task_name: str,
        *,
        framework: Mapping[str, Any] | None = None,
        decorator: Mapping[str, Any] | None = None,
    ) -> Policy:
        """The policy of one job: every source applied in order (see the module docstring)."""
        key = (
            task_name,
            tuple(sorted((framework or {}).items())),
            tuple(sorted((decorator or {}).items())),
        )
        policy = self._cache.get(key)
        if policy is None:
            if len(self._cache) >= _POLICY_CACHE_SIZE:
                self._cache.clear()
            policy = self._cache[key] = self._resolve(task_name, framework or {}, decorator or {})
        return policy

    def _resolve(self, task_name: str, framework: Mapping[str, Any], decorator: Mapping[str, Any]) -> Policy:
        matching = [layer for pattern, layer in self.rules if fnmatch.fnmatchcase(task_name, pattern)]
        merged = resolve(framework, self.env_policy, self.defaults, *matching, decorator)
        try:
            return Policy(**merged)
        except ConfigurationError as exc:
            raise ConfigurationError(f"policy of task {task_name!r}: {exc}") from None


# Resolving is cheap but sits on every job's path; distinct (task, framework, decorator) keys are few.
_POLICY_CACHE_SIZE = 1024

_lock = threading.Lock()
_current: Config | None = None
_source: Callable[[], Config] | None = None
_fixed: Settings | None = None


def configure(
    *,
    redis_url: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    policies: Mapping[str, Mapping[str, Any]] | None = None,
    **settings: Any,
) -> Config:
    """Set this process's configuration; validated now, and returned.

    ``configure(redis_url="redis://...", defaults={"hard_timeout": 300},
    policies={"billing.*": {"progress_timeout": 60}})``. Other keyword arguments are
    :class:`Settings` fields. Environment variables ``ZOMBIEGUARD_*`` still apply beneath these.
    """
    global _current
    if redis_url is not None:
        settings["redis_url"] = redis_url
    config = Config.build(settings=settings, defaults=defaults, policies=policies)
    with _lock:
        _current = config
        fixed = _fixed
    if fixed is not None and config.settings != fixed:
        changed = [
            f.name
            for f in dataclasses.fields(Settings)
            if getattr(config.settings, f.name) != getattr(fixed, f.name)
        ]
        log.warning(
            "zombieguard.configure() was called after this worker started (by a job's module, say): "
            "its policies apply from the next job on, but the settings it changes (%s) were fixed when "
            "the worker started and stay as they were. Call configure() where the worker reads it "
            "before starting: a module named by rq worker -c, or the module that builds the Celery app",
            ", ".join(changed),
        )
    return config


def fix_settings(settings: Settings | None) -> None:
    """Note that a worker of this process started with ``settings`` (``None``: it stopped): a later
    :func:`configure` changes the policies of its next jobs, and is told that it cannot change these."""
    global _fixed
    with _lock:
        _fixed = settings


def use_config_source(source: Callable[[], Config] | None) -> None:
    """Read the configuration from ``source`` at each use (a framework's settings, read lazily),
    unless :func:`configure` sets one; ``None`` stops."""
    global _source
    with _lock:
        _source = source


def current_config() -> Config:
    """The configuration set by :func:`configure`, else the one a framework's settings give
    (:func:`use_config_source`), else one built from the environment alone."""
    global _current
    with _lock:
        source = _source if _current is None else None
    if source is not None:
        return source()
    with _lock:
        if _current is None:
            _current = Config.build()
        return _current


def reset_config() -> None:
    """Forget :func:`configure`'s configuration (tests use it between cases)."""
    global _current, _fixed
    with _lock:
        _current = _fixed = None
