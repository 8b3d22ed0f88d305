"""
End to end: the modes other than the relay server -- stdin/stdout with
C{connect}, the one-shot C{listen}, C{connect A connect B}, and a relay
started by systemd socket activation.
"""

from __future__ import annotations

import os
import socket
import subprocess
from typing import Any

import pytest

from .conftest import (
    EPCAT,
    WAIT,
    echo_handler,
    exchange,
    free_port,
    no_traceback,
    recv_all,
    require,
    run_epcat,
    split_http,
)

pytestmark = pytest.mark.e2e

LOCAL = "tcp:0:interface=127.0.0.1"

#: binary, with NULs, every byte value, CR/LF and random bytes
BINARY = bytes(range(256)) * 16 + b"\x00" * 4096 + b"\r\n\r\n\x00\xff" + os.urandom(200_000)


STDOUT_HALF_CLOSE_BUG = (
    "BUG: a half-close towards stdin/stdout never closes stdout: RelaySide.shutdown_write "
    "(src/epcat/relay.py) calls StandardIO.loseWriteConnection(), whose ProcessWriter "
    "flushes and disconnects but never os.close()s fd 1 (Twisted's posix StandardIO only "
    "closes pipes for spawned children), so the reader of stdout sees EOF only when epcat "
    "exits, i.e. after stdin ends"
)


@pytest.mark.timeout(60)
def test_connect_stdin_stdout_exact_bytes(epcat_proc, server):
    """
    stdin -> epcat connect tcp: the exact bytes reach the server; its reply
    comes out on stdout exactly; exit 0.
    """
    reply = b"\x00reply\x00" + bytes(reversed(range(256))) * 8 + os.urandom(150_000)

    def reply_after_eof(conn: socket.socket) -> bytes:
        got = recv_all(conn)
        conn.sendall(reply)
        return got

    srv = server(reply_after_eof)
    ep = epcat_proc("connect", f"tcp:{srv.address}", stdin=BINARY)
    assert ep.finish() == 0, ep.describe()
    assert srv.wait_results(1) == [BINARY]
    assert ep.out == reply
    assert ep.err == ""  # nothing said at the default verbosity


@pytest.mark.timeout(60)
def test_connect_server_half_close_reaches_stdout_while_stdin_open(epcat_proc, server):
    """
    The server sends a banner and shuts down its write side: epcat writes the
    banner and closes its stdout at once, while stdin (a pipe still open)
    keeps flowing to the server; when stdin ends, the server gets all of it
    and epcat exits 0.
    """
    banner = b"SSH-2.0-not-really\r\n\x00\x01"

    def banner_then_sink(conn: socket.socket) -> bytes:
        conn.sendall(banner)
        conn.shutdown(socket.SHUT_WR)
        return recv_all(conn)

    srv = server(banner_then_sink)
    ep = epcat_proc("connect", f"tcp:{srv.address}", stdin=subprocess.PIPE)
    # EOF comes within milliseconds when it comes; 5 s bounds the known bug
    assert ep.stdout_eof(timeout=5) == banner
    assert ep.popen.poll() is None, ep.describe()  # still relaying stdin
    ep.popen.stdin.write(BINARY)
    ep.popen.stdin.close()
    assert ep.finish() == 0, ep.describe()
    assert srv.wait_results(1) == [BINARY]


@pytest.mark.timeout(60)
def test_connect_stdout_closed_by_reader_ends_run(epcat_proc, server):
    """
    epcat connect ... | head -c N: once the reader of stdout has gone, epcat
    ends (stdin is a pipe that never closes) and closes the connection.
    """
    def stream_forever(conn: socket.socket) -> str:
        chunk = b"x" * 65536
        try:
            while True:
                conn.sendall(chunk)
        except OSError as e:  # epcat closed the connection: what we wait for
            return type(e).__name__

    srv = server(stream_forever)
    ep = epcat_proc("connect", f"tcp:{srv.address}", stdin=subprocess.PIPE, stdout="pipe")
    try:
        assert ep.popen.stdout.read(100_000) == b"x" * 100_000
        ep.popen.stdout.close()  # like `head -c 100000` exiting
        ep.finish()  # the status for a vanished stdout reader is not specified
        srv.wait_results(1)
    finally:
        ep.popen.stdin.close()
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_connect_get_from_nginx_prints_whole_response(nginx):
    """
    printf 'GET / HTTP/1.0\\r\\n\\r\\n' | epcat connect tcp:127.0.0.1:PORT
    prints the whole response and exits 0 (the reply comes after stdin's EOF
    has been passed on as a half-close).

    Not /big.bin (8 MiB): nginx takes a client's FIN, seen while it waits to
    write, for "client prematurely closed connection" and stops sending
    (socat and nc -N get the same truncated body); nothing epcat can change.
    """
    for path, body in (("/", nginx.body), ("/mid.bin", nginx.mid)):
        result = run_epcat("connect", f"tcp:127.0.0.1:{nginx.port}",
                           stdin=f"GET {path} HTTP/1.0\r\n\r\n".encode())
        assert result.returncode == 0, result.stderr
        head, got = split_http(result.stdout)
        assert head.startswith(b"HTTP/1.1 200 OK"), head
        assert got == body
        no_traceback(result.stderr.decode())


