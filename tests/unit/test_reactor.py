"""
Tests for L{epcat.reactor}: readiness reaches the descriptor, an exception
from a handler is logged and the descriptor disconnected, as with Twisted's
own epoll reactor; its main loop still runs timed calls and calls from
threads.  (The reactor is made and run here, never installed.)
"""

from __future__ import annotations

import select
import socket
import threading
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

pytestmark = pytest.mark.skipif(not hasattr(select, "epoll"), reason="epoll is Linux's")

WAIT = 10.0


@implementer(IReadDescriptor)
class Reader:
    def __init__(self, sock: socket.socket, fail: bool = False) -> None:
        self.sock = sock
        self.fail = fail
        self.reads: list[bytes] = []
        self.lost: list[Failure] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "reader"

    def doRead(self) -> None:
        if self.fail:
            raise RuntimeError("handler bug")
        self.reads.append(self.sock.recv(100))

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


@pytest.fixture
def reactor() -> Any:
    from epcat.reactor import EPollReactor

    r = EPollReactor()
    yield r
    if r.waker is not None:
        r.waker.connectionLost(Failure(ConnectionDone()))
    r._poller.close()


@pytest.fixture
def logged_failures() -> Any:
    """The failures logged (log.err, Logger.failure) while a test runs."""
    from twisted.logger import globalLogPublisher

    failures: list[Failure] = []

    def observer(event: dict[str, Any]) -> None:
        # (new-style events carry log_failure; legacy log.err ones, failure)
        failure = event.get("log_failure") or (event.get("failure") if event.get("isError")
                                               else None)
        if failure is not None:
            failures.append(failure)

    globalLogPublisher.addObserver(observer)
    yield failures
    globalLogPublisher.removeObserver(observer)


def test_readiness_reaches_the_descriptor(reactor: Any) -> None:
    a, b = socket.socketpair()
    with a, b:
        reader = Reader(a)
        reactor.addReader(reader)
        b.sendall(b"ping")
        reactor.doIteration(5)
        assert reader.reads == [b"ping"]
        reactor.removeReader(reader)


def test_a_failing_handler_is_logged_and_disconnected(
    reactor: Any, logged_failures: list[Failure]
) -> None:
    a, b = socket.socketpair()
    with a, b:
        reader = Reader(a, fail=True)
        reactor.addReader(reader)
        b.sendall(b"ping")
        reactor.doIteration(5)
        assert reader.lost and reader.lost[0].check(RuntimeError)
        assert reader not in reactor.getReaders()
    assert logged_failures and logged_failures[0].check(RuntimeError)


def test_forget_then_close_leaves_the_epoll_set(reactor: Any) -> None:
    """
    A descriptor forgotten and then closed is gone from the reactor and
    from the kernel's epoll set: a new socket that gets the same number
    registers afresh, and only it is reported.
    """
    a, b = socket.socketpair()
    reader = Reader(a)
    reactor.addReader(reader)
    b.sendall(b"unread")
    fd = a.fileno()
    reactor.forget(reader)
    assert reader not in reactor.getReaders()
    a.close()
    b.close()
    c, d = socket.socketpair()
    with c, d:
        again = c if c.fileno() == fd else d  # (the lowest free number: fd)
        assert again.fileno() == fd
        other = d if again is c else c
        new = Reader(again)
        reactor.addReader(new)  # (EPOLL_CTL_ADD: EEXIST if fd were still there)
        other.sendall(b"fresh")
        reactor.doIteration(5)
        assert new.reads == [b"fresh"] and reader.reads == []
        reactor.removeReader(new)


def test_swap_gives_readiness_to_the_new_descriptor(reactor: Any) -> None:
    """
    After C{swap}, the descriptor's readiness goes to the new object, with
    the interest it had; removing the new one takes the descriptor out.
    """
    a, b = socket.socketpair()
    with a, b:
        old, new = Reader(a), Reader(a)
        reactor.addReader(old)
        assert reactor.swap(old, new)
        b.sendall(b"ping")
        reactor.doIteration(5)
        assert new.reads == [b"ping"] and old.reads == []
        assert new in reactor.getReaders() and old not in reactor.getReaders()
        reactor.removeReader(new)
        assert new not in reactor.getReaders()


def test_swap_needs_the_registered_descriptor(reactor: Any) -> None:
    a, b = socket.socketpair()
    with a, b:
        registered, stranger, new = Reader(a), Reader(a), Reader(a)
        assert not reactor.swap(registered, new)  # (nothing registered)
        reactor.addReader(registered)
        assert not reactor.swap(stranger, new)
        assert registered in reactor.getReaders() and new not in reactor.getReaders()
        reactor.removeReader(registered)


def test_forget_leaves_another_descriptor_alone(reactor: Any) -> None:
    a, b = socket.socketpair()
    with a, b:
        reader, stranger = Reader(a), Reader(a)
        reactor.addReader(reader)
        reactor.forget(stranger)  # (not the one registered for this number)
        assert reader in reactor.getReaders()
        reactor.removeReader(reader)


def test_timeout_with_nothing_ready(reactor: Any) -> None:
    reactor.doIteration(0)  # returns at once, nothing to dispatch


