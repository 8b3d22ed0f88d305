"""
End to end: C{epcat listen SERVER connect CLIENT} relaying real traffic on
loopback and UNIX sockets.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import WAIT, echo_handler, no_traceback, recv_all, require

pytestmark = pytest.mark.e2e

LOCAL = "tcp:0:interface=127.0.0.1"


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [require("curl"), "--noproxy", "*", "-sS", "--max-time", "20", *args],
        capture_output=True,
        timeout=30,
    )


@pytest.mark.timeout(60)
def test_curl_through_relay_to_nginx(epcat_proc, nginx):
    """
    curl -> epcat listen tcp connect tcp -> nginx: the bodies arrive intact.
    """
    ep = epcat_proc("-v", "listen", LOCAL, "connect", f"tcp:127.0.0.1:{nginx.port}")
    port = ep.port()
    result = curl(f"http://127.0.0.1:{port}/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == nginx.body
    for path, body in (("/mid.bin", nginx.mid), ("/big.bin", nginx.big)):
        result = curl(f"http://127.0.0.1:{port}{path}")
        assert result.returncode == 0, result.stderr
        assert result.stdout == body
    ep.wait_stderr(r"^epcat: \[3\] closed: ")
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_64_mib_each_way(epcat_proc, server):
    """
    64 MiB of random bytes up, then 64 MiB of other random bytes down, with
    sha256 checked at both far ends.
    """
    size = 64 * 1024 * 1024
    up = os.urandom(size)
    down = os.urandom(size)

    def sink_then_source(conn: socket.socket) -> tuple[int, str]:
        digest, count = hashlib.sha256(), 0
        while True:
            chunk = conn.recv(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            count += len(chunk)
        conn.sendall(down)
        conn.shutdown(socket.SHUT_WR)
        return count, digest.hexdigest()

    srv = server(sink_then_source)
    ep = epcat_proc("-v", "listen", LOCAL, "connect", f"tcp:{srv.address}")
    port = ep.port()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        client.sendall(up)
        client.shutdown(socket.SHUT_WR)
        digest, count = hashlib.sha256(), 0
        while True:
            chunk = client.recv(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            count += len(chunk)
    [(server_count, server_digest)] = srv.wait_results(1)
    assert server_count == size
    assert server_digest == hashlib.sha256(up).hexdigest()
    assert count == size
    assert digest.hexdigest() == hashlib.sha256(down).hexdigest()
    ep.wait_stderr(rf"\] closed: {size} bytes inbound->outbound, {size} bytes outbound->inbound")


@pytest.mark.timeout(60)
def test_half_close_client_first(epcat_proc, server):
    """
    The client sends and shuts down its write side; the server replies only
    after reading EOF; the whole reply arrives.
    """
    request = os.urandom(300_000)
    reply = os.urandom(2_000_000)

    def reply_after_eof(conn: socket.socket) -> bytes:
        got = recv_all(conn)
        conn.sendall(reply)
        return got

    srv = server(reply_after_eof)
    ep = epcat_proc("-v", "listen", LOCAL, "connect", f"tcp:{srv.address}")
    port = ep.port()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        client.sendall(request)
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == reply
    assert srv.wait_results(1) == [request]


@pytest.mark.timeout(60)
def test_half_close_server_first(epcat_proc, server):
    """
    The server sends a greeting and shuts down its write side; the client
    sees EOF and can still send for as long as it likes; the server gets it all.
    """
    greeting = b"220 hello, I will say no more\r\n"
    upload = os.urandom(1_000_000)

    def greet_then_sink(conn: socket.socket) -> bytes:
        conn.sendall(greeting)
        conn.shutdown(socket.SHUT_WR)
        return recv_all(conn)

    srv = server(greet_then_sink)
    ep = epcat_proc("-v", "listen", LOCAL, "connect", f"tcp:{srv.address}")
    port = ep.port()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        assert recv_all(client) == greeting  # EOF from the server came through
        client.sendall(upload)
        client.shutdown(socket.SHUT_WR)
        assert client.recv(1) == b""
    assert srv.wait_results(1) == [upload]


@pytest.mark.timeout(60)
def test_many_concurrent_connections(epcat_proc, server):
    """
    50 clients at once, each echoing a distinct payload through one epcat.
    """
    srv = server(echo_handler)
    ep = epcat_proc("-v", "listen", LOCAL, "connect", f"tcp:{srv.address}")
    port = ep.port()
    count = 50
    payloads = [i.to_bytes(4, "big") * 8 + os.urandom(40_000 + 997 * i) for i in range(count)]
    barrier = threading.Barrier(count, timeout=WAIT)

    def one(payload: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as c:
            barrier.wait()  # all 50 connections open at the same time
            sender = threading.Thread(
                target=lambda: (c.sendall(payload), c.shutdown(socket.SHUT_WR))
            )
            sender.start()
            echoed = recv_all(c)
            sender.join(WAIT)
            return echoed

    with ThreadPoolExecutor(count) as pool:
        echoed = list(pool.map(one, payloads))
    for i, (sent, got) in enumerate(zip(payloads, echoed, strict=True)):
        assert got == sent, f"client {i}: {len(got)} of {len(sent)} bytes, or garbled"
    assert sorted(srv.wait_results(count)) == sorted(payloads)


@pytest.mark.timeout(60)
def test_sigterm_closes_open_connection_and_exits_0(epcat_proc, server):
    """
    SIGTERM on a relay with a connection open: the client's connection is
    closed and epcat exits 0.
    """
    srv = server(echo_handler)
    ep = epcat_proc("-v", "listen", LOCAL, "connect", f"tcp:{srv.address}")
    port = ep.port()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        client.sendall(b"ping\n")
        assert client.recv(100) == b"ping\n"  # the pair is up end to end
        ep.signal(signal.SIGTERM)
        assert recv_all(client) == b""  # closed, cleanly (no reset)
        assert ep.finish() == 0, ep.describe()
    # the server side of the pair was closed too
    srv.wait_results(1)
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_unix_listen_to_tcp(epcat_proc, server, short_dir):
    """
    listen unix:PATH connect tcp:...
    """
    srv = server(echo_handler)
    path = short_dir / "in.sock"
    ep = epcat_proc("-v", "listen", f"unix:{path}", "connect", f"tcp:{srv.address}")
    assert ep.listening() == str(path)
    payload = os.urandom(500_000)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(WAIT)
        client.connect(str(path))
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == payload
    assert srv.wait_results(1) == [payload]


@pytest.mark.timeout(60)
def test_tcp_listen_to_unix(epcat_proc, server, short_dir):
    """
    listen tcp:... connect unix:PATH
    """
    path = short_dir / "out.sock"
    srv = server(echo_handler, unix_path=path)
    ep = epcat_proc("-v", "listen", LOCAL, "connect", f"unix:{path}")
    port = ep.port()
    payload = os.urandom(500_000)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == payload
    assert srv.wait_results(1) == [payload]


@pytest.mark.timeout(60)
def test_json_log_listening_and_closed_byte_counts(epcat_proc, server):
    """
    -v --log-format json: the listening event carries host and port, and the
    closed event the byte counts each way.
    """
    srv = server(echo_handler)
    ep = epcat_proc("-v", "--log-format", "json", "listen", LOCAL, "connect", f"tcp:{srv.address}")
    line = ep.wait_stderr(r'"event": "listening"').string
    record = json.loads(line)
    assert record["host"] == "127.0.0.1"
    port = record["port"]
    assert isinstance(port, int) and port > 0
    payload = os.urandom(12345)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == payload
    closed = json.loads(ep.wait_stderr(r'"event": "closed"').string)
    assert closed["bytes_in_to_out"] == len(payload)
    assert closed["bytes_out_to_in"] == len(payload)
    assert "conn" in closed
    for text in ep.stderr.lines:
        json.loads(text)  # every stderr line is one JSON object


def _have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.timeout(60)
@pytest.mark.skipif(not _have_ipv6_loopback(), reason="no IPv6 loopback here")
def test_tcp6_listen_on_ipv6_loopback_with_escaped_colons(epcat_proc, server):
    """
    listen tcp6:0:interface=\\:\\:1 (colons escaped in the description),
    relaying to IPv4.
    """
    srv = server(echo_handler)
    ep = epcat_proc("-v", "listen", r"tcp6:0:interface=\:\:1", "connect", f"tcp:{srv.address}")
    address = ep.listening()
    assert address.startswith("[::1]:"), address
    port = int(address.rsplit(":", 1)[1])
    payload = os.urandom(100_000)
    with socket.create_connection(("::1", port), timeout=WAIT) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == payload
    assert srv.wait_results(1) == [payload]
