"""Django: ``INSTALLED_APPS += ["zombieguard.integrations.django"]`` and a ``ZOMBIEGUARD`` setting.

``ZOMBIEGUARD = {"REDIS_URL": ..., "DEFAULTS": {...}, "POLICIES": {"app.tasks.*": {...}}}`` (keys in
any case; every :class:`~zombieguard.Settings` field too). It is read at each use, so
``override_settings`` works; ``manage.py check`` reports an invalid one (``zombieguard.E001``) naming
the key, and ``manage.py zombieguard <command>`` runs the ``zombieguard`` CLI with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zombieguard.errors import ConfigurationError
from zombieguard.policy import Config

SOURCE = "settings.ZOMBIEGUARD"

_cache: tuple[Any, Config] | None = None


def settings_mapping() -> Any:
    """Django's ``ZOMBIEGUARD`` setting as it is now ({} when unset)."""
    from django.conf import settings  # noqa: PLC0415 - only once Django is configured

    return getattr(settings, "ZOMBIEGUARD", None) or {}


def django_config() -> Config:
    """The configuration Django's settings give now; rebuilt only when the setting changed."""
    global _cache
    mapping = settings_mapping()
    cached = _cache
    if cached is not None and cached[0] == mapping:
        return cached[1]
    if not isinstance(mapping, Mapping):
        raise ConfigurationError(
            f"{SOURCE}={mapping!r} is invalid: it must be a dict of settings, 'DEFAULTS' and 'POLICIES'"
        )
    config = Config.from_mapping(mapping, source=SOURCE)
    _cache = (_copy(mapping), config)
    return config


def _copy(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A copy to compare with later (a settings dict changed in place is seen as changed)."""
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in mapping.items()}
