"""
Tests for L{epcat.lean}: lean socket transports, accepting and connecting,
driven by hand on real loopback sockets with an in-memory reactor (nothing
runs a reactor; each test calls C{doRead}/C{doWrite} as the reactor would).
"""

from __future__ import annotations

import errno
import select
import socket
from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError,
)
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from epcat import lean

WAIT = 10.0


@implementer(IHalfCloseableProtocol)
class Recorder(Protocol):
    """Records what its transport tells it."""

    def __init__(self) -> None:
        self.data = b""
        self.events: list[str] = []
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        self.events.append("made")

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def readConnectionLost(self) -> None:
        self.events.append("readConnectionLost")

    def writeConnectionLost(self) -> None:
        self.events.append("writeConnectionLost")

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.events.append("connectionLost")
        self.reason = reason


class Producer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


def _readable(sock: socket.socket) -> None:
    assert select.select([sock], [], [], WAIT)[0], "nothing to read in time"


def _writable(sock: socket.socket) -> None:
    assert select.select([], [sock], [], WAIT)[1], "not writable in time"


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


@pytest.fixture
def pair(reactor: MemoryReactorClock) -> Any:
    """A transport over one end of a socket pair, the other end, the protocol."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    transport = lean.SocketTransport(reactor, ours)
    protocol = Recorder()
    transport.attach(protocol)
    yield transport, theirs, protocol
    theirs.close()
    if not transport.disconnected:
        transport.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def listener() -> Any:
    """A listening TCP socket on 127.0.0.1."""
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


@pytest.fixture
def handshake_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Connection attempts wait for the reactor, as they do off loopback: the
    second C{connect(2)} that looks for an early completion says EALREADY.
    """
    monkeypatch.setattr(lean._Connecting, "_connect_again",
                        lambda self, sock, address: errno.EALREADY)


@pytest.fixture
def tcp_pair(reactor: MemoryReactorClock, listener: socket.socket) -> Any:
    """
    A transport over the accepted end of a loopback TCP connection, the
    client end, the protocol.
    """
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    server.setblocking(False)
    transport = lean.SocketTransport(reactor, server)
    protocol = Recorder()
    transport.attach(protocol)
    yield transport, client, protocol
    client.close()
    if not transport.disconnected:
        transport.connectionLost(Failure(ConnectionDone()))


def test_attach_reads_and_makes_the_connection(reactor: Any, pair: Any) -> None:
    transport, theirs, protocol = pair
    assert protocol.events == ["made"]
    assert protocol.transport is transport
    assert transport in reactor.getReaders()


def test_read_data_then_eof_is_a_half_close(reactor: Any, pair: Any) -> None:
    transport, theirs, protocol = pair
    theirs.sendall(b"hello")
    _readable(transport.socket)
    assert transport.doRead() is None
    assert protocol.data == b"hello"
    theirs.shutdown(socket.SHUT_WR)
    _readable(transport.socket)
    # (the reactor turns CONNECTION_DONE into readConnectionLost, as for
    # any IHalfCloseableDescriptor)
    assert transport.doRead() is CONNECTION_DONE
    transport.readConnectionLost(Failure(ConnectionDone()))
    assert protocol.events == ["made", "readConnectionLost"]
    assert transport not in reactor.getReaders()
    assert not transport.disconnected


def test_read_error_is_connection_lost(tcp_pair: Any) -> None:
    transport, client, protocol = tcp_pair
    # an abortive close from the peer: RST
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, lean._LINGER_RESET)
    client.close()
    _readable(transport.socket)
    assert transport.doRead() is CONNECTION_LOST
    transport.connectionLost(Failure(ConnectionLost()))
    assert transport.disconnected
    assert protocol.events == ["made", "connectionLost"]


