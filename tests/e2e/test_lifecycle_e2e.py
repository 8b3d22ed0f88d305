"""
End to end: the connection-lifecycle features (issue 3) with the real epcat
in a subprocess and real sockets on loopback: connect timeout, idle and
half-close timeouts, --retry, --reconnect, --max-connections, --allow /
--deny, graceful stop on SIGTERM, the SIGUSR1 table and --stats, --crlf,
--once, and the usage errors of the new options.

Waits are on events (a stderr line, a connection, bytes, EOF, an exit), each
bounded by a timeout.  The only timed assertions are the ones the contract
states (exit 28 within the connect timeout + 2 s) and lower bounds (a
timeout does not fire before it is due), which load cannot break.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from .conftest import EPCAT, WAIT, Server, echo_handler, no_traceback, recv_all, run_epcat
from .lifecycle_support import (
    Drain,
    Listener,
    closed_or_reset,
    hanging_port,
    recv_exactly,
)

pytestmark = pytest.mark.e2e

LOCAL = "tcp:0:interface=127.0.0.1"

#: small backoff settings, so that retries come quickly
FAST_BACKOFF = ["--backoff-initial", "0.2", "--backoff-max", "0.5"]


@pytest.fixture
def listener() -> Iterator[Callable[..., Listener]]:
    """
    C{listener(listen=True)} starts a L{Listener} on 127.0.0.1 (with
    C{listen=False}, a bound port that refuses connections until its
    C{listen()}); all are closed at teardown.
    """
    made: list[Listener] = []

    def start(listen: bool = True) -> Listener:
        lst = Listener(listen=listen)
        made.append(lst)
        return lst

    yield start
    for lst in made:
        lst.close()


def accept_or_explain(lst: Listener, proc) -> socket.socket:
    """
    The next connection to C{lst}; if none comes, fail with C{proc}'s stderr.
    """
    try:
        return lst.accept()
    except TimeoutError:
        raise AssertionError(
            f"no connection to {lst.address}; epcat exit status {proc.popen.poll()}:\n"
            + proc.describe()
        ) from None


def connect_client(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT)


def not_served(port: int, data: bytes = b"anyone there?\n") -> bool:
    """
    C{True} if a new client on C{port} is not served: the connection is
    refused, or (if the kernel completed it in the backlog of a socket that
    is being closed) it is closed or reset without a byte coming back.
    """
    try:
        client = connect_client(port)
    except (ConnectionRefusedError, ConnectionResetError):
        return True  # refused, or reset while the listening socket closed
    with client:
        try:
            client.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            return True
        return closed_or_reset(client)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("epcat: error:")]


# -- --connect-timeout


@pytest.mark.timeout(60)
def test_connect_timeout_on_hanging_tcp_connect_exits_28(epcat_proc):
    """
    A connect that hangs (SYNs dropped by a full backlog-0 listener): with
    --connect-timeout 1, epcat exits 28 within timeout + 2 s, saying
    "timed out after 1 s" and naming the endpoint.
    """
    with hanging_port() as port:
        if port is None:
            pytest.skip("the kernel accepted a connection on a full backlog-0 listener")
        description = f"tcp:127.0.0.1:{port}"
        ep = epcat_proc("-v", "connect", description, "--connect-timeout", "1",
                        stdin=subprocess.PIPE)
        ep.wait_stderr(r"connecting to " + description)
        started = time.monotonic()
        status = ep.finish()
        elapsed = time.monotonic() - started
    assert status == 28, ep.describe()
    assert elapsed < 1 + 2, f"exit {elapsed:.2f} s after the attempt began"
    [line] = error_lines(ep.err)
    assert "timed out after 1 s" in line
    assert description in line
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_connect_timeout_on_tls_handshake_that_never_answers_exits_28(epcat_proc, listener):
    """
    The contract's other way to make a connection hang: a TLS endpoint to a
    server that accepts TCP and never answers the handshake.  The connect
    timeout applies "whatever the endpoint type": exit 28 within timeout + 2 s.
    """
    silent = listener()
    description = f"tls:127.0.0.1:{silent.port}"
    ep = epcat_proc("-v", "connect", description, "--connect-timeout", "1",
                    stdin=subprocess.PIPE)
    ep.wait_stderr(r"connecting to " + description)
    started = time.monotonic()
    conn = silent.accept()  # TCP is up; nothing is ever sent back
    try:
        status = ep.finish(timeout=1 + 2 + 2)
    finally:
        conn.close()
    elapsed = time.monotonic() - started
    assert status == 28, ep.describe()
    assert elapsed < 1 + 2, f"exit {elapsed:.2f} s after the attempt began"
    [line] = error_lines(ep.err)
    assert "timed out after 1 s" in line
    assert description in line


# -- --idle-timeout, --half-close-timeout


@pytest.mark.timeout(60)
def test_idle_timeout_closes_silent_pair(epcat_proc, server):
    """
    --idle-timeout 1: a pair that has gone silent is closed (the client and
    the backend both see EOF), not before the timeout, and the log says why.
    """
    srv = server(echo_handler)
    ep = epcat_proc("-v", "--idle-timeout", "1", "listen", LOCAL, "connect", f"tcp:{srv.address}")
    port = ep.port()
    with connect_client(port) as client:
        # every byte epcat moves on this pair moves after this instant
        before_last_bytes = time.monotonic()
        client.sendall(b"hello\n")
        assert recv_exactly(client, 6) == b"hello\n"  # the pair is up end to end
        assert recv_all(client) == b""  # EOF, from epcat, with no further bytes
        silent_for = time.monotonic() - before_last_bytes
    # a lower bound only (load can make it later, never earlier)
    assert silent_for >= 0.95, f"closed {silent_for:.2f} s after the last bytes were sent"
    assert srv.wait_results(1) == [b"hello\n"]  # the backend saw EOF too
    ep.wait_stderr(r"\[1\] closing: idle timeout")
    ep.wait_stderr(r"\[1\] closed: .*idle timeout")
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_idle_timeout_on_a_tls_listener_closes_once_the_client_answers(
    epcat_proc, server, tls_files
):
    """
    --idle-timeout 1 on an ssl: listener: epcat sends its close_notify; the
    client answers with its own, and epcat closes TCP then (a clean EOF),
    not when its 10 s grace for a silent peer is up (by then with a reset),
    so the pair's --max-connections slot is free at once.
    """
    import ssl

    srv = server(echo_handler)
    listen = (f"ssl:0:interface=127.0.0.1:privateKey={tls_files.key}"
              f":certKey={tls_files.cert}")
    ep = epcat_proc("-v", "--idle-timeout", "1", "listen", listen, "--max-connections", "1",
                    "connect", f"tcp:{srv.address}")
    port = ep.port()
    context = ssl.create_default_context(cafile=str(tls_files.ca_pem))
    raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    tls = context.wrap_socket(raw, server_hostname="localhost")
    assert tls.recv(10) == b""  # epcat's close_notify, after the idle second
    plain = tls.unwrap()  # ours back: the TLS layer is done, TCP stays
    with plain:
        plain.settimeout(WAIT)
        assert plain.recv(10) == b""  # a FIN, not a reset ten seconds later
    ep.wait_stderr(r"\[1\] closed: .*idle timeout")
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_half_close_timeout_closes_pair_whose_server_never_closes(epcat_proc, server):
    """
    --half-close-timeout 1: the client shuts down its write side; the server
    reads the EOF and never closes; epcat closes the pair after the timeout.
    """
    release = threading.Event()

    def read_then_hang(conn: socket.socket) -> bytes:
        got = recv_all(conn)  # the client's EOF arrives as EOF here
        release.wait(WAIT)  # ... and this side never closes by itself
        return got

    srv = server(read_then_hang)
    ep = epcat_proc("-v", "--half-close-timeout", "1", "listen", LOCAL,
                    "connect", f"tcp:{srv.address}")
    port = ep.port()
    try:
        with connect_client(port) as client:
            client.sendall(b"request")
            before_half_close = time.monotonic()
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b""  # closed by epcat
            waited = time.monotonic() - before_half_close
        # a lower bound only (load can make it later, never earlier)
        assert waited >= 0.95, f"closed {waited:.2f} s after the half-close"
        ep.wait_stderr(r"\[1\] closing: half-close timeout")
        ep.wait_stderr(r"\[1\] closed: .*half-close timeout")  # both sides gone
    finally:
        release.set()
    assert srv.wait_results(1) == [b"request"]
    no_traceback(ep.err)


# -- --retry


@pytest.mark.timeout(60)
def test_retry_connect_stdin_reaches_server_started_late(epcat_proc, listener):
    """
    connect X --retry 5 with small backoff: the server comes up 1.5 s after
    epcat started; the bytes on stdin arrive intact and the reply reaches
    stdout; exit 0.
    """
    late = listener(listen=False)  # the port refuses connections until late.listen()
    port = late.port
    payload = os.urandom(64 * 1024) + b"end"
    spawned = time.monotonic()
    ep = epcat_proc("-v", "connect", f"tcp:127.0.0.1:{port}", "--retry", "5", *FAST_BACKOFF,
                    stdin=payload)
    ep.wait_stderr(r"cannot connect to .*connection refused; attempt 2 in ")
    time.sleep(max(0.0, 1.5 - (time.monotonic() - spawned)))  # the contract's "1.5 s late"
    late.listen()
    conn = accept_or_explain(late, ep)
    got = recv_all(conn)
    conn.sendall(b"sha256:" + hashlib.sha256(got).hexdigest().encode())
    conn.close()
    assert got == payload
    assert ep.finish() == 0, ep.describe()
    assert ep.out == b"sha256:" + hashlib.sha256(payload).hexdigest().encode()
    no_traceback(ep.err)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_signal_right_after_listening_is_a_clean_stop(signum):
    """
    SIGTERM (or SIGINT) the moment epcat says "listening on": a clean stop,
    exit 0.  (epcat listens before the reactor runs and Twisted installs its
    handlers: a signal in between found the default action, -15.)
    """
    proc = subprocess.Popen(EPCAT + ["-v", "listen", LOCAL, "connect", "tcp:127.0.0.1:1"],
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "listening on" in line:
                break
        proc.send_signal(signum)
        status = proc.wait(timeout=WAIT)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert status == 0, err
    no_traceback(err)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_second_signal_as_the_first_ends_the_run_keeps_exit_0(epcat_proc, signum):
    """
    A relay with nothing open, stopped by two signals in quick succession
    (Ctrl-C under timeout, which passes it on): the first stops it, the
    second comes as the finished process exits, and the status is still 0
    (Python's finalization used to put the default action back, and the
    second signal killed it: 130 or 143).
    """
    ep = epcat_proc("-v", "listen", LOCAL, "connect", "tcp:127.0.0.1:1")
    ep.port()
    ep.signal(signum)
    ep.signal(signum)
    assert ep.finish() == 0, ep.describe()
    no_traceback(ep.err)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_signal_while_still_connecting_says_so(epcat_proc, listener, signum):
    """
    connect X --retry with X refusing, stopped by SIGTERM (or SIGINT) while
    waiting for the next attempt: exit 1 with one error line saying so
    (nothing was relayed), not a silent exit.
    """
    port = listener(listen=False).port  # bound, never listening: refused
    ep = epcat_proc("-v", "connect", f"tcp:127.0.0.1:{port}", "--retry", "10",
                    "--backoff-initial", "30", stdin=subprocess.PIPE)
    ep.wait_stderr(r"cannot connect to .*connection refused; attempt 2 in ")
    ep.signal(signum)
    assert ep.finish() == 1, ep.describe()
    [line] = error_lines(ep.err)
    assert f"stopped by {signum.name} while connecting to tcp:127.0.0.1:{port}" in line, line
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_retry_relay_holds_early_bytes_for_late_backend(epcat_proc, listener):
    """
    listen ... connect X --retry 5: the client sends right after connecting,
    before the backend exists; the backend starts 1.5 s later, gets those
    bytes intact, and its reply comes back to the client.
    """
    late = listener(listen=False)  # the port refuses connections until late.listen()
    port = late.port
    early = os.urandom(64 * 1024)
    ep = epcat_proc("-v", "listen", LOCAL, "connect", f"tcp:127.0.0.1:{port}",
                    "--retry", "5", *FAST_BACKOFF)
    with connect_client(ep.port()) as client:
        client.sendall(early)
        sent_at = time.monotonic()
        ep.wait_stderr(r"\[1\] cannot connect to .*connection refused; attempt 2 in ")
        time.sleep(max(0.0, 1.5 - (time.monotonic() - sent_at)))  # the backend starts late
        late.listen()
        conn = accept_or_explain(late, ep)
        assert recv_exactly(conn, len(early)) == early
        reply = b"got " + hashlib.sha256(early).hexdigest().encode()
        conn.sendall(reply)
        conn.shutdown(socket.SHUT_WR)
        assert recv_all(client) == reply
        client.shutdown(socket.SHUT_WR)
        assert conn.recv(1) == b""  # the client's EOF reaches the backend
    ep.wait_stderr(r"\[1\] closed: ")
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_retry_relay_gives_up_closes_client_and_server_goes_on(epcat_proc, listener):
    """
    listen ... connect X --retry 1 with nothing at X: after the last failure
    the client is closed and the failure logged; the server goes on serving.
    """
    port = listener(listen=False).port  # bound, never listening: refused
    ep = epcat_proc("-v", "listen", LOCAL, "connect", f"tcp:127.0.0.1:{port}",
                    "--retry", "1", "--backoff-initial", "0.1")
    listen_port = ep.port()
    with connect_client(listen_port) as client:
        assert closed_or_reset(client)
    ep.wait_stderr(rf"^epcat: warning: \[1\] cannot connect to tcp:127\.0\.0\.1:{port}: "
                   r"connection refused")
    assert ep.popen.poll() is None  # still serving
    with connect_client(listen_port) as client:
        ep.wait_stderr(r"\[2\] accepted ")
        assert closed_or_reset(client)
    no_traceback(ep.err)


# -- --reconnect


def reset(sock: socket.socket) -> None:
    """Close C{sock} abruptly: a TCP RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def closes_after_eof(sock: socket.socket) -> None:
    """Read to EOF (or a reset), then close, as a service does when its client leaves."""
    assert closed_or_reset(sock)
    sock.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("drop", ["a-closes", "a-resets", "b-closes"])
