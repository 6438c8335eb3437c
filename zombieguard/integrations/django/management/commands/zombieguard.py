"""``manage.py zombieguard <command> [...]``: the ``zombieguard`` CLI with Django's settings."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from zombieguard.ops.cli import main


class Command(BaseCommand):
    """Runs ``zombieguard`` (status, kill, dlq, sweep, doctor, metrics) configured by
    ``settings.ZOMBIEGUARD``; ``manage.py zombieguard --help`` lists the commands."""

    help = "zombieguard's operator commands, configured by settings.ZOMBIEGUARD"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Everything after ``zombieguard`` goes to the CLI as it is."""
        parser.add_argument("cli_args", nargs=argparse.REMAINDER)

    def run_from_argv(self, argv: list[str]) -> None:
        """``manage.py zombieguard ...``: the CLI parses its own options (``--json``, ``--help``)."""
        sys.exit(main(argv[2:]))

    def handle(self, *args: Any, **options: Any) -> None:
        """``call_command("zombieguard", "status", "--json")``: a non-zero exit is a CommandError."""
        code = main([*args, *options.get("cli_args", [])])
        if code:
            raise CommandError(f"zombieguard exited with {code}", returncode=code)
