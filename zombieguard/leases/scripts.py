"""The Lua scripts of the lease transitions (``zombieguard/leases/lua``), one per state change."""

from __future__ import annotations

from importlib import resources

SCRIPTS = (
    "acquire",
    "renew",
    "progress",
    "release",
    "reestablish",
    "abandon",
    "carry",
    "claim",
    "decide",
    "finish",
    "seize",
    "completed",
    "presence",
    "announce",
    "ended",
)


def load_script(name: str) -> str:
    lua = resources.files("zombieguard.leases") / "lua"
    return (lua / "prelude.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()