def test_reconnect_tunnel_reestablishes_both_legs(epcat_proc, listener, drop):
    """
    connect A connect B --reconnect: one far end drops the connection (A
    closes, A resets, or B closes; the other end closes when it sees that);
    epcat makes a new connection to both A and B, and data flows on the new
    one.
    """
    a, b = listener(), listener()
    ep = epcat_proc("-v", "connect", f"tcp:{a.address}", "connect", f"tcp:{b.address}",
                    "--reconnect", "--backoff-initial", "0.1")
    a1 = accept_or_explain(a, ep)
    b1 = accept_or_explain(b, ep)
    a1.sendall(b"a->b 1\n")
    assert recv_exactly(b1, 7) == b"a->b 1\n"
    b1.sendall(b"b->a 1\n")
    assert recv_exactly(a1, 7) == b"b->a 1\n"
    if drop == "a-closes":
        a1.close()
        closes_after_eof(b1)
    elif drop == "a-resets":
        reset(a1)
        closes_after_eof(b1)
    else:
        b1.close()
        closes_after_eof(a1)
    a2 = accept_or_explain(a, ep)  # a new connection at A ...
    b2 = accept_or_explain(b, ep)  # ... and at B
    a2.sendall(b"a->b 2\n")
    assert recv_exactly(b2, 7) == b"a->b 2\n"
    b2.sendall(b"b->a 2\n")
    assert recv_exactly(a2, 7) == b"b->a 2\n"
    assert ep.popen.poll() is None
    ep.wait_stderr(r"\[2\] connected to " + b.address)
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_reconnect_tunnel_a_closes_while_b_stays_open(epcat_proc, listener):
    """
    connect A connect B --reconnect: A closes its connection; B keeps its
    own open (it neither closes nor sends).  A has dropped, so the tunnel is
    re-established: a new connection arrives at A and at B.
    """
    a, b = listener(), listener()
    ep = epcat_proc("-v", "connect", f"tcp:{a.address}", "connect", f"tcp:{b.address}",
                    "--reconnect", "--backoff-initial", "0.1")
    a1 = accept_or_explain(a, ep)
    b1 = accept_or_explain(b, ep)
    a1.sendall(b"a->b 1\n")
    assert recv_exactly(b1, 7) == b"a->b 1\n"
    a1.close()  # A drops the connection
    assert b1.recv(1) == b""  # epcat passes A's end on to B ...
    try:
        a2 = a.accept(timeout=5)  # ... and dials A again (0.1 s + up to 1 s jitter)
    except TimeoutError:
        raise AssertionError("A was not dialled again within 5 s:\n" + ep.describe()) from None
    b2 = accept_or_explain(b, ep)
    a2.sendall(b"a->b 2\n")
    assert recv_exactly(b2, 7) == b"a->b 2\n"


