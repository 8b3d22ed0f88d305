"""
man/epcat.1 is kept in step with the CLI: every option of every command is
on the page, the page has the sections a man page needs, and groff renders
it without a warning.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from epcat.cli import cli

PAGE = Path(__file__).resolve().parents[2] / "man" / "epcat.1"

SECTIONS = [
    "NAME",
    "SYNOPSIS",
    "DESCRIPTION",
    "ENDPOINTS",
    "OPTIONS",
    "EXIT STATUS",
    "ENVIRONMENT",
    "EXAMPLES",
    "SEE ALSO",
]


def page() -> str:
    return PAGE.read_text(encoding="utf-8")


def contexts(
    command: click.Command, parent: click.Context | None = None, name: str = "epcat"
) -> Iterator[click.Context]:
    """
    A context for every command under C{command}, nested as on a command
    line, so that each sees the settings it inherits (C{-h} for help).
    """
    ctx = click.Context(command, info_name=name, parent=parent, **command.context_settings)
    yield ctx
    if isinstance(command, click.Group):
        for sub_name, sub in sorted(command.commands.items()):
            yield from contexts(sub, ctx, sub_name)


def option_names() -> list[tuple[str, str]]:
    """
    (command path, option name) for every long and short option name of
    every command, C{-h}/C{--help} included.
    """
    found = []
    for ctx in contexts(cli):
        for param in ctx.command.get_params(ctx):
            if isinstance(param, click.Option):
                for name in (*param.opts, *param.secondary_opts):
                    found.append((ctx.command_path, name))
    return found


def roff(name: str) -> str:
    """
    An option name as roff source spells it: C{\\-\\-idle\\-timeout}.
    """
    return name.replace("-", "\\-")


def mentions(text: str, name: str) -> bool:
    """
    Does the roff C{text} mention the option C{name} as a whole word (so
    that C{-h} is not found inside C{--half-close-timeout})?
    """
    pattern = r"(?<!\\-)" + re.escape(roff(name)) + r"(?![A-Za-z0-9]|\\-)"
    return re.search(pattern, text) is not None


def sections(text: str) -> dict[str, str]:
    """
    Section name -> the roff source of its body.
    """
    parts = re.split(r'^\.SH[ \t]+"?([^"\n]*?)"?[ \t]*$', text, flags=re.M)
    return {name.strip(): body for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_option_names_are_found_as_whole_words() -> None:
    assert mentions(r".BR \-h \-\-help", "-h")
    assert not mentions(r"\-\-half\-close\-timeout \-\-hexdump", "-h")
    assert not mentions(r"\-\-idle\-timeout", "--idle")
    assert mentions(r"(\fB\-\-idle\-timeout\fR)", "--idle-timeout")


def test_every_option_is_on_the_page() -> None:
    text = page()
    names = option_names()
    assert ("epcat", "--idle-timeout") in names and ("epcat listen", "--once") in names
    assert ("epcat", "-h") in names and ("epcat connect", "-h") in names
    missing = [f"{path} {name}" for path, name in names if not mentions(text, name)]
    assert not missing, "options missing from man/epcat.1: " + ", ".join(missing)


def test_every_command_is_on_the_page() -> None:
    synopsis = sections(page())["SYNOPSIS"]
    missing = [
        ctx.command_path
        for ctx in contexts(cli)
        if ctx.parent is not None
        and not re.search(rf"^\.B\w*\s+(epcat\s+)?{ctx.info_name}\b", synopsis, re.M)
    ]
    assert not missing, "commands missing from the SYNOPSIS: " + ", ".join(missing)


def test_sections() -> None:
    found = list(sections(page()))
    assert [name for name in found if name in SECTIONS] == SECTIONS, found


def test_see_also() -> None:
    see_also = sections(page())["SEE ALSO"]
    for name in ("socat", "ncat", "nc"):
        assert re.search(rf"^\.BR\s+{name}\s+\(1\)", see_also, re.M), name


def test_title() -> None:
    assert re.search(r'^\.TH\s+"?EPCAT"?\s+1\b', page(), re.M)


def test_groff_renders_without_warnings() -> None:
    groff = shutil.which("groff")
    if groff is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("groff is not installed (needed in CI to check man/epcat.1)")
        pytest.skip("groff is not installed")
    done = subprocess.run(
        [groff, "-ww", "-man", "-z", str(PAGE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
