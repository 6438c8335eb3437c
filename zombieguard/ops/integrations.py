"""The integrations the operator's tools act through, found by name.

The core imports no integration: each entry names, as ``module:attribute``, what the tools load
when an integration is in use. Loading one whose framework is not installed raises
:class:`~zombieguard.errors.IntegrationNotAvailable`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Integration:
    """What the tools load of one integration."""

    name: str
    """The name leases record (``JobAdapter.name``)."""
    adapter: str
    """``factory(connection, app)``: the :class:`~zombieguard.adapter.JobAdapter` the CLI acts
    through; ``app`` is what the command line names for it (Celery's ``-A``, RQ's
    ``--rq-url``), or None."""
    checks: str
    """``check(store, app)``: the problems ``zombieguard doctor`` finds in this integration's part of
    the deployment, a list of :class:`~zombieguard.ops.doctor.Finding`."""
    configuration: str | None = None
    """``configuration(app)``: the application's zombieguard configuration and the Redis URL of its
    leases, for an integration whose applications carry their own (Celery's ``app.conf``)."""


REGISTRY: dict[str, Integration] = {
    "rq": Integration(
        "rq",
        adapter="zombieguard.integrations.rq.adapter:cli_adapter",
        checks="zombieguard.integrations.rq.checks:check",
    ),
    "celery": Integration(
        "celery",
        adapter="zombieguard.integrations.celery.adapter:cli_adapter",
        checks="zombieguard.integrations.celery.checks:check",
        configuration="zombieguard.integrations.celery.app:cli_configuration",
    ),
}


def load(spec: str) -> Any:
    """The attribute ``module:attribute`` names."""
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)
