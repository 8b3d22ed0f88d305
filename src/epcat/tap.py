# -*- test-case-name: tests.e2e.test_tlsdebug_e2e,tests.unit.test_dump -*-
"""
C{-x/--hexdump}, C{--dump FILE} and C{--pcap FILE}: what the relay shows of
the bytes it moves.  Only these options ever see payload bytes; the logs
never do.
"""

from __future__ import annotations

import sys
from typing import Any

from epcat.relay import Pair, RelaySide

#: pcap direction of the bytes each side sends: the inbound peer is the
#: client of the synthesized stream, the outbound peer its server.
_DIRECTIONS = {"inbound": ">", "outbound": "<"}


def _ip_endpoint(address: Any) -> tuple[str, int] | None:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None or port is None:
        return None
    return host, port


class Tap:
    """
    Sees every relayed chunk of every pair and passes it to the hex dump
    and the pcap writer that were asked for.

    @ivar dumper: an L{epcat.dump.HexDumper}, or L{None}.
    @ivar pcap: an L{epcat.pcap.PcapWriter}, or L{None}.
    """

    def __init__(self, dumper: Any = None, pcap: Any = None) -> None:
        self.dumper = dumper
        self.pcap = pcap
        self._open: set[int] = set()
        #: per pair whose outbound connection is not up yet: what the pcap
        #: stream is to carry once it is (C{(direction, data)}, or
        #: C{(direction, None)} for an end of input), so that the stream
        #: opens with the server's real address and port
        self._waiting: dict[int, list[tuple[str, bytes | None]]] = {}

    @classmethod
    def from_options(cls, hexdump: bool, dump: str | None, pcap: str | None) -> Tap | None:
        """
        The tap for C{-x}, C{--dump FILE} and C{--pcap FILE}, or L{None} when
        none was given.

        @raise OSError: a file cannot be created.
        """
        if not (hexdump or dump or pcap):
            return None
        from epcat.dump import HexDumper

        dumper = None
        if dump:
            # (kept open for the life of the process; closed at exit)
            dumper = HexDumper(open(dump, "a", encoding="utf-8"))  # noqa: SIM115
        elif hexdump:
            dumper = HexDumper(sys.stderr)
        writer = None
        if pcap:
            from epcat.pcap import PcapWriter

            writer = PcapWriter(pcap)
        return cls(dumper, writer)

    def chunk(self, pair: Pair, side: RelaySide, data: bytes, pairs_open: int) -> None:
        """
        C{side} sent C{data} (bytes), to be written to the other side.
        """
        direction = _DIRECTIONS[side.role]
        if self.dumper is not None:
            self.dumper.show_conn = pairs_open > 1
            self.dumper.chunk(direction, data, pair.conn_id)
        if self.pcap is not None:
            conn_id = pair.conn_id
            if conn_id not in self._open:
                if not pair.joined:
                    # (bytes held until the outbound connection is up)
                    self._waiting.setdefault(conn_id, []).append((direction, bytes(data)))
                    return
                self._open_stream(pair)
            self.pcap.data(conn_id, direction, data)

    def joined(self, pair: Pair) -> None:
        """
        Both ends of C{pair} are connected: its pcap stream opens with their
        addresses and carries what was held meanwhile.
        """
        if self.pcap is not None and pair.conn_id in self._waiting:
            self._open_stream(pair)

    def ended(self, pair: Pair, side: RelaySide) -> None:
        """
        C{side} will send nothing more (its EOF).
        """
        if self.pcap is None:
            return
        direction = _DIRECTIONS[side.role]
        if pair.conn_id in self._open:
            self.pcap.shutdown(pair.conn_id, direction)
        elif pair.conn_id in self._waiting:
            # (an end of input before the outbound connection is up, after
            # the bytes held with it; a pair that carried nothing gets no
            # stream, as before)
            self._waiting[pair.conn_id].append((direction, None))

    def closed(self, pair: Pair) -> None:
        """
        The pair is done.
        """
        if self.dumper is not None:
            self.dumper.forget(pair.conn_id)
        if self.pcap is not None and pair.conn_id in self._waiting:
            self._open_stream(pair)  # (the outbound connection never came up)
        if self.pcap is not None and pair.conn_id in self._open:
            self._open.discard(pair.conn_id)
            self.pcap.close(pair.conn_id)
            self.pcap.flush()

    def close(self) -> None:
        """
        At exit: finish the capture file.
        """
        if self.pcap is not None:
            self.pcap.close_all()

    def _open_stream(self, pair: Pair) -> None:
        self._open.add(pair.conn_id)
        client = server = None
        if pair.inbound.transport is not None and not pair.stdio_inbound:
            client = _ip_endpoint(pair.inbound.transport.getPeer())
        if pair.outbound.transport is not None and pair.outbound_description != "stdio":
            server = _ip_endpoint(pair.outbound.transport.getPeer())
        self.pcap.open_stream(pair.conn_id, client, server)
        for direction, data in self._waiting.pop(pair.conn_id, ()):
            if data is None:
                self.pcap.shutdown(pair.conn_id, direction)
            else:
                self.pcap.data(pair.conn_id, direction, data)