@pytest.mark.timeout(60)
def test_reconnect_fail_after_1_with_nothing_listening_exits_7(listener):
    """
    connect X --reconnect --fail-after 1 with nothing listening at X: one
    error line, exit 7.
    """
    port = listener(listen=False).port  # bound, never listening: refused
    result = run_epcat("connect", f"tcp:127.0.0.1:{port}", "--reconnect", "--fail-after", "1")
    err = result.stderr.decode()
    assert result.returncode == 7, err
    [line] = error_lines(err)
    assert f"tcp:127.0.0.1:{port}" in line and "connection refused" in line
    no_traceback(err)


@pytest.mark.timeout(60)
def test_reconnect_fail_after_counts_failures_after_a_lost_connection(epcat_proc, listener):
    """
    connect X --reconnect --fail-after 2: the first connection is made and
    then lost, and X stops listening; the two refused attempts that follow
    end the run with exit 7 and one error line (the count starts again
    after every lost connection, and is not answered by the lost one).
    """
    srv = listener()
    ep = epcat_proc("-v", "connect", f"tcp:{srv.address}", "--reconnect", "--fail-after", "2",
                    "--backoff-initial", "0.1", "--backoff-max", "0.2", stdin=subprocess.PIPE)
    first = srv.accept()
    srv.close()  # the connection and the listening socket: refused from now on
    ep.wait_stderr(r"connection lost; reconnecting")
    assert ep.finish() == 7, ep.describe()
    [line] = error_lines(ep.err)
    assert f"tcp:{srv.address}" in line and "gave up after 2 attempt(s)" in line, line
    assert ep.err.count("connection refused; will retry") == 1, ep.err
    first.close()
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_reconnect_stdio_survives_server_close(epcat_proc, listener):
    """
    connect X --reconnect with stdin/stdout: the server closes the first
    connection; epcat reconnects; stdin bytes given while no connection was
    up, and later ones, arrive on the second connection; after stdin closes,
    epcat exits 0 once the server closes.
    """
    srv = listener()
    ep = epcat_proc("-v", "connect", f"tcp:{srv.address}", "--reconnect",
                    "--backoff-initial", "0.1", stdin=subprocess.PIPE)
    stdin = ep.popen.stdin
    first = srv.accept()
    stdin.write(b"one\n")
    stdin.flush()
    assert recv_exactly(first, 4) == b"one\n"
    first.sendall(b"hello 1\n")
    first.close()  # the server closes the first connection
    ep.wait_stderr(r"connection lost; reconnecting")
    stdin.write(b"two\n")  # no connection is up now: held for the next
    stdin.flush()
    second = srv.accept()
    assert recv_exactly(second, 4) == b"two\n"
    stdin.write(b"three\n")
    stdin.flush()
    assert recv_exactly(second, 6) == b"three\n"
    stdin.close()
    assert second.recv(1) == b""  # stdin's EOF reaches the server
    second.sendall(b"bye\n")
    second.close()
    assert ep.finish() == 0, ep.describe()
    assert ep.out == b"hello 1\nbye\n"
    no_traceback(ep.err)


