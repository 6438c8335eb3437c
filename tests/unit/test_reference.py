"""The configuration reference is generated from Policy and Settings, one source."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tools.reference import field_docs, render
from zombieguard.policy import Policy, Settings

REPO = Path(__file__).resolve().parents[2]


def test_docs_configuration_md_is_what_the_generator_makes_of_policy_and_settings_now() -> None:
    assert (REPO / "docs" / "configuration.md").read_text() == render(), (
        "docs/configuration.md is stale: run python -m tools.reference > docs/configuration.md"
    )


def test_every_policy_and_settings_field_is_documented_in_the_reference() -> None:
    for cls in (Policy, Settings):
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
            assert f"| `{f.name}` |" in render()
