"""The command line's own promises, read off its definition: help everywhere, durations people write."""

from __future__ import annotations

import click
import pytest

from zombieguard.ops.cli import cli
from zombieguard.ops.terminal import parse_duration


def _commands(command: click.Command, path: str = "zombieguard") -> list[tuple[str, click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            found += _commands(sub, f"{path} {name}")
    return found


def test_every_command_and_every_option_has_help_text() -> None:
    for path, command in _commands(cli):
        assert command.help, path
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{path} {param.opts[0]}"


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("90", 90), ("90s", 90), ("1.5m", 90), ("1h30m", 5400), ("2d", 172800), ("500ms", 0.5), (" 2H ", 7200)],
)
def test_a_duration_is_read_as_people_write_it(written: str, seconds: float) -> None:
    assert parse_duration(written) == seconds


@pytest.mark.parametrize("written", ["", "soon", "1x", "h", "1h 30m", "-5"])
def test_anything_else_is_not_a_duration(written: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(written)
