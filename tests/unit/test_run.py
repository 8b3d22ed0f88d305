"""
Tests for L{epcat.run.Runner}'s bookkeeping of finished pairs, on a
L{MemoryReactorClock} (nothing listens or connects), and for its closing of a
listening socket at once (real loopback ports driven by that reactor).
"""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

import epcat.cli
from epcat import run
from epcat.cli import cli
from epcat.ui import UI

from .test_relay import HalfCloseTransport


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> run.Runner:
    """A relay's Runner, as `epcat listen tcp:0 connect tcp:127.0.0.1:9` makes it."""
    plans: list[Any] = []
    monkeypatch.setattr(epcat.cli, "go", plans.append)
    result = CliRunner().invoke(cli, ["listen", "tcp:0", "connect", "tcp:127.0.0.1:9"])
    assert result.exit_code == 0, result.output
    return run.Runner(MemoryReactorClock(), plans[0], UI(0, "text"))


def _finished_pair(runner: run.Runner) -> Any:
    pair = runner._new_pair("shutdown", "shutdown")
    pair.fast_path = False  # (a StringTransport cannot be spliced)
    for side in (pair.inbound, pair.outbound):
        side.makeConnection(HalfCloseTransport())
    for side in (pair.inbound, pair.outbound):
        side.connectionLost(Failure(ConnectionDone()))
    assert pair not in runner.pairs  # (forgotten at its "closed" event)
    return pair


def test_finished_pairs_are_let_go_at_the_next_accept(runner: run.Runner) -> None:
    pair = _finished_pair(runner)
    assert pair.inbound.pair is pair  # (not while its handlers may run)
    runner._accept(IPv4Address("TCP", "127.0.0.1", 5000), None, None)
    assert pair.inbound.pair is None and pair.outbound.peer is None
    assert not runner._finished_pairs


def test_finished_pairs_are_let_go_a_round_later_without_accepts(runner: run.Runner) -> None:
    pairs = [_finished_pair(runner) for _ in range(run.LET_GO_BATCH)]
    assert all(p.inbound.pair is p for p in pairs)
    runner.reactor.advance(0)
    assert all(p.inbound.pair is None for p in pairs)
    assert not runner._finished_pairs


# -- closing the listening socket at once (listen, --once, stopping)


def _listening_port(reactor: MemoryReactorClock) -> Any:
    """A real listening TCP port on 127.0.0.1, driven by C{reactor}."""
    from twisted.internet import tcp
    from twisted.internet.protocol import Factory, Protocol

    port = tcp.Port(0, Factory.forProtocol(Protocol), interface="127.0.0.1", reactor=reactor)
    port.startListening()
    return port


def _refused(port_number: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port_number), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_close_listening_now_refuses_the_next_client_before_the_reactor_turns() -> None:
    reactor = MemoryReactorClock()
    port = _listening_port(reactor)
    number = port.getHost().port
    run.close_listening_now(port)
    assert port not in reactor.readers
    assert _refused(number)
    # stopListening still finishes the job, a round later, without error
    stopped = port.stopListening()
    reactor.advance(0)
    assert stopped.called and not port.connected


def test_close_listening_now_leaves_a_port_without_a_socket_alone() -> None:
    class Onion:
        stopped = False

        def stopReading(self) -> None:
            self.stopped = True

    onion = Onion()
    run.close_listening_now(onion)
    assert not onion.stopped


@pytest.fixture
def listen_runner(monkeypatch: pytest.MonkeyPatch) -> run.Runner:
    """The Runner of `epcat listen tcp:0` (the first connection <-> stdin/stdout)."""
    plans: list[Any] = []
    monkeypatch.setattr(epcat.cli, "go", plans.append)
    result = CliRunner().invoke(cli, ["listen", "tcp:0"])
    assert result.exit_code == 0, result.output
    return run.Runner(MemoryReactorClock(), plans[0], UI(0, "text"))


def test_listen_closes_the_listening_socket_as_it_accepts(listen_runner: run.Runner) -> None:
    """
    The one connection of `listen` closes the listening socket before it is
    reported: one reactor round later, a client connecting in between could
    be left on a handshake the kernel completed while the socket closed.
    """
    from twisted.internet import defer

    port = _listening_port(listen_runner.reactor)
    number = port.getHost().port
    listen_runner.ports.append(port)
    pair = listen_runner._accept(IPv4Address("TCP", "127.0.0.1", 5000), None, defer.Deferred())
    assert pair is not None
    assert _refused(number)
    assert listen_runner.ports == []


def test_listen_accepts_one_connection_per_read(listen_runner: run.Runner) -> None:
    """
    Twisted's accept loop would go on to call accept(2) on the socket the
    first connection closed: in `listen`, a read accepts one connection.
    (On loopback both clients are in the backlog when connect() returns,
    so a loop that took more would take both in the first read.)
    """
    import select
    import socket

    port = _listening_port(listen_runner.reactor)
    listen_runner._bound_accept_batches(port)
    accepted: list[Any] = []
    build = port.factory.buildProtocol
    port.factory.buildProtocol = lambda addr: accepted.append(addr) or build(addr)
    address = ("127.0.0.1", port.getHost().port)
    clients = [socket.create_connection(address) for _ in range(2)]
    try:
        for count in (1, 2):
            waiting, _, _ = select.select([port.socket], [], [], 5)
            assert waiting, "no connection in the backlog"
            port.doRead()
            assert len(accepted) == count
    finally:
        for client in clients:
            client.close()
        for transport in list(listen_runner.reactor.readers):
            if transport is not port:
                transport.loseConnection()
        port.stopListening()
        listen_runner.reactor.advance(0)


def test_a_signal_inside_the_signal_handler_still_stops_the_reactor(
    monkeypatch: pytest.MonkeyPatch, runner: run.Runner
) -> None:
    """
    A second SIGINT can arrive while the handler of the first runs (Ctrl-C
    under timeout, which passes it on), and Python runs the second handler
    nested in the first.  The handler only queues a request for the
    reactor's loop, where they are counted one after another: the first
    stops the reactor, the second closes the pairs.  (Counted in the
    handler, the nested one ran between the count and its test: both
    closed pairs, nothing stopped the reactor, and epcat went on.)
    """
    import signal

    done: list[str] = []
    monkeypatch.setattr(runner, "_stop_reactor", lambda: done.append("stop"))
    monkeypatch.setattr(runner, "_abort_all", lambda: done.append("abort"))
    queued: list[Any] = []
    monkeypatch.setattr(
        runner.reactor, "callFromThread", lambda f, *a: queued.append((f, a)), raising=False
    )
    real = signal.Signals
    nested: list[int] = []

    def signals(signum: int) -> Any:
        # the second signal arrives while the first's handler runs
        if not nested:
            nested.append(signum)
            runner._on_stop_signal(signal.SIGINT, None)
        return real(signum)

    monkeypatch.setattr(signal, "Signals", signals)
    runner._on_stop_signal(signal.SIGINT, None)
    monkeypatch.setattr(signal, "Signals", real)
    assert nested
    assert done == []  # (nothing done in the handler itself)
    for f, a in queued:
        f(*a)
    assert done == ["stop", "abort"]
    assert runner._stop_signal == "SIGINT"