# -- --max-connections


def assert_not_served(client: socket.socket, srv: Server, accepted: int) -> None:
    """
    C{client} gets no answer within a second (it waits in the backlog) and
    the backend has accepted C{accepted} connections.  (A lower bound only:
    load cannot make it fail wrongly.)
    """
    client.settimeout(1.0)
    with pytest.raises(socket.timeout):
        client.recv(100)
    assert srv.accepted == accepted
    client.settimeout(WAIT)


@pytest.mark.timeout(60)
def test_max_connections_queues_third_client(epcat_proc, server):
    """
    --max-connections 2 with three clients: the third waits (not dropped)
    until one of the first two closes, then is served; all three get their
    data back from the echo backend.
    """
    srv = server(echo_handler)
    ep = epcat_proc("-v", "listen", LOCAL, "--max-connections", "2",
                    "connect", f"tcp:{srv.address}")
    port = ep.port()
    c1, c2 = connect_client(port), connect_client(port)
    try:
        c1.sendall(b"client 1\n")
        assert recv_exactly(c1, 9) == b"client 1\n"
        c2.sendall(b"client 2\n")
        assert recv_exactly(c2, 9) == b"client 2\n"
        c3 = connect_client(port)  # completes in the kernel backlog
        try:
            c3.sendall(b"client 3\n")
            assert_not_served(c3, srv, accepted=2)  # while two pairs are open
            c1.shutdown(socket.SHUT_WR)
            assert recv_all(c1) == b""
            c1.close()
            assert recv_exactly(c3, 9) == b"client 3\n"  # served now
            for c in (c2, c3):
                c.shutdown(socket.SHUT_WR)
                assert recv_all(c) == b""
        finally:
            c3.close()
    finally:
        c1.close()
        c2.close()
    assert sorted(srv.wait_results(3)) == [b"client 1\n", b"client 2\n", b"client 3\n"]
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_max_connections_counts_connections_waiting_for_a_proxy_header(epcat_proc, server):
    """
    On a haproxy: listener a connection that has not sent its PROXY header
    yet holds a slot: with --max-connections 1, a second client waits in
    the backlog until the first one leaves.
    """
    srv = server(echo_handler)
    ep = epcat_proc("-v", "listen", f"haproxy:{LOCAL}", "--max-connections", "1",
                    "connect", f"tcp:{srv.address}")
    port = ep.port()
    # (the second completes in the kernel backlog)
    with connect_client(port) as silent, connect_client(port) as second:
        second.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 80\r\nhello\n")
        assert_not_served(second, srv, accepted=0)  # the silent one holds the slot
        silent.close()
        assert recv_exactly(second, 6) == b"hello\n"
        second.shutdown(socket.SHUT_WR)
        assert recv_all(second) == b""
    assert srv.wait_results(1) == [b"hello\n"]
    ep.wait_stderr(r"closed before a complete PROXY header")
    no_traceback(ep.err)