def test_write_buffers_and_pauses_the_producer(reactor: Any, pair: Any) -> None:
    transport, theirs, protocol = pair
    producer = Producer()
    transport.registerProducer(producer, True)
    chunk = b"x" * (1 << 20)
    for _ in range(16):  # more than the socket buffers hold
        transport.write(chunk)
    assert transport in reactor.getWriters()
    assert producer.calls == ["pause"]
    received = 0
    theirs.setblocking(False)
    while received < 16 * len(chunk):
        _readable(theirs)
        try:
            while True:
                received += len(theirs.recv(1 << 20))
        except BlockingIOError:
            pass
        transport.doWrite()  # (as the reactor would, once writable)
    assert received == 16 * len(chunk)
    assert transport not in reactor.getWriters()
    assert producer.calls == ["pause", "resume"]


def test_lose_connection_flushes_first(reactor: Any, pair: Any) -> None:
    transport, theirs, protocol = pair
    transport.write(b"last words")
    transport.loseConnection()
    assert transport not in reactor.getReaders()
    assert transport in reactor.getWriters()
    assert transport.doWrite() is CONNECTION_DONE  # the reactor then calls connectionLost
    transport.connectionLost(Failure(ConnectionDone()))
    assert protocol.events == ["made", "connectionLost"]
    assert protocol.reason.check(ConnectionDone)
    theirs.settimeout(WAIT)
    assert theirs.recv(100) == b"last words"
    assert theirs.recv(100) == b""


def test_lose_write_connection_half_closes(reactor: Any, pair: Any) -> None:
    transport, theirs, protocol = pair
    transport.write(b"request")
    transport.loseWriteConnection()
    assert transport.doWrite() is None
    assert protocol.events == ["made", "writeConnectionLost"]
    theirs.settimeout(WAIT)
    assert theirs.recv(100) == b"request"
    assert theirs.recv(100) == b""  # FIN
    theirs.sendall(b"answer")  # the other direction still works
    _readable(transport.socket)
    transport.doRead()
    assert protocol.data == b"answer"


def test_lose_connection_after_both_halves_closed(reactor: Any, pair: Any) -> None:
    """
    With the peer's FIN read and ours sent, closing has nothing to flush:
    it reports a clean close from the reactor, rather than waiting on a
    hung-up socket that the reactor would report as lost.
    """
    transport, theirs, protocol = pair
    theirs.shutdown(socket.SHUT_WR)
    _readable(transport.socket)
    assert transport.doRead() is CONNECTION_DONE
    transport.readConnectionLost(Failure(ConnectionDone()))
    transport.loseWriteConnection()
    assert transport.doWrite() is None  # (shut down)
    transport.loseConnection()
    assert transport not in reactor.getWriters()
    assert protocol.events == ["made", "readConnectionLost", "writeConnectionLost"]
    reactor.advance(0)
    assert protocol.events[-1] == "connectionLost"
    assert protocol.reason.check(ConnectionDone)
    assert transport.disconnected


def test_abort_drops_the_buffer_and_reports_later(reactor: Any, pair: Any) -> None:
    transport, theirs, protocol = pair
    transport.abortConnection()
    assert protocol.events == ["made"]  # not from inside abortConnection
    reactor.advance(0)
    assert protocol.events == ["made", "connectionLost"]
    assert protocol.reason.check(ConnectionAborted)
    assert transport.disconnected
    assert transport.fileno() == -1


def test_connection_lost_once(reactor: Any, pair: Any) -> None:
    transport, theirs, protocol = pair
    transport.connectionLost(Failure(ConnectionDone()))
    transport.connectionLost(Failure(ConnectionDone()))
    assert protocol.events == ["made", "connectionLost"]
    theirs.settimeout(WAIT)
    assert theirs.recv(1) == b""


def test_addresses_of_a_unix_pair(pair: Any) -> None:
    transport = pair[0]
    assert transport.getPeer() == UNIXAddress(None)
    assert transport.getHost() == UNIXAddress(None)


