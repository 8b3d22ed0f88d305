"""
Tests for L{epcat.pcap}: the file is read back with a small reader written
here from draft-ietf-opsawg-pcap, RFC 791, RFC 8200 and RFC 9293, and every
header, checksum, sequence and acknowledgement number is checked.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from epcat import pcap
from epcat.pcap import ACK, FIN, PSH, SYN, PcapWriter, internet_checksum, placeholder_port


@dataclass
class Packet:
    seconds: int
    microseconds: int
    version: int
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes


def slow_checksum(data: bytes) -> int:
    """
    RFC 1071 word by word, with end-around carry.
    """
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def read_pcap(path: Path) -> list[Packet]:
    """
    Parse a classic pcap file of LINKTYPE_RAW packets, checking every
    length and checksum on the way.
    """
    data = path.read_bytes()
    magic, major, minor, _r1, _r2, snaplen, linktype = struct.unpack_from("<IHHIIII", data)
    assert (magic, major, minor, snaplen, linktype) == (0xA1B2C3D4, 2, 4, 262144, 101)
    packets = []
    offset = 24
    while offset < len(data):
        seconds, usec, caplen, origlen = struct.unpack_from("<IIII", data, offset)
        offset += 16
        assert caplen == origlen <= snaplen
        assert usec < 1_000_000
        packet = data[offset : offset + caplen]
        assert len(packet) == caplen
        offset += caplen
        version = packet[0] >> 4
        if version == 4:
            ihl = (packet[0] & 0x0F) * 4
            assert ihl == 20
            total, _id, frag, ttl, proto = struct.unpack_from("!HHHBB", packet, 2)
            assert total == len(packet)
            assert frag == 0x4000 and ttl == 64 and proto == 6
            assert slow_checksum(packet[:20]) == 0, "bad IPv4 header checksum"
            src, dst = packet[12:16], packet[16:20]
            tcp = packet[20:]
            pseudo = src + dst + struct.pack("!xBH", 6, len(tcp))
        else:
            assert version == 6
            payload_length, next_header, hops = struct.unpack_from("!HBB", packet, 4)
            assert payload_length == len(packet) - 40
            assert next_header == 6 and hops == 64
            src, dst = packet[8:24], packet[24:40]
            tcp = packet[40:]
            pseudo = src + dst + struct.pack("!IxxxB", len(tcp), 6)
        assert slow_checksum(pseudo + tcp) == 0, "bad TCP checksum"
        sport, dport, seq, ack, offset_byte, flags, window = struct.unpack_from("!HHIIBBH", tcp)
        assert offset_byte >> 4 == 5
        packets.append(
            Packet(
                seconds,
                usec,
                version,
                str(ipaddress.ip_address(src)),
                str(ipaddress.ip_address(dst)),
                sport,
                dport,
                seq,
                ack,
                flags,
                window,
                tcp[20:],
            )
        )
    return packets


def check_stream(packets: list[Packet]) -> dict[str, bytes]:
    """
    Check that C{packets} (one connection, client first) form a proper TCP
    conversation: handshake, contiguous sequence numbers, every ACK
    acknowledging exactly what the peer sent, FINs on both sides at the end.
    Returns the bytes each way.
    """
    syn = packets[0]
    assert syn.flags == SYN and syn.ack == 0
    client = (syn.src, syn.sport)
    next_seq = {client: syn.seq + 1}
    synack = packets[1]
    assert synack.flags == SYN | ACK and synack.ack == syn.seq + 1
    server = (synack.src, synack.sport)
    assert (synack.dst, synack.dport) == client
    next_seq[server] = synack.seq + 1
    received: dict[tuple[str, int], bytes] = {client: b"", server: b""}
    fins = set()
    for p in packets[2:]:
        sender = (p.src, p.sport)
        receiver = (p.dst, p.dport)
        assert {sender, receiver} == {client, server}
        assert p.flags & ACK
        assert not p.flags & SYN
        assert p.seq == next_seq[sender], "sequence gap"
        assert p.ack == next_seq[receiver], "ack does not match the peer's data"
        assert len(p.payload) <= pcap.MAX_SEGMENT
        if p.payload:
            assert sender not in fins, "data after FIN"
            assert p.flags == PSH | ACK
            received[sender] += p.payload
        next_seq[sender] = (next_seq[sender] + len(p.payload)) % 2**32
        if p.flags & FIN:
            assert sender not in fins
            fins.add(sender)
            next_seq[sender] += 1
    assert fins == {client, server}
    last = packets[-1]
    assert last.flags == ACK and not last.payload
    return {">": received[client], "<": received[server]}


def by_connection(packets: list[Packet]) -> dict[frozenset[tuple[str, int]], list[Packet]]:
    streams: dict[frozenset[tuple[str, int]], list[Packet]] = {}
    for p in packets:
        streams.setdefault(frozenset({(p.src, p.sport), (p.dst, p.dport)}), []).append(p)
    return streams


@given(st.binary(max_size=300))
def test_checksum_is_rfc1071(data: bytes) -> None:
    assert internet_checksum(data) == slow_checksum(data)


def test_checksum_edge_cases() -> None:
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(b"\0\0") == 0xFFFF
    assert internet_checksum(b"\xff\xff") == 0
    assert internet_checksum(b"\xff\xff\xff\xff") == 0
    # RFC 1071 section 3's example: sum 0xddf2
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == ~0xDDF2 & 0xFFFF


def test_file_header_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    PcapWriter(path).close_all()
    assert path.read_bytes() == struct.pack("<IHHIIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 101)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_existing_file_is_truncated_and_made_private(tmp_path: Path) -> None:
    path = tmp_path / "old.pcap"
    path.write_bytes(b"x" * 1000)
    os.chmod(path, 0o644)
    PcapWriter(path).close_all()
    assert len(path.read_bytes()) == 24
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_unwritable_path_raises(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        PcapWriter(tmp_path / "no" / "such" / "dir.pcap")


def test_ipv4_conversation(tmp_path: Path) -> None:
    path = tmp_path / "v4.pcap"
    ticks = iter(range(1_000_000))
    w = PcapWriter(path, clock=lambda: 1795304301.25 + next(ticks) / 1000)
    w.open_stream(1, client=("192.0.2.7", 51000), server=("198.51.100.9", 443))
    w.data(1, ">", b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
    w.data(1, "<", b"HTTP/1.1 200 OK\r\n\r\n")
    w.data(1, "<", bytes(range(256)))
    w.data(1, ">", b"")
    w.close(1)
    w.close_all()
    packets = read_pcap(path)
    assert [(p.src, p.sport, p.dst, p.dport) for p in packets[:2]] == [
        ("192.0.2.7", 51000, "198.51.100.9", 443),
        ("198.51.100.9", 443, "192.0.2.7", 51000),
    ]
    assert all(p.version == 4 and p.window == 65535 for p in packets)
    assert check_stream(packets) == {
        ">": b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
        "<": b"HTTP/1.1 200 OK\r\n\r\n" + bytes(range(256)),
    }
    # SYN, SYN-ACK, ACK; 3 x (data, ACK); FIN, FIN, ACK
    assert [p.flags for p in packets] == [SYN, SYN | ACK, ACK] + [PSH | ACK, ACK] * 3 + [
        FIN | ACK,
        FIN | ACK,
        ACK,
    ]
    assert packets[0].seq == pcap.CLIENT_ISN and packets[1].seq == pcap.SERVER_ISN
    # timestamps from the clock, in microseconds
    assert (packets[0].seconds, packets[0].microseconds) == (1795304301, 250000)
    assert (packets[1].seconds, packets[1].microseconds) == (1795304301, 251000)


def test_ipv6_and_mixed_families(tmp_path: Path) -> None:
    path = tmp_path / "v6.pcap"
    w = PcapWriter(path)
    w.open_stream(1, client=("2001:db8::1", 40000), server=("2001:db8::2", 22))
    w.data(1, ">", b"SSH-2.0-x\r\n")
    w.data(1, "<", b"SSH-2.0-y\r\n")
    w.open_stream(2, client=("fe80::1%lo", 40001), server=("203.0.113.5", 80))
    w.data(2, ">", b"\x00\x01\x02")
    w.close_all()
    streams = by_connection(read_pcap(path))
    assert len(streams) == 2
    one = streams[frozenset({("2001:db8::1", 40000), ("2001:db8::2", 22)})]
    assert all(p.version == 6 for p in one)
    assert check_stream(one) == {">": b"SSH-2.0-x\r\n", "<": b"SSH-2.0-y\r\n"}
    two = streams[frozenset({("fe80::1", 40001), ("::ffff:cb00:7105", 80)})]
    assert str(ipaddress.IPv6Address("::ffff:203.0.113.5")) == "::ffff:cb00:7105"
    assert check_stream(two) == {">": b"\x00\x01\x02", "<": b""}


@pytest.mark.parametrize(
    "client, server",
    [
        (None, None),
        ("/run/epcat.sock", ("stdio", 0)),
        (("not an address", 1), ("192.0.2.1", 99999)),
    ],
)
def test_placeholders_for_non_ip_ends(tmp_path: Path, client: object, server: object) -> None:
    path = tmp_path / "unix.pcap"
    w = PcapWriter(path)
    w.open_stream(7, client=client, server=server)  # type: ignore[arg-type]
    w.data(7, ">", b"ping")
    w.data(7, "<", b"pong")
    w.close_all()
    packets = read_pcap(path)
    port = placeholder_port(7)
    assert (packets[0].src, packets[0].sport) == ("127.0.0.1", port)
    assert (packets[0].dst, packets[0].dport) == ("127.0.0.2", port)
    assert check_stream(packets) == {">": b"ping", "<": b"pong"}


def test_placeholder_ports_stay_in_dynamic_range() -> None:
    assert placeholder_port(0) == 49152
    assert placeholder_port(16383) == 65535
    assert placeholder_port(16384) == 49152


def test_large_payload_is_split(tmp_path: Path) -> None:
    path = tmp_path / "big.pcap"
    big = os.urandom(3 * pcap.MAX_SEGMENT + 123)
    w = PcapWriter(path)
    w.open_stream(1, ("127.0.0.1", 1000), ("127.0.0.1", 2000))
    w.data(1, "<", big)
    w.data(1, ">", big[:70000])
    w.close_all()
    packets = read_pcap(path)
    sizes = [len(p.payload) for p in packets if p.payload]
    assert sizes == [pcap.MAX_SEGMENT] * 3 + [123, pcap.MAX_SEGMENT, 70000 - pcap.MAX_SEGMENT]
    assert check_stream(packets) == {">": big[:70000], "<": big}


def test_large_ipv6_segment_fits(tmp_path: Path) -> None:
    path = tmp_path / "big6.pcap"
    w = PcapWriter(path)
    w.open_stream(1, ("::1", 1000), ("::1", 2000))
    w.data(1, ">", b"\xaa" * 200_000)
    w.close_all()
    assert check_stream(read_pcap(path))[">"] == b"\xaa" * 200_000


def test_interleaved_streams_and_half_close(tmp_path: Path) -> None:
    path = tmp_path / "many.pcap"
    w = PcapWriter(path)
    w.open_stream(1, ("198.51.100.1", 1111), ("203.0.113.2", 80))
    w.open_stream(2, ("198.51.100.1", 2222), ("203.0.113.2", 80))
    w.data(1, ">", b"one")
    w.data(2, ">", b"two")
    w.shutdown(2, ">")  # client 2 half-closes, server 2 keeps sending
    w.shutdown(2, ">")  # twice is harmless
    w.data(2, "<", b"reply after half-close")
    w.data(1, "<", b"1")
    w.close(2)
    w.close(2)  # twice is harmless
    w.data(1, ">", b"more")
    w.close_all()
    w.close_all()
    streams = by_connection(read_pcap(path))
    one = streams[frozenset({("198.51.100.1", 1111), ("203.0.113.2", 80)})]
    two = streams[frozenset({("198.51.100.1", 2222), ("203.0.113.2", 80)})]
    assert check_stream(one) == {">": b"onemore", "<": b"1"}
    assert check_stream(two) == {">": b"two", "<": b"reply after half-close"}
    # the half-close: client FIN then server ACK, before the server's data
    flags = [(p.sport, p.flags, p.payload) for p in two]
    fin = flags.index((2222, FIN | ACK, b""))
    assert flags[fin + 1] == (80, ACK, b"")
    assert flags[fin + 2] == (80, PSH | ACK, b"reply after half-close")
    # close() sends only the server's FIN then, acked by the client
    assert flags[-2:] == [(80, FIN | ACK, b""), (2222, ACK, b"")]


def test_data_for_unknown_connection_opens_it(tmp_path: Path) -> None:
    path = tmp_path / "late.pcap"
    w = PcapWriter(path)
    w.data(5, "<", b"surprise")
    w.close(5)
    w.close(6)
    w.shutdown(6, ">")
    w.close_all()
    packets = read_pcap(path)
    assert check_stream(packets) == {">": b"", "<": b"surprise"}


def test_reopening_closes_the_old_stream(tmp_path: Path) -> None:
    path = tmp_path / "reopen.pcap"
    w = PcapWriter(path)
    w.open_stream(1, ("192.0.2.1", 1), ("192.0.2.2", 2))
    w.data(1, ">", b"a")
    w.open_stream(1, ("192.0.2.1", 3), ("192.0.2.2", 2))
    w.data(1, ">", b"b")
    w.close_all()
    streams = by_connection(read_pcap(path))
    assert [check_stream(s)[">"] for s in streams.values()] == [b"a", b"b"]


def test_sequence_numbers_wrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pcap, "CLIENT_ISN", 2**32 - 10)
    path = tmp_path / "wrap.pcap"
    w = PcapWriter(path)
    w.open_stream(1, ("192.0.2.1", 1), ("192.0.2.2", 2))
    w.data(1, ">", b"0123456789abcdef")
    w.close_all()
    packets = read_pcap(path)
    assert check_stream(packets)[">"] == b"0123456789abcdef"
    assert packets[-1].seq < 100


def test_bad_direction_raises(tmp_path: Path) -> None:
    w = PcapWriter(tmp_path / "x.pcap")
    with pytest.raises(ValueError):
        w.data(1, "?", b"x")
    with pytest.raises(ValueError):
        w.shutdown(1, "?")
    w.close_all()


class FailingFile:
    closed = False

    def write(self, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        raise OSError(28, "No space left on device")

    def close(self) -> None:
        self.closed = True


def test_write_errors_are_kept_not_raised(tmp_path: Path) -> None:
    w = PcapWriter(tmp_path / "full.pcap")
    w._file = FailingFile()  # type: ignore[assignment]
    w.open_stream(1, ("192.0.2.1", 1), ("192.0.2.2", 2))
    w.data(1, ">", b"lost")
    w.flush()
    w.close_all()
    assert isinstance(w.error, OSError)
    assert w.error.errno == 28


def test_flush_makes_packets_readable_while_open(tmp_path: Path) -> None:
    path = tmp_path / "live.pcap"
    w = PcapWriter(path)
    w.open_stream(1, ("192.0.2.1", 1), ("192.0.2.2", 2))
    w.data(1, ">", b"now")
    assert [p.payload for p in read_pcap(path) if p.payload] == [b"now"]
    w.close_all()
