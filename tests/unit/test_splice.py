"""
Tests for L{epcat.splice}, the fast-path engine (each test with both
movers: tests/unit/conftest.py), driven by hand on real
socket pairs with an in-memory reactor: each test calls C{doRead} as the
reactor would.  (End to end, with real relays: tests/e2e/test_splice_e2e.py.)
"""

from __future__ import annotations

import errno
import gc
import select
import socket
from collections import deque
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from epcat import lean, splice
from epcat.relay import Pair

pytestmark = [
    pytest.mark.skipif(not splice.available(), reason="splice(2) is Linux's"),
    pytest.mark.usefixtures("mover"),
]

WAIT = 10.0


class ForgettingReactor(MemoryReactorClock):
    """An in-memory reactor with L{epcat.reactor.EPollReactor.forget}."""

    def __init__(self) -> None:
        super().__init__()
        self.forgotten: list[Any] = []

    def forget(self, selectable: Any) -> None:
        self.forgotten.append(selectable)
        self.readers.discard(selectable)
        self.writers.discard(selectable)


def _readable(sock: socket.socket) -> None:
    assert select.select([sock], [], [], WAIT)[0], "nothing to read in time"


def _write_event(reactor: Any, transport: Any) -> None:
    """
    What Twisted's epoll reactor does for a descriptor it watches for
    writing: a socket shut down both ways (POLLHUP) that it is not reading
    is reported lost (C{_doReadOrWrite}); else C{doWrite}.
    """
    poller = select.poll()
    poller.register(transport.fileno(), select.POLLOUT)
    events = dict(poller.poll(WAIT * 1000)).get(transport.fileno(), 0)
    if events & select.POLLHUP and transport not in reactor.getReaders():
        transport.connectionLost(Failure(ConnectionLost()))
        return
    why = transport.doWrite()
    if why is not None:
        transport.connectionLost(Failure(why))


def _eof(transport: Any) -> None:
    """The reactor's calls for a FIN on a lean transport's socket."""
    _readable(transport.socket)
    assert transport.doRead() is not None
    transport.readConnectionLost(Failure(ConnectionDone()))


def _recv_to_eof(sock: socket.socket) -> bytes:
    sock.settimeout(WAIT)
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


class SwappingReactor(ForgettingReactor):
    """
    An in-memory reactor with L{epcat.reactor.EPollReactor.swap} as well.
    """

    def swap(self, old: Any, new: Any) -> bool:
        found = False
        for registered in (self.readers, self.writers):
            if old in registered:
                registered.discard(old)
                registered.add(new)
                found = True
        return found


def _splice_pair(reactor: Any) -> Any:
    """
    A pair relayed by the engine between two lean socket pairs: the pair,
    the client's end, the server's end.  The client has sent b"request",
    which the server has read.
    """
    pair = Pair(reactor, 1)
    pair.fast_path = True
    ours_in, client = socket.socketpair()
    ours_out, server = socket.socketpair()
    for ours in (ours_in, ours_out):
        ours.setblocking(False)
    lean.SocketTransport(reactor, ours_in).attach(pair.inbound)
    client.sendall(b"request")
    _readable(ours_in)
    pair.inbound.transport.doRead()  # (held: the outbound side is not up yet)
    lean.SocketTransport(reactor, ours_out).attach(pair.outbound)  # joins, splices
    assert pair.splice is not None
    server.settimeout(WAIT)
    assert server.recv(100) == b"request"
    return pair, client, server


def _close_all(pair: Any, client: socket.socket, server: socket.socket) -> None:
    for sock in (client, server):
        sock.close()
    for side in (pair.inbound, pair.outbound):
        if not side.transport.disconnected:
            side.transport.connectionLost(Failure(ConnectionDone()))


@pytest.fixture(params=[ForgettingReactor, SwappingReactor], ids=["reactor", "swapping"])
def spliced(request: pytest.FixtureRequest) -> Any:
    """
    L{_splice_pair} with an in-memory reactor, one without C{swap} (the lean
    transports pass readiness on to the engine) and one with it, as epcat's
    (the engine's ends take the transports' registrations over): the pair,
    the client's end, the server's end, the reactor.
    """
    reactor = request.param()
    pair, client, server = _splice_pair(reactor)
    yield pair, client, server, reactor
    _close_all(pair, client, server)


def _registered(reactor: Any, transport: Any) -> Any:
    """What the reactor calls when C{transport}'s socket is readable."""
    return next(r for r in reactor.getReaders() if r.fileno() == transport.fileno())


