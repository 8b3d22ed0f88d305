"""
Tests for L{epcat.ui}: text and JSON lines on a stream, verbosity, addresses.
"""

from __future__ import annotations

import io
import json
import re

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from epcat.ui import (
    CONTINUATION,
    DEBUG,
    DEFAULT,
    QUIET,
    UI,
    VERBOSE,
    address_fields,
    format_address,
    printable,
)


def emit_all(ui: UI) -> None:
    ui.error("it broke", event="failed", conn=3)
    ui.warning("it wobbled", conn=3)
    ui.info("accepted", "accepted 127.0.0.1:5000", conn=3)
    ui.debug("detail", "some detail", conn=3)


def records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines() -> None:
    stream = io.StringIO()
    emit_all(UI(DEBUG, "json", stream))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    parsed = records(stream)
    assert [r["event"] for r in parsed] == ["failed", "warning", "accepted", "detail"]
    assert [r["level"] for r in parsed] == ["error", "warning", "info", "debug"]
    assert all(r["conn"] == 3 for r in parsed)
    assert parsed[2]["message"] == "accepted 127.0.0.1:5000"
    assert all("time" in r for r in parsed)


def test_json_drops_none_fields_and_stringifies_the_rest() -> None:
    stream = io.StringIO()
    UI(VERBOSE, "json", stream).info("closed", "done", first_closer=None, peer=object())
    [record] = records(stream)
    assert "first_closer" not in record
    assert isinstance(record["peer"], str)


def test_json_message_with_newlines_stays_one_line() -> None:
    stream = io.StringIO()
    UI(DEBUG, "json", stream).debug("traceback", "Traceback:\n  line 1\n  line 2")
    [record] = records(stream)
    assert record["message"].count("\n") == 2


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_quiet_hides_warnings_but_not_errors(log_format: str) -> None:
    stream = io.StringIO()
    emit_all(UI(QUIET, log_format, stream))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert "it broke" in lines[0]


@pytest.mark.parametrize(
    ("verbosity", "shown"),
    [
        (QUIET, ["it broke"]),
        (DEFAULT, ["it broke", "it wobbled"]),
        (VERBOSE, ["it broke", "it wobbled", "accepted 127.0.0.1:5000"]),
        (DEBUG, ["it broke", "it wobbled", "accepted 127.0.0.1:5000", "some detail"]),
    ],
)
def test_verbosity_levels(verbosity: int, shown: list[str]) -> None:
    stream = io.StringIO()
    emit_all(UI(verbosity, "json", stream))
    assert [r["message"] for r in records(stream)] == shown


def test_enabled() -> None:
    ui = UI(QUIET)
    assert ui.enabled("error")
    assert not ui.enabled("warning")
    assert UI(DEFAULT).enabled("warning")
    assert not UI(DEFAULT).enabled("info")


def test_text_lines() -> None:
    stream = io.StringIO()
    emit_all(UI(DEBUG, "text", stream))
    lines = stream.getvalue().splitlines()
    assert lines == [
        "epcat: error: it broke",
        "epcat: warning: it wobbled",
        "epcat: accepted 127.0.0.1:5000",
        "epcat: some detail",
    ]
    assert all(line.startswith("epcat: ") for line in lines)


class Terminal(io.StringIO):
    """
    A stream that says it is a terminal, so that L{UI} writes through rich.
    """

    def isatty(self) -> bool:
        return True


def test_text_on_a_terminal_goes_through_rich() -> None:
    stream = Terminal()
    ui = UI(DEFAULT, "text", stream)
    assert ui._console is None  # created lazily
    ui.error("red [not markup]")
    assert "epcat: error: red [not markup]" in stream.getvalue()


