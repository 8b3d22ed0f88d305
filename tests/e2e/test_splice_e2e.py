"""
The fast path (epcat.splice, both movers): integrity, half-close, backpressure,
and the fallback to the normal path when something must see the bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import signal
import socket
import ssl
import threading

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
)

pytestmark = pytest.mark.e2e

#: what -vv says of a pair on the fast path, by mover (epcat.splice.MOVER)
FAST_LINES = {
    "copy": "fast path: read(2)/write(2) through a 1 MiB buffer",
    "splice": "fast path: zero-copy with splice(2)",
}
#: the start of either line
SPLICE_LINE = "] fast path: "


def _relay(epcat_proc, backend_address: str, *extra: str, env=None):
    args = [
        "-vv",
        *extra,
        "listen",
        "tcp:0:interface=127.0.0.1",
        "connect",
        f"tcp:{backend_address}",
    ]
    ep = epcat_proc(*args, env=env) if env is not None else epcat_proc(*args)
    return ep, ep.port()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "mover, no_lean",
    [("copy", False), ("copy", True), ("splice", False), ("splice", True), (None, False)],
    ids=["copy-lean-sockets", "copy-twisted-transports", "splice-lean-sockets",
         "splice-twisted-transports", "userspace"],
)
def test_bulk_integrity_and_half_close(epcat_proc, server, mover, no_lean):
    """
    32 MiB each way, the answer sent only after the upload's EOF: on the
    fast path with each mover (copying, the default; splice(2) with
    EPCAT_SPLICE=1), with epcat's lean sockets (the default for tcp: to an
    IP address) and with Twisted's transports (EPCAT_NO_LEAN=1), and in
    userspace (EPCAT_NO_SPLICE=1).
    """
    no_splice = mover is None
    size = 32 * 1024 * 1024
    upload, download = os.urandom(size), os.urandom(size)
    srv = server(answer_after_eof(download))
    env = dict(os.environ)
    if no_splice:
        env["EPCAT_NO_SPLICE"] = "1"
    if mover == "splice":
        env["EPCAT_SPLICE"] = "1"
    if no_lean:
        env["EPCAT_NO_LEAN"] = "1"
    ep, port = _relay(epcat_proc, srv.address, env=env)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        received = exchange(client, upload)
    assert srv.wait_results(1) == [hashlib.sha256(upload).hexdigest()]
    assert hashlib.sha256(received).digest() == hashlib.sha256(download).digest()
    ep.wait_stderr(r"\[1\] closed: ")
    for name, line in FAST_LINES.items():
        assert (line in ep.err) is (name == mover), ep.err
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_no_pipe_left_goes_on_in_userspace(epcat_proc, server):
    """
    Room for a pair's two sockets but not for a pipe (EMFILE), with the
    splice(2) mover: the pair starts on the fast path, gives it up at its
    first splice, and goes on in userspace over the same lean sockets, 4 MiB
    each way with half-close, ending cleanly (no failure reported).
    """
    size = 4 * 1024 * 1024
    upload, download = os.urandom(size), os.urandom(size)
    srv = server(answer_after_eof(download))
    ep, port = _relay(epcat_proc, srv.address, env=dict(os.environ, EPCAT_SPLICE="1"))
    # Once the reactor runs (it prints the SIGUSR1 table from its loop), it
    # has made every descriptor of its own: its wakers come after the
    # listening line.
    ep.signal(signal.SIGUSR1)
    ep.wait_stderr(r"^totals: 0 accepted")
    _, hard = resource.prlimit(ep.pid, resource.RLIMIT_NOFILE)
    # the accepted socket and the outbound one, and no pipe (it needs two)
    resource.prlimit(ep.pid, resource.RLIMIT_NOFILE, (room_for(ep.pid, 2), hard))
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        received = exchange(client, upload)
    assert srv.wait_results(1) == [hashlib.sha256(upload).hexdigest()]
    assert hashlib.sha256(received).digest() == hashlib.sha256(download).digest()
    ep.wait_stderr(rf"\[1\] closed: {size} bytes inbound->outbound, {size} bytes")
    assert f"[1] {FAST_LINES['splice']}" in ep.err, ep.err
    assert "[1] no pipe for splice(2) (out of file descriptors?): relaying in userspace" in (
        ep.err
    ), ep.err
    assert not re.search(r"\[1\] .*(failed|lost)", ep.err), ep.err
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_backpressure_keeps_memory_bounded(epcat_proc, server):
    """
    A reader that stops reading: the sender is paused (its send blocks), and
    epcat's memory does not grow with what the sender offers.
    """
    stop = threading.Event()
    total = 256 * 1024 * 1024

    def backend(conn: socket.socket) -> int:
        stop.wait(WAIT)  # read nothing until told
        return len(recv_all(conn))

    srv = server(backend)
    ep, port = _relay(epcat_proc, srv.address)
    client = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    ep.wait_stderr(r"\[1\] connected to ")  # joined (the engine starts at the first byte)
    check_backpressure(ep.pid, client, stop, total)
    assert srv.wait_results(1) == [total]
    client.close()
    assert SPLICE_LINE in ep.err, ep.err


@pytest.mark.timeout(60)
def test_fallback_with_hexdump(epcat_proc, server):
    """
    -x must see the bytes: the pair stays on the normal path.
    """

    def echo(conn: socket.socket) -> None:
        conn.sendall(recv_all(conn))

    srv = server(echo)
    ep, port = _relay(epcat_proc, srv.address, "-x")
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        client.sendall(b"visible")
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"visible"
    ep.wait_stderr(r"\[1\] closed: ")
    assert SPLICE_LINE not in ep.err
    assert "76 69 73 69 62 6c 65" in ep.err  # the dump saw the bytes


@pytest.mark.timeout(60)
def test_fallback_with_tls(epcat_proc, server, tls_files):
    """
    A TLS side cannot be spliced: the normal path relays it.
    """

    def echo(conn: socket.socket) -> None:
        while data := conn.recv(1 << 16):
            conn.sendall(data)

    srv = server(echo)
    ep = epcat_proc(
        "-vv",
        "listen",
        f"ssl:0:interface=127.0.0.1:privateKey={tls_files.key}:certKey={tls_files.cert}",
        "connect",
        f"tcp:{srv.address}",
    )
    port = ep.port()
    context = ssl.create_default_context(cafile=str(tls_files.ca_pem))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"through tls")
        answer = b""
        while len(answer) < len(b"through tls"):
            data = tls.recv(100)
            if not data:
                break
            answer += data
    assert answer == b"through tls"
    assert SPLICE_LINE not in ep.err


@pytest.mark.timeout(60)
@pytest.mark.parametrize("no_lean", [False, True], ids=["lean-sockets", "twisted-transports"])
def test_refused_outbound_closes_the_client_cleanly(epcat_proc, no_lean):
    """
    The backend refuses: the client that already sent bytes gets a FIN (an
    orderly close), not a reset, and epcat says why once.
    """
    unused = free_port()
    env = dict(os.environ)
    if no_lean:
        env["EPCAT_NO_LEAN"] = "1"
    ep = epcat_proc("-v", "listen", "tcp:0:interface=127.0.0.1", "connect",
                    f"tcp:127.0.0.1:{unused}", env=env)
    port = ep.port()
    for n in range(1, 6):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
            client.sendall(b"request before the refusal\n")
            assert recv_all(client) == b""  # EOF; a reset would raise
        ep.wait_stderr(rf"\[{n}\] cannot connect to tcp:127\.0\.0\.1:{unused}: connection refused")
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_unix_listener_to_tcp(epcat_proc, server, short_dir):
    """
    A unix: listener relaying to tcp: (lean sockets on both sides, spliced):
    8 MiB each way with half-close, and the peer of the accepted connection
    reported as UNIX.
    """
    size = 8 * 1024 * 1024
    upload, download = os.urandom(size), os.urandom(size)
    srv = server(answer_after_eof(download))
    path = short_dir / "relay.sock"
    ep = epcat_proc("-vv", "listen", f"unix:{path}", "connect", f"tcp:{srv.address}")
    ep.listening()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(WAIT)
        client.connect(str(path))
        received = exchange(client, upload)
    assert srv.wait_results(1) == [hashlib.sha256(upload).hexdigest()]
    assert hashlib.sha256(received).digest() == hashlib.sha256(download).digest()
    ep.wait_stderr(r"\[1\] closed: 8388608 bytes inbound->outbound, 8388608 bytes")
    assert f"[1] accepted unix:(unnamed) on {path}" in ep.err, ep.err
    assert SPLICE_LINE in ep.err, ep.err
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_host_name_target(epcat_proc, server):
    """
    connect tcp:localhost:PORT (a name, looked up for every connection as
    Twisted's tcp: endpoint does): relayed, spliced, and the connected line
    names the address the name gave.
    """

    def echo(conn: socket.socket) -> None:
        conn.sendall(recv_all(conn))

    srv = server(echo)
    port = srv.address.rsplit(":", 1)[1]
    ep = epcat_proc("-vv", "listen", "tcp:0:interface=127.0.0.1",
                    "connect", f"tcp:localhost:{port}")
    relay = ep.port()
    for n in (1, 2):
        with socket.create_connection(("127.0.0.1", relay), timeout=WAIT) as client:
            client.sendall(b"by name %d" % n)
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"by name %d" % n
        ep.wait_stderr(rf"\[{n}\] closed: ")
    assert f"[1] connected to 127.0.0.1:{port} from 127.0.0.1:" in ep.err, ep.err
    assert SPLICE_LINE in ep.err
    no_traceback(ep.err)