def test_what_a_handler_returns_disconnects(reactor: Any) -> None:
    """
    A doRead that returns CONNECTION_DONE (EOF) disconnects the descriptor,
    as Twisted's own dispatch does: half-closeable descriptors hear of it as
    readConnectionLost, others as connectionLost.
    """
    from twisted.internet.main import CONNECTION_DONE

    class EOFReader(Reader):
        def doRead(self) -> Any:
            self.sock.recv(100)
            return CONNECTION_DONE

    a, b = socket.socketpair()
    with a, b:
        reader = EOFReader(a)
        reactor.addReader(reader)
        b.sendall(b"last")
        reactor.doIteration(5)
        assert reader.lost and reader.lost[0].check(ConnectionDone)
        assert reader not in reactor.getReaders()


def test_readable_and_hung_up_reads_then_disconnects(reactor: Any) -> None:
    """
    EPOLLIN with EPOLLHUP (the peer's last bytes and its close) is read as
    plain EPOLLIN is: the data, then at the next read EOF.
    """
    from twisted.internet.main import CONNECTION_DONE

    class Draining(Reader):
        def doRead(self) -> Any:
            data = self.sock.recv(100)
            self.reads.append(data)
            return None if data else CONNECTION_DONE

    slow_path: list[int] = []
    reactor._doReadOrWrite = lambda selectable, fd, event: slow_path.append(event)
    a, b = socket.socketpair()
    with a:
        reader = Draining(a)
        reactor.addReader(reader)
        b.sendall(b"last")
        b.close()
        reactor.doIteration(5)
        assert reader.reads == [b"last"] and not reader.lost
        reactor.doIteration(5)
        assert reader.reads == [b"last", b""]
        assert reader.lost and reader.lost[0].check(ConnectionDone)
        assert reader not in reactor.getReaders()
    assert slow_path == []  # (both events were EPOLLIN|EPOLLHUP)


def test_main_loop_runs_timed_calls_and_calls_from_threads(reactor: Any) -> None:
    """
    The main loop skips the timed-call bookkeeping only in rounds without
    any: timed calls, calls from other threads and stop() still work.
    """
    seen: list[str] = []
    a, b = socket.socketpair()
    with a, b:
        reader = Reader(a)
        reactor.addReader(reader)

        def from_thread() -> None:
            seen.append("thread")
            reactor.callLater(0, b.sendall, b"ping")

        def check() -> None:
            if reader.reads:
                seen.append("read")
                reactor.stop()
            else:
                reactor.callLater(0.01, check)

        def start_thread() -> None:
            threading.Thread(target=reactor.callFromThread, args=(from_thread,)).start()

        reactor.callLater(0, start_thread)
        reactor.callLater(0.01, check)
        reactor.callLater(WAIT, reactor.stop)  # (a bound, should the rest fail)
        reactor.run(installSignalHandlers=False)
        reactor.removeReader(reader)
    assert seen == ["thread", "read"]


def test_an_error_in_a_round_is_logged_and_the_loop_goes_on(
    reactor: Any, logged_failures: list[Failure]
) -> None:
    rounds: list[Any] = []
    real = reactor.doIteration

    def flaky(timeout: Any) -> None:
        rounds.append(timeout)
        if len(rounds) == 1:
            raise RuntimeError("round bug")
        real(timeout)

    reactor.doIteration = flaky
    reactor.callLater(0.01, reactor.stop)
    reactor.run(installSignalHandlers=False)
    assert len(rounds) > 1
    assert [f.value.args for f in logged_failures if f.check(RuntimeError)] == [("round bug",)]


def test_rounds_without_timed_calls_dispatch_in_the_main_loop(
    reactor: Any, logged_failures: list[Failure]
) -> None:
    """
    With no timed call pending, the main loop polls and dispatches by
    itself (no doIteration): a readable descriptor's doRead runs, a handler
    that raises is logged and disconnected, and other events (writable)
    reach their handler too.
    """
    slow_rounds: list[Any] = []
    real = reactor.doIteration

    def counted(timeout: Any) -> None:
        slow_rounds.append(timeout)
        real(timeout)

    reactor.doIteration = counted
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    seen: dict[str, int] = {}
    reader, failing = Reader(a), Reader(c, fail=True)

    @implementer(IWriteDescriptor)
    class Writer:
        def fileno(self) -> int:
            return b.fileno()

        def logPrefix(self) -> str:
            return "writer"

        def doWrite(self) -> None:
            reactor.removeWriter(self)
            seen["written"] = len(slow_rounds)
            b.sendall(b"ping")
            d.sendall(b"boom")

        def connectionLost(self, reason: Failure) -> None:
            pass

    def read() -> None:
        Reader.doRead(reader)
        seen["read"] = len(slow_rounds)
        if failing.lost:
            reactor.stop()

    def lost(reason: Failure) -> None:
        failing.lost.append(reason)
        if reader.reads:
            reactor.stop()

    reader.doRead = read  # type: ignore[method-assign]
    failing.connectionLost = lost  # type: ignore[method-assign]
    # (a bound that adds no timed call: a call from a thread, should the rest fail)
    bound = threading.Timer(WAIT, reactor.callFromThread, (reactor.stop,))
    with a, b, c, d:
        reactor.addReader(reader)
        reactor.addReader(failing)

        def begin() -> None:
            # (once running, with no timed call left)
            reactor.addWriter(Writer())

        reactor.callWhenRunning(begin)
        bound.start()
        try:
            reactor.run(installSignalHandlers=False)
        finally:
            bound.cancel()
        reactor.removeReader(reader)
    assert reader.reads == [b"ping"]
    assert seen["read"] == seen["written"]  # (no doIteration round in between)
    assert failing.lost and failing.lost[0].check(RuntimeError)
    assert failing not in reactor.getReaders()
    assert [f.value.args for f in logged_failures if f.check(RuntimeError)] == [("handler bug",)]