@pytest.mark.parametrize("make_reactor", [ForgettingReactor, SwappingReactor],
                         ids=["reactor", "swapping"])
def test_a_finished_pair_is_freed_without_the_garbage_collector(make_reactor: Any) -> None:
    """
    Once a spliced pair has ended and been let go, its engine's ends, its
    sides and their transports are freed by reference counting: no cycle is
    left for the garbage collector (whose work on a relay's short
    connections was a tenth of epcat's instructions per connection).  An
    end that took its socket's registration over refers to itself as the
    selectable until the engine stops.
    """
    reactor = make_reactor()
    pair, client, server = _splice_pair(reactor)
    with client, server:
        inbound, outbound = pair.inbound.transport, pair.outbound.transport
        server.shutdown(socket.SHUT_WR)
        client.shutdown(socket.SHUT_WR)
        for transport in (outbound, inbound):
            _readable(transport.socket)
            _registered(reactor, transport).doRead()
        assert pair.inbound.lost and pair.outbound.lost
        assert not reactor.getReaders() and not reactor.getWriters()
        pair.let_go()
        kinds = (splice._End, lean.SocketTransport, type(pair.inbound))
        gc.collect()
        enabled = gc.isenabled()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            reactor.forgotten.clear()  # (this test reactor's record of forget())
            del pair, inbound, outbound, transport
            gc.collect()
            left = [type(o).__name__ for o in gc.garbage if isinstance(o, kinds)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            if enabled:
                gc.enable()
    assert left == []


def test_last_direction_closes_without_a_shutdown(spliced: Any) -> None:
    """
    The direction that ends last between lean sockets closes both: its
    source leaves the reactor by being closed (forget, no EPOLL_CTL_DEL),
    its sink gets its FIN from close() rather than shutdown(); both peers
    see a clean end of stream, the pair ends as on the normal path, and the
    transports get their sockets back from the engine.  With C{swap}, the
    reactor calls the engine's ends, not the transports.
    """
    pair, client, server, reactor = spliced
    inbound, outbound = pair.inbound.transport, pair.outbound.transport
    reader_in, reader_out = _registered(reactor, inbound), _registered(reactor, outbound)
    if isinstance(reactor, SwappingReactor):
        assert (reader_in, reader_out) == pair.splice._ends
    else:
        assert (reader_in, reader_out) == (inbound, outbound)
    server.sendall(b"response")
    server.shutdown(socket.SHUT_WR)
    for _ in range(2):  # (the response, then EOF)
        _readable(outbound.socket)
        reader_out.doRead()
    assert _recv_to_eof(client) == b"response"  # (half-closed with shutdown)
    assert reactor.forgotten == []
    client.shutdown(socket.SHUT_WR)
    _readable(inbound.socket)
    reader_in.doRead()
    assert reactor.forgotten == [reader_in]
    assert not reactor.getReaders() and not reactor.getWriters()
    assert inbound.disconnected and outbound.disconnected
    assert inbound._end is None and outbound._end is None  # (taken back)
    assert server.recv(100) == b""  # a FIN, not a reset
    assert pair.inbound.lost and pair.outbound.lost
    for side in (pair.inbound, pair.outbound):
        assert side.lost_reason.check(ConnectionDone)
    assert pair._finished
    assert (pair.inbound.bytes_received, pair.outbound.bytes_received) == (7, 8)


def test_first_direction_still_half_closes(spliced: Any) -> None:
    """
    A direction that ends while the other goes on shuts its sink's write
    side down, and the other direction still relays.
    """
    pair, client, server, reactor = spliced
    inbound = pair.inbound.transport
    client.shutdown(socket.SHUT_WR)
    _readable(inbound.socket)
    inbound.doRead()
    assert server.recv(100) == b""  # the client's EOF, passed on
    assert reactor.forgotten == [] and not pair._finished
    server.sendall(b"late answer")
    outbound = pair.outbound.transport
    _readable(outbound.socket)
    outbound.doRead()
    client.settimeout(WAIT)
    assert client.recv(100) == b"late answer"


def test_no_pipe_falls_back_to_the_normal_path(
    spliced: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Out of descriptors for a pipe (EMFILE), a pair goes on on the normal
    path over the same lean sockets: the bytes arrive, each EOF is passed
    on, and the pair ends cleanly, with no failure to report.
    """
    import errno

    from epcat.report import pair_failure

    def no_pipe() -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(splice, "_pool", deque())
    monkeypatch.setattr(splice, "_make_pipe", no_pipe)
    pair, client, server, reactor = spliced
    events: list[str] = []
    pair._on_event = lambda event, pair, side: events.append(event)
    inbound, outbound = pair.inbound.transport, pair.outbound.transport
    server.sendall(b"response")
    _readable(outbound.socket)
    outbound.doRead()  # (no pipe for it: the engine hands the pair back)
    assert pair.splice is None
    assert events == ["fast-path-off"]  # (what -vv reports)
    outbound.doRead()  # (now read by the transport itself)
    client.settimeout(WAIT)
    assert client.recv(100) == b"response"
    client.shutdown(socket.SHUT_WR)
    _eof(inbound)
    _write_event(reactor, outbound)  # (the half-close: shutdown)
    assert server.recv(100) == b""
    server.shutdown(socket.SHUT_WR)
    _eof(outbound)  # (now shut down both ways: it is closed)
    for _ in range(3):
        for transport in (inbound, outbound):
            if transport in reactor.getWriters():
                _write_event(reactor, transport)
        reactor.advance(0)
    assert pair._finished
    assert pair_failure(pair) is None
    assert server.recv(100) == b"" and client.recv(100) == b""


def _by_hand(reactor: Any, transports: Any, done: Any, rounds: int = 5000) -> None:
    """
    Play the reactor for C{transports} until C{done()}: C{doWrite} for
    those it watches for writing, C{doRead} for those it watches for
    reading that have something to read, a FIN passed on as the reactor
    does.
    """
    for _ in range(rounds):
        if done():
            return
        sockets = [t.socket for t in transports if not t.disconnected]
        select.select(sockets, [], [], 0.01)
        for transport in transports:
            if transport.disconnected:
                continue
            if transport in reactor.getWriters():
                _write_event(reactor, transport)
            if transport.disconnected or transport not in reactor.getReaders():
                continue
            if not select.select([transport.socket], [], [], 0)[0]:
                continue
            why = transport.doRead()
            if isinstance(why, ConnectionDone):
                transport.readConnectionLost(Failure(why))
            elif why is not None:
                transport.connectionLost(Failure(why))
        reactor.advance(0)
    raise AssertionError("not done in time")


def test_no_pipe_while_holding_bytes_loses_nothing(
    spliced: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Out of descriptors for a pipe while the other direction holds bytes in
    its pipe (its sink is not reading): the pair goes on on the normal path
    with those bytes written first, in order, then the rest, then the EOF;
    nothing is lost and no failure is reported.
    """
    from epcat.report import pair_failure

    pair, client, server, reactor = spliced
    inbound, outbound = pair.inbound.transport, pair.outbound.transport
    back = pair.splice.directions[1]  # (server -> client)
    pattern = bytes(range(256)) * 256  # 64 KiB
    sent = bytearray()
    server.setblocking(False)
    for _ in range(1000):
        try:
            sent += pattern[: server.send(pattern)]
        except BlockingIOError:
            pass
        if back.in_pipe and not back.source.reading:
            break  # (the client reads nothing: the rest waits in the pipe)
        if back.source.reading and select.select([outbound.socket], [], [], 0.01)[0]:
            outbound.doRead()
    assert back.in_pipe and not back.source.reading
    server.setblocking(True)
    server.settimeout(WAIT)
    server.shutdown(socket.SHUT_WR)

    def no_pipe() -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(splice, "_pool", deque())
    monkeypatch.setattr(splice, "_make_pipe", no_pipe)
    events: list[str] = []
    pair._on_event = lambda event, pair, side: events.append(event)
    client.sendall(b"more")
    _readable(inbound.socket)
    inbound.doRead()  # (no pipe for it: the engine hands the pair back)
    assert pair.splice is None and events == ["fast-path-off"]
    client.setblocking(False)
    got = bytearray()
    client_eof = []

    def client_has_all() -> bool:
        while not client_eof:
            try:
                chunk = client.recv(1 << 20)
            except BlockingIOError:
                return False
            if not chunk:
                client_eof.append(True)
            got.extend(chunk)
        return True

    _by_hand(reactor, (inbound, outbound), client_has_all)
    assert len(got) == len(sent) and got == sent
    assert server.recv(100) == b"more"
    client.shutdown(socket.SHUT_WR)
    _by_hand(reactor, (inbound, outbound), lambda: pair._finished)
    assert pair_failure(pair) is None