def test_hand_over_passes_readiness_to_the_engine(reactor: Any, pair: Any) -> None:
    transport, theirs, protocol = pair

    class End:
        lost: Failure | None = None

        def __init__(self) -> None:
            self.calls: list[str] = []

        def doRead(self) -> None:
            self.calls.append("readable")

        def doWrite(self) -> None:
            self.calls.append("writable")

        def connectionLost(self, reason: Failure) -> None:
            self.lost = reason

    end = End()
    assert transport.hand_over(end) == (True, False)
    theirs.sendall(b"for the engine")
    transport.doRead()
    transport.doWrite()
    assert end.calls == ["readable", "writable"]
    assert protocol.data == b""  # the engine reads, not the transport
    transport.connectionLost(Failure(ConnectionLost()))  # the reactor gave up
    assert end.lost is not None and not transport.disconnected
    transport.take_back()
    transport.connectionLost(Failure(ConnectionDone()))
    assert transport.disconnected


def test_accept_with_sockets(reactor: Any) -> None:
    built: list[Any] = []

    class RecordingFactory(Factory):
        def buildProtocol(self, addr: Any) -> Protocol | None:
            built.append(addr)
            return Recorder() if len(built) == 1 else None  # the second is refused

    port = tcp.Port(0, RecordingFactory(), interface="127.0.0.1", reactor=reactor)
    port.startListening()
    try:
        assert lean.accept_with_sockets(port)
        address = port.getHost()
        first = socket.create_connection((address.host, address.port))
        second = socket.create_connection((address.host, address.port))
        _readable(port.socket)
        port.doRead()
        assert len(built) == 2
        assert built[0] == IPv4Address("TCP", "127.0.0.1", first.getsockname()[1])
        transports = [r for r in reactor.getReaders() if isinstance(r, lean.SocketTransport)]
        assert len(transports) == 1
        accepted = transports[0]
        assert accepted.getTcpNoDelay()  # (as haproxy and nginx's stream proxy)
        assert accepted.getPeer() == built[0]
        assert accepted.getHost() == IPv4Address("TCP", "127.0.0.1", address.port)
        second.settimeout(WAIT)
        assert second.recv(1) == b""  # refused: closed at once
        accepted.connectionLost(Failure(ConnectionDone()))
        first.close()
        second.close()
    finally:
        port.socket.close()


def test_accept_reads_what_is_already_there(reactor: Any) -> None:
    """
    A client that spoke (or half-closed) before its connection was
    accepted is read at once, without waiting for the reactor.
    """
    built: list[Recorder] = []

    class RecordingFactory(Factory):
        def buildProtocol(self, addr: Any) -> Recorder:
            built.append(Recorder())
            return built[-1]

    port = tcp.Port(0, RecordingFactory(), interface="127.0.0.1", reactor=reactor)
    port.startListening()
    try:
        assert lean.accept_with_sockets(port)
        address = port.getHost()
        talker = socket.create_connection((address.host, address.port))
        talker.sendall(b"GET /")
        quitter = socket.create_connection((address.host, address.port))
        quitter.shutdown(socket.SHUT_WR)
        silent = socket.create_connection((address.host, address.port))
        # (loopback delivers inside send(): the bytes and FINs are there)
        _readable(port.socket)
        port.doRead()
        transports = {t.getPeer().port: t for t in reactor.getReaders()
                      if isinstance(t, lean.SocketTransport)}
        said = transports[talker.getsockname()[1]].protocol
        assert (said.data, said.events) == (b"GET /", ["made"])
        # (its EOF was read: a half-close, and no longer reading)
        assert quitter.getsockname()[1] not in transports
        assert built[1].events == ["made", "readConnectionLost"]
        quiet = transports[silent.getsockname()[1]].protocol
        assert (quiet.data, quiet.events) == (b"", ["made"])
        for protocol in built:
            protocol.transport.connectionLost(Failure(ConnectionDone()))
        for sock in (talker, quitter, silent):
            sock.close()
    finally:
        port.socket.close()


