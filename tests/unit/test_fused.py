"""
Tests for L{epcat.fused}: the fused path of a plain TCP relay, on real
loopback sockets with an in-memory reactor that these tests drive by hand
(L{_run_until} does what a reactor would: C{select} on the descriptors
registered with it, then C{doRead}/C{doWrite}).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections import deque
from typing import Any
from collections.abc import Callable

import pytest
from click.testing import CliRunner
from twisted.internet import tcp
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock

import epcat.cli
from epcat import fused, run, splice
from epcat.cli import cli
from epcat.endpoints import parse_client
from epcat.ui import UI

WAIT = 10.0

pytestmark = [
    pytest.mark.skipif(not splice.available(), reason="splice(2) is Linux only"),
    pytest.mark.usefixtures("mover"),
]


def _plan(args: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    plans: list[Any] = []
    monkeypatch.setattr(epcat.cli, "go", plans.append)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return plans[0]


class Relay:
    """
    A fused relay from a listening port on 127.0.0.1 to a backend listening
    socket, and what it needs to run.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, backend_port: int,
                 options: tuple[str, ...] = (), listen_options: tuple[str, ...] = (),
                 connect_options: tuple[str, ...] = ()) -> None:
        self.reactor = MemoryReactorClock()
        self.connect = f"tcp:127.0.0.1:{backend_port}"
        plan = _plan([*options, "listen", "tcp:0:interface=127.0.0.1", *listen_options,
                      "connect", self.connect, *connect_options], monkeypatch)
        self.runner = run.Runner(self.reactor, plan, UI(plan.verbosity, plan.log_format))
        self.client = self.runner._lean(
            parse_client(self.reactor, self.connect)
        )
        self.relay = fused.FusedRelay(self.runner, self.client, self.connect, plan.listen)
        self.port = tcp.Port(0, Factory(), interface="127.0.0.1", reactor=self.reactor)
        self.port.startListening()
        assert self.relay.serve(self.port)
        self.address = self.port.getHost()

    def dial(self) -> socket.socket:
        """A client connection to the relay, accepted and connected out."""
        client = socket.create_connection((self.address.host, self.address.port))
        client.settimeout(WAIT)
        before = len(self.runner.pairs) + self.runner.reporter.totals.accepted
        _run_until(
            self.reactor,
            lambda: len(self.runner.pairs) + self.runner.reporter.totals.accepted > before,
        )
        return client

    def pair(self) -> fused.FusedPair:
        (pair,) = self.runner.pairs
        return pair  # type: ignore[return-value]

    def close(self) -> None:
        for pair in list(self.runner.pairs):
            pair.abort()
        self.port.socket.close()


def _dispatch_once(reactor: MemoryReactorClock, wait: float = 0.05) -> None:
    """
    One reactor round: C{select} on the descriptors registered with
    C{reactor}, then C{doRead}/C{doWrite} for each that is ready (and still
    registered: an earlier handler may have removed it).
    """
    readers = {r.fileno(): r for r in reactor.getReaders()}
    writers = {w.fileno(): w for w in reactor.getWriters()}
    readable, writable, _ = select.select(list(readers), list(writers), [], wait)
    for fd in readable:
        if readers[fd] in reactor.getReaders():
            readers[fd].doRead()
    for fd in writable:
        if writers[fd] in reactor.getWriters():
            writers[fd].doWrite()


def _run_until(reactor: MemoryReactorClock, done: Callable[[], bool],
               timeout: float = WAIT) -> None:
    """
    Dispatch readiness to the reactor's readers and writers until C{done()}.
    """
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "not done in time"
        _dispatch_once(reactor)


@pytest.fixture
def backend() -> Any:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(WAIT)
    yield sock
    sock.close()


@pytest.fixture
def relay(monkeypatch: pytest.MonkeyPatch, backend: socket.socket) -> Any:
    relay = Relay(monkeypatch, backend.getsockname()[1])
    yield relay
    relay.close()


def _serve_one(relay: Relay, backend: socket.socket) -> tuple[socket.socket, socket.socket]:
    client = relay.dial()
    server, _ = backend.accept()
    server.settimeout(WAIT)
    return client, server


