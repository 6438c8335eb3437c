"""The Django app: reads ``settings.ZOMBIEGUARD`` lazily and registers the system checks."""

from __future__ import annotations

from django.apps import AppConfig

from zombieguard.policy import use_config_source


class ZombieGuardConfig(AppConfig):
    """``zombieguard.integrations.django`` in ``INSTALLED_APPS``."""

    name = "zombieguard.integrations.django"
    label = "zombieguard"
    verbose_name = "zombieguard"

    def ready(self) -> None:
        """Make ``settings.ZOMBIEGUARD`` the configuration source and register the checks."""
        from zombieguard.integrations.django import checks, django_config  # noqa: PLC0415

        use_config_source(django_config)
        checks.register()
