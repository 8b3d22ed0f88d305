"""
Tests for L{epcat.tlsinfo}: telling a reset under a TLS connection from a
FIN.
"""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from epcat import tlsinfo

WAIT = 10.0


class FakeTCP:
    """
    The parts of Twisted's C{tcp.Connection} L{tlsinfo.watch} uses: the
    socket, the protocol (the TLS layer) and C{connectionLost}, which closes
    the socket before it tells the protocol, as Twisted's does.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.protocol = FakeTLSLayer()
        self.lost: list[Failure] = []

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)
        self.socket.close()
        self.protocol.connectionLost(reason)


class FakeTLSLayer:
    def __init__(self) -> None:
        self.lost: list[Failure] = []

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


class FakeTLSTransport:
    """
    What the wrapped protocol sees: a transport with C{getHandle()} over the
    TCP transport.
    """

    def __init__(self, tcp: Any) -> None:
        self.transport = tcp

    def getHandle(self) -> Any:
        raise NotImplementedError


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """
    Both ends of a TCP connection on loopback: (ours, the peer's).
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        ours = socket.create_connection(listener.getsockname(), timeout=WAIT)
        peer, _ = listener.accept()
    try:
        yield ours, peer
    finally:
        ours.close()
        peer.close()


def _wait_hangup(sock: socket.socket) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    assert poller.poll(WAIT * 1000), "the peer's close never arrived"


def _told_of_a_clean_close(tcp: Any) -> tlsinfo.VerifyRecord:
    """
    Watch a TLS transport over C{tcp}, then tell C{tcp} its connection ended
    cleanly (C{ConnectionDone}), as Twisted's reactor does.
    """
    record = tlsinfo.watch(FakeTLSTransport(tcp))
    assert record is not None
    tcp.connectionLost(Failure(ConnectionDone()))
    return record


def test_reset_reported_as_a_clean_close_is_a_reset(connection) -> None:
    """
    When the TCP transport under a TLS connection is told its connection
    ended cleanly (C{ConnectionDone}) while a reset is pending on its socket
    -- Twisted's reading of an epoll wake-up for a reset before the receive
    side is marked shut -- the record says the connection was reset.
    """
    ours, peer = connection
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    _wait_hangup(ours)
    tcp = FakeTCP(ours)
    record = _told_of_a_clean_close(tcp)
    assert record.reset
    assert tcp.protocol.lost[0].check(ConnectionDone)
    assert "connectionLost" not in vars(tcp)


def test_fin_is_not_a_reset(connection) -> None:
    """
    A clean close (FIN) with nothing pending is not a reset.
    """
    ours, peer = connection
    peer.close()
    _wait_hangup(ours)
    tcp = FakeTCP(ours)
    record = _told_of_a_clean_close(tcp)
    assert not record.reset


def test_a_transport_with_slots_is_left_alone(connection) -> None:
    """
    A TCP transport that cannot take the hook (no instance dictionary) is
    left as it is, and the record still works from its protocol's reason.
    """

    class SlottedTCP:
        __slots__ = ("socket", "protocol")

        def __init__(self, sock: socket.socket) -> None:
            self.socket = sock
            self.protocol = FakeTLSLayer()

        def connectionLost(self, reason: Failure) -> None:
            self.protocol.connectionLost(reason)

    ours, _ = connection
    record = _told_of_a_clean_close(SlottedTCP(ours))
    assert not record.reset
    assert record.tcp_reason.check(ConnectionDone)
