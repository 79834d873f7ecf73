"""The command group: every command has --help, lazy registration, exit codes."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from app.cli import EXIT_INVALID
from app.cli.main import COMMANDS, LazyGroup, cli, main


def all_commands() -> list[list[str]]:
    paths: list[list[str]] = []

    def walk(group: click.Group, prefix: list[str]) -> None:
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None, name
            paths.append([*prefix, name])
            if isinstance(command, click.Group):
                walk(command, [*prefix, name])

    walk(cli, [])
    return paths


def test_every_registered_command_loads() -> None:
    paths = all_commands()
    assert {p[0] for p in paths} >= set(COMMANDS)
    assert ["templates", "preview"] in paths


@pytest.mark.parametrize("path", [[], *all_commands()], ids=lambda p: " ".join(p) or "spillway")
def test_help_everywhere(path: list[str]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output
    assert "Exit codes" in result.output


def test_usage_error_is_2_and_main_returns_codes() -> None:
    assert CliRunner().invoke(cli, ["send", "--bogus"]).exit_code == 2
    assert main(["--version"]) == 0
    assert main(["templates", "preview", "no_such_template"]) == EXIT_INVALID


def test_a_command_is_registered_with_one_line() -> None:
    @click.command()
    def hello() -> None:
        """Say hello."""
        click.echo("hello")

    group = LazyGroup(name="x", lazy={"status": COMMANDS["status"]})
    group.add_command(hello)
    assert group.list_commands(click.Context(group)) == ["hello", "status"]
    assert CliRunner().invoke(group, ["hello"]).output == "hello\n"