@pytest.mark.timeout(60)
def test_listen_one_shot_exact_bytes_and_stops_listening(epcat_proc):
    """
    epcat -v listen tcp:0: the first client's bytes appear on stdout exactly,
    stdin's bytes reach the client, exit 0 after the client is done; once
    that first connection is in, the port accepts no more.
    """
    to_client = b"from stdin\x00" + os.urandom(100_000)
    ep = epcat_proc("-v", "listen", LOCAL, stdin=to_client)
    port = ep.port()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        client.sendall(BINARY)
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == to_client
        # stdin has been read to its end by now, long after the accept: the
        # listening port is gone
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
    assert ep.finish() == 0, ep.describe()
    assert ep.out == BINARY
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_listen_one_shot_client_half_close_reaches_stdout_while_stdin_open(epcat_proc):
    """
    nc -l style, client first: the client sends and shuts down its write
    side; epcat writes its bytes and closes stdout while stdin is still open;
    stdin's bytes, written afterwards, reach the client; exit 0.
    """
    ep = epcat_proc("-v", "listen", LOCAL, stdin=subprocess.PIPE)
    port = ep.port()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        client.sendall(BINARY)
        client.shutdown(socket.SHUT_WR)
        assert ep.stdout_eof(timeout=5) == BINARY
        assert ep.popen.poll() is None, ep.describe()
        ep.popen.stdin.write(b"late reply\x00")
        ep.popen.stdin.close()
        assert recv_all(client) == b"late reply\x00"
    assert ep.finish() == 0, ep.describe()


@pytest.mark.timeout(60)
def test_connect_connect_joins_two_servers(epcat_proc, server):
    """
    epcat connect tcp:A connect tcp:B: bytes from A arrive at B, B's echo
    comes back to A; exit 0 when both have closed.
    """
    payload = os.urandom(1_500_000)  # more than epcat holds before B is up

    def a_handler(conn: socket.socket) -> bytes:
        return exchange(conn, payload)

    def b_echo(conn: socket.socket) -> bytes:
        received = []
        while True:
            data = conn.recv(1 << 16)
            if not data:
                break
            received.append(data)
            conn.sendall(data)
        return b"".join(received)  # and close

    a = server(a_handler)
    b = server(b_echo)
    ep = epcat_proc("-v", "connect", f"tcp:{a.address}", "connect", f"tcp:{b.address}")
    assert ep.finish() == 0, ep.describe()
    assert b.wait_results(1) == [payload]
    assert a.wait_results(1) == [payload]
    no_traceback(ep.err)


def _socket_activated(spawn: Any, *args: str) -> tuple[Any, int]:
    """
    C{systemd-socket-activate -l 127.0.0.1:PORT ARGS...} on a free port: the
    process (once it listens) and the port.
    """
    activate = require("systemd-socket-activate")
    for _ in range(5):
        port = free_port()
        proc = spawn([activate, "-l", f"127.0.0.1:{port}", *args],
                     name="systemd-socket-activate")
        m = proc.wait_stderr(r"^Listening on |[Aa]ddress already in use")
        if "in use" not in m.string:
            return proc, port
        proc.kill()  # the free port was taken meanwhile: pick another
    pytest.fail("no free port for systemd-socket-activate")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("select", ["name=web", "index=0"])
def test_systemd_socket_activation(spawn, nginx, select):
    """
    systemd-socket-activate -l 127.0.0.1:PORT --fdname=web epcat -v listen
    systemd:domain=INET:SELECT connect tcp:127.0.0.1:NGINX, then curl.
    """
    curl = require("curl")
    proc, port = _socket_activated(
        spawn, "--fdname=web", *EPCAT, "-v",
        "listen", f"systemd:domain=INET:{select}", "connect", f"tcp:127.0.0.1:{nginx.port}",
    )
    for _ in range(2):  # the first request starts epcat; the second finds it running
        result = subprocess.run(
            [curl, "--noproxy", "*", "-sS", "--max-time", "20", f"http://127.0.0.1:{port}/"],
            capture_output=True, timeout=30,
        )
        assert result.returncode == 0, result.stderr + proc.err.encode()
        assert result.stdout == nginx.body
    address = proc.listening()
    assert address == f"127.0.0.1:{port}"
    assert proc.popen.poll() is None, proc.describe()  # still serving
    no_traceback(proc.err)


@pytest.mark.timeout(60)
def test_systemd_socket_activation_without_fdname_says_what_to_add(spawn):
    """
    systemd-socket-activate without --fdname sets LISTEN_FDS but not
    LISTEN_FDNAMES, which Twisted's systemd: endpoint takes as no socket:
    epcat says so in one line, names the missing option, and exits 2.
    """
    proc, port = _socket_activated(
        spawn, *EPCAT, "listen", "systemd:domain=INET:index=0", "connect", "tcp:127.0.0.1:9",
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        # (the first connection makes systemd-socket-activate exec epcat)
        proc.wait_stderr(r"^epcat: error: .*without LISTEN_FDNAMES.*--fdname=NAME")
    assert proc.popen.wait(timeout=30) == 2, proc.describe()
    no_traceback(proc.err)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("closed", [0, 1], ids=["stdin", "stdout"])
def test_a_closed_standard_descriptor_reads_as_dev_null(server, closed):
    """
    epcat connect X <&- (or >&-): a closed stdin reads as empty and a closed
    stdout discards, as </dev/null and >/dev/null would; epcat ends with 0,
    with no traceback, rather than failing with EBADF in a loop.
    """
    srv = server(echo_handler)
    result = subprocess.run(
        EPCAT + ["connect", f"tcp:{srv.address}"],
        input=b"hello" if closed == 1 else None,
        stdout=subprocess.PIPE if closed == 0 else None,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.close(closed),  # (in the child, before exec)
        timeout=WAIT,
    )
    assert result.returncode == 0, result.stderr
    assert srv.wait_results(1) == [b"" if closed == 0 else b"hello"]
    no_traceback(result.stderr.decode())