# -- --allow / --deny


@pytest.mark.timeout(60)
@pytest.mark.parametrize("access", [
    ["--deny", "127.0.0.0/8"],
    ["--allow", "192.0.2.0/24"],  # --allow given: everything else is refused
], ids=["deny", "allow-other"])
def test_refused_peer_is_closed_and_upstream_never_sees_it(epcat_proc, listener, access):
    """
    A refused peer is closed at once and logged with its address; no
    outbound connection is made for it.
    """
    backend = listener()
    ep = epcat_proc("-v", "listen", LOCAL, *access, "connect", f"tcp:{backend.address}")
    port = ep.port()
    with connect_client(port) as client:
        local_port = client.getsockname()[1]
        client.sendall(b"let me in\n")
        assert closed_or_reset(client)  # closed at once, nothing relayed
    ep.wait_stderr(rf"^epcat: warning: refused 127\.0\.0\.1:{local_port}: ")
    assert backend.no_connection_within(1.0), "the backend got a connection"
    assert "accepted" not in ep.err
    assert ep.popen.poll() is None  # the server goes on
    no_traceback(ep.err)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("access, served", [
    (["--deny", "::1/128"], False),
    (["--allow", "fd00::/8"], False),
    (["--allow", "::1"], True),
], ids=["deny-v6", "allow-other-v6", "allow-v6"])
def test_access_lists_ipv6(epcat_proc, server, access, served):
    """
    --allow / --deny take IPv6 networks, checked on an IPv6 peer (::1).
    """
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:
        pytest.skip("no IPv6")
    srv = server(echo_handler)
    ep = epcat_proc("-v", "listen", r"tcp6:0:interface=\:\:1", *access,
                    "connect", f"tcp:{srv.address}")
    port = ep.port()
    with socket.create_connection(("::1", port), timeout=WAIT) as client:
        client.sendall(b"v6\n")
        if served:
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"v6\n"
        else:
            assert closed_or_reset(client)
            local_port = client.getsockname()[1]
            ep.wait_stderr(rf"^epcat: warning: refused \[::1\]:{local_port}: ")
    if served:
        assert srv.wait_results(1) == [b"v6\n"]
        assert "refused" not in ep.err
    else:
        assert srv.accepted == 0
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_allow_loopback_passes(epcat_proc, server):
    """
    --allow 127.0.0.1/32: a loopback client is served.
    """
    srv = server(echo_handler)
    ep = epcat_proc("-v", "listen", LOCAL, "--allow", "127.0.0.1/32",
                    "connect", f"tcp:{srv.address}")
    payload = os.urandom(10_000)
    with connect_client(ep.port()) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == payload
    assert srv.wait_results(1) == [payload]
    assert "refused" not in ep.err
    no_traceback(ep.err)


