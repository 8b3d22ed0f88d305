"""
End to end for L{epcat.pcap}: a capture written by L{PcapWriter} is read
back by the real tshark (Debian's package), and the bytes of each TCP
stream, both directions, come out exactly as they went in.

No epcat process is needed: the writer is driven directly.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from epcat.pcap import MAX_SEGMENT, PcapWriter

from .conftest import require

pytestmark = pytest.mark.e2e

#: seconds tshark may take on one file
TSHARK_TIMEOUT = 30

CLIENT_0 = ("192.0.2.10", 51234)
SERVER_0 = ("198.51.100.20", 8443)
CLIENT_1 = ("2001:db8::10", 40001)
SERVER_1 = ("2001:db8::20", 443)


def tshark(*args: str) -> str:
    """
    Run tshark with C{args}; its stdout (stderr holds the warning about
    running as root, and is ignored).
    """
    result = subprocess.run(
        [require("tshark"), *args],
        capture_output=True,
        timeout=TSHARK_TIMEOUT,
        check=True,
    )
    return result.stdout.decode("ascii")


def follow_raw(path: Path, stream: int) -> tuple[list[str], bytes, bytes]:
    """
    C{tshark -r FILE -q -z follow,tcp,raw,STREAM}: the two C{Node} lines,
    the bytes node 0 sent and the bytes node 1 sent.

    tshark prints one hex line per segment, node 1's indented by a tab.
    """
    out = tshark("-r", str(path), "-q", "-z", f"follow,tcp,raw,{stream}")
    lines = out.splitlines()
    nodes = [line for line in lines if line.startswith("Node ")]
    assert len(nodes) == 2, out[:2000]
    body = lines[lines.index(nodes[1]) + 1 :]
    sent = {0: bytearray(), 1: bytearray()}
    for line in body:
        if line.startswith("====="):
            break
        node = 1 if line.startswith("\t") else 0
        sent[node] += bytes.fromhex(line.strip())
    return nodes, bytes(sent[0]), bytes(sent[1])


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict[str, bytes]]]:
    """
    A capture of two interleaved connections (IPv4 and IPv6) with text,
    every byte value and payloads over 64 KiB both ways, and what each
    direction carried.
    """
    require("tshark")
    path = tmp_path_factory.mktemp("pcap") / "two.pcap"
    big = os.urandom(200_000)
    just_over = os.urandom(MAX_SEGMENT + 1)
    chunks = [
        (0, ">", b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"),
        (1, ">", bytes(range(256)) * 4),
        (0, "<", b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n"),
        (0, "<", big),
        (1, "<", b"\x00" * 70_000),
        (1, ">", just_over),
        (0, ">", b"\xff\xfe\x00\r\n\x1b[0m"),
        (1, "<", b"end\n"),
    ]
    sent: dict[int, dict[str, bytes]] = {0: {">": b"", "<": b""}, 1: {">": b"", "<": b""}}
    writer = PcapWriter(path)
    writer.open_stream(0, client=CLIENT_0, server=SERVER_0)
    writer.open_stream(1, client=CLIENT_1, server=SERVER_1)
    for conn_id, direction, payload in chunks:
        writer.data(conn_id, direction, payload)
        sent[conn_id][direction] += payload
    writer.shutdown(1, ">")
    writer.close(0)
    writer.close_all()
    return path, sent


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "stream, client, server",
    [
        (0, "192.0.2.10:51234", "198.51.100.20:8443"),
        (1, "[2001:db8::10]:40001", "[2001:db8::20]:443"),
    ],
)
def test_tshark_follow_gives_back_the_bytes(
    capture: tuple[Path, dict[int, dict[str, bytes]]], stream: int, client: str, server: str
) -> None:
    path, sent = capture
    nodes, from_client, from_server = follow_raw(path, stream)
    assert nodes == [f"Node 0: {client}", f"Node 1: {server}"]
    assert from_client == sent[stream][">"]
    assert from_server == sent[stream]["<"]
    assert len(from_client) + len(from_server) > 64 * 1024


@pytest.mark.timeout(60)
def test_tshark_finds_nothing_wrong(capture: tuple[Path, dict[int, dict[str, bytes]]]) -> None:
    """
    With checksum validation on, tshark's expert info has no errors or
    warnings (bad checksums, lost segments, retransmissions, window full).
    """
    path, _ = capture
    checks = ["-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE"]
    expert = tshark("-r", str(path), *checks, "-q", "-z", "expert")
    sections = [line.split(" (")[0] for line in expert.splitlines() if " (" in line]
    assert "Errors" not in sections, expert
    assert "Warnings" not in sections and "Warns" not in sections, expert
    statuses = tshark(
        "-r", str(path), *checks, "-T", "fields", "-e", "tcp.checksum.status", "-e", "tcp.stream"
    )
    rows = [line.split("\t") for line in statuses.splitlines()]
    assert rows and all(status == "1" for status, _ in rows), "a TCP checksum is not good"
    assert {stream for _, stream in rows} == {"0", "1"}
