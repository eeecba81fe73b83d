"""README.md and docs/usage.md stay true to the CLI: their command lines parse, every option is documented."""

from __future__ import annotations

import re
import shlex

import click
import pytest

from focusfuse.cli import main

from conftest import REPO

README = (REPO / "README.md").read_text()
USAGE = (REPO / "docs" / "usage.md").read_text()
SUBSTITUTION = re.compile(r"\$\([^()]*\)")


def shell_blocks(markdown: str) -> list[str]:
    """The text of every fenced block that is shell (``sh``, ``bash``, ``console`` or no language)."""
    blocks, current, language = [], None, None
    for line in markdown.splitlines():
        if line.startswith("```"):
            if current is None:
                current, language = [], line[3:].strip()
            else:
                if language in ("", "sh", "bash", "console"):
                    blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def command_lines(markdown: str) -> list[list[str]]:
    """The arguments after ``focusfuse`` of every command line in the document's code blocks."""
    found = []
    for block in shell_blocks(markdown):
        for line in block.replace("\\\n", " ").splitlines():
            line = SUBSTITUTION.sub("WORD", line.removeprefix("$ ").strip())  # $(...) as one shell word
            tokens = shlex.split(line, comments=True) if "focusfuse" in line else []
            for position, token in enumerate(tokens):
                if token == "focusfuse" or token.endswith("/focusfuse"):
                    found.append(tokens[position + 1 :])
                    break
                if token == "-m" and tokens[position + 1 : position + 2] == ["focusfuse"]:
                    found.append(tokens[position + 2 :])
                    break
    return found


def check_parses(arguments: list[str]) -> None:
    """As click would parse it: a known command, known options with their values, valid choices."""
    assert arguments, "a bare `focusfuse`"
    name, rest = arguments[0], arguments[1:]
    if rest == ["..."]:
        rest = []
    assert name in main.commands, f"no command {name!r}"
    command = main.commands[name]
    context = click.Context(command, info_name=name)
    parser = command.make_parser(context)
    values, _, _ = parser.parse_args(list(rest))
    for parameter in command.params:
        value = values.get(parameter.name)
        if isinstance(parameter.type, click.Choice) and isinstance(value, str):
            assert value in parameter.type.choices, f"{name} {parameter.opts[0]} {value}: not one of its choices"


@pytest.mark.parametrize("arguments", command_lines(README), ids=lambda a: " ".join(a)[:60])
def test_every_command_line_of_the_readme_parses(arguments):
    check_parses(arguments)


@pytest.mark.parametrize("arguments", command_lines(USAGE), ids=lambda a: " ".join(a)[:60])
def test_every_command_line_of_the_usage_reference_parses(arguments):
    check_parses(arguments)


def test_the_checks_catch_a_drifted_command_line():
    with pytest.raises(click.NoSuchOption):
        check_parses(["stack", "./chip/", "-o", "fused.png", "--allign", "auto"])
    with pytest.raises(AssertionError, match="not one of its choices"):
        check_parses(["stack", "./chip/", "-o", "fused.png", "--align", "rigid"])
    with pytest.raises(AssertionError, match="no command"):
        check_parses(["fuse", "./chip/"])


def test_the_readme_shows_commands_and_stays_short():
    assert len(command_lines(README)) >= 6
    assert len(README.splitlines()) <= 250


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_option_is_in_the_usage_reference(command):
    for parameter in main.commands[command].params:
        for option in parameter.opts + parameter.secondary_opts:
            if option.startswith("-"):
                assert option in USAGE, f"{command} {option} is missing from docs/usage.md"


def test_the_licence_is_mit_and_packaged():
    licence = (REPO / "LICENSE").read_text()
    setup = (REPO / "setup.cfg").read_text()
    assert licence.startswith("MIT License") and "license = MIT" in setup
    assert "license_files = LICENSE" in setup  # setuptools puts it in the sdist and the wheel's dist-info
    assert "MIT licence" in " ".join((REPO / "weights" / "README.md").read_text().split())