@pytest.mark.parametrize("waiting", [True, False], ids=["connection-waiting", "backlog-empty"])
def test_accept_with_sockets_reports_exhaustion(reactor: Any, waiting: bool) -> None:
    """
    EMFILE from accept(2) is reported when a connection is waiting (it stays
    in the backlog), and not when the backlog is empty (Linux takes the
    descriptor first: nobody was turned away).
    """
    port = tcp.Port(0, Factory.forProtocol(Recorder), interface="127.0.0.1", reactor=reactor)
    port.startListening()
    exhausted: list[bool] = []
    real = port.socket
    client = socket.socket()

    class Exhausted:
        family = real.family
        type = real.type

        def fileno(self) -> int:
            return real.fileno()

        def _accept(self) -> Any:
            raise OSError(24, "Too many open files")

    try:
        if waiting:
            client.connect(real.getsockname())  # (in the backlog once this returns)
        port.socket = Exhausted()
        assert lean.accept_with_sockets(port, on_exhausted=lambda: exhausted.append(True))
        port.doRead()
        assert exhausted == ([True] if waiting else [])
    finally:
        client.close()
        real.close()


def test_accept_with_sockets_leaves_other_ports(reactor: Any) -> None:
    class Other:
        pass

    assert not lean.accept_with_sockets(Other())


def test_tcp_client_only_for_ip_addresses(reactor: Any) -> None:
    client = lean.tcp_client(TCP4ClientEndpoint(reactor, "127.0.0.1", 80, timeout=5))
    assert client is not None
    assert (client.host, client.port, client.timeout) == ("127.0.0.1", 80, 5)
    six = lean.tcp_client(TCP4ClientEndpoint(reactor, "::1", 80))
    assert six is not None and six.family == socket.AF_INET6
    named = lean.tcp_client(TCP4ClientEndpoint(reactor, "localhost", 80))
    assert named is not None and named.resolve and named.family == socket.AF_INET
    assert not client.resolve
    assert lean.tcp_client(UNIXClientEndpoint(reactor, "/tmp/x")) is None


def _connect(reactor: Any, port: int, timeout: float = 30) -> tuple[Deferred[Any], Any]:
    client = lean.TCPClient(reactor, socket.AF_INET, "127.0.0.1", port, timeout)
    factory = Factory.forProtocol(Recorder)
    attempt = client.connect(factory)
    connecting = [w for w in reactor.getWriters() if isinstance(w, lean._Connecting)]
    return attempt, (connecting[0] if connecting else None)


def _reads_from_its_server(listener: socket.socket, transport: Any, protocol: Any) -> None:
    """A connected lean transport reads what its server sends, then closes."""
    server, _ = listener.accept()
    server.sendall(b"hi")
    _readable(transport.socket)
    transport.doRead()
    assert protocol.data == b"hi"
    transport.connectionLost(Failure(ConnectionDone()))
    server.close()


def _connected(connecting: Any, results: list[Any]) -> Any:
    """Let a pending attempt finish as the reactor would; its protocol."""
    _writable(connecting.sock)
    connecting.doWrite()
    (protocol,) = results
    return protocol


@pytest.mark.usefixtures("handshake_pending")
def test_tcp_client_connects(reactor: Any, listener: socket.socket) -> None:
    attempt, connecting = _connect(reactor, listener.getsockname()[1])
    results: list[Any] = []
    attempt.addBoth(results.append)
    protocol = _connected(connecting, results)
    assert isinstance(protocol, Recorder) and protocol.events == ["made"]
    transport = protocol.transport
    assert isinstance(transport, lean.SocketTransport)
    assert transport.getPeer() == IPv4Address("TCP", "127.0.0.1", listener.getsockname()[1])
    assert connecting not in reactor.getWriters()
    assert not connecting.client._deadlines  # no longer timed
    _reads_from_its_server(listener, transport, protocol)


def test_tcp_client_connected_at_once(reactor: Any, listener: socket.socket) -> None:
    """
    On loopback the handshake is over by the time connect(2) returns: the
    attempt fires at once, with nothing registered and no timer.
    """
    attempt, connecting = _connect(reactor, listener.getsockname()[1], timeout=5)
    assert connecting is None
    results: list[Any] = []
    attempt.addBoth(results.append)
    (protocol,) = results
    assert isinstance(protocol, Recorder) and protocol.events == ["made"]
    assert not reactor.getWriters()
    assert not [c for c in reactor.getDelayedCalls() if c.active()]
    transport = protocol.transport
    assert transport in reactor.getReaders()
    assert transport.getTcpNoDelay()
    _reads_from_its_server(listener, transport, protocol)


