# -*- test-case-name: tests.unit.test_dump -*-
"""
C{-x/--hexdump} and C{--dump FILE}: every relayed chunk as text, in the
layout socat prints with C{-x -v} (issue 5, "Traffic dumps").

Which socat layout, and how it was checked
==========================================

socat has three dump layouts, all produced by C{xiotransfer()} and
C{xioprintblockheader()} in socat.c (the same code in socat 1.7.4.4, the
version installed here, and in 1.8.1.0):

  - C{-v} alone: the header line, then the bytes as text with C{\\r},
    C{\\a} and friends escaped, no trailer;
  - C{-x} alone: the header line, then every byte as C{" %02x"} on one
    single line, no ASCII column and no C{--} trailer;
  - C{-x -v}: the header line, then hex and ASCII columns, then a line
    C{--}.

The issue asks for "hex and ASCII columns, then C{--}", which only
C{-x -v} prints, so that is the layout matched here, byte for byte, against
the output of C{socat -x -v} on this machine (the expected texts in
C{tests/unit/test_dump.py} were recorded from it, timestamps masked)::

    > 2026/11/22 01:29:26.611647  length=8 from=0 to=7
     68 65 6c 6c 6f 0a                                hello.
     61 62                                            ab
    --

The details, all from socat.c:

  - header: C{"> "} (inbound to outbound, socat's left to right) or
    C{"< "}, the local time as C{%Y/%m/%d %H:%M:%S}, a dot, the
    microseconds in six digits, as issue 5's example shows
    (C{23:38:21.000582}; the Debian build of socat 1.7.4.4 prints the same
    582 microseconds as C{.000000582}, nine digits, because it formats
    C{tv_nsec/1000} with C{%09ld}: a socat bug, not copied), a space,
    then C{" length=N from=F to=T"} (so two spaces before C{length}).
    C{from} is the number of bytes seen before this chunk in that
    direction, C{to} is C{from + length - 1};
  - one line per 16 bytes, each byte as C{" %02x"}; a line also ends right
    after a C{0x0a} byte, so text dumps keep their lines;
  - the hex column is padded with three spaces per missing byte up to 16,
    then two spaces, then one character per byte: printable ASCII
    (C{0x20}..C{0x7e}, C's C{isprint} in the C locale) as itself, anything
    else (newline included) as C{.};
  - socat never prints an empty chunk.

epcat's additions: while several pairs are open the header ends in
C{" conn=ID"} (socat relays one pair per process and has no such field),
and the offsets are kept per connection and direction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO

#: bytes per hex line (socat's C{N})
BYTES_PER_LINE = 16

#: bytes.translate table for the ASCII column: printable ASCII as itself,
#: everything else as "."
_PRINTABLE = bytes(b if 0x20 <= b <= 0x7E else 0x2E for b in range(256))

#: the two directions: inbound->outbound and outbound->inbound
DIRECTIONS = (">", "<")


def format_timestamp(when: float) -> str:
    """
    socat's block-header timestamp for C{when}, without the trailing space:
    local time, a dot and the microseconds in six digits
    (C{"2026/11/22 01:29:26.611647"}).

    @param when: seconds since the epoch.
    """
    microseconds = round(when * 1_000_000)
    seconds, fraction = divmod(microseconds, 1_000_000)
    stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(seconds))
    return f"{stamp}.{fraction:06d}"


def format_header(
    direction: str, when: float, length: int, start: int, conn_id: int | None = None
) -> str:
    """
    One block header line, with its newline, as socat's
    C{xioprintblockheader()} prints it, plus C{" conn=ID"} when C{conn_id}
    is given.

    @param direction: C{">"} (inbound to outbound) or C{"<"} (back).
    @param when: seconds since the epoch.
    @param length: bytes in the chunk (at least 1).
    @param start: bytes seen in this direction before the chunk.
    """
    line = (
        f"{direction} {format_timestamp(when)}  length={length} "
        f"from={start} to={start + length - 1}"
    )
    if conn_id is not None:
        line += f" conn={conn_id}"
    return line + "\n"


def format_lines(data: bytes) -> str:
    """
    The hex and ASCII lines socat C{-x -v} prints for C{data}, each ending
    in a newline, without the header and the C{--} trailer.

    @param data: the chunk's bytes.
    """
    out: list[str] = []
    position = 0
    end = len(data)
    while position < end:
        line = data[position : position + BYTES_PER_LINE]
        newline = line.find(b"\n")
        if newline >= 0:
            line = line[: newline + 1]
        padding = "   " * (BYTES_PER_LINE - len(line))
        hex_column = "".join(f" {b:02x}" for b in line)
        text = line.translate(_PRINTABLE).decode("ascii")
        out.append(f"{hex_column}{padding}  {text}\n")
        position += len(line)
    return "".join(out)


def format_chunk(
    direction: str, when: float, data: bytes, start: int, conn_id: int | None = None
) -> str:
    """
    The whole dump of one chunk: header, hex/ASCII lines, C{"--"} line.

    @param direction: C{">"} or C{"<"}.
    @param when: seconds since the epoch.
    @param data: the chunk (not empty).
    @param start: bytes seen in this direction before the chunk.
    @param conn_id: appended to the header as C{conn=ID} unless L{None}.
    """
    return format_header(direction, when, len(data), start, conn_id) + format_lines(data) + "--\n"


class HexDumper:
    """
    Writes every relayed chunk to a text stream in socat's C{-x -v} layout
    (see the module docstring), keeping byte offsets per connection and
    direction.

    Each chunk is written with one C{write()} and flushed at once.  Errors
    of the stream (C{OSError}, or C{ValueError} from a closed file) are
    swallowed: a dump must never break the relay; a chunk that cannot be
    written is lost (its offsets still count), and L{error} keeps the
    exception.

    @ivar error: the last exception the stream raised, else L{None}.
    """

    def __init__(
        self,
        stream: IO[str],
        clock: Callable[[], float] = time.time,
        show_conn: bool = False,
    ) -> None:
        """
        @param stream: an open text stream (C{sys.stderr}, or a file opened
            for writing); not closed by this class.
        @param clock: returns seconds since the epoch, for the headers.
        @param show_conn: append C{conn=ID} to the headers (set while
            several pairs are open).
        """
        self.stream = stream
        self.clock = clock
        self.show_conn = show_conn
        self.error: Exception | None = None
        self._offsets: dict[tuple[int, str], int] = {}

    def chunk(self, direction: str, data: bytes, conn_id: int) -> None:
        """
        Dump one chunk and advance that direction's offset.  An empty chunk
        writes nothing (socat never prints one).

        @param direction: C{">"} (inbound to outbound) or C{"<"} (outbound
            to inbound).
        @param data: the bytes relayed.
        @param conn_id: the pair they belong to.
        @raise ValueError: C{direction} is neither C{">"} nor C{"<"}.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be '>' or '<', not {direction!r}")
        if not data:
            return
        data = bytes(data)
        key = (conn_id, direction)
        start = self._offsets.get(key, 0)
        self._offsets[key] = start + len(data)
        text = format_chunk(
            direction, self.clock(), data, start, conn_id if self.show_conn else None
        )
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError) as e:
            self.error = e

    def offset(self, conn_id: int, direction: str) -> int:
        """
        Bytes dumped so far for C{conn_id} in C{direction}.
        """
        return self._offsets.get((conn_id, direction), 0)

    def forget(self, conn_id: int) -> None:
        """
        Drop the offsets of a finished pair (both directions); a later chunk
        with the same id starts again at offset 0.  Unknown ids are ignored.
        """
        for direction in DIRECTIONS:
            self._offsets.pop((conn_id, direction), None)