def test_request_response_and_close(relay: Relay, backend: socket.socket) -> None:
    """
    The request goes to the backend, the response and the backend's EOF
    come back, and the client's close ends the pair: forgotten by the
    runner, counted in the totals.
    """
    client, server = _serve_one(relay, backend)
    pair = relay.pair()
    client.sendall(b"GET / HTTP/1.0\r\n\r\n")
    received = bytearray()
    _run_until(relay.reactor, lambda: received.extend(_nonblocking_recv(server)) or (
        bytes(received) == b"GET / HTTP/1.0\r\n\r\n"))
    response = b"HTTP/1.0 200 OK\r\n\r\nhello"
    assert _answer_and_close(relay, server, client, response) == response
    assert pair.first_closer == "outbound"
    client.close()
    _run_until(relay.reactor, lambda: pair.finished)
    assert not relay.runner.pairs
    totals = relay.runner.reporter.totals
    assert (totals.accepted, totals.closed, totals.failed) == (1, 1, 0)
    assert (totals.bytes_in_to_out, totals.bytes_out_to_in) == (18, 24)
    assert pair.done.called


def _nonblocking_recv(sock: socket.socket) -> bytes:
    """What C{sock} has to read now (C{b""} if nothing, or at EOF)."""
    if not select.select([sock], [], [], 0)[0]:
        return b""
    return sock.recv(65536)