# -- graceful stop


@pytest.mark.timeout(60)
def test_sigterm_lets_active_transfer_finish_and_closes_idle(epcat_proc, server):
    """
    SIGTERM with a transfer in progress (a backend streaming over ~2 s) and
    an idle connection: epcat stops listening at once, closes the idle pair
    promptly (while the transfer still runs), lets the transfer complete
    intact within the drain timeout, and exits 0.
    """
    chunks = [os.urandom(8192) for _ in range(24)]
    stream = b"".join(chunks)

    def backend(conn: socket.socket) -> bytes:
        request = conn.recv(100)
        if request == b"stream\n":
            for chunk in chunks:  # 24 chunks, 0.1 s apart: ~2 s
                conn.sendall(chunk)
                time.sleep(0.1)
            conn.shutdown(socket.SHUT_WR)
            return request + recv_all(conn)
        conn.sendall(b"ok\n")  # the idle client: answer once, then say nothing
        return request + recv_all(conn)

    srv = server(backend)
    ep = epcat_proc("-v", "--stats", "listen", LOCAL, "--drain-timeout", "10",
                    "connect", f"tcp:{srv.address}")
    port = ep.port()
    idle = connect_client(port)
    active = connect_client(port)
    try:
        idle.sendall(b"idle\n")
        assert recv_exactly(idle, 3) == b"ok\n"
        active.sendall(b"stream\n")
        transfer = Drain(active, "active")
        assert len(transfer.wait_bytes(4 * 8192)) >= 4 * 8192  # the transfer is under way
        ep.signal(signal.SIGTERM)
        ep.wait_stderr(r"stopping: 2 open connection\(s\)")
        assert not_served(port)  # no longer listening
        assert closed_or_reset(idle)  # the idle pair is closed ...
        assert not transfer.eof.is_set(), "the idle pair was closed only at the end"
        assert transfer.wait_eof() == stream  # ... the active one completes intact
        assert transfer.error is None
        active.close()
        assert ep.finish() == 0, ep.describe()
    finally:
        idle.close()
        active.close()
    assert "drain timeout" not in ep.err
    assert sorted(srv.wait_results(2)) == [b"idle\n", b"stream\n"]
    ep.wait_stderr(r"^epcat: totals: 2 accepted, ")
    no_traceback(ep.err)