def test_tcp_client_attempt_reports_to_callables(reactor: Any, listener: socket.socket) -> None:
    """
    attempt() is connect() without a Deferred: on loopback it reports
    before it returns.
    """
    client = lean.TCPClient(reactor, socket.AF_INET, "127.0.0.1", listener.getsockname()[1])
    results: list[Any] = []
    attempt = client.attempt(Factory.forProtocol(Recorder), results.append, results.append)
    assert attempt.done
    (protocol,) = results
    assert isinstance(protocol, Recorder) and protocol.events == ["made"]
    attempt.cancel()  # (too late: nothing happens)
    assert results == [protocol]
    protocol.transport.connectionLost(Failure(ConnectionDone()))


@pytest.mark.usefixtures("handshake_pending")
def test_tcp_client_attempt_cancelled(reactor: Any, listener: socket.socket) -> None:
    client = lean.TCPClient(reactor, socket.AF_INET, "127.0.0.1", listener.getsockname()[1])
    connected: list[Any] = []
    failed: list[Failure] = []
    attempt = client.attempt(Factory.forProtocol(Recorder), connected.append, failed.append)
    assert not attempt.done and attempt in reactor.getWriters()
    attempt.cancel()
    assert attempt.done and not connected
    assert failed[0].check(ConnectingCancelledError)
    assert not reactor.getWriters() and not client._deadlines
    attempt.cancel()
    assert len(failed) == 1


