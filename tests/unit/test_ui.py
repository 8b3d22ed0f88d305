"""
Tests for L{epcat.ui}: text and JSON lines on a stream, verbosity, addresses.
"""

from __future__ import annotations

import io
import json

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from epcat.ui import DEBUG, DEFAULT, QUIET, UI, VERBOSE, address_fields, format_address


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


def test_text_on_a_terminal_goes_through_rich() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    ui = UI(DEFAULT, "text", stream)
    assert ui._console is None  # created lazily
    ui.error("red [not markup]")
    assert "epcat: error: red [not markup]" in stream.getvalue()


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