# -- SIGUSR1, --stats


@pytest.mark.timeout(60)
def test_sigusr1_prints_table_of_open_pairs(epcat_proc, server):
    """
    SIGUSR1 prints the open pairs and the totals to stderr; the relay goes on.
    """
    srv = server(echo_handler)
    ep = epcat_proc("-v", "listen", LOCAL, "connect", f"tcp:{srv.address}")
    port = ep.port()
    with connect_client(port) as client:
        client.sendall(b"12345")
        assert recv_exactly(client, 5) == b"12345"
        ep.wait_stderr(r"\[1\] connected to ")
        ep.signal(signal.SIGUSR1)
        ep.wait_stderr(r"^1 open pair")
        inbound_peer = re.escape(f"127.0.0.1:{client.getsockname()[1]}")
        outbound_peer = re.escape(srv.address)
        ep.wait_stderr(rf"^\s+1\s+{inbound_peer}\s+{outbound_peer}\s+5\s+5\s")
        ep.wait_stderr(r"^totals: 1 accepted, 0 refused, 0 failed, 0 closed, 1 open; "
                       r"5 bytes inbound->outbound, 5 bytes outbound->inbound")
        client.sendall(b"more")  # still relaying
        assert recv_exactly(client, 4) == b"more"
    assert ep.popen.poll() is None
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_stats_prints_totals_at_exit(epcat_proc, server):
    """
    --stats with connect and stdin: the totals line at exit.
    """
    srv = server(echo_handler)
    ep = epcat_proc("--stats", "connect", f"tcp:{srv.address}", stdin=b"x" * 1000)
    assert ep.finish() == 0, ep.describe()
    assert ep.out == b"x" * 1000
    totals = [line for line in ep.err.splitlines() if "totals" in line]
    assert len(totals) == 1, ep.err
    assert "1000 bytes inbound->outbound" in totals[0]
    assert "1000 bytes outbound->inbound" in totals[0]


