"""
Helpers for the TLS-debugging and traffic-dump end-to-end tests
(L{tests.e2e.test_tlsdebug_e2e}): certificates made on the spot (trustme,
openssl), what openssl itself says about a certificate, C{openssl s_server}
on port 0, a parser for epcat's socat-style hex dump, NSS key log lines and
tshark's C{follow,tcp,raw} output.

Nothing here sleeps: every wait is on a line a process prints or on a
process's exit, bounded by a timeout.
"""

from __future__ import annotations

import datetime
import re
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .conftest import WAIT, Proc, require

UTC = datetime.timezone.utc

# -- certificates


def issue(ca: Any, root: Path, name: str, *identities: str, **options: Any) -> tuple[Path, Path]:
    """
    A leaf certificate from the trustme C{ca} for C{identities}; writes
    C{NAME.pem} and C{NAME.key} in C{root}.

    @param options: passed to C{trustme.CA.issue_cert} (C{not_before},
        C{not_after}, C{key_type}, C{common_name}).
    @return: (certificate path, key path).
    """
    root.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert(*identities, **options)
    cert, key = root / f"{name}.pem", root / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def self_signed(root: Path) -> tuple[Path, Path]:
    """
    A self-signed EC certificate for C{localhost}, made by C{openssl req}.

    @return: (certificate path, key path).
    """
    root.mkdir(parents=True, exist_ok=True)
    cert, key = root / "self-signed.pem", root / "self-signed.key"
    subprocess.run(
        [require("openssl"), "req", "-x509", "-newkey", "ec",
         "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-days", "1",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, check=True, timeout=WAIT,
    )
    return cert, key


@dataclass
class CertFacts:
    """
    What C{openssl x509} prints about a certificate: the independent
    reference the -v output is checked against.
    """

    subject: str
    issuer: str
    sha256: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    public_key_bits: int


def _openssl_date(text: str) -> datetime.datetime:
    # "Jan  1 00:00:00 3000 GMT"
    return datetime.datetime.strptime(" ".join(text.split()), "%b %d %H:%M:%S %Y GMT").replace(
        tzinfo=UTC
    )


def openssl_facts(cert: Path) -> CertFacts:
    """
    C{openssl x509 -noout -subject -issuer -fingerprint -sha256 -dates}
    (names in RFC 2253 order, as RFC 4514 strings are written) and the key
    size from C{-text}.
    """
    openssl = require("openssl")
    out = subprocess.run(
        [openssl, "x509", "-noout", "-nameopt", "RFC2253", "-subject", "-issuer",
         "-fingerprint", "-sha256", "-dates", "-in", str(cert)],
        capture_output=True, check=True, timeout=WAIT, text=True,
    ).stdout
    fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    text = subprocess.run(
        [openssl, "x509", "-noout", "-text", "-in", str(cert)],
        capture_output=True, check=True, timeout=WAIT, text=True,
    ).stdout
    bits = re.search(r"Public-Key: \((\d+) bit\)", text)
    assert bits, text
    return CertFacts(
        subject=fields["subject"],
        issuer=fields["issuer"],
        sha256=fields["sha256 Fingerprint"],
        not_before=_openssl_date(fields["notBefore"]),
        not_after=_openssl_date(fields["notAfter"]),
        public_key_bits=int(bits.group(1)),
    )


# -- peers


def s_server(spawn: Callable[..., Proc], cert: Path, key: Path, *extra: str) -> tuple[Proc, int]:
    """
    C{openssl s_server} on 127.0.0.1 port 0, one connection; returns
    (process, port) once it prints C{ACCEPT 127.0.0.1:PORT} (on stdout, read
    as C{proc.stdout_lines}).  Its report of the connection ("Protocol
    version:", "Ciphersuite:") goes to its stderr.
    """
    openssl = require("openssl")
    proc = spawn(
        [openssl, "s_server", "-accept", "127.0.0.1:0", "-naccept", "1",
         "-cert", str(cert), "-key", str(key), *extra],
        name="openssl-s_server", stdout="lines",
    )
    assert proc.stdout_lines is not None
    m = proc.stdout_lines.wait_for(r"^ACCEPT 127\.0\.0\.1:(\d+)$")
    return proc, int(m.group(1))


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    """
    Read exactly C{count} bytes, or fail if the stream ends first.
    """
    parts = []
    left = count
    while left:
        data = sock.recv(min(left, 1 << 16))
        assert data, f"stream ended {left} bytes short of {count}"
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def http_handler(body: bytes) -> Callable[[socket.socket], bytes]:
    """
    A C{Server} handler that reads one HTTP request head and answers
    C{body} with HTTP/1.0, then closes; it returns the request head.
    """

    def handle(conn: socket.socket) -> bytes:
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(4096)
            if not data:
                break
            head += data
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        return head

    return handle


def curl(port: int, ca_pem: Path, *extra: str,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """
    C{curl https://localhost:PORT/} (resolved to 127.0.0.1) trusting C{ca_pem}.
    """
    return subprocess.run(
        [require("curl"), "--noproxy", "*", "-sS", "--max-time", "20",
         "--resolve", f"localhost:{port}:127.0.0.1", "--cacert", str(ca_pem), *extra,
         f"https://localhost:{port}/"],
        capture_output=True, timeout=30, env=env,
    )


def error_line(stderr: str) -> str:
    """
    The one line of a failed run's stderr, checked to be an
    C{epcat: error:} line.
    """
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("epcat: error: "), stderr
    return lines[0]


# -- hex dump

#: "> 2026/11/22 01:29:26.611647  length=8 from=0 to=7[ conn=N]"
DUMP_HEADER = re.compile(
    r"^(?P<direction>[<>]) (?P<date>\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2})\.(?P<fraction>\d{6})"
    r"  length=(?P<length>\d+) from=(?P<start>\d+) to=(?P<end>\d+)(?: conn=(?P<conn>\d+))?$"
)
#: " 68 65 6c 6c 6f                                   hello"
DUMP_LINE = re.compile(r"^(?P<hex>(?: [0-9a-f]{2}){1,16})(?P<pad>(?:   )*)  (?P<text>.*)$")


@dataclass
class Block:
    """
    One dumped chunk: its header fields and the bytes its hex lines hold.
    """

    header: str
    direction: str
    when: datetime.datetime
    length: int
    start: int
    end: int
    conn: int | None
    lines: list[str]
    data: bytes


def parse_dump(text: str) -> list[Block]:
    """
    The blocks of a socat C{-x -v} style dump, checking the layout as it
    goes: a header, hex lines (at most 16 bytes each, the hex column padded
    to 16 bytes, then two spaces and one ASCII character per byte, C{.} for
    anything not printable), then C{--}.  Lines outside blocks that start
    with C{epcat:} (the -v log) are skipped; anything else fails.
    """
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("epcat:") or line.startswith("{"):
            i += 1
            continue
        m = DUMP_HEADER.match(line)
        assert m, f"not a dump header: {line!r}\n{text}"
        when = datetime.datetime.strptime(m["date"], "%Y/%m/%d %H:%M:%S")
        data = b""
        body: list[str] = []
        i += 1
        while True:
            assert i < len(lines), f"dump block without '--':\n{text}"
            row = lines[i]
            i += 1
            if row == "--":
                break
            lm = DUMP_LINE.match(row)
            assert lm, f"not a dump line: {row!r}\n{text}"
            chunk = bytes.fromhex(lm["hex"].replace(" ", ""))
            assert len(lm["pad"]) == 3 * (16 - len(chunk)), f"hex column not padded: {row!r}"
            ascii_column = "".join(chr(b) if 0x20 <= b <= 0x7E else "." for b in chunk)
            assert lm["text"] == ascii_column, f"ASCII column wrong: {row!r}"
            body.append(row)
            data += chunk
        length, start, end = int(m["length"]), int(m["start"]), int(m["end"])
        assert len(data) == length and end == start + length - 1, f"{line!r} holds {data!r}"
        blocks.append(Block(line, m["direction"], when, length, start, end,
                            int(m["conn"]) if m["conn"] else None, body, data))
    return blocks


def stream_of(blocks: list[Block], direction: str, conn: int | None = None,
              any_conn: bool = False) -> bytes:
    """
    The bytes one direction carried, checking the offsets run on without
    gaps.
    """
    data = b""
    for block in blocks:
        if block.direction != direction or (not any_conn and block.conn != conn):
            continue
        assert block.start == len(data), f"offset {block.start} after {len(data)} bytes"
        data += block.data
    return data


# -- NSS key log

#: the labels of the NSS key log format (SSLKEYLOGFILE), TLS 1.2 and 1.3
KEYLOG_LINE = re.compile(
    r"^(?P<label>CLIENT_RANDOM|CLIENT_EARLY_TRAFFIC_SECRET|CLIENT_HANDSHAKE_TRAFFIC_SECRET"
    r"|SERVER_HANDSHAKE_TRAFFIC_SECRET|CLIENT_TRAFFIC_SECRET_0|SERVER_TRAFFIC_SECRET_0"
    r"|EARLY_EXPORTER_SECRET|EXPORTER_SECRET) (?P<random>[0-9a-f]{64}) (?P<secret>[0-9a-f]{64,})$"
)


def keylog_entries(text: str) -> list[re.Match[str]]:
    """
    The lines of a key log file, each checked against the NSS format
    (comment lines skipped).
    """
    entries = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = KEYLOG_LINE.match(line)
        assert m, f"not an NSS key log line: {line!r}"
        entries.append(m)
    return entries


# -- tshark


def follow_raw(path: Path, stream: int = 0) -> tuple[list[str], bytes, bytes]:
    """
    C{tshark -r FILE -q -z follow,tcp,raw,STREAM}: the two C{Node} lines,
    the bytes node 0 sent and the bytes node 1 sent (tshark prints one hex
    line per segment, node 1's indented by a tab).
    """
    out = subprocess.run(
        [require("tshark"), "-r", str(path), "-q", "-z", f"follow,tcp,raw,{stream}"],
        capture_output=True, check=True, timeout=30,
    ).stdout.decode("ascii")
    lines = out.splitlines()
    nodes = [line for line in lines if line.startswith("Node ")]
    assert len(nodes) == 2, out[:2000]
    sent = {0: bytearray(), 1: bytearray()}
    for line in lines[lines.index(nodes[1]) + 1 :]:
        if line.startswith("====="):
            break
        sent[1 if line.startswith("\t") else 0] += bytes.fromhex(line.strip())
    return nodes, bytes(sent[0]), bytes(sent[1])
