"""
The fused path (epcat.fused) of a plain relay, run as a user runs it (no
-v: any -v takes the layered path), and the layered path with
EPCAT_NO_FUSED=1 against the same expectations: integrity, half-close,
backpressure, failures reported in the same words, the SIGUSR1 table,
--stats, SIGTERM, a UNIX listener, and userspace copying when no pipe can
be made.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import resource
import signal
import socket
import struct
import threading
import time

import pytest

from .conftest import (
    WAIT,
    answer_after_eof,
    check_backpressure,
    exchange,
    free_port,
    no_traceback,
    recv_all,
    room_for,
    wait_listening,
)
from .lifecycle_support import full_backlog

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not hasattr(os, "splice"),
                                                  reason="splice(2) is Linux only")]

PATHS = pytest.mark.parametrize("path", ["fused", "layered"])


def _relay(epcat_proc, path: str, target: str, *options: str, listen: str | None = None,
           listen_options: tuple[str, ...] = (), mover: str = "copy"):
    """
    Start C{epcat [options] listen tcp:PORT [listen_options] connect
    target}; the process and the port.  C{mover="splice"} sets
    EPCAT_SPLICE=1 (the fast path's other mover, L{epcat.splice.MOVER}).
    """
    env = dict(os.environ)
    env.pop("EPCAT_SPLICE", None)
    if path == "layered":
        env["EPCAT_NO_FUSED"] = "1"
    if mover == "splice":
        env["EPCAT_SPLICE"] = "1"
    port = free_port()
    ep = epcat_proc(*options, "listen", listen or f"tcp:{port}:interface=127.0.0.1",
                    *listen_options, "connect", target, env=env)
    if listen is None:
        wait_listening(port, ep)
    return ep, port


def _exchange_intact(client: socket.socket, srv, upload: bytes, download: bytes) -> None:
    """
    Send C{upload} through C{client} and half-close; check that the backend
    (an L{answer_after_eof} server) got all of it and the client all of
    C{download}.
    """
    received = exchange(client, upload)
    assert srv.wait_results(1) == [hashlib.sha256(upload).hexdigest()]
    assert hashlib.sha256(received).digest() == hashlib.sha256(download).digest()


def _one_pair_totals(size: int) -> str:
    """--stats' totals line after one pair that moved C{size} bytes each way."""
    return (
        f"epcat: totals: 1 accepted, 0 refused, 0 failed, 1 closed, 0 open; "
        f"{size} bytes inbound->outbound, {size} bytes outbound->inbound"
    )


@pytest.mark.timeout(60)
@PATHS
@pytest.mark.parametrize("mover", ["copy", "splice"])
def test_bulk_with_half_close_and_stats(epcat_proc, server, path, mover):
    """
    32 MiB each way, the answer sent only after the upload's EOF, with each
    mover; --stats counts every byte, and SIGTERM exits 0.
    """
    size = 32 * 1024 * 1024
    upload, download = os.urandom(size), os.urandom(size)
    srv = server(answer_after_eof(download))
    ep, port = _relay(epcat_proc, path, f"tcp:{srv.address}", "--stats", mover=mover)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        _exchange_intact(client, srv, upload, download)
    ep.signal(signal.SIGTERM)
    assert ep.finish() == 0
    assert ep.err == _one_pair_totals(size)


@pytest.mark.timeout(60)
@PATHS
def test_refused_backend(epcat_proc, path):
    """
    The backend refuses: each client, which sent bytes first, sees a clean
    close (not a reset), and each refusal is one warning line.
    """
    unused = free_port()
    ep, port = _relay(epcat_proc, path, f"tcp:127.0.0.1:{unused}")
    for n in (1, 2, 3):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
            client.sendall(b"request before the refusal\n")
            assert recv_all(client) == b""  # EOF; a reset would raise
        ep.wait_stderr(rf"\[{n}\] cannot connect")
    ep.signal(signal.SIGTERM)
    assert ep.finish() == 0
    assert ep.err == "\n".join(
        f"epcat: warning: [{n}] cannot connect to tcp:127.0.0.1:{unused}: connection refused"
        for n in (1, 2, 3)
    )


@pytest.mark.timeout(60)
@PATHS
def test_backend_reset(epcat_proc, server, path):
    """
    A backend that resets after reading the request: the client's
    connection is closed (EOF) and the failure is one warning line.
    """

    def reset(conn: socket.socket) -> bytes:
        got = conn.recv(100)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return got

    srv = server(reset)
    ep, port = _relay(epcat_proc, path, f"tcp:{srv.address}")
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        client.sendall(b"request")
        assert srv.wait_results(1) == [b"request"]
        assert recv_all(client) == b""
    ep.wait_stderr(r"\[1\] connection on")
    ep.signal(signal.SIGTERM)
    assert ep.finish() == 0
    assert ep.err == f"epcat: warning: [1] connection on tcp:{srv.address} failed: connection lost"


@pytest.mark.timeout(60)
@PATHS
def test_backpressure_keeps_memory_bounded(epcat_proc, server, path):
    """
    A backend that stops reading: the client's sends block, epcat's memory
    does not grow with what the client offers, and everything arrives once
    the backend reads again.
    """
    go = threading.Event()
    total = 256 * 1024 * 1024

    def backend(conn: socket.socket) -> int:
        go.wait(WAIT)
        return len(recv_all(conn))

    srv = server(backend)
    ep, port = _relay(epcat_proc, path, f"tcp:{srv.address}")
    client = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    srv.wait_accepted(1)
    check_backpressure(ep.pid, client, go, total)
    assert srv.wait_results(1) == [total]
    client.close()
    no_traceback(ep.err)


@pytest.mark.timeout(60)
@PATHS
def test_table_and_sigterm_with_an_open_pair(epcat_proc, server, path):
    """
    SIGUSR1 lists the open pair (peers, bytes each way); SIGTERM lets it
    drain, closes it once idle, and exits 0, with the client seeing the
    bytes relayed and then a clean close.
    """
    release = threading.Event()

    def backend(conn: socket.socket) -> bytes:
        got = conn.recv(100)
        conn.sendall(b"y" * 1000)
        release.wait(WAIT)
        return got

    srv = server(backend)
    ep, port = _relay(epcat_proc, path, f"tcp:{srv.address}", "--stats")
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        client.sendall(b"q" * 30)
        answer = b""
        while len(answer) < 1000:
            answer += client.recv(1000)
        ep.signal(signal.SIGUSR1)
        ep.wait_stderr(r"^totals: 1 accepted")
        local = client.getsockname()[1]
        assert re.search(
            rf"^\s+1  127\.0\.0\.1:{local}\s+{re.escape(srv.address)}\s+30\s+1000\s",
            ep.err, re.M,
        ), ep.err
        ep.signal(signal.SIGTERM)
        assert recv_all(client) == b""
        assert ep.finish() == 0
    release.set()
    assert ep.err.endswith(
        "epcat: totals: 1 accepted, 0 refused, 0 failed, 1 closed, 0 open; "
        "30 bytes inbound->outbound, 1000 bytes outbound->inbound"
    ), ep.err


@pytest.mark.timeout(60)
@PATHS
def test_unix_listener(epcat_proc, server, short_dir, path):
    """
    A unix: listener relaying to tcp:, 8 MiB each way with half-close.
    """
    size = 8 * 1024 * 1024
    upload, download = os.urandom(size), os.urandom(size)
    srv = server(answer_after_eof(download))
    socket_path = short_dir / "relay.sock"
    ep, _ = _relay(epcat_proc, path, f"tcp:{srv.address}", listen=f"unix:{socket_path}")
    wait_listening(socket_path, ep)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(WAIT)
        client.connect(str(socket_path))
        _exchange_intact(client, srv, upload, download)
    no_traceback(ep.err)


@pytest.mark.timeout(60)
@PATHS
def test_no_pipe_left_goes_on_in_userspace(epcat_proc, server, path):
    """
    Room for a pair's two sockets but not for a pipe (EMFILE), with the
    splice(2) mover: 4 MiB each way with half-close still arrive, and
    nothing is reported as failed.
    """
    size = 4 * 1024 * 1024
    upload, download = os.urandom(size), os.urandom(size)
    srv = server(answer_after_eof(download))
    ep, port = _relay(epcat_proc, path, f"tcp:{srv.address}", "--stats", mover="splice")
    # Once the reactor runs (it prints the SIGUSR1 table from its loop), it
    # has made every descriptor of its own.
    ep.signal(signal.SIGUSR1)
    ep.wait_stderr(r"^totals: 0 accepted")
    _, hard = resource.prlimit(ep.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(ep.pid, resource.RLIMIT_NOFILE, (room_for(ep.pid, 2), hard))
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        _exchange_intact(client, srv, upload, download)
    ep.signal(signal.SIGTERM)
    assert ep.finish() == 0
    assert ep.err.endswith(_one_pair_totals(size)), ep.err


@pytest.mark.timeout(60)
@PATHS
def test_workers(epcat_proc, server, path):
    """
    --workers 2: both processes relay on the port, each counts its own
    (--stats at exit, one line per worker), and SIGTERM ends both.
    """

    def echo(conn: socket.socket) -> None:
        while data := conn.recv(1 << 16):
            conn.sendall(data)

    srv = server(echo)
    ep, port = _relay(epcat_proc, path, f"tcp:{srv.address}", "--stats",
                      listen_options=("--workers", "2"))
    for i in range(40):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
            message = b"worker test %d" % i
            client.sendall(message)
            assert client.recv(100) == message
    ep.signal(signal.SIGTERM)
    assert ep.finish() == 0
    accepted = [int(n) for n in re.findall(r"^epcat: totals: (\d+) accepted, 0 refused, 0 failed",
                                          ep.err, re.M)]
    assert len(accepted) == 2 and sum(accepted) == 40, ep.err
    no_traceback(ep.err)


@contextlib.contextmanager
def _slow_backend():
    """
    A backend slow to take connections, as across a slow network
    (L{full_backlog}): (listening socket, port, the filling connections'
    local ports); skips where the kernel accepts on a full backlog anyway.
    """
    with full_backlog() as backlog:
        if backlog is None:
            pytest.skip("the kernel accepted a connection on a full backlog-0 listener")
        backlog[0].settimeout(WAIT)
        yield backlog


@pytest.mark.timeout(60)
@PATHS
def test_client_bytes_held_while_a_connect_takes_time(epcat_proc, path):
    """
    A backend slow to take the connection: what the client sends, and its
    half-close, are held while the connection is made, and arrive first
    once the backend accepts (after a SYN retransmission); the answer
    comes back.
    """
    with _slow_backend() as (listener, backend_port, fillers):
        ep, port = _relay(epcat_proc, path, f"tcp:127.0.0.1:{backend_port}")
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
            client.sendall(b"sent while connecting")
            client.shutdown(socket.SHUT_WR)
            # make room: the queued connections are taken and closed, and
            # the relay's retransmitted SYN gets in
            while True:
                conn, (_, peer_port) = listener.accept()
                if peer_port not in fillers:
                    break
                conn.close()
            with conn:
                conn.settimeout(WAIT)
                assert recv_all(conn) == b"sent while connecting"
                conn.sendall(b"answer")
            assert recv_all(client) == b"answer"
        ep.signal(signal.SIGTERM)
        assert ep.finish() == 0
        assert ep.err == "", ep.err


@pytest.mark.timeout(60)
@PATHS
def test_client_reset_while_a_connect_takes_time(epcat_proc, path):
    """
    A client that resets while its outbound connection is still being
    made: the attempt is dropped and the pair closed, quietly (it is
    counted, not reported as a failure).
    """
    with _slow_backend() as (_, backend_port, _fillers):
        ep, port = _relay(epcat_proc, path, f"tcp:127.0.0.1:{backend_port}", "--stats")
        client = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        deadline = time.monotonic() + WAIT
        closed = "totals: 1 accepted, 0 refused, 0 failed, 1 closed, 0 open"
        while closed not in ep.err:
            assert time.monotonic() < deadline, ep.err
            start = len(ep.stderr.lines)
            ep.signal(signal.SIGUSR1)  # (a table each time: wait for it)
            ep.stderr.wait_for(r"^totals: ", start=start)
        ep.signal(signal.SIGTERM)
        assert ep.finish() == 0
        assert "warning" not in ep.err and "error" not in ep.err, ep.err