# -- --crlf


@pytest.mark.timeout(60)
def test_crlf_translates_stdin_line_ends(epcat_proc, server):
    """
    printf 'a\\nb\\r\\n' | epcat --crlf connect ...: the server gets a\\r\\nb\\r\\n.
    """
    srv = server(recv_all)
    ep = epcat_proc("--crlf", "connect", f"tcp:{srv.address}", stdin=b"a\nb\r\n")
    assert ep.finish() == 0, ep.describe()
    assert srv.wait_results(1) == [b"a\r\nb\r\n"]


# -- --once


@pytest.mark.timeout(60)
def test_once_serves_one_client_then_exits_0(epcat_proc, server):
    """
    listen ... --once connect ...: the second client is not served; epcat
    exits 0 once the first connection ends.
    """
    srv = server(echo_handler)
    ep = epcat_proc("-v", "listen", LOCAL, "--once", "connect", f"tcp:{srv.address}")
    port = ep.port()
    with connect_client(port) as first:
        first.sendall(b"first\n")
        assert recv_exactly(first, 6) == b"first\n"
        assert not_served(port)  # refused, or closed at once
        assert ep.popen.poll() is None  # the first connection is still open
        first.shutdown(socket.SHUT_WR)
        assert recv_all(first) == b""
    assert ep.finish() == 0, ep.describe()
    assert srv.wait_results(1) == [b"first\n"]
    assert srv.accepted == 1
    no_traceback(ep.err)


# -- usage errors


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [
    ["listen", "tcp:0", "--allow", "notanip"],
    ["listen", "tcp:0", "--deny", "300.1.2.3/8", "connect", "tcp:127.0.0.1:1"],
    ["connect", "tcp:x:1", "--fail-after", "2"],
], ids=["allow-notanip", "deny-bad", "fail-after-without-reconnect"])
def test_usage_errors_exit_2(args):
    """
    Bad lifecycle options: exit 2, one 'epcat: error:' line, no traceback.
    """
    result = run_epcat(*args)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert len(error_lines(err)) == 1, err
    assert err.strip().splitlines() == error_lines(err), err
    assert result.stdout == b""
    no_traceback(err)
