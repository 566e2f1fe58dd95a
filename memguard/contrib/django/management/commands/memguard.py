"""``manage.py memguard status|force|clear|history|guards``: the memguard CLI, with the project's
settings (and its guards: the apps that declare them are loaded, so ``guards`` lists them)."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from memguard.integrations import cli

COMMANDS = ("status", "force", "clear", "history", "guards")


class Command(BaseCommand):
    help = "memguard's operator commands: status, force, clear, history, guards (as the memguard CLI)"

    def run_from_argv(self, argv: list[str]) -> None:
        # The CLI parses its own arguments: its help, errors and exit codes stay the same.
        args = argv[2:]
        if args and args[0] not in COMMANDS and not args[0].startswith("-"):
            raise CommandError(f"unknown memguard command {args[0]!r}; expected one of {', '.join(COMMANDS)}")
        sys.exit(cli.main(args or ["-h"]))

    def handle(self, *args: Any, **options: Any) -> None:  # call_command("memguard", "status")
        code = cli.main(list(args))
        if code:
            raise CommandError(f"memguard exited with {code}", returncode=code)
