"""
Tier 2 tests for L{epcat.relay}: two L{RelaySide}s joined over in-memory
transports, with no running reactor.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from epcat.endpoints import HALF_CLOSE_NONE, HALF_CLOSE_SHUTDOWN, HALF_CLOSE_TLS
from epcat.relay import HOLD_LIMIT, TLS_CLOSE_GRACE, Pair, SideFactory


class HalfCloseTransport(StringTransport):
    """
    A L{StringTransport} that also half-closes, and records the calls that
    matter for close ordering in C{calls}.

    Like Twisted's real transports (C{abstract.FileDescriptor}), and unlike
    L{StringTransport}, C{unregisterProducer} with no producer is a no-op.
    Bytes written after C{loseWriteConnection} or C{loseConnection} are kept in
    C{late_writes}: a real transport would drop them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.write_closed = False
        self.value_at_write_close: bytes | None = None
        self.late_writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        if self.write_closed or self.disconnecting:
            self.late_writes.append(data)
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        data = list(data)
        if self.write_closed or self.disconnecting:
            self.late_writes.extend(data)
        super().writeSequence(data)

    def loseWriteConnection(self) -> None:
        self.calls.append("loseWriteConnection")
        self.write_closed = True
        self.value_at_write_close = self.value()

    def loseConnection(self) -> None:
        self.calls.append("loseConnection")
        super().loseConnection()

    def abortConnection(self) -> None:
        self.calls.append("abortConnection")
        self.disconnected = True
        self.disconnecting = True

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.calls.append("registerProducer")
        super().registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.calls.append("unregisterProducer")
        self.producer = None
        self.streaming = None

    def pauseProducing(self) -> None:
        self.calls.append("pauseProducing")
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self.calls.append("resumeProducing")
        super().resumeProducing()

    def closed_calls(self) -> list[str]:
        """
        The calls that end or unregister, in order.
        """
        wanted = {"unregisterProducer", "loseWriteConnection", "loseConnection", "abortConnection"}
        return [c for c in self.calls if c in wanted]


def assert_unregistered_before(transport: HalfCloseTransport, call: str) -> None:
    calls = transport.calls
    assert call in calls
    assert "unregisterProducer" in calls[: calls.index(call)]
    assert transport.producer is None


def done_reason() -> Failure:
    return Failure(ConnectionDone())


