"""``spillway``: the console script (``pyproject.toml``: ``spillway = "app.cli.main:main"``).

Settings come from the environment (``SPILLWAY_*``, see docs/configuration.md), as
for the workers. To add a command, write a click command in ``app/cli/<name>.py``
and list it in :data:`COMMANDS` (imported only when used), or call
``cli.add_command(...)``.
"""

from __future__ import annotations

import importlib
import sys

import click

from app.cli import EXIT_CODES_HELP

#: command name -> "module:attribute" of a click command; imported on first use.
COMMANDS: dict[str, str] = {
    "send": "app.cli.send:send",
    "templates": "app.cli.templates:templates",
    "status": "app.cli.status:status",
    "dead": "app.cli.dead:dead",
}


class LazyGroup(click.Group):
    """A group whose commands are imported only when listed or run."""

    def __init__(self, *args: object, lazy: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module, _, attr = self.lazy[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
        return command


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODES_HELP,
)
@click.version_option(package_name="spillway", prog_name="spillway")
def cli() -> None:
    """Spillway: send test events, preview templates, and check the pipeline.

    Settings are read from SPILLWAY_* environment variables, like the workers'
    (docs/configuration.md). Run `spillway COMMAND --help` for each command.
    """


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    try:
        cli.main(args=argv, prog_name="spillway", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
