"""
Tests for L{epcat.reactor}: readiness reaches the descriptor, an exception
from a handler is logged and the descriptor disconnected, as with Twisted's
own epoll reactor.  (The reactor is made, never installed or run.)
"""

from __future__ import annotations

import select
import socket
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReadDescriptor
from twisted.python import log
from twisted.python.failure import Failure
from zope.interface import implementer

pytestmark = pytest.mark.skipif(not hasattr(select, "epoll"), reason="epoll is Linux's")


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
    r._poller.close()


def test_readiness_reaches_the_descriptor(reactor: Any) -> None:
    a, b = socket.socketpair()
    with a, b:
        reader = Reader(a)
        reactor.addReader(reader)
        b.sendall(b"ping")
        reactor.doIteration(5)
        assert reader.reads == [b"ping"]
        reactor.removeReader(reader)


def test_a_failing_handler_is_logged_and_disconnected(reactor: Any) -> None:
    errors: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("isError"):
            errors.append(event)

    log.addObserver(observer)
    a, b = socket.socketpair()
    try:
        with a, b:
            reader = Reader(a, fail=True)
            reactor.addReader(reader)
            b.sendall(b"ping")
            reactor.doIteration(5)
            assert reader.lost and reader.lost[0].check(RuntimeError)
            assert reader not in reactor.getReaders()
    finally:
        log.removeObserver(observer)
    assert errors and errors[0]["failure"].check(RuntimeError)


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