class Harness:
    """
    A L{Pair} on a L{MemoryReactorClock}, with its events recorded.
    """

    def __init__(
        self,
        inbound: str = HALF_CLOSE_SHUTDOWN,
        outbound: str = HALF_CLOSE_SHUTDOWN,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.events: list[tuple[str, str | None]] = []
        self.pair = Pair(self.reactor, 1, inbound, outbound, on_event=self._record)
        self.results: list[Pair] = []
        self.pair.done.addCallback(self.results.append)

    def _record(self, event: str, pair: Pair, side: Any) -> None:
        assert pair is self.pair
        self.events.append((event, side.role if side is not None else None))

    def connect_inbound(self) -> HalfCloseTransport:
        transport = HalfCloseTransport()
        self.pair.inbound.makeConnection(transport)
        return transport

    def connect_outbound(self) -> HalfCloseTransport:
        transport = HalfCloseTransport()
        self.pair.outbound.makeConnection(transport)
        return transport

    def join(self) -> tuple[HalfCloseTransport, HalfCloseTransport]:
        return self.connect_inbound(), self.connect_outbound()

    @property
    def done(self) -> bool:
        return bool(self.results)


# -- joining and flow


def test_bytes_flow_both_ways() -> None:
    h = Harness()
    tin, tout = h.join()
    assert h.pair.joined
    h.pair.inbound.dataReceived(b"request")
    h.pair.outbound.dataReceived(b"response")
    h.pair.inbound.dataReceived(b" more")
    assert tout.value() == b"request more"
    assert tin.value() == b"response"


def test_each_transport_is_a_streaming_producer_for_the_other() -> None:
    h = Harness()
    tin, tout = h.join()
    assert tin.producer is tout
    assert tin.streaming is True
    assert tout.producer is tin
    assert tout.streaming is True


def test_sides_know_their_peer_and_role() -> None:
    h = Harness()
    h.join()
    assert h.pair.inbound.peer is h.pair.outbound
    assert h.pair.outbound.peer is h.pair.inbound
    assert (h.pair.inbound.role, h.pair.outbound.role) == ("inbound", "outbound")


def test_events_accepted_connected_closed() -> None:
    h = Harness()
    _tin, _tout = h.join()
    assert h.events == [("accepted", "inbound"), ("connected", "outbound")]
    h.pair.inbound.connectionLost(done_reason())
    h.pair.outbound.connectionLost(done_reason())
    assert h.events[-1] == ("closed", None)
    assert h.events.count(("closed", None)) == 1


def test_a_failure_while_joining_closes_both_sides_and_is_said() -> None:
    """
    An exception raised while the sides are joined (a PROXY header that
    cannot be built, say) is reported as an internal-error event and both
    sides are aborted: no connection is left open for ever.
    """
    h = Harness()

    def broken_header() -> bytes:
        raise UnicodeError("a header that cannot be built")

    h.pair.preamble = broken_header
    tin, tout = h.join()
    assert ("internal-error", None) in h.events
    assert h.pair.internal_error is not None
    assert h.pair.internal_error.check(UnicodeError)
    assert "abortConnection" in tin.calls
    assert "abortConnection" in tout.calls


def test_other_side_connecting_inside_the_accepted_event_joins_once() -> None:
    # listen SERVER with stdin/stdout: run.py attaches StandardIO from the
    # "accepted" event, and StandardIO connects its protocol synchronously.
    h = Harness()
    tin = HalfCloseTransport()
    tout = HalfCloseTransport()

    def attach(event: str, pair: Pair, side: Any) -> None:
        h.events.append((event, side.role if side is not None else None))
        if event == "accepted":
            pair.outbound.makeConnection(tout)

    h.pair._on_event = attach
    h.pair.inbound.makeConnection(tin)
    assert tin.calls.count("registerProducer") == 1
    assert tout.calls.count("registerProducer") == 1
    assert (tin.producer, tout.producer) == (tout, tin)
    h.pair.inbound.dataReceived(b"x")
    assert tout.value() == b"x"


@pytest.mark.parametrize("half_close", [HALF_CLOSE_SHUTDOWN, HALF_CLOSE_NONE])
def test_non_tls_side_keeps_half_close_behind_twisteds_client_wrapper(half_close: str) -> None:
    # Client endpoints wrap the protocol in _WrappingProtocol, which copies
    # only one of IHalfCloseableProtocol / IHandshakeListener.
    from twisted.internet.endpoints import _WrappingProtocol

    pair = Pair(MemoryReactorClock(), 1, half_close, half_close)
    wrapper = _WrappingProtocol(Deferred(), pair.outbound)
    assert IHalfCloseableProtocol.providedBy(wrapper)
    assert not IHandshakeListener.providedBy(pair.outbound)


def test_tls_side_listens_for_the_handshake() -> None:
    pair = Pair(MemoryReactorClock(), 1, HALF_CLOSE_SHUTDOWN, HALF_CLOSE_TLS)
    assert IHandshakeListener.providedBy(pair.outbound)
    assert not IHandshakeListener.providedBy(pair.inbound)


def test_side_factory_hands_out_its_side() -> None:
    h = Harness()
    factory = SideFactory(h.pair.outbound)
    assert factory.buildProtocol(None) is h.pair.outbound


# -- bytes that arrive before the other side is up


def test_early_inbound_bytes_are_held_and_delivered_first_in_order() -> None:
    h = Harness()
    tin = h.connect_inbound()
    h.pair.inbound.dataReceived(b"one ")
    h.pair.inbound.dataReceived(b"two ")
    h.pair.inbound.dataReceived(b"three ")
    assert h.pair.inbound.held_bytes() == len(b"one two three ")
    assert not h.pair.joined
    tout = h.connect_outbound()
    assert tout.value() == b"one two three "
    assert h.pair.inbound.held_bytes() == 0
    h.pair.inbound.dataReceived(b"four")
    assert tout.value() == b"one two three four"
    assert tin.producerState == "producing"


def test_bytes_up_to_the_hold_limit_do_not_pause() -> None:
    h = Harness()
    tin = h.connect_inbound()
    h.pair.inbound.dataReceived(b"x" * HOLD_LIMIT)
    assert tin.producerState == "producing"
    assert "pauseProducing" not in tin.calls


def test_beyond_the_hold_limit_the_inbound_is_paused_until_join() -> None:
    h = Harness()
    tin = h.connect_inbound()
    chunk = b"a" * (HOLD_LIMIT // 4)
    for _ in range(4):
        h.pair.inbound.dataReceived(chunk)
    assert tin.producerState == "producing"
    h.pair.inbound.dataReceived(b"b")
    assert tin.producerState == "paused"
    # More bytes that were already in flight are still held, and paused once.
    h.pair.inbound.dataReceived(b"c")
    assert tin.calls.count("pauseProducing") == 1
    tout = h.connect_outbound()
    assert tin.producerState == "producing"
    assert tout.value() == chunk * 4 + b"bc"
    # Resumed after both were registered as producers for each other.
    calls = tin.calls
    assert calls.index("registerProducer") < calls.index("resumeProducing")


def test_early_eof_is_delivered_after_the_held_bytes() -> None:
    h = Harness()
    h.connect_inbound()
    h.pair.inbound.dataReceived(b"all of it")
    h.pair.inbound.readConnectionLost()
    assert h.pair.first_closer == "inbound"
    tout = h.connect_outbound()
    assert tout.value() == b"all of it"
    assert tout.value_at_write_close == b"all of it"
    assert "loseConnection" not in tout.calls
    assert tout.late_writes == []


# -- half-close


def test_inbound_eof_half_closes_a_shutdown_outbound_and_the_reply_flows() -> None:
    h = Harness(HALF_CLOSE_SHUTDOWN, HALF_CLOSE_SHUTDOWN)
    tin, tout = h.join()
    h.pair.inbound.dataReceived(b"GET /")
    h.pair.inbound.readConnectionLost()
    assert tout.closed_calls() == ["unregisterProducer", "loseWriteConnection"]
    assert tout.value_at_write_close == b"GET /"
    assert not tout.disconnecting
    assert not tin.disconnecting
    assert not tin.write_closed
    h.pair.outbound.dataReceived(b"200 OK")
    h.pair.outbound.dataReceived(b" body")
    assert tin.value() == b"200 OK body"
    assert h.pair.first_closer == "inbound"
    assert not h.done


def test_outbound_eof_half_closes_a_shutdown_inbound() -> None:
    h = Harness(HALF_CLOSE_SHUTDOWN, HALF_CLOSE_SHUTDOWN)
    tin, tout = h.join()
    h.pair.outbound.dataReceived(b"banner")
    h.pair.outbound.readConnectionLost()
    assert tin.closed_calls() == ["unregisterProducer", "loseWriteConnection"]
    assert tin.value_at_write_close == b"banner"
    h.pair.inbound.dataReceived(b"still sending")
    assert tout.value() == b"still sending"
    assert not tout.disconnecting
    assert h.pair.first_closer == "outbound"


def test_both_directions_ended_closes_both_transports() -> None:
    h = Harness()
    tin, tout = h.join()
    h.pair.inbound.readConnectionLost()
    assert not tout.disconnecting
    h.pair.outbound.dataReceived(b"last words")
    h.pair.outbound.readConnectionLost()
    assert tin.value() == b"last words"
    assert tin.write_closed
    assert tin.disconnecting
    assert tout.disconnecting
    for transport in (tin, tout):
        assert_unregistered_before(transport, "loseConnection")
        assert transport.late_writes == []
    assert h.pair.first_closer == "inbound"
    assert not h.done  # until both connections are actually gone
    h.pair.inbound.connectionLost(done_reason())
    h.pair.outbound.connectionLost(done_reason())
    assert h.results == [h.pair]


def test_write_close_confirmation_alone_does_not_close() -> None:
    h = Harness()
    tin, tout = h.join()
    h.pair.inbound.readConnectionLost()
    h.pair.outbound.writeConnectionLost()  # Twisted confirms our shutdown
    assert not tout.disconnecting
    assert not tin.disconnecting
    h.pair.outbound.dataReceived(b"reply")
    assert tin.value() == b"reply"


def test_unrequested_write_connection_lost_closes_the_pair() -> None:
    # e.g. EPIPE on stdout: nothing more can be delivered to that side.
    h = Harness()
    tin, tout = h.join()
    h.pair.outbound.writeConnectionLost()
    assert tin.disconnecting
    assert tout.disconnecting
    assert_unregistered_before(tin, "loseConnection")
    assert_unregistered_before(tout, "loseConnection")


@pytest.mark.parametrize("ending", ["inbound", "outbound"])
def test_half_close_none_closes_the_peer_instead(ending: str) -> None:
    h = Harness(HALF_CLOSE_NONE, HALF_CLOSE_NONE)
    tin, tout = h.join()
    ender = getattr(h.pair, ending)
    target = tout if ending == "inbound" else tin
    other = tin if ending == "inbound" else tout
    ender.dataReceived(b"payload")
    ender.readConnectionLost()
    assert "loseWriteConnection" not in target.calls
    assert target.disconnecting
    assert target.value() == b"payload"  # loseConnection flushes what was written
    assert_unregistered_before(target, "loseConnection")
    assert not other.disconnecting


def test_half_close_modes_are_per_side() -> None:
    # tcp inbound, haproxy-style outbound: EOF from the outbound still
    # half-closes the inbound, EOF from the inbound closes the outbound.
    h = Harness(HALF_CLOSE_SHUTDOWN, HALF_CLOSE_NONE)
    tin, tout = h.join()
    h.pair.outbound.readConnectionLost()
    assert tin.closed_calls() == ["unregisterProducer", "loseWriteConnection"]
    h.pair.inbound.readConnectionLost()
    assert tout.disconnecting
    assert tin.disconnecting


def test_read_connection_lost_twice_is_harmless() -> None:
    h = Harness()
    _tin, tout = h.join()
    h.pair.inbound.readConnectionLost()
    h.pair.inbound.readConnectionLost()
    assert tout.calls.count("loseWriteConnection") == 1


class FakeSocket:
    """
    The C{getsockopt(SOL_SOCKET, SO_ERROR)} of a socket: the pending error,
    taken by the first read as the kernel does.
    """

    def __init__(self, error: int) -> None:
        self.error = error

    def getsockopt(self, level: int, option: int) -> int:
        assert (level, option) == (socket.SOL_SOCKET, socket.SO_ERROR)
        error, self.error = self.error, 0
        return error


def test_a_reset_reported_as_end_of_input_is_a_reset() -> None:
    # Linux can report a TCP reset to epoll as EPOLLERR without EPOLLIN, which
    # Twisted delivers as readConnectionLost: the socket still holds the error.
    h = Harness()
    tin, tout = h.join()
    tout.socket = FakeSocket(errno.ECONNRESET)  # type: ignore[attr-defined]
    h.pair.outbound.dataReceived(b"partial answer")
    h.pair.outbound.readConnectionLost()
    assert h.pair.outbound.lost_reason.check(ConnectionLost)
    assert "abortConnection" in tout.calls
    assert tin.value() == b"partial answer"
    assert tin.disconnecting  # after flushing, not aborted
    assert "abortConnection" not in tin.calls
    h.pair.outbound.connectionLost(done_reason())  # Twisted's own, later: ignored
    assert h.pair.outbound.lost_reason.check(ConnectionLost)


def test_a_clean_end_of_input_with_no_socket_error_half_closes() -> None:
    h = Harness()
    tin, tout = h.join()
    tout.socket = FakeSocket(0)  # type: ignore[attr-defined]
    h.pair.outbound.readConnectionLost()
    assert h.pair.outbound.lost_reason is None
    assert tin.closed_calls() == ["unregisterProducer", "loseWriteConnection"]


# -- connections lost, closing and aborting


def test_connection_lost_on_one_side_closes_the_other() -> None:
    h = Harness()
    _tin, tout = h.join()
    h.pair.inbound.dataReceived(b"bye")
    h.pair.inbound.connectionLost(Failure(ConnectionLost()))
    assert tout.disconnecting
    assert tout.value() == b"bye"
    assert_unregistered_before(tout, "loseConnection")
    assert not h.done
    h.pair.outbound.connectionLost(done_reason())
    assert h.results == [h.pair]
    assert h.pair.inbound.lost_reason.check(ConnectionLost)


def test_outbound_lost_closes_the_inbound() -> None:
    h = Harness()
    tin, _tout = h.join()
    h.pair.outbound.connectionLost(done_reason())
    assert tin.disconnecting
    assert_unregistered_before(tin, "loseConnection")
    assert h.pair.first_closer == "outbound"
    h.pair.inbound.connectionLost(done_reason())
    assert h.results == [h.pair]


def test_done_fires_once_when_both_are_lost() -> None:
    h = Harness()
    h.join()
    h.pair.outbound.connectionLost(done_reason())
    h.pair.inbound.connectionLost(done_reason())
    h.pair.inbound.connectionLost(done_reason())
    h.pair.close()
    h.pair.abort()
    assert h.results == [h.pair]


def test_close_closes_both_after_unregistering() -> None:
    h = Harness()
    tin, tout = h.join()
    h.pair.close()
    for transport in (tin, tout):
        assert transport.disconnecting
        assert not transport.disconnected
        assert_unregistered_before(transport, "loseConnection")
    assert not h.done
    h.pair.inbound.connectionLost(done_reason())
    h.pair.outbound.connectionLost(done_reason())
    assert h.done


def test_abort_aborts_both_after_unregistering() -> None:
    h = Harness()
    tin, tout = h.join()
    h.pair.abort()
    for transport in (tin, tout):
        assert transport.disconnected
        assert_unregistered_before(transport, "abortConnection")


def test_close_before_anything_connected_finishes() -> None:
    h = Harness()
    h.pair.close()
    assert h.done


def test_close_and_abort_stop_the_outbound_attempt() -> None:
    for method in ("close", "abort"):
        h = Harness()
        tin = h.connect_inbound()
        attempt: Deferred[Any] = Deferred()
        failures: list[Failure] = []
        attempt.addErrback(failures.append)
        h.pair.attempt = attempt
        getattr(h.pair, method)()
        assert h.pair.attempt is None
        assert failures and failures[0].check(CancelledError)
        assert tin.disconnecting
        h.pair.inbound.connectionLost(done_reason())
        assert h.done


# -- the outbound attempt


def test_attempt_cancelled_when_the_inbound_leaves_with_nothing_held() -> None:
    h = Harness()
    h.connect_inbound()
    attempt: Deferred[Any] = Deferred()
    failures: list[Failure] = []
    attempt.addErrback(failures.append)
    h.pair.attempt = attempt
    h.pair.inbound.connectionLost(done_reason())
    assert len(failures) == 1
    assert failures[0].check(CancelledError)
    assert h.pair.attempt is None
    assert h.results == [h.pair]


def test_cancelled_attempt_reported_through_outbound_failed_finishes_once() -> None:
    # The way run.py wires an attempt: its errback is Pair.outbound_failed.
    h = Harness()
    h.connect_inbound()
    attempt: Deferred[Any] = Deferred()
    attempt.addErrback(h.pair.outbound_failed)
    h.pair.attempt = attempt
    h.pair.inbound.connectionLost(done_reason())
    assert h.results == [h.pair]
    assert h.pair.outbound_failure is not None
    assert h.pair.outbound_failure.check(CancelledError)
    assert h.events.count(("closed", None)) == 1


def test_attempt_kept_while_bytes_are_held_then_delivered() -> None:
    h = Harness()
    h.connect_inbound()
    attempt: Deferred[Any] = Deferred()
    h.pair.attempt = attempt
    h.pair.inbound.dataReceived(b"fire and forget")
    h.pair.inbound.connectionLost(done_reason())
    assert h.pair.attempt is attempt
    assert not attempt.called
    assert not h.done
    # The outbound comes up: the held bytes go out, then the write side ends.
    tout = h.connect_outbound()

    def connected(_: Any) -> None:  # what run.py does when the attempt succeeds
        h.pair.attempt = None

    attempt.addCallback(connected)
    attempt.callback(None)
    assert tout.value() == b"fire and forget"
    assert tout.value_at_write_close == b"fire and forget"
    assert tout.disconnecting
    assert_unregistered_before(tout, "loseConnection")
    assert tout.late_writes == []
    assert not h.done
    h.pair.outbound.connectionLost(done_reason())
    assert h.results == [h.pair]


def test_outbound_failed_closes_the_inbound_and_fires_done() -> None:
    h = Harness()
    tin = h.connect_inbound()
    attempt: Deferred[Any] = Deferred()
    attempt.addErrback(h.pair.outbound_failed)
    h.pair.attempt = attempt
    h.pair.inbound.dataReceived(b"never delivered")
    attempt.errback(ConnectionRefusedError())
    assert h.pair.attempt is None
    assert h.pair.outbound_failure is not None
    assert h.pair.outbound_failure.check(ConnectionRefusedError)
    assert ("failed", "outbound") in h.events
    assert tin.disconnecting
    assert_unregistered_before(tin, "loseConnection")
    h.pair.inbound.connectionLost(done_reason())
    assert h.results == [h.pair]


def test_outbound_failed_after_the_inbound_left_fires_done_at_once() -> None:
    h = Harness()
    h.connect_inbound()
    h.pair.attempt = Deferred()
    h.pair.inbound.dataReceived(b"held")
    h.pair.inbound.connectionLost(done_reason())
    assert not h.done
    h.pair.outbound_failed(Failure(ConnectionRefusedError()))
    assert h.results == [h.pair]


# -- counters


def test_byte_counters_and_first_closer() -> None:
    h = Harness()
    h.connect_inbound()
    h.pair.inbound.dataReceived(b"12345")  # held, still counted
    h.connect_outbound()
    h.pair.inbound.dataReceived(b"678")
    h.pair.outbound.dataReceived(b"ab")
    assert h.pair.inbound.bytes_received == 8
    assert h.pair.outbound.bytes_received == 2
    assert h.pair.first_closer is None
    h.pair.outbound.readConnectionLost()
    h.pair.inbound.readConnectionLost()
    assert h.pair.first_closer == "outbound"


def test_first_closer_on_connection_lost() -> None:
    h = Harness()
    h.join()
    h.pair.inbound.connectionLost(Failure(ConnectionLost()))
    h.pair.outbound.connectionLost(done_reason())
    assert h.pair.first_closer == "inbound"


# -- TLS (only what needs no real TLS; the real path is tested end to end)


class FakeTLSConnection:
    """
    Stands in for the pyOpenSSL C{Connection} behind a TLS transport.
    """

    def __init__(self) -> None:
        self.shutdowns = 0
        self._pending = [b"\x15\x03\x03close_notify"]

    def shutdown(self) -> bool:
        self.shutdowns += 1
        return False

    def bio_read(self, size: int) -> bytes:
        from OpenSSL.SSL import WantReadError

        if not self._pending:
            raise WantReadError()
        return self._pending.pop(0)


class FakeTLSTransport(HalfCloseTransport):
    def __init__(self) -> None:
        super().__init__()
        self.connection = FakeTLSConnection()
        self.transport = StringTransport()  # the TCP transport underneath

    def getHandle(self) -> FakeTLSConnection:
        return self.connection


def test_tls_shutdown_before_the_handshake_is_deferred_until_it_completes() -> None:
    h = Harness(HALF_CLOSE_SHUTDOWN, HALF_CLOSE_TLS)
    tin = h.connect_inbound()
    tout = FakeTLSTransport()
    h.pair.outbound.makeConnection(tout)
    h.pair.inbound.dataReceived(b"hello")
    h.pair.inbound.readConnectionLost()
    assert "loseWriteConnection" not in tout.calls
    assert not tout.disconnecting
    assert tout.connection.shutdowns == 0
    h.pair.outbound.handshakeCompleted()
    assert h.pair.outbound.handshake_done
    assert ("handshake", "outbound") in h.events
    assert tout.connection.shutdowns == 0  # after the handshake callback returns
    h.reactor.advance(0)
    assert tout.connection.shutdowns == 1
    assert tout.transport.value() == b"\x15\x03\x03close_notify"
    assert "loseWriteConnection" not in tout.calls
    assert not tout.disconnecting
    h.pair.outbound.dataReceived(b"reply")
    assert tin.value() == b"reply"


def test_tls_shutdown_after_the_handshake_is_immediate() -> None:
    h = Harness(HALF_CLOSE_SHUTDOWN, HALF_CLOSE_TLS)
    h.connect_inbound()
    tout = FakeTLSTransport()
    h.pair.outbound.makeConnection(tout)
    h.pair.outbound.handshakeCompleted()
    h.pair.inbound.readConnectionLost()
    assert tout.connection.shutdowns == 1
    assert not tout.disconnecting


def test_tls_shutdown_falls_back_to_close_when_tls_will_not_half_close() -> None:
    h = Harness(HALF_CLOSE_SHUTDOWN, HALF_CLOSE_TLS)
    h.connect_inbound()
    tout = h.connect_outbound()  # no getHandle(): not a TLS transport
    h.pair.outbound.handshakeCompleted()
    h.pair.inbound.readConnectionLost()
    assert tout.disconnecting
    assert_unregistered_before(tout, "loseConnection")


def test_tls_close_is_aborted_after_the_grace_period() -> None:
    h = Harness(HALF_CLOSE_SHUTDOWN, HALF_CLOSE_TLS)
    tin, tout = h.join()
    h.pair.close()
    assert tout.disconnecting and not tout.disconnected
    h.reactor.advance(TLS_CLOSE_GRACE - 0.5)
    assert not tout.disconnected
    h.reactor.advance(0.5)
    assert tout.disconnected
    assert not tin.disconnected  # the tcp side has no grace timer


def test_tls_grace_timer_cancelled_when_the_connection_goes() -> None:
    h = Harness(HALF_CLOSE_SHUTDOWN, HALF_CLOSE_TLS)
    _tin, tout = h.join()
    h.pair.close()
    assert len(h.reactor.getDelayedCalls()) == 1
    h.pair.outbound.connectionLost(done_reason())
    assert h.reactor.getDelayedCalls() == []
    h.reactor.advance(TLS_CLOSE_GRACE * 2)
    assert not tout.disconnected


# -- through real endpoints, on the factories the reactor recorded


def test_a_pair_built_from_the_factories_real_endpoints_gave_the_reactor() -> None:
    from epcat.endpoints import parse_client, parse_server

    h = Harness()
    parse_server(h.reactor, "tcp:8080:interface=127.0.0.1").listen(SideFactory(h.pair.inbound))
    [(port, server_factory, _, interface)] = h.reactor.tcpServers
    assert (port, interface) == (8080, "127.0.0.1")
    tin = HalfCloseTransport()
    server_factory.buildProtocol(None).makeConnection(tin)

    attempt = parse_client(h.reactor, "tcp:127.0.0.1:80").connect(SideFactory(h.pair.outbound))
    h.pair.attempt = attempt
    attempt.addCallback(lambda _: setattr(h.pair, "attempt", None))  # as run.py does
    [(host, port, client_factory, _, _)] = h.reactor.tcpClients
    assert (host, port) == ("127.0.0.1", 80)
    wrapper = client_factory.buildProtocol(None)
    assert IHalfCloseableProtocol.providedBy(wrapper)  # else EOF arrives as connectionLost
    tout = HalfCloseTransport()
    wrapper.makeConnection(tout)
    assert h.pair.attempt is None
    assert (tin.producer, tout.producer) == (tout, tin)

    h.pair.inbound.dataReceived(b"ping")
    wrapper.dataReceived(b"pong")
    assert (tout.value(), tin.value()) == (b"ping", b"pong")
    wrapper.readConnectionLost()
    assert tin.closed_calls() == ["unregisterProducer", "loseWriteConnection"]
    h.pair.inbound.readConnectionLost()
    assert tin.disconnecting and tout.disconnecting
    h.pair.inbound.connectionLost(done_reason())
    wrapper.connectionLost(done_reason())
    assert h.results == [h.pair]


# -- timeouts, pausing and transforms (socat -T / -t, --max-connections, --crlf)


def timed_pair(**timeouts: float) -> tuple[Harness, HalfCloseTransport, HalfCloseTransport]:
    h = Harness()
    h.pair = Pair(h.reactor, 1, on_event=h._record, **timeouts)
    h.pair.done.addCallback(h.results.append)
    tin, tout = h.join()
    return h, tin, tout


def test_idle_timeout_closes_a_quiet_pair() -> None:
    h, tin, tout = timed_pair(idle_timeout=5.0)
    h.reactor.advance(4.9)
    assert not tin.disconnecting
    h.reactor.advance(0.1)
    assert h.pair.close_reason is not None
    assert h.pair.close_reason.startswith("idle timeout")
    assert ("closing", None) in h.events
    for transport in (tin, tout):
        assert transport.disconnecting and not transport.disconnected
        assert_unregistered_before(transport, "loseConnection")


def test_activity_postpones_the_idle_timeout() -> None:
    h, tin, _tout = timed_pair(idle_timeout=5.0)
    h.reactor.advance(3)
    h.pair.outbound.dataReceived(b"tick")
    h.reactor.advance(3)  # 6 s since the join, 3 s since the last byte
    assert not tin.disconnecting
    assert h.pair.close_reason is None
    h.reactor.advance(2)
    assert tin.disconnecting


def test_half_close_timeout_closes_when_the_other_direction_lingers() -> None:
    h, tin, tout = timed_pair(half_close_timeout=2.0)
    h.pair.inbound.readConnectionLost()
    h.reactor.advance(1.9)
    assert not tin.disconnecting
    h.reactor.advance(0.1)
    assert h.pair.close_reason is not None
    assert h.pair.close_reason.startswith("half-close timeout")
    assert tin.disconnecting and tout.disconnecting


def test_half_close_timer_stops_once_both_directions_ended() -> None:
    h, tin, tout = timed_pair(half_close_timeout=2.0)
    h.pair.inbound.readConnectionLost()
    h.reactor.advance(1)
    h.pair.outbound.readConnectionLost()  # the other direction ended in time
    assert tin.disconnecting and tout.disconnecting  # both closing, still flushing
    h.reactor.advance(5)
    assert h.pair.close_reason is None
    assert ("closing", None) not in h.events


def test_timers_are_cancelled_when_the_pair_is_done() -> None:
    h, _tin, _tout = timed_pair(idle_timeout=5.0, half_close_timeout=2.0)
    h.pair.inbound.readConnectionLost()
    assert len(h.reactor.getDelayedCalls()) == 2
    h.pair.inbound.connectionLost(done_reason())
    h.pair.outbound.connectionLost(done_reason())
    assert h.done
    assert h.reactor.getDelayedCalls() == []


def test_pause_until_joined_then_join_resumes() -> None:
    h = Harness()
    tin = h.connect_inbound()
    h.pair.inbound.pause_until_joined()
    assert tin.producerState == "paused"
    h.pair.inbound.pause_until_joined()
    assert tin.calls.count("pauseProducing") == 1
    h.connect_outbound()
    assert tin.producerState == "producing"


def test_pause_until_joined_then_zero_copy_join_resumes() -> None:
    """
    A fast-path pair joined with nothing read yet waits for the first byte
    before starting the engine: a side paused until the join (the outbound
    was retried, or the pair queued) must read again, or that byte never
    comes.
    """
    h = Harness()
    h.pair.fast_path = True
    tin = HalfCloseTransport()
    tin.zero_copy = True  # (what epcat.splice.eligible looks for)
    h.pair.inbound.makeConnection(tin)
    h.pair.inbound.pause_until_joined()
    assert tin.producerState == "paused"
    tout = HalfCloseTransport()
    tout.zero_copy = True
    h.pair.outbound.makeConnection(tout)
    assert h.pair.splice_waiting
    assert tin.producerState == "producing"


def test_a_finished_pair_lets_go_of_its_cycles() -> None:
    """
    let_go() cuts the pair <-> side and side <-> peer links (so a relay's
    finished pairs are freed by reference counting, not by the garbage
    collector); only for a finished pair.
    """
    h = Harness()
    h.join()
    with pytest.raises(AssertionError):
        h.pair.let_go()
    inbound, outbound = h.pair.inbound, h.pair.outbound
    inbound.connectionLost(done_reason())
    outbound.connectionLost(done_reason())
    assert h.done
    h.pair.let_go()
    assert inbound.pair is None and outbound.pair is None
    assert inbound.peer is None and outbound.peer is None
    assert h.pair.inbound is inbound  # (what the pair reports stays)
    inbound.connectionLost(done_reason())  # (a late call changes nothing)


def test_transform_applies_to_held_and_relayed_bytes() -> None:
    h = Harness()
    h.connect_inbound()
    h.pair.inbound.transform = lambda data: data.replace(b"\n", b"\r\n")
    h.pair.inbound.dataReceived(b"a\n")
    tout = h.connect_outbound()
    h.pair.inbound.dataReceived(b"b\n")
    assert tout.value() == b"a\r\nb\r\n"
    assert h.pair.inbound.bytes_received == 4  # bytes read, before the transform


# -- TCP_NODELAY


def _connected_tcp_pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    return client, server


def test_send_at_once_on_twisted_tcp_transports_and_through_wrappers() -> None:
    """
    Every TCP connection a pair relays has Nagle's algorithm off
    (C{TCP_NODELAY}, as haproxy and nginx's stream proxy): Twisted's TCP
    transport directly, and through a wrapper (TLS, C{haproxy:}) that
    passes attributes on to it, as Twisted's C{ProtocolWrapper} does.
    """
    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol
    from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

    from epcat.relay import send_at_once

    reactor = MemoryReactorClock()
    for wrapped in (False, True):
        client, server = _connected_tcp_pair()
        try:
            transport = tcp.Connection(server, Protocol(), reactor)
            if wrapped:
                wrapper = ProtocolWrapper(WrappingFactory(None), Protocol())
                wrapper.makeConnection(transport)
                transport = wrapper
            assert not server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            send_at_once(transport)
            assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            client.close()
            server.close()


def test_send_at_once_leaves_other_transports_alone() -> None:
    """
    A UNIX socket under Twisted's TCP transport code refuses the option
    (ignored), a transport with no C{setTcpNoDelay} (stdio, a process) is
    left alone, and epcat's lean sockets, made with it, are not asked again.
    """
    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol

    from epcat.relay import send_at_once

    a, b = socket.socketpair()
    try:
        send_at_once(tcp.Connection(a, Protocol(), MemoryReactorClock()))  # no error
    finally:
        a.close()
        b.close()
    send_at_once(StringTransport())  # (no setTcpNoDelay)

    class Lean:
        made_with_nodelay = True

        def setTcpNoDelay(self, enabled: bool) -> None:
            raise AssertionError("asked again")

    send_at_once(Lean())


@pytest.mark.parametrize("asked", [False, True], ids=["reader-gone", "half-close-asked"])
def test_stdio_transport_tells_a_reader_gone_from_an_end_it_asked_for(asked: bool) -> None:
    """
    Twisted's pipe writer reports its reader's end (head exiting) as a clean
    ConnectionDone, the same as the end of a half-close epcat asked for:
    StdioTransport keeps the first as a ConnectionLost, so RelaySide.write_lost
    (and the exit status) can tell them apart.
    """
    import os

    from twisted.internet.protocol import Protocol
    from twisted.internet.testing import MemoryReactor

    from epcat.relay import StdioTransport

    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    try:
        transport = StdioTransport(
            Protocol(), stdin=stdin_read, stdout=stdout_write, reactor=MemoryReactor()
        )
        if asked:
            transport.loseWriteConnection()
        transport.childConnectionLost("write", done_reason())
        reason = transport.write_lost_reason
        assert reason is not None
        assert reason.check(ConnectionDone if asked else ConnectionLost)
    finally:
        for fd in (stdin_read, stdin_write, stdout_read, stdout_write):
            try:
                os.close(fd)
            except OSError:
                pass
