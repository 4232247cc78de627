"""The command line as scripts meet it: --json on every list, flags that read as flags."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import typer
from typer.testing import CliRunner

from sceau.cli.main import cli
from support import run_cli


def _commands() -> Iterator[tuple[tuple[str, ...], typer.core.TyperCommand]]:
    def walk(command: object, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], object]]:
        children = getattr(command, "commands", None)
        if children:
            for name, child in children.items():
                yield from walk(child, (*path, name))
        else:
            yield path, command

    yield from walk(typer.main.get_command(cli), ())  # type: ignore[misc]


COMMANDS = sorted(path for path, _ in _commands())


def _options(path: tuple[str, ...]) -> set[str]:
    command = dict(_commands())[path]
    return {opt for param in command.params for opt in getattr(param, "opts", [])}


@pytest.mark.parametrize("path", [p for p in COMMANDS if p[-1] == "list"], ids=" ".join)
def test_every_list_command_takes_json(path: tuple[str, ...]) -> None:
    assert "--json" in _options(path)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_shows_flags_as_flags(path: tuple[str, ...]) -> None:
    shown = CliRunner().invoke(cli, [*path, "--help"], terminal_width=100)
    assert shown.exit_code == 0, shown.output
    assert "<bool>" not in shown.output
    assert "--help" in shown.output


def test_help_in_a_pipe() -> None:
    shown = run_cli("key", "list", "--help").stdout.decode()
    lines = {line.split()[0]: line for line in shown.splitlines() if line.strip().startswith("--")}
    assert lines["--json"].split()[1] == "print"  # the help text, not a value placeholder
    assert "<bool>" not in shown and "<int" in lines["--limit"]
