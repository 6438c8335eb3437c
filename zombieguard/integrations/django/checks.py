"""System checks for ``settings.ZOMBIEGUARD`` (``manage.py check``)."""

from __future__ import annotations

import os
from typing import Any

from django.core import checks

from zombieguard.errors import ConfigurationError
from zombieguard.integrations.django import SOURCE, django_config


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``zombieguard.E001``: the setting is invalid (the message names the key).
    ``zombieguard.W001``: no Redis for the leases is named."""
    try:
        config = django_config()
    except ConfigurationError as exc:
        return [
            checks.Error(
                str(exc),
                hint=f"fix {SOURCE}; the configuration reference (docs/configuration.md) lists every key",
                id="zombieguard.E001",
            )
        ]
    if config.settings.redis_url or os.environ.get("ZOMBIEGUARD_REDIS_URL"):
        return []
    return [
        checks.Warning(
            f"{SOURCE} names no REDIS_URL for the leases",
            hint=f"set {SOURCE}['REDIS_URL'] (Celery workers fall back to a Redis broker or result"
            " backend; RQ workers and manage.py zombieguard need it)",
            id="zombieguard.W001",
        )
    ]


def register() -> None:
    """Register the checks (idempotent: Django keeps one registration per function)."""
    checks.register(check_settings, "zombieguard")