#: a peer's SNI (or a certificate's CN) that tries to end epcat's line and
#: write one of its own, with every kind of line break and control character
FORGED = (
    "evil.example\nepcat: [7] accepted 203.0.113.9:4444 on 127.0.0.1:443"
    "\r\x1b[2K\u2028\u2029\x85\x0b\x0c\x00\x7f\t\u202e"
)
FORGED_ESCAPED = (
    "evil.example\\nepcat: [7] accepted 203.0.113.9:4444 on 127.0.0.1:443"
    "\\r\\x1b[2K\\u2028\\u2029\\x85\\x0b\\x0c\\x00\\x7f\\t\\u202e"
)

#: characters that end a line for someone: str.splitlines, terminals, editors
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def unstyled(output: str) -> str:
    """
    C{output} without rich's SGR codes (colours, bold, dim), if any: what
    is left must hold no ESC at all.
    """
    return re.sub("\x1b\\[[0-9;]*m", "", output)


def assert_one_safe_line(output: str) -> None:
    assert output.endswith("\n")
    assert len(output.splitlines()) == 1
    assert not any(c in LINE_BREAKS for c in output[:-1])
    assert all(c.isprintable() for c in output[:-1])


@pytest.mark.parametrize("level", ["error", "warning", "info", "debug"])
def test_text_escapes_line_breaks_and_controls(level: str) -> None:
    """
    A peer's text with line breaks and control characters in it stays on
    the event's one line, escaped so that it can be read.
    """
    stream = io.StringIO()
    UI(DEBUG, "text", stream).emit(level, "tls", f"[3] SNI received {FORGED}", conn=3)
    output = stream.getvalue()
    assert_one_safe_line(output)
    prefix = {"error": "error: ", "warning": "warning: "}.get(level, "")
    assert output == f"epcat: {prefix}[3] SNI received {FORGED_ESCAPED}\n"


def test_text_escapes_in_every_helper() -> None:
    """
    error(), warning(), info() and debug() all go through the escaping.
    """
    stream = io.StringIO()
    ui = UI(DEBUG, "text", stream)
    ui.error(FORGED)
    ui.warning(FORGED)
    ui.info("accepted", FORGED)
    ui.debug("tls", FORGED)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    assert all(line.endswith(FORGED_ESCAPED) for line in lines)


def test_printable() -> None:
    assert printable("plain [bold] :smile: \\n é") == "plain [bold] :smile: \\n é"
    assert printable("a\nb\rc\x1bd\x7fe\x85f\u2028g\u2029h") == (
        "a\\nb\\rc\\x1bd\\x7fe\\x85f\\u2028g\\u2029h"
    )
    assert printable("\udc80") == "\\udc80"  # a lone surrogate (surrogateescape)


def test_text_on_a_terminal_escapes_line_breaks_and_controls() -> None:
    """
    Through rich (stderr is a terminal) too: one line, the peer's ESC
    escaped; the only ESCs left are rich's own styling.
    """
    stream = Terminal()
    UI(DEBUG, "text", stream).info("tls", f"[3] SNI received {FORGED}")
    output = unstyled(stream.getvalue())
    assert output == f"epcat: [3] SNI received {FORGED_ESCAPED}\n"
    assert_one_safe_line(output)


def test_styled_text_on_a_terminal_escapes_line_breaks_and_controls() -> None:
    stream = Terminal()
    UI(DEBUG, "text", stream).warning(FORGED)
    assert len(stream.getvalue().splitlines()) == 1
    # rich's own SGR codes around the line, no ESC from the peer
    output = unstyled(stream.getvalue())
    assert output == f"epcat: warning: {FORGED_ESCAPED}\n"
    assert_one_safe_line(output)


@pytest.mark.parametrize(
    "text",
    [
        "[bold]not bold[/bold]",
        "[/]",
        "[link=http://example.com]x[/link]",
        "[red",
        ":smile: :thumbs_up:",
        "\\[escaped]",
    ],
)
def test_rich_reads_no_markup_or_emoji_from_messages(text: str) -> None:
    """
    Peer text that looks like rich markup or an emoji code is printed as it
    is: neither interpreted nor an error.
    """
    stream = Terminal()
    UI(DEBUG, "text", stream).info("tls", f"SNI received {text}")
    assert unstyled(stream.getvalue()) == f"epcat: SNI received {text}\n"


TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "x.py", line 1, in f\n'
    "builtins.ValueError: bad\x1b name\nepcat: [7] accepted 203.0.113.9:4444\n"
)


@pytest.mark.parametrize("event", ["traceback", "twisted"])
@pytest.mark.parametrize("stream_type", [io.StringIO, Terminal])
def test_multiline_events_keep_their_lines(event: str, stream_type: type[io.StringIO]) -> None:
    """
    A traceback at -vv stays readable, one line per line, but each line
    after the first starts with L{CONTINUATION}: no line of it can pass for
    an event, and control characters in it are escaped.
    """
    stream = stream_type()
    UI(DEBUG, "text", stream).debug(event, TRACEBACK)
    output = unstyled(stream.getvalue())  # (rich dims debug events)
    assert output.splitlines() == [
        "epcat: Traceback (most recent call last):",
        f'{CONTINUATION}  File "x.py", line 1, in f',
        f"{CONTINUATION}builtins.ValueError: bad\\x1b name",
        f"{CONTINUATION}epcat: [7] accepted 203.0.113.9:4444",
    ]
    assert CONTINUATION == "epcat: | "
    assert all(c.isprintable() for c in output.replace("\n", ""))


def test_raw_keeps_lines_and_escapes_controls() -> None:
    """
    Tables (SIGUSR1, --stats) keep their lines; other control characters
    are escaped.
    """
    stream = io.StringIO()
    UI(QUIET, "text", stream).raw("1 open pair(s)\n     3  /tmp/\x1b[2Ja.sock\n")
    assert stream.getvalue() == "1 open pair(s)\n     3  /tmp/\\x1b[2Ja.sock\n"


def test_json_message_and_fields_are_unchanged() -> None:
    """
    JSON lines carry the peer's text as it was: json.dumps escapes it.
    """
    stream = io.StringIO()
    UI(DEBUG, "json", stream).info("tls", FORGED, sni=FORGED, conn=3)
    output = stream.getvalue()
    assert_one_safe_line(output)
    [record] = records(stream)
    assert record["message"] == FORGED
    assert record["sni"] == FORGED
    assert '"message": "evil.example\\nepcat: [7]' in output


def test_default_stream_is_stderr_at_write_time(capsys: pytest.CaptureFixture[str]) -> None:
    UI().error("to stderr")
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "epcat: error: to stderr\n"


@pytest.mark.parametrize(
    "log_format",
    [
        "json",
        "text",
    ],
)
def test_a_closed_stream_is_ignored(log_format: str) -> None:
    stream = io.StringIO()
    stream.close()
    UI(DEFAULT, log_format, stream).error("nobody listens")


# -- addresses


@pytest.mark.parametrize(
    ("address", "text", "fields"),
    [
        (
            IPv4Address("TCP", "127.0.0.1", 8080),
            "127.0.0.1:8080",
            {"host": "127.0.0.1", "port": 8080},
        ),
        (IPv6Address("TCP", "::1", 8080), "[::1]:8080", {"host": "::1", "port": 8080}),
        (UNIXAddress("/run/app.sock"), "/run/app.sock", {"path": "/run/app.sock"}),
        (UNIXAddress(b"/run/b.sock"), "/run/b.sock", {"path": "/run/b.sock"}),
        (UNIXAddress(None), "unix:(unnamed)", {}),
        (None, "?", {}),
    ],
)
def test_addresses(address: object, text: str, fields: dict[str, object]) -> None:
    assert format_address(address) == text
    assert address_fields(address) == fields


def test_pipe_address_is_stdio() -> None:
    from twisted.internet._posixstdio import PipeAddress

    assert format_address(PipeAddress()) == "stdio"
