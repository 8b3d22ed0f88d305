# -*- test-case-name: tests.unit.test_pcap,tests.e2e.test_pcap_tshark -*-
"""
C{--pcap FILE}: the relayed plaintext of every pair as a capture file that
Wireshark and tshark open, one synthesized TCP connection per pair
(issue 5, "Traffic dumps").

The file
========

A classic libpcap file as specified by draft-ietf-opsawg-pcap ("PCAP
Capture File Format", https://datatracker.ietf.org/doc/draft-ietf-opsawg-pcap/):

  - file header (section 4): magic C{0xa1b2c3d4} (timestamps in seconds and
    microseconds), version 2.4, SnapLen 262144, LinkType 101;
  - one packet record per segment (section 5): seconds, microseconds,
    captured length, original length (equal: nothing is truncated).

Integers are written little-endian; readers tell the byte order from the
magic number.  LinkType 101 is C{LINKTYPE_RAW}
(https://www.tcpdump.org/linktypes.html): each packet begins with its IPv4
or IPv6 header, told apart by the version nibble, with no link-layer
header to invent.

The packets
===========

For each pair, L{PcapWriter.open_stream} writes a three-way handshake
(SYN, SYN-ACK, ACK; RFC 9293 section 3.5), L{PcapWriter.data} writes the
payload as PSH/ACK segments of at most L{MAX_SEGMENT} bytes, each acknowledged
by the peer with a bare ACK, and L{PcapWriter.close} writes the FIN
exchange (RFC 9293 section 3.6).  Sequence numbers count payload bytes from
fixed initial sequence numbers (L{CLIENT_ISN}, L{SERVER_ISN}), modulo 2**32.
The IPv4 header (RFC 791) has DF set, TTL 64 and a correct header
checksum; the IPv6 header (RFC 8200) hop limit 64; TCP headers (RFC 9293
section 3.1) have no options, window 65535, and a checksum over the
pseudo-header (RFC 9293 section 3.1 for IPv4, RFC 8200 section 8.1 for
IPv6).  Checksums are the Internet checksum of RFC 1071.

Addresses
=========

The client is the inbound peer, the server the outbound one; their real
addresses and ports are used.  An end that has no IP address (a UNIX
socket, stdin/stdout, anything C{ipaddress} cannot parse, or L{None}) gets
a placeholder: C{127.0.0.1} for a client, C{127.0.0.2} for a server, with
the port L{placeholder_port}C{(conn_id)} (49152 + conn_id modulo 16384,
in the dynamic range of RFC 6335), so each pair stays a stream of its own.
When one end is IPv6 and the other IPv4, the IPv4 address is written as
an IPv4-mapped IPv6 address (C{::ffff:a.b.c.d}, RFC 4291 section 2.5.5.2).

The file is created with mode 0600: it holds decrypted traffic.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

#: classic pcap magic: microsecond timestamps (draft-ietf-opsawg-pcap section 4)
MAGIC = 0xA1B2C3D4
VERSION = (2, 4)
#: bytes of each packet kept (all of ours fit)
SNAPLEN = 262144
#: LINKTYPE_RAW: raw IPv4 or IPv6, https://www.tcpdump.org/linktypes.html
LINKTYPE_RAW = 101

#: most payload bytes in one TCP segment: the IPv4 total length is 16 bits
#: (65535 - 20 IP - 20 TCP = 65495), so split a little below that
MAX_SEGMENT = 65000

#: initial sequence numbers of the synthesized connections
CLIENT_ISN = 1_000_000
SERVER_ISN = 2_000_000

#: TCP window advertised in every segment, bytes
WINDOW = 65535
TTL = 64

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_PROTO_TCP = 6

Address = tuple[str, int]
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def placeholder_port(conn_id: int) -> int:
    """
    The port given to an end without an IP address: 49152 + C{conn_id}
    modulo 16384 (the dynamic ports of RFC 6335).
    """
    return 49152 + conn_id % 16384


def internet_checksum(data: bytes) -> int:
    """
    The Internet checksum of RFC 1071: the ones' complement of the ones'
    complement sum of C{data} as big-endian 16-bit words (an odd length is
    padded with a zero byte).

    The ones' complement sum is the sum modulo 0xffff (as 2**16 = 1 modulo
    0xffff), except that a non-zero sum is 0xffff rather than 0; so the
    whole buffer is summed as one big integer, which is fast in Python.
    """
    if len(data) % 2:
        data += b"\0"
    number = int.from_bytes(data, "big")
    total = number % 0xFFFF
    if total == 0 and number:
        total = 0xFFFF
    return ~total & 0xFFFF


def _ip(address: Address | None) -> tuple[_IP, int] | None:
    """
    C{(ip_address, port)} for an IP address and port, else L{None}.
    """
    if address is None:
        return None
    try:
        host, port = address[0], int(address[1])
        ip = ipaddress.ip_address(host)
    except (TypeError, ValueError, IndexError):
        return None
    if not 0 <= port <= 0xFFFF:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        ip = ipaddress.IPv6Address(ip.packed)
    return ip, port


@dataclass
class _Side:
    """
    One end of a synthesized connection.

    @ivar ip: its address as 4 or 16 bytes.
    @ivar port: its TCP port.
    @ivar seq: the next sequence number it sends.
    @ivar fin: whether it has sent its FIN.
    """

    ip: bytes
    port: int
    seq: int
    fin: bool = False


@dataclass
class _Stream:
    """
    One synthesized connection.
    """

    client: _Side
    server: _Side
    ipv6: bool

    def ends(self, direction: str) -> tuple[_Side, _Side]:
        """
        C{(sender, receiver)} for C{direction} (C{">"}: client to server).
        """
        if direction == ">":
            return self.client, self.server
        return self.server, self.client


class PcapWriter:
    """
    Writes synthesized TCP connections carrying the relayed bytes to a
    pcap file (see the module docstring for the format and its sources).

    Errors writing the file (C{OSError}) never reach the caller: after the
    first one nothing more is written and L{error} holds it, so a full disk
    cannot break the relay.  Opening the file does raise.

    @ivar error: the first C{OSError} from writing, else L{None}.
    """

    def __init__(self, path: str | os.PathLike[str], clock: Callable[[], float] = time.time):
        """
        Create (or truncate) C{path} with mode 0600 and write the file
        header.

        @param path: the capture file.
        @param clock: returns seconds since the epoch, for packet timestamps.
        @raise OSError: the file cannot be created or written.
        """
        self.clock = clock
        self.error: OSError | None = None
        self._streams: dict[int, _Stream] = {}
        self._ip_id = 0
        # O_CREAT's mode only applies to a new file: fchmod an existing one
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
        except OSError:
            os.close(fd)
            raise
        self._file: BinaryIO = os.fdopen(fd, "wb")
        try:
            # draft-ietf-opsawg-pcap section 4: magic, major, minor, two
            # reserved fields (once thiszone and sigfigs), SnapLen, LinkType
            self._file.write(struct.pack("<IHHIIII", MAGIC, *VERSION, 0, 0, SNAPLEN, LINKTYPE_RAW))
            self._file.flush()
        except OSError:
            self._file.close()
            raise

    # -- public API

    def open_stream(
        self, conn_id: int, client: Address | None = None, server: Address | None = None
    ) -> None:
        """
        Start the connection of pair C{conn_id}: write SYN, SYN-ACK and ACK.
        If C{conn_id} is open already, that connection is L{close}d first.

        @param client: the inbound peer's C{(host, port)}; L{None} or a
            non-IP address gets a placeholder (module docstring).
        @param server: the outbound peer's C{(host, port)}, likewise.
        """
        self.close(conn_id)
        port = placeholder_port(conn_id)
        c = _ip(client) or (ipaddress.IPv4Address("127.0.0.1"), port)
        s = _ip(server) or (ipaddress.IPv4Address("127.0.0.2"), port)
        ipv6 = c[0].version == 6 or s[0].version == 6

        def packed(ip: _IP) -> bytes:
            if ipv6 and ip.version == 4:
                return b"\0" * 10 + b"\xff\xff" + ip.packed  # ::ffff:a.b.c.d
            return ip.packed

        stream = _Stream(
            client=_Side(packed(c[0]), c[1], CLIENT_ISN),
            server=_Side(packed(s[0]), s[1], SERVER_ISN),
            ipv6=ipv6,
        )
        self._streams[conn_id] = stream
        client_side, server_side = stream.client, stream.server
        self._segment(stream, client_side, server_side, SYN, ack=False)
        client_side.seq = (client_side.seq + 1) % 2**32
        self._segment(stream, server_side, client_side, SYN | ACK)
        server_side.seq = (server_side.seq + 1) % 2**32
        self._segment(stream, client_side, server_side, ACK)
        self.flush()

    def data(self, conn_id: int, direction: str, payload: bytes) -> None:
        """
        Write C{payload} as PSH/ACK segments of at most L{MAX_SEGMENT} bytes
        from one end, each followed by the other end's ACK.  An unknown (or
        closed) C{conn_id} is first opened with placeholder addresses, so no
        byte is lost; an empty payload writes nothing.

        @param direction: C{">"} (client to server) or C{"<"} (back).
        @raise ValueError: C{direction} is neither C{">"} nor C{"<"}.
        """
        if direction not in (">", "<"):
            raise ValueError(f"direction must be '>' or '<', not {direction!r}")
        if not payload:
            return
        stream = self._streams.get(conn_id)
        if stream is None:
            self.open_stream(conn_id)
            stream = self._streams[conn_id]
        sender, receiver = stream.ends(direction)
        view = memoryview(bytes(payload))
        for start in range(0, len(view), MAX_SEGMENT):
            chunk = bytes(view[start : start + MAX_SEGMENT])
            self._segment(stream, sender, receiver, PSH | ACK, chunk)
            sender.seq = (sender.seq + len(chunk)) % 2**32
            self._segment(stream, receiver, sender, ACK)
        self.flush()

    def shutdown(self, conn_id: int, direction: str) -> None:
        """
        Half-close: the sender of C{direction} sends its FIN, the other end
        ACKs it.  Does nothing for an unknown or closed C{conn_id} or when
        that end has already sent its FIN.

        @param direction: C{">"} (the client finishes sending) or C{"<"}
            (the server does).
        @raise ValueError: C{direction} is neither C{">"} nor C{"<"}.
        """
        if direction not in (">", "<"):
            raise ValueError(f"direction must be '>' or '<', not {direction!r}")
        stream = self._streams.get(conn_id)
        if stream is None:
            return
        sender, receiver = stream.ends(direction)
        if sender.fin:
            return
        self._fin(stream, sender, receiver)
        self._segment(stream, receiver, sender, ACK)
        self.flush()

    def close(self, conn_id: int) -> None:
        """
        End pair C{conn_id}: each end that has not yet sent its FIN sends
        one (the client first), the last FIN is ACKed.  An unknown or
        already closed C{conn_id} is ignored.
        """
        stream = self._streams.pop(conn_id, None)
        if stream is None:
            return
        pending = [ends for ends in map(stream.ends, "><") if not ends[0].fin]
        for sender, receiver in pending:
            self._fin(stream, sender, receiver)
        if pending:
            sender, receiver = pending[-1]
            self._segment(stream, receiver, sender, ACK)
        self.flush()

    def close_all(self) -> None:
        """
        L{close} every open pair, then close the file.  Calling it again
        does nothing.
        """
        for conn_id in list(self._streams):
            self.close(conn_id)
        try:
            self._file.close()
        except OSError as e:
            self.error = self.error or e

    def flush(self) -> None:
        """
        Push buffered packets to the file.
        """
        if self.error is not None or self._file.closed:
            return
        try:
            self._file.flush()
        except OSError as e:
            self.error = e

    # -- packets

    def _fin(self, stream: _Stream, sender: _Side, receiver: _Side) -> None:
        self._segment(stream, sender, receiver, FIN | ACK)
        sender.seq = (sender.seq + 1) % 2**32
        sender.fin = True

    def _segment(
        self,
        stream: _Stream,
        sender: _Side,
        receiver: _Side,
        flags: int,
        payload: bytes = b"",
        ack: bool = True,
    ) -> None:
        """
        Write one packet from C{sender} to C{receiver} with C{sender}'s
        next sequence number and (unless C{ack} is false, for the first
        SYN) an acknowledgement of everything C{receiver} has sent.
        """
        ack_number = receiver.seq if ack else 0
        tcp_length = 20 + len(payload)
        header = struct.pack(
            "!HHIIBBHHH",
            sender.port,
            receiver.port,
            sender.seq,
            ack_number,
            5 << 4,  # data offset: 5 32-bit words, no options
            flags,
            WINDOW,
            0,  # checksum, filled below
            0,  # urgent pointer
        )
        if stream.ipv6:
            # RFC 8200 section 8.1: source, destination, upper-layer length
            # (32 bits), three zero bytes, next header
            pseudo = sender.ip + receiver.ip + struct.pack("!IxxxB", tcp_length, _PROTO_TCP)
        else:
            # RFC 9293 section 3.1: source, destination, zero, protocol, TCP length
            pseudo = sender.ip + receiver.ip + struct.pack("!xBH", _PROTO_TCP, tcp_length)
        checksum = internet_checksum(pseudo + header + payload)
        tcp = header[:16] + struct.pack("!H", checksum) + header[18:] + payload
        if stream.ipv6:
            ip = struct.pack(
                "!IHBB16s16s", 6 << 28, tcp_length, _PROTO_TCP, TTL, sender.ip, receiver.ip
            )
        else:
            self._ip_id = (self._ip_id + 1) & 0xFFFF
            ip = struct.pack(
                "!BBHHHBBH4s4s",
                0x45,  # version 4, header length 5 32-bit words
                0,  # DSCP/ECN
                20 + tcp_length,
                self._ip_id,
                0x4000,  # flags: don't fragment
                TTL,
                _PROTO_TCP,
                0,  # header checksum, filled below
                sender.ip,
                receiver.ip,
            )
            ip = ip[:10] + struct.pack("!H", internet_checksum(ip)) + ip[12:]
        self._record(ip + tcp)

    def _record(self, packet: bytes) -> None:
        """
        Write one packet record (draft-ietf-opsawg-pcap section 5).
        """
        if self.error is not None or self._file.closed:
            return
        microseconds = round(self.clock() * 1_000_000)
        seconds, fraction = divmod(microseconds, 1_000_000)
        try:
            self._file.write(
                struct.pack("<IIII", seconds, fraction, len(packet), len(packet)) + packet
            )
        except OSError as e:
            self.error = e
