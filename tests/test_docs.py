"""Docs that cannot drift: every command is in the README's reference, every setting in
docs/settings.md (tests/test_settings.py), and the README's first screen stays true."""

from __future__ import annotations

from pathlib import Path

import click

from engine.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def command_paths(group: click.Group, prefix: str = "") -> list[str]:
    paths = []
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        paths.append(path)
        if isinstance(command, click.Group):
            paths.extend(command_paths(command, f"{path} "))
    return paths


def test_every_command_is_in_the_readme_reference() -> None:
    reference = README[README.index("## Command reference"):]
    missing = [path for path in command_paths(cli)
               if not any(form in reference for form in (
                   f"touchpoint {path}", f"`{path}`", f"`{path} "))]
    assert missing == []


def test_the_first_screen_has_the_two_commands_and_they_exist() -> None:
    first_screen = "\n".join(README.splitlines()[:25])
    assert "make demo" in first_screen and "make test" in first_screen
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_linked_docs_exist() -> None:
    for link in ("docs/settings.md", "bench/README.md"):
        assert link in README
        assert (ROOT / link).is_file(), link