def _gather(sock: socket.socket, into: bytearray) -> bool:
    """Read what C{sock} has into C{into}; C{True} at its EOF."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    chunk = sock.recv(1 << 20)
    into.extend(chunk)
    return not chunk


def _send_until(relay: Relay, sender: socket.socket, payload: bytes,
                done: Callable[[], bool]) -> int:
    """
    Send C{payload} from the non-blocking C{sender}, a round of the relay
    after each send, until C{done()} (at most 200 rounds): the bytes sent.
    """
    sent = 0
    for _ in range(200):
        try:
            sent += sender.send(payload[sent:])
        except BlockingIOError:
            pass
        _dispatch_once(relay.reactor)
        if done():
            break
    return sent


def _send_rest(relay: Relay, sender: socket.socket, receiver: socket.socket,
               payload: bytes, sent: int, timeout: float = WAIT) -> bytes:
    """
    Send what is left of C{payload} (all but its first C{sent} bytes) from
    the non-blocking C{sender}, running the relay, until C{receiver} has
    had as many bytes as C{payload} holds: what it received.
    """
    received = bytearray()

    def step() -> bool:
        nonlocal sent
        if sent < len(payload):
            try:
                sent += sender.send(payload[sent:])
            except BlockingIOError:
                pass
        received.extend(_nonblocking_recv(receiver))
        return len(received) == len(payload)

    _run_until(relay.reactor, step, timeout)
    return bytes(received)


def _answer_and_close(relay: Relay, server: socket.socket, client: socket.socket,
                      data: bytes) -> bytes:
    """The backend sends C{data} and closes: what the client reads to its EOF."""
    server.sendall(data)
    server.close()
    answer = bytearray()
    _run_until(relay.reactor, lambda: _gather(client, answer))
    return bytes(answer)


def test_half_close_from_the_client(relay: Relay, backend: socket.socket) -> None:
    """
    The client's FIN reaches the backend after its bytes, and the backend
    can still answer.
    """
    client, server = _serve_one(relay, backend)
    client.sendall(b"question")
    client.shutdown(socket.SHUT_WR)
    asked = bytearray()
    _run_until(relay.reactor, lambda: _gather(server, asked))
    assert bytes(asked) == b"question"
    assert _answer_and_close(relay, server, client, b"answer") == b"answer"
    _run_until(relay.reactor, lambda: not relay.runner.pairs)


def test_refused_closes_the_client_cleanly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    A backend that refuses: one warning, in the layered path's words, and
    the client sees a clean EOF even though it sent bytes first (they are
    read, not left to make the close a reset).
    """
    unused = socket.create_server(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()
    relay = Relay(monkeypatch, port)
    try:
        client = socket.create_connection((relay.address.host, relay.address.port))
        client.settimeout(WAIT)
        client.sendall(b"hello")
        _run_until(relay.reactor, lambda: relay.runner.reporter.totals.closed == 1)
        assert client.recv(10) == b""
        totals = relay.runner.reporter.totals
        assert (totals.accepted, totals.failed) == (1, 1)
        assert capsys.readouterr().err == (
            f"epcat: warning: [1] cannot connect to tcp:127.0.0.1:{port}: connection refused\n"
        )
    finally:
        relay.close()


def test_connect_in_progress_then_done(
    monkeypatch: pytest.MonkeyPatch, backend: socket.socket
) -> None:
    """
    A connection not made inside connect(2) (as off loopback) waits for
    the socket to turn writable, then relays.
    """
    monkeypatch.setattr(fused.FusedPair, "_connect_again",
                        lambda self, sock: errno.EALREADY)
    relay = Relay(monkeypatch, backend.getsockname()[1])
    try:
        client = relay.dial()
        pair = relay.pair()
        assert not pair.joined
        assert [w for w in relay.reactor.getWriters() if w is pair.outbound]
        client.sendall(b"early")
        server, _ = backend.accept()
        _run_until(relay.reactor, lambda: pair.joined)
        assert not relay.client._deadlines  # (no longer timed)
        got = bytearray()
        _run_until(relay.reactor, lambda: got.extend(_nonblocking_recv(server)) or got == b"early")
    finally:
        relay.close()


def _read_while_connecting(pair: fused.FusedPair, until: Callable[[], bool]) -> None:
    """
    Let the accepted socket be read (as the reactor would, while the
    outbound connection is still being made) until C{until()}.
    """
    deadline = time.monotonic() + WAIT
    while not until():
        assert time.monotonic() < deadline, "not done in time"
        if select.select([pair.inbound.sock], [], [], 0.05)[0]:
            pair.inbound.doRead()


@pytest.fixture
def connecting(monkeypatch: pytest.MonkeyPatch, backend: socket.socket) -> Any:
    """
    A relay whose outbound connections wait for the reactor (as off
    loopback), a client connection to it, and its pair, not yet joined.
    """
    monkeypatch.setattr(fused.FusedPair, "_connect_again",
                        lambda self, sock: errno.EALREADY)
    relay = Relay(monkeypatch, backend.getsockname()[1])
    client = relay.dial()
    pair = relay.pair()
    assert not pair.joined and pair.inbound in relay.reactor.getReaders()
    yield relay, client, pair
    relay.close()


def test_what_the_client_sends_while_connecting_is_held(
    connecting: Any, backend: socket.socket
) -> None:
    """
    Bytes and an EOF that come while the outbound connection is made are
    held (the accepted socket is no longer read after the EOF), then
    passed on first; the answer comes back.
    """
    relay, client, pair = connecting
    client.sendall(b"early")
    client.shutdown(socket.SHUT_WR)
    _read_while_connecting(pair, lambda: pair.inbound.eof)
    assert pair.inbound.pending == b"early"
    assert pair.inbound not in relay.reactor.getReaders()
    server, _ = backend.accept()
    server.settimeout(WAIT)
    got = bytearray()
    _run_until(relay.reactor, lambda: _gather(server, got))
    assert bytes(got) == b"early"
    assert _answer_and_close(relay, server, client, b"late answer") == b"late answer"
    _run_until(relay.reactor, lambda: not relay.runner.pairs)
    assert relay.runner.reporter.totals.bytes_in_to_out == 5


def test_held_bytes_are_bounded(connecting: Any, backend: socket.socket) -> None:
    """
    A client that sends more than HOLD_LIMIT while the outbound connection
    is made is no longer read past it; everything arrives once connected.
    """
    relay, client, pair = connecting
    payload = os.urandom(4 * fused.HOLD_LIMIT)
    client.setblocking(False)
    sent = 0

    def fill() -> bool:
        nonlocal sent
        try:
            sent += client.send(payload[sent:])
        except BlockingIOError:
            pass
        return pair.inbound not in relay.reactor.getReaders()

    _read_while_connecting(pair, fill)
    assert fused.HOLD_LIMIT <= len(pair.inbound.pending) < fused.HOLD_LIMIT + 65536
    server, _ = backend.accept()
    assert _send_rest(relay, client, server, payload, sent) == payload
    server.close()


def test_a_client_that_resets_while_connecting_stops_the_attempt(
    connecting: Any, backend: socket.socket, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    A client that resets before the outbound connection is made: the
    attempt is stopped and the pair ends quietly, as on the layered path.
    """
    relay, client, pair = connecting
    outbound = pair.outbound
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    _read_while_connecting(pair, lambda: pair.finished)
    assert not relay.runner.pairs
    assert outbound not in relay.reactor.getWriters() and outbound.lost
    assert relay.runner.reporter.totals.failed == 0
    assert capsys.readouterr().err == ""
    server, _ = backend.accept()  # (the kernel had completed it)
    server.settimeout(WAIT)
    assert server.recv(10) == b""
    server.close()


def test_connect_timeout(monkeypatch: pytest.MonkeyPatch, backend: socket.socket,
                         capsys: pytest.CaptureFixture[str]) -> None:
    """
    The tcp: endpoint's timeout ends a connection that is not made in time.
    """
    monkeypatch.setattr(fused.FusedPair, "_connect_again",
                        lambda self, sock: errno.EALREADY)
    monkeypatch.setattr(fused.FusedPair, "_connect_finished", lambda self, lost=False: None)
    relay = Relay(monkeypatch, backend.getsockname()[1])
    try:
        client = relay.dial()
        relay.reactor.advance(relay.client.timeout)
        assert not relay.runner.pairs
        assert client.recv(10) == b""
        assert "cannot connect to" in capsys.readouterr().err
        assert relay.runner.reporter.totals.failed == 1
    finally:
        relay.close()


def test_backend_reset(relay: Relay, backend: socket.socket,
                       capsys: pytest.CaptureFixture[str]) -> None:
    """
    A backend that resets: the client is closed cleanly, and the failure
    is reported as on the layered path.
    """
    client, server = _serve_one(relay, backend)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.close()
    _run_until(relay.reactor, lambda: not relay.runner.pairs)
    assert client.recv(10) == b""
    assert capsys.readouterr().err == (
        f"epcat: warning: [1] connection on {relay.connect} failed: connection lost\n"
    )
    assert relay.runner.reporter.totals.failed == 1


def test_backpressure(relay: Relay, backend: socket.socket) -> None:
    """
    A client that does not read stops the relay reading from the backend
    (it waits for the client's socket instead), and everything arrives, in
    order, once it reads.
    """
    client, server = _serve_one(relay, backend)
    pair = relay.pair()
    payload = bytes(range(256)) * (32 * 1024)  # 8 MiB
    server.setblocking(False)
    sent = _send_until(relay, server, payload, lambda: pair.inbound in relay.reactor.getWriters())
    assert pair.inbound in relay.reactor.getWriters()  # waiting on the client
    assert pair.outbound not in relay.reactor.getReaders()  # not reading the backend
    received = bytearray()
    shut = False

    def step() -> bool:
        nonlocal sent, shut
        if sent < len(payload):
            try:
                sent += server.send(payload[sent:])
            except BlockingIOError:
                pass
        elif not shut:
            shut = True
            server.shutdown(socket.SHUT_WR)
        return _gather(client, received)

    _run_until(relay.reactor, step, timeout=60)
    assert bytes(received) == payload
    server.close()


def test_requests_and_responses_reuse_one_pipe_in_the_pool(
    relay: Relay, backend: socket.socket
) -> None:
    """
    A kept-alive exchange moves each request and response through the
    pool's last pipe and leaves it there: the pool holds the one pipe made
    for the first move, the pair holds none between moves, and a move that
    leaves bytes behind takes the pipe out of the pool.
    """
    client, server = _serve_one(relay, backend)
    pair = relay.pair()
    pool = fused._pool
    def relayed(data: bytes, sender: socket.socket, receiver: socket.socket) -> None:
        sender.sendall(data)
        got = bytearray()
        _run_until(relay.reactor, lambda: got.extend(_nonblocking_recv(receiver)) or (
            bytes(got) == data))

    for i in range(5):
        relayed(b"request %d" % i, client, server)
        relayed(b"response %d" % i, server, client)
        if i == 0:
            (first,) = pool
        assert list(pool) == [first]
        assert pair.inbound.pipe is None and pair.outbound.pipe is None
    # a sink that takes less (a client that does not read): the direction
    # keeps the pipe until it has drained
    server.setblocking(False)
    payload = bytes(range(256)) * (32 * 1024)  # 8 MiB
    sent = _send_until(relay, server, payload, lambda: pair.outbound.pipe is not None)
    assert pair.outbound.pipe is first and first not in pool
    assert _send_rest(relay, server, client, payload, sent, timeout=60) == payload
    _run_until(relay.reactor, lambda: pair.outbound.pipe is None)
    assert first in pool


def test_last_activity_is_when_bytes_last_moved(
    relay: Relay, backend: socket.socket
) -> None:
    """
    A pair's C{last_activity} (what the drain on SIGTERM asks) comes from
    the kernel's account of when the outbound socket last sent or received
    data: a pair that has just moved bytes was active just now, in reactor
    seconds, however long ago it started.
    """
    client, server = _serve_one(relay, backend)
    pair = relay.pair()
    assert pair.started_at == relay.reactor.seconds()
    relay.reactor.advance(1000)
    client.sendall(b"ping")
    got = bytearray()
    _run_until(relay.reactor, lambda: got.extend(_nonblocking_recv(server)) or got == b"ping")
    now = relay.reactor.seconds()
    assert now - 5 < pair.last_activity <= now
    # no earlier than the pair's start, whatever the clocks say
    relay.reactor.advance(-1000)
    assert pair.last_activity == pair.started_at


def test_last_activity_before_the_connection_is_made(connecting: Any) -> None:
    """
    While the outbound connection is being made, a pair was last active
    when it started.
    """
    relay, client, pair = connecting
    relay.reactor.advance(50)
    assert pair.last_activity == pair.started_at


def test_no_pipe_copies_through_userspace(
    monkeypatch: pytest.MonkeyPatch, relay: Relay, backend: socket.socket
) -> None:
    """
    Out of descriptors for a pipe, a direction reads and writes in
    userspace instead: nothing is lost.
    """
    monkeypatch.setattr(splice, "_pool", deque())
    monkeypatch.setattr(fused, "_pool", splice._pool)

    def no_pipe() -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(splice, "_make_pipe", no_pipe)
    monkeypatch.setattr(fused, "_make_pipe", no_pipe)
    client, server = _serve_one(relay, backend)
    client.sendall(b"x" * 100_000)
    client.shutdown(socket.SHUT_WR)
    got = bytearray()
    _run_until(relay.reactor, lambda: _gather(server, got))
    assert bytes(got) == b"x" * 100_000
    server.close()
    _run_until(relay.reactor, lambda: not relay.runner.pairs)
    assert relay.runner.reporter.totals.bytes_in_to_out == 100_000


def test_close_and_abort_from_the_runner(relay: Relay, backend: socket.socket) -> None:
    """
    What SIGTERM's drain does: close cleanly (FIN), or abort (reset).
    """
    client, server = _serve_one(relay, backend)
    pair = relay.pair()
    pair.close("drain timeout")
    assert pair.done.called and not relay.runner.pairs
    assert client.recv(10) == b"" and server.recv(10) == b""
    client2, server2 = _serve_one(relay, backend)
    relay.pair().abort()
    with pytest.raises(ConnectionResetError):
        client2.recv(10)


def test_closed_pair_is_let_go(relay: Relay, backend: socket.socket) -> None:
    """
    A finished pair's links are cut at the next accept, as for the layered
    path's pairs.
    """
    client, server = _serve_one(relay, backend)
    pair = relay.pair()
    pair.close()
    assert pair.inbound.pair is pair
    relay.dial()
    assert pair.inbound.pair is None and pair.inbound.other is None


def test_tcp_sockets_send_at_once(relay: Relay, backend: socket.socket) -> None:
    """
    Both TCP sockets of a pair have Nagle's algorithm off (C{TCP_NODELAY}),
    as the layered path's lean sockets do.
    """
    _serve_one(relay, backend)
    pair = relay.pair()
    for side in (pair.inbound, pair.outbound):
        assert side.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_table_and_addresses(relay: Relay, backend: socket.socket) -> None:
    """
    The SIGUSR1 table asks each side for its peer through C{transport}.
    """
    client, server = _serve_one(relay, backend)
    pair = relay.pair()
    assert pair.inbound.transport.getPeer().port == client.getsockname()[1]
    assert pair.outbound.transport.getPeer().port == backend.getsockname()[1]
    assert pair.inbound.getHost().port == relay.address.port


@pytest.mark.parametrize(
    "options",
    [
        (),
        ("--stats",),
    ],
)
def test_eligible(monkeypatch: pytest.MonkeyPatch, options: tuple[str, ...]) -> None:
    relay = Relay(monkeypatch, 9, options)
    try:
        assert fused.eligible(relay.runner, relay.client)
    finally:
        relay.close()


@pytest.mark.parametrize(
    "options, listen_options, connect_options",
    [
        (("-v",), (), ()),
        (("--idle-timeout", "5"), (), ()),
        (("--half-close-timeout", "5"), (), ()),
        (("--progress",), (), ()),
        ((), ("--once",), ()),
        ((), ("--max-connections", "5"), ()),
        ((), ("--allow", "127.0.0.0/8"), ()),
        ((), ("--deny", "127.0.0.2/32"), ()),
        ((), (), ("--retry", "2")),
        ((), (), ("--connect-timeout", "5")),
        ((), (), ("--proxy-header", "v1")),
    ],
)
def test_not_eligible(monkeypatch: pytest.MonkeyPatch, options: tuple[str, ...],
                      listen_options: tuple[str, ...],
                      connect_options: tuple[str, ...]) -> None:
    """
    Options that need epcat's per-connection layers keep the layered path.
    """
    relay = Relay(monkeypatch, 9, options, listen_options, connect_options)
    try:
        assert not fused.eligible(relay.runner, relay.client)
    finally:
        relay.close()


def test_not_eligible_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPCAT_NO_FUSED", "1")
    relay = Relay(monkeypatch, 9)
    try:
        assert not fused.eligible(relay.runner, relay.client)
    finally:
        relay.close()


@pytest.mark.parametrize("no_fused", [False, True])
def test_runner_listens_on_the_fused_path(
    monkeypatch: pytest.MonkeyPatch, backend: socket.socket, no_fused: bool
) -> None:
    """
    L{epcat.run.Runner._listen} relays a plain relay's connections on the
    fused path, and on the layered one with C{EPCAT_NO_FUSED} set.
    """
    from twisted.internet import defer

    from epcat.relay import Pair

    if no_fused:
        monkeypatch.setenv("EPCAT_NO_FUSED", "1")
    relay = Relay(monkeypatch, backend.getsockname()[1])
    reactor = relay.reactor
    ports: list[Any] = []

    class Server:
        def listen(self, factory: Any) -> Any:
            port = tcp.Port(0, factory, interface="127.0.0.1", reactor=reactor)
            port.startListening()
            ports.append(port)
            return defer.succeed(port)

    relay.runner._listen(Server(), relay.client, lean=True)
    address = ports[0].getHost()
    try:
        with socket.create_connection((address.host, address.port)):
            _run_until(reactor, lambda: bool(relay.runner.pairs))
            (pair,) = relay.runner.pairs
            assert isinstance(pair, Pair if no_fused else fused.FusedPair)
            pair.abort()
    finally:
        ports[0].socket.close()
        relay.close()


def test_an_unexpected_error_closes_that_connection_only(
    monkeypatch: pytest.MonkeyPatch, relay: Relay, backend: socket.socket
) -> None:
    """
    A bug while setting a connection up is logged and closes that
    connection; the listening port goes on accepting.
    """
    from twisted.python import log

    logged: list[Any] = []
    monkeypatch.setattr(log, "err", lambda *args, **kwargs: logged.append(args))

    def broken(self: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(fused.FusedPair, "_connected", broken)
    client = relay.dial()
    assert logged and not relay.runner.pairs
    with pytest.raises(ConnectionResetError):
        client.recv(10)
    monkeypatch.undo()
    client, server = _serve_one(relay, backend)
    assert relay.pair().joined
