"""
Tests for L{epcat.dump}: socat's C{-x -v} layout, byte for byte.

The expected texts were recorded from socat 1.7.4.4 on the development
machine, with the timestamps replaced by C{TIMESTAMP}:

    printf 'hello\\nab' | socat -x -v - \\
        SYSTEM:'head -c 3; sleep 0.2; head -c 5; printf "\\x00\\xffOK"'
    socat -x -v OPEN:sample.bin OPEN:/dev/null    # SAMPLE below

(under dash, that C{printf} prints C{x00xffOK} literally).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from epcat.dump import HexDumper, format_chunk, format_lines, format_timestamp

#: the header's timestamp: local time, then microseconds in six digits
#: (socat 1.7.4.4 pads them to nine; the expected texts here were recorded
#: from it and are compared with the timestamps masked)
TIMESTAMP = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.(?:\d{9}|\d{6})")

#: the bidirectional socat session in the module docstring
SESSION = [
    (">", b"hello\nab"),
    ("<", b"hel"),
    ("<", b"lo\nab"),
    ("<", b"x00xffOK"),
]
SESSION_DUMP = [
    "> TIMESTAMP  length=8 from=0 to=7",
    " 68 65 6c 6c 6f 0a                                hello.",
    " 61 62                                            ab",
    "--",
    "< TIMESTAMP  length=3 from=0 to=2",
    " 68 65 6c                                         hel",
    "--",
    "< TIMESTAMP  length=5 from=3 to=7",
    " 6c 6f 0a                                         lo.",
    " 61 62                                            ab",
    "--",
    "< TIMESTAMP  length=8 from=8 to=15",
    " 78 30 30 78 66 66 4f 4b                          x00xffOK",
    "--",
]

#: every byte value, CRLF lines, and runs of newlines, in one chunk
SAMPLE = b"Hello, world!\nGET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) + b"\n\n\nend"
SAMPLE_DUMP = [
    "> TIMESTAMP  length=303 from=0 to=302",
    " 48 65 6c 6c 6f 2c 20 77 6f 72 6c 64 21 0a        Hello, world!.",
    " 47 45 54 20 2f 20 48 54 54 50 2f 31 2e 31 0d 0a  GET / HTTP/1.1..",
    " 48 6f 73 74 3a 20 78 0d 0a                       Host: x..",
    " 0d 0a                                            ..",
    " 00 01 02 03 04 05 06 07 08 09 0a                 ...........",
    " 0b 0c 0d 0e 0f 10 11 12 13 14 15 16 17 18 19 1a  ................",
    " 1b 1c 1d 1e 1f 20 21 22 23 24 25 26 27 28 29 2a  ..... !\"#$%&'()*",
    " 2b 2c 2d 2e 2f 30 31 32 33 34 35 36 37 38 39 3a  +,-./0123456789:",
    " 3b 3c 3d 3e 3f 40 41 42 43 44 45 46 47 48 49 4a  ;<=>?@ABCDEFGHIJ",
    " 4b 4c 4d 4e 4f 50 51 52 53 54 55 56 57 58 59 5a  KLMNOPQRSTUVWXYZ",
    " 5b 5c 5d 5e 5f 60 61 62 63 64 65 66 67 68 69 6a  [\\]^_`abcdefghij",
    " 6b 6c 6d 6e 6f 70 71 72 73 74 75 76 77 78 79 7a  klmnopqrstuvwxyz",
    " 7b 7c 7d 7e 7f 80 81 82 83 84 85 86 87 88 89 8a  {|}~............",
    " 8b 8c 8d 8e 8f 90 91 92 93 94 95 96 97 98 99 9a  ................",
    " 9b 9c 9d 9e 9f a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa  ................",
    " ab ac ad ae af b0 b1 b2 b3 b4 b5 b6 b7 b8 b9 ba  ................",
    " bb bc bd be bf c0 c1 c2 c3 c4 c5 c6 c7 c8 c9 ca  ................",
    " cb cc cd ce cf d0 d1 d2 d3 d4 d5 d6 d7 d8 d9 da  ................",
    " db dc dd de df e0 e1 e2 e3 e4 e5 e6 e7 e8 e9 ea  ................",
    " eb ec ed ee ef f0 f1 f2 f3 f4 f5 f6 f7 f8 f9 fa  ................",
    " fb fc fd fe ff 0a                                ......",
    " 0a                                               .",
    " 0a                                               .",
    " 65 6e 64                                         end",
    "--",
]


def masked(text: str) -> list[str]:
    return TIMESTAMP.sub("TIMESTAMP", text).splitlines()


@pytest.fixture
def utc() -> Iterator[None]:
    """
    Run the test with TZ=UTC, so local-time stamps are predictable.
    """
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_session_matches_socat() -> None:
    out = io.StringIO()
    dumper = HexDumper(out)
    for direction, data in SESSION:
        dumper.chunk(direction, data, conn_id=1)
    assert masked(out.getvalue()) == SESSION_DUMP
    assert out.getvalue().endswith("--\n")


def test_every_byte_matches_socat() -> None:
    out = io.StringIO()
    HexDumper(out).chunk(">", SAMPLE, 7)
    assert masked(out.getvalue()) == SAMPLE_DUMP


def test_timestamp_is_local_time_with_microseconds_in_six_digits(utc: None) -> None:
    # issue 5's example: 2026-11-21 23:38:21.000582 UTC
    when = 1795304301.000582
    assert format_timestamp(when) == "2026/11/21 23:38:21.000582"
    assert format_timestamp(1795304301.874013) == "2026/11/21 23:38:21.874013"
    assert format_timestamp(1795304301.9999996) == "2026/11/21 23:38:22.000000"


def test_header_from_clock(utc: None) -> None:
    out = io.StringIO()
    HexDumper(out, clock=lambda: 1795304301.000582).chunk(">", b"abc", 0)
    assert out.getvalue() == (
        "> 2026/11/21 23:38:21.000582  length=3 from=0 to=2\n"
        " 61 62 63                                         abc\n"
        "--\n"
    )


def test_offsets_per_connection_and_direction() -> None:
    out = io.StringIO()
    dumper = HexDumper(out, clock=lambda: 0.0)
    dumper.chunk(">", b"a" * 10, 1)
    dumper.chunk(">", b"b" * 5, 2)
    dumper.chunk("<", b"c" * 3, 1)
    dumper.chunk(">", b"d" * 20, 1)
    dumper.chunk("<", b"e", 1)
    headers = [line for line in out.getvalue().splitlines() if "length=" in line]
    assert [h.split("  ", 1)[1] for h in headers] == [
        "length=10 from=0 to=9",
        "length=5 from=0 to=4",
        "length=3 from=0 to=2",
        "length=20 from=10 to=29",
        "length=1 from=3 to=3",
    ]
    assert dumper.offset(1, ">") == 30
    assert dumper.offset(1, "<") == 4
    assert dumper.offset(2, ">") == 5


def test_forget_restarts_offsets() -> None:
    out = io.StringIO()
    dumper = HexDumper(out)
    dumper.chunk(">", b"abc", 4)
    dumper.chunk("<", b"de", 4)
    dumper.chunk(">", b"xyz", 5)
    dumper.forget(4)
    dumper.forget(99)
    assert dumper.offset(4, ">") == dumper.offset(4, "<") == 0
    assert dumper.offset(5, ">") == 3
    out.seek(0)
    out.truncate()
    dumper.chunk(">", b"f", 4)
    assert "length=1 from=0 to=0" in out.getvalue()


def test_show_conn_appends_connection_id() -> None:
    out = io.StringIO()
    HexDumper(out, show_conn=True).chunk("<", b"hi", 3)
    header = out.getvalue().splitlines()[0]
    assert TIMESTAMP.sub("T", header) == "< T  length=2 from=0 to=1 conn=3"


def test_empty_chunk_writes_nothing() -> None:
    out = io.StringIO()
    dumper = HexDumper(out)
    dumper.chunk(">", b"", 1)
    assert out.getvalue() == ""
    assert dumper.offset(1, ">") == 0


def test_bad_direction_raises() -> None:
    with pytest.raises(ValueError):
        HexDumper(io.StringIO()).chunk("?", b"x", 1)


def test_memoryview_and_bytearray_accepted() -> None:
    a, b = io.StringIO(), io.StringIO()
    HexDumper(a, clock=lambda: 0.0).chunk(">", memoryview(b"abc\n"), 1)
    HexDumper(b, clock=lambda: 0.0).chunk(">", bytearray(b"abc\n"), 1)
    assert a.getvalue() == b.getvalue() == format_chunk(">", 0.0, b"abc\n", 0)


class Flushes(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def test_each_chunk_is_flushed() -> None:
    out = Flushes()
    dumper = HexDumper(out)
    dumper.chunk(">", b"one", 1)
    dumper.chunk("<", b"two", 1)
    assert len(out.flushed) == 2
    assert out.flushed[0].endswith("--\n")
    assert out.flushed[1] == out.getvalue()


def test_closed_stream_is_ignored() -> None:
    out = io.StringIO()
    out.close()
    dumper = HexDumper(out)
    dumper.chunk(">", b"abc", 1)
    dumper.chunk(">", b"def", 1)
    assert isinstance(dumper.error, ValueError)
    # the lost chunks still count
    assert dumper.offset(1, ">") == 6


class Broken(io.StringIO):
    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_oserror_is_ignored() -> None:
    dumper = HexDumper(Broken())
    dumper.chunk("<", b"abc", 1)
    assert isinstance(dumper.error, BrokenPipeError)


def test_closed_real_file_is_ignored(tmp_path: Path) -> None:
    path = os.path.join(str(tmp_path), "dump.txt")
    with open(path, "w") as f:
        dumper = HexDumper(f)
        dumper.chunk(">", b"abc", 1)
    dumper.chunk(">", b"def", 1)
    with open(path) as f:
        assert masked(f.read())[0] == "> TIMESTAMP  length=3 from=0 to=2"


def reference_lines(data: bytes) -> str:
    """
    A direct transcription of the C{-x -v} loop in socat.c's xiotransfer().
    """
    out = []
    s, end, n = 0, len(data), 16
    while s < end:
        j = min(n, end - s)
        t, i = s, 0
        while i < j:
            c = data[t]
            t += 1
            out.append(f" {c:02x}")
            i += 1
            if c == 0x0A:
                break
        out.append("   " * (n - i) + "  ")
        t, i = s, 0
        while i < j:
            c = data[t]
            t += 1
            if c == 0x0A:
                out.append(".")
                break
            out.append(chr(c) if 0x20 <= c <= 0x7E else ".")
            i += 1
        out.append("\n")
        s = t
    return "".join(out)


@given(st.binary(max_size=200))
def test_lines_match_socat_loop(data: bytes) -> None:
    assert format_lines(data) == reference_lines(data)


@pytest.mark.e2e
@pytest.mark.timeout(30)
def test_against_installed_socat(tmp_path: Path) -> None:
    """
    The real socat -x -v, when installed, dumps the same lines.
    """
    socat = shutil.which("socat")
    if socat is None:
        if os.environ.get("CI") == "true":
            pytest.fail("socat is not installed")
        pytest.skip("socat is not installed")
    data = SAMPLE + bytes(range(255, -1, -1)) * 3 + b"tail without newline"
    path = os.path.join(str(tmp_path), "in.bin")
    with open(path, "wb") as f:
        f.write(data)
    result = subprocess.run(
        [socat, "-b", "65536", "-x", "-v", f"OPEN:{path}", "OPEN:/dev/null"],
        capture_output=True,
        timeout=20,
        check=True,
    )
    expected = masked(result.stderr.decode("ascii"))
    out = io.StringIO()
    HexDumper(out).chunk(">", data, 1)
    assert masked(out.getvalue()) == expected


def test_tap_names_the_connection_only_while_several_pairs_are_open() -> None:
    from types import SimpleNamespace

    from epcat.tap import Tap

    out = io.StringIO()
    tap = Tap(HexDumper(out))
    pair, side = SimpleNamespace(conn_id=1), SimpleNamespace(role="inbound")
    for data, pairs_open in ((b"a", 1), (b"b", 2), (b"c", 1)):
        tap.chunk(pair, side, data, pairs_open)  # type: ignore[arg-type]
    headers = [line for line in out.getvalue().splitlines() if line.startswith("> ")]
    assert [header.endswith(" conn=1") for header in headers] == [False, True, False]
