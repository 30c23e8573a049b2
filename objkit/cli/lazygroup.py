"""A click group whose subcommands are imported only when one is resolved (click's documented
"lazily loading subcommands" pattern), so that ``objkit --help`` and every command's ``--help``
start in well under a second: torch, transformers and datasets are imported only by the command
that runs.

A lazy subcommand is one entry ``name: ("module:attribute", "short help")``; the short help is
what the group's ``--help`` lists, so listing the commands imports none of them
(tests/test_cli.py checks that every entry loads a command of that name with an Examples epilog)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import click


class LazyGroup(click.Group):
    def __init__(self, *args, lazy_subcommands: Mapping[str, tuple[str, str]] | None = None,  # noqa: ANN002, ANN003
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands: dict[str, tuple[str, str]] = dict(lazy_subcommands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_subcommands and cmd_name not in self.commands:
            self.add_command(self.load(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def load(self, cmd_name: str) -> click.Command:
        import_path, _ = self.lazy_subcommands[cmd_name]
        module_name, attribute = import_path.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{import_path} is a {type(command).__name__}, not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list, with the declared short help of the commands not loaded yet."""
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                command = self.commands[name]
                if command.hidden:
                    continue
                rows.append((name, command.get_short_help_str(formatter.width - 6 - len(name))))
            else:
                rows.append((name, self.lazy_subcommands[name][1]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