def test_tcp_client_refused(reactor: Any) -> None:
    unused = socket.create_server(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()
    attempt, connecting = _connect(reactor, port)
    results: list[Any] = []
    attempt.addBoth(results.append)
    if connecting is not None:
        failure = _connected(connecting, results)
    else:
        (failure,) = results  # (refused at once)
    assert failure.check(ConnectionRefusedError)
    assert not reactor.getWriters()


@pytest.mark.usefixtures("handshake_pending")
def test_tcp_client_timeout_and_cancel(reactor: Any, listener: socket.socket) -> None:
    # (the attempt stays pending until the reactor reports the socket
    # writable, which nothing does here: only the clock can end it)
    attempt, connecting = _connect(reactor, listener.getsockname()[1], timeout=5)
    results: list[Any] = []
    attempt.addBoth(results.append)
    reactor.advance(4.9)
    assert not results
    reactor.advance(0.1)
    assert results[0].check(TimeoutError)
    assert connecting.sock.fileno() == -1  # closed

    attempt2, _ = _connect(reactor, listener.getsockname()[1], timeout=5)
    results2: list[Any] = []
    attempt2.addBoth(results2.append)
    attempt2.cancel()
    assert results2[0].check(ConnectingCancelledError)
    assert not reactor.getWriters()
    assert not connecting.client._deadlines


@pytest.mark.usefixtures("handshake_pending")
def test_tcp_client_one_timer_for_many_attempts(reactor: Any, listener: socket.socket) -> None:
    client = lean.TCPClient(reactor, socket.AF_INET, "127.0.0.1",
                            listener.getsockname()[1], timeout=5)
    factory = Factory.forProtocol(Recorder)
    results: list[Any] = []
    client.connect(factory).addBoth(results.append)
    reactor.advance(2)
    client.connect(factory).addBoth(results.append)
    assert len([c for c in reactor.getDelayedCalls() if c.active()]) == 1
    reactor.advance(3)  # the first attempt's deadline
    assert len(results) == 1 and results[0].check(TimeoutError)
    reactor.advance(1.9)
    assert len(results) == 1
    reactor.advance(0.1)  # the second's, two seconds later
    assert len(results) == 2 and results[1].check(TimeoutError)
    assert not client._deadlines
    assert not [c for c in reactor.getDelayedCalls() if c.active()]


def test_orderly_close_shuts_down_before_closing(tcp_pair: Any) -> None:
    """
    Bytes left unread when a transport is closed: the peer still sees the
    FIN first (shutdown before close, as Twisted's TCP transport does), not
    only a reset.
    """
    transport, client, _ = tcp_pair
    transport.stopReading()
    client.sendall(b"never read")
    transport.loseConnection()
    assert transport.doWrite() is CONNECTION_DONE
    transport.connectionLost(Failure(ConnectionDone()))
    client.settimeout(WAIT)
    assert client.recv(100) == b""  # EOF, not ECONNRESET


def test_abort_resets(reactor: Any, tcp_pair: Any) -> None:
    transport, client, _ = tcp_pair
    transport.abortConnection()
    reactor.advance(0)
    client.settimeout(WAIT)
    with pytest.raises(ConnectionResetError):
        client.recv(100)


@pytest.mark.usefixtures("handshake_pending")
def test_tcp_client_resolves_a_host_name(reactor: Any, listener: socket.socket) -> None:
    """
    A host name is looked up with the reactor's resolver for every
    connection; the peer is the address it gave.
    """
    asked: list[str] = []

    def resolve(name: str, timeout: Any = None) -> Deferred[str]:
        asked.append(name)
        return succeed("127.0.0.1")

    reactor.resolve = resolve
    port = listener.getsockname()[1]
    client = lean.tcp_client(TCP4ClientEndpoint(reactor, "backend.example", port))
    results: list[Any] = []
    client.connect(Factory.forProtocol(Recorder)).addBoth(results.append)
    (connecting,) = [w for w in reactor.getWriters() if isinstance(w, lean._Connecting)]
    protocol = _connected(connecting, results)
    assert asked == ["backend.example"]
    assert protocol.transport.getPeer() == IPv4Address("TCP", "127.0.0.1", port)
    protocol.transport.connectionLost(Failure(ConnectionDone()))


def test_tcp_client_name_not_found(reactor: Any) -> None:
    reactor.resolve = lambda name, timeout=None: fail(DNSLookupError(name))
    client = lean.TCPClient(reactor, socket.AF_INET, "nowhere.invalid", 80, 30, resolve=True)
    results: list[Any] = []
    client.connect(Factory.forProtocol(Recorder)).addBoth(results.append)
    assert results[0].check(DNSLookupError)
    assert not reactor.getWriters() and not client._deadlines


def test_tcp_client_cancelled_while_resolving(reactor: Any) -> None:
    pending: Deferred[str] = Deferred()
    reactor.resolve = lambda name, timeout=None: pending
    client = lean.TCPClient(reactor, socket.AF_INET, "slow.example", 80, 30, resolve=True)
    results: list[Any] = []
    attempt = client.connect(Factory.forProtocol(Recorder))
    attempt.addBoth(results.append)
    attempt.cancel()
    assert results[0].check(ConnectingCancelledError)
    pending.callback("127.0.0.1")  # the late answer changes nothing
    assert not reactor.getWriters() and not client._deadlines


def test_splice_start_whose_first_write_fails(reactor: Any) -> None:
    """
    A fast-path pair whose held bytes cannot be written (the outbound peer
    is gone) stops the engine at start; the other direction, at rest, is
    left alone rather than registered with a stopped engine.
    """
    from epcat.relay import Pair

    pair = Pair(reactor, 1)
    pair.fast_path = True
    ours_in, theirs_in = socket.socketpair()
    ours_out, theirs_out = socket.socketpair()
    theirs_out.close()  # (writing to ours_out: EPIPE)
    for ours in (ours_in, ours_out):
        ours.setblocking(False)
    lean.SocketTransport(reactor, ours_in).attach(pair.inbound)
    theirs_in.sendall(b"request")
    _readable(ours_in)
    pair.inbound.transport.doRead()  # (held: the outbound is not up yet)
    lean.SocketTransport(reactor, ours_out).attach(pair.outbound)  # joins, splices
    assert pair.splice is None  # (stopped at once)
    reactor.advance(0)  # (an abort reports from the reactor)
    assert pair.outbound.lost
    for transport in (pair.inbound.transport, pair.outbound.transport):
        if not transport.disconnected:
            transport.connectionLost(Failure(ConnectionDone()))
    theirs_in.close()
