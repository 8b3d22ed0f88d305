# -*- test-case-name: tests.unit.test_relay -*-
"""
The pipe: two protocols joined pairwise, with producer/consumer flow control
both ways, half-close, and close ordering that loses no byte.

The shape is Twisted's C{portforward} (each transport registered as a
streaming producer on the other, so a slow reader pauses the fast writer),
plus what it lacks: endpoints instead of C{connectTCP}, bounded holding of
bytes that arrive before the other side is up, half-close
(C{IHalfCloseableProtocol}), cancelling the outbound attempt when the inbound
side goes away, and unregistering producers before closing.
"""

from __future__ import annotations

import os
import socket
from typing import Any
from collections.abc import Callable, Collection

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.stdio import StandardIO
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from epcat import splice as zero_copy
from epcat import tlsinfo
from epcat.endpoints import HALF_CLOSE_SHUTDOWN, HALF_CLOSE_TLS

#: Bytes held from one side while the other is not connected yet; past this
#: the side's transport is paused until the other side is up.
HOLD_LIMIT = 256 * 1024

#: Seconds a TLS connection may take to finish its close_notify exchange
#: after epcat closed it, before it is aborted (twisted#7926: a TLS
#: C{loseConnection} waits for the peer's close_notify and can hang).
TLS_CLOSE_GRACE = 10.0


def tls_shutdown_write(transport: Any) -> bool:
    """
    Send a TLS close_notify on C{transport} without closing it, so the peer
    sees the end of epcat's data and can go on sending (RFC 8446 section
    6.1).

    Application data written before comes first: Twisted's
    C{BufferingTLSTransport} holds small writes until the next reactor round
    (its C{_aggregator}), so they are flushed into the TLS layer before the
    alert.  Data the TLS layer itself still holds (C{_appSendBuffer}, writes
    made while it waited for the peer) would come after the alert, so then
    this does nothing and says so.

    @param transport: a C{TLSMemoryBIOProtocol} whose handshake is done, or a
        wrapper above one (epcat's PROXY header reader under
        C{haproxy:ssl:}).
    @return: C{True} if the alert was written, C{False} if the TLS layer
        would not do it (the caller should close instead, which flushes
        first).
    """
    from OpenSSL.SSL import WantReadError
    from twisted.protocols.policies import ProtocolWrapper
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    # (the alert goes to the transport under the TLS layer, not through a
    # wrapper above it)
    while isinstance(transport, ProtocolWrapper) and not isinstance(
        transport, TLSMemoryBIOProtocol
    ):
        transport = transport.transport
    try:
        aggregator = transport.__dict__.get("_aggregator")
        if aggregator is not None:
            aggregator.flush()
        if getattr(transport, "_appSendBuffer", None):
            return False
        connection = transport.getHandle()
        connection.shutdown()
        while True:
            try:
                alert = connection.bio_read(65536)
            except WantReadError:
                break
            if not alert:
                break
            transport.transport.write(alert)
    except Exception:
        return False
    return True


def producer_of(transport: Any) -> Any:
    """
    What to register as the streaming producer for C{transport}'s bytes:
    the transport itself when it can be paused, else the transport it wraps
    (some plugin transports, e.g. autobahn's WebSocket wrapper, are no
    C{IPushProducer} themselves), else a stand-in that cannot pause.
    """
    for candidate in (transport, getattr(transport, "transport", None)):
        if candidate is not None and all(
            hasattr(candidate, m) for m in ("pauseProducing", "resumeProducing", "stopProducing")
        ):
            return candidate
    return _Unpausable(transport)


@implementer(IPushProducer)
class _Unpausable:
    """
    A producer for a transport that cannot be paused: backpressure cannot
    reach it; stopping it closes it.
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self._transport.loseConnection()


def _abort(transport: Any) -> None:
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


def release_stdout() -> None:
    """
    Really close stdout once StandardIO's write side has ended, so whoever
    reads it sees EOF now rather than when epcat exits: Twisted's
    C{ProcessWriter} stops writing but leaves file descriptor 1 open (it
    closes pipes only for child processes it spawned).  /dev/null takes its
    place, so that fd 1 is never reused by something else.
    """
    import os

    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    except OSError:
        pass


def send_at_once(transport: Any) -> None:
    """
    Turn Nagle's algorithm off (C{TCP_NODELAY}) on a TCP transport, as
    haproxy and nginx's stream proxy do for every connection they relay: a
    relay passes each read on at once, and Nagle's algorithm would only hold
    back the last partial segment of a write (or of a TLS record) until
    what went before it is acknowledged.  Through TLS and C{haproxy:}
    wrappers it reaches the TCP transport underneath (Twisted's
    C{ProtocolWrapper} passes unknown attributes on).

    @param transport: a connected transport.  Those with no
        C{setTcpNoDelay} (stdio, processes) are left alone, as are epcat's
        lean sockets, made with it; a UNIX socket (Twisted's UNIX transports
        are its TCP ones underneath) refuses the option, which is ignored.
    """
    if getattr(transport, "made_with_nodelay", False):
        return
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is None:
        return
    try:
        set_no_delay(True)
    except OSError:
        pass


@implementer(IHalfCloseableProtocol)
class RelaySide(Protocol):
    """
    One side of a relayed pair: the protocol of the inbound connection, the
    outbound connection, or stdin/stdout.

    @ivar pair: the L{Pair} this side belongs to.
    @ivar role: C{"inbound"} or C{"outbound"}; the first and second side.
    @ivar half_close: how this side's transport half-closes (see
        L{epcat.endpoints.half_close_mode}).
    @ivar peer: the other side once both are connected, else L{None}.
    @ivar bytes_received: bytes read from this side's transport.
    @ivar read_ended: no more bytes will come from this side.
    @ivar write_ended: epcat has ended (or given up on) writing to this side.
    @ivar lost: the connection is gone.
    """

    # (two sides are made for every connection: slots keep them small;
    # Protocol's own attributes included, so no instance dict is needed
    # unless zope.interface's alsoProvides adds one)
    __slots__ = (
        "transport", "connected", "pair", "role", "half_close", "peer", "bytes_received",
        "read_ended", "write_ended", "lost", "lost_reason", "handshake_done", "tls_record",
        "is_client", "connected_at", "transform", "_held", "_held_size", "_paused_for_hold",
        "_tls_shutdown_wanted", "_write_shutdown_requested", "write_shutdown_sent",
        "_write_gone", "_close_timer",
    )

    def __init__(self, pair: Pair, role: str, half_close: str) -> None:
        if half_close == HALF_CLOSE_TLS:
            # Only TLS sides listen for the handshake.  Twisted's client
            # endpoints wrap the protocol in _WrappingProtocol, which copies
            # these interfaces with directlyProvides() in a loop, so the last
            # one wins: a protocol providing both IHalfCloseableProtocol and
            # IHandshakeListener loses half-close on tcp:/unix: clients.
            alsoProvides(self, IHandshakeListener)
        self.transport: Any = None
        self.connected = 0
        self.pair = pair
        self.role = role
        self.half_close = half_close
        self.peer: RelaySide | None = None
        self.bytes_received = 0
        self.read_ended = False
        self.write_ended = False
        self.lost = False
        self.lost_reason: Failure | None = None
        self.handshake_done = False
        #: TLS sides: verification errors OpenSSL reported (epcat.tlsinfo)
        self.tls_record: Any = None
        #: epcat connected out on this side (it is the TLS client)
        self.is_client = role == "outbound"
        self.connected_at: float | None = None
        #: applied to every chunk read from this side (e.g. --crlf on stdin)
        self.transform: Callable[[bytes], bytes] | None = None
        self._held: list[bytes] | None = None  # (made when something is held)
        self._held_size = 0
        self._paused_for_hold = False
        self._tls_shutdown_wanted = False
        self._write_shutdown_requested = False
        #: epcat ended its direction towards this side (FIN or close_notify)
        #: before the connection went away
        self.write_shutdown_sent = False
        self._write_gone = False
        self._close_timer: Any = None

    # IProtocol

    def connectionMade(self) -> None:
        self.connected_at = self.pair.reactor.seconds()
        send_at_once(self.transport)
        if self.half_close == HALF_CLOSE_TLS:
            self.tls_record = tlsinfo.watch(self.transport)
        self.pair._side_connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.bytes_received += len(data)
        self.pair.last_activity = self.pair.reactor.seconds()
        if self.transform is not None:
            data = self.transform(data)
        if self.pair.tap is not None:
            self.pair.tap.chunk(self.pair, self, data, self.pair.pairs_open())
        peer = self.peer
        if peer is not None:
            if self.pair.splice_waiting:
                # the first byte of a fast-path pair: the engine takes it
                self._held = [data]
                self._held_size = len(data)
                self.pair._start_splice()
                return
            if not peer.write_ended:
                peer.transport.write(data)
            return
        if self._held is None:
            self._held = []
        self._held.append(data)
        self._held_size += len(data)
        if self._held_size > HOLD_LIMIT and not self._paused_for_hold:
            self._paused_for_hold = True
            self.transport.pauseProducing()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        if self.lost:
            return
        self.lost = True
        self.lost_reason = reason
        # (a fast-path pair that never moved a byte ends on the normal path)
        self.pair.splice_waiting = False
        if self.tls_record is not None:
            self.tls_record.remember_peer(self.transport)
        if self._close_timer is not None:
            self._cancel_close_timer()
        self.write_ended = True
        if not self.read_ended:
            self.read_ended = True
            self.pair._read_ended(self)
        self.pair._side_lost(self)

    # IHalfCloseableProtocol

    def readConnectionLost(self) -> None:
        if self.read_ended:
            return
        error = pending_socket_error(self.transport)
        if error:
            # A reset that Twisted reported as a clean end of input.
            self.connectionLost(Failure(ConnectionLost(os.strerror(error))))
            self.transport.abortConnection()
            return
        if self.pair.splice_waiting:
            self.read_ended = True  # (the engine passes the EOF on)
            self.pair._start_splice()
            return
        self.read_ended = True
        self.pair._read_ended(self)

    def writeConnectionLost(self) -> None:
        # After our own loseWriteConnection this is the confirmation; without
        # one, the consumer went away (EPIPE on stdout): nothing more can be
        # delivered here, so the pair is over.
        self._write_gone = True
        if not self._write_shutdown_requested or self.write_lost:
            self.write_ended = True
            self.pair.close()
            return
        if isinstance(self.transport, StandardIO):
            release_stdout()
        if self.read_ended:
            self._close()

    # IHandshakeListener

    def handshakeCompleted(self) -> None:
        if self.is_client:
            error = tlsinfo.check_identity(self.transport)
            if error is not None:
                self.transport.failVerification(Failure(error))
                return
        self.handshake_done = True
        self.pair._handshake_completed(self)
        if self._tls_shutdown_wanted:
            # TLSMemoryBIOProtocol flushes writes it buffered during the
            # handshake only after this callback returns.
            self.pair.reactor.callLater(0, self._tls_shutdown_write)

    # flow between the sides

    def _release_held(self) -> None:
        """
        Called once both sides are joined: deliver what this side sent early,
        then its EOF if that came early too.
        """
        held, self._held, self._held_size = self._held, None, 0
        self._resume_after_hold()
        peer = self.peer
        assert peer is not None
        if held and not peer.write_ended:
            peer.transport.writeSequence(held)

    def _resume_after_hold(self) -> None:
        """
        Read again if this side was paused until the join (see
        L{pause_until_joined}) or for holding too much.
        """
        if self._paused_for_hold and not self.lost:
            self._paused_for_hold = False
            self.transport.resumeProducing()

    def _take_held(self) -> list[bytes]:
        """
        Hand over what this side sent before the join (to the splice engine).
        """
        held, self._held, self._held_size = self._held, None, 0
        self._paused_for_hold = False
        return held or []

    def held_bytes(self) -> int:
        """Bytes read from this side and not yet written to the other."""
        return self._held_size

    @property
    def write_lost(self) -> bool:
        """
        Did this side's consumer go away before everything epcat wrote to it
        was delivered (C{EPIPE} on stdout: a reader such as C{head} that
        exits), with or without a half-close requested?  What was still to
        be written to it is lost.
        """
        reason = getattr(self.transport, "write_lost_reason", None)
        if reason is not None and not reason.check(ConnectionDone):
            return True
        return self._write_gone and not self._write_shutdown_requested

    def pause_until_joined(self) -> None:
        """
        Stop reading from this side until the other side is connected (while
        the outbound connection is being retried, or the pair waits for a
        free slot under --max-connections).
        """
        if not self._paused_for_hold and not self.lost and self.peer is None:
            self._paused_for_hold = True
            self.transport.pauseProducing()

    def shutdown_write(self) -> None:
        """
        The other side will send nothing more: end the direction towards this
        side, the way this side's transport can, after everything written so
        far has been flushed.
        """
        if self.write_ended or self.lost:
            return
        self.write_ended = True
        self._write_shutdown_requested = True
        self.transport.unregisterProducer()
        if self.half_close == HALF_CLOSE_SHUTDOWN:
            self.transport.loseWriteConnection()
        elif self.half_close == HALF_CLOSE_TLS:
            if self.handshake_done:
                self._tls_shutdown_write()
            else:
                self._tls_shutdown_wanted = True
        else:
            self._close()
        if self.read_ended:
            self._close()

    def _tls_shutdown_write(self) -> None:
        """
        Half-close a TLS connection: send close_notify and keep reading, as
        RFC 8446 section 6.1 allows ("Each party MUST send a close_notify alert
        before closing its write side of the connection") and ghostunnel does.

        Twisted's TLS transport has no half-close (twisted#5341: its
        C{loseWriteConnection} bypasses TLS), so this drives the pyOpenSSL
        connection through its public handle: C{shutdown()} writes the alert
        into the memory BIO, and the alert is written to the TCP transport
        underneath.  Twisted then reports the peer's own close_notify as the
        end of the connection.
        """
        if self.lost:
            return
        if not tls_shutdown_write(self.transport):
            # The TLS layer would not half-close: fall back to closing after
            # everything written has been flushed.
            self._close()
            return
        self.write_shutdown_sent = True
        if self.read_ended:
            self._close()

    def _close(self) -> None:
        """
        Close this side once everything written to it has been flushed.
        """
        if self.lost:
            return
        self.write_ended = True
        transport = self.transport
        if transport is None:
            return
        transport.unregisterProducer()
        transport.loseConnection()
        if self._write_gone and isinstance(transport, StandardIO):
            # StandardIO reports connectionLost only from its writer; once
            # stdout has closed on its own it never will (see _posixstdio).
            self.connectionLost(Failure(ConnectionDone()))
            return
        if self.half_close == HALF_CLOSE_TLS and self._close_timer is None:
            self._close_timer = self.pair.reactor.callLater(
                TLS_CLOSE_GRACE, self._abort_after_grace
            )

    def _abort_after_grace(self) -> None:
        self._close_timer = None
        if not self.lost and self.transport is not None:
            _abort(self.transport)

    def _cancel_close_timer(self) -> None:
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None

    def abort(self) -> None:
        """
        Close this side at once, discarding what is not yet written.
        """
        if self.lost or self.transport is None:
            return
        self.write_ended = True
        self.transport.unregisterProducer()
        _abort(self.transport)


class StdioTransport(StandardIO):
    """
    Twisted's L{StandardIO}, remembering why its writer ended: Twisted tells
    a half-closeable protocol C{writeConnectionLost()} without the reason,
    the same for the end of a requested half-close (C{ConnectionDone}) and
    for a reader that went away with bytes still to write (C{EPIPE}:
    C{ConnectionLost}); L{RelaySide.write_lost} tells them apart.

    @ivar write_lost_reason: the L{Failure} the writer ended with, or
        L{None} while it runs.
    """

    write_lost_reason: Failure | None = None
    _write_closing = False

    def loseWriteConnection(self) -> None:
        self._write_closing = True
        super().loseWriteConnection()

    def loseConnection(self) -> None:
        self._write_closing = True
        super().loseConnection()

    def childConnectionLost(self, fd: str, reason: Failure) -> None:
        if fd == "write" and self.write_lost_reason is None:
            if not self._write_closing and reason.check(ConnectionDone):
                # (Twisted's pipe writer watches for its reader's end, and
                # reports it as a clean one, ConnectionDone: a reader such as
                # head that exits; epcat asked for no end)
                reason = Failure(ConnectionLost("the reader went away"))
            self.write_lost_reason = reason
        super().childConnectionLost(fd, reason)


def _no_event(event: str, pair: Pair, side: RelaySide | None) -> None:
    pass


class Pair:
    """
    Two L{RelaySide}s joined: each side's bytes are written to the other,
    EOF on one side ends the direction towards the other, and the pair is
    done when both connections are gone.

    @ivar conn_id: a number that names this pair in logs.
    @ivar first_closer: the role of the side whose input ended first.
    """

    # (a pair is made for every connection: slots keep it small)
    __slots__ = (
        "reactor", "conn_id", "idle_timeout", "half_close_timeout", "close_reason", "_timers",
        "inbound", "outbound", "started_at", "last_activity", "first_closer", "joined",
        "inbound_description", "outbound_description", "stdio_inbound", "quiet", "preamble",
        "eof_closes", "tap", "all_pairs", "fast_path", "splice", "outbound_failure", "attempt",
        "internal_error",
        "handshake_timer", "splice_waiting", "_on_event", "_finished", "_done", "_done_fired",
    )

    def __init__(
        self,
        reactor: Any,
        conn_id: int,
        inbound_half_close: str = HALF_CLOSE_SHUTDOWN,
        outbound_half_close: str = HALF_CLOSE_SHUTDOWN,
        on_event: Callable[[str, Pair, RelaySide | None], None] | None = None,
        idle_timeout: float | None = None,
        half_close_timeout: float | None = None,
    ) -> None:
        """
        @param reactor: provides C{IReactorTime} (and is what the sides'
            transports run on).
        @param conn_id: the number that names this pair in logs.
        @param inbound_half_close: how the first side half-closes.
        @param outbound_half_close: how the second side half-closes.
        @param on_event: called as C{on_event(event, pair, side)} for
            C{accepted}, C{connected}, C{handshake}, C{failed}, C{closing},
            C{fast-path} (the fast-path engine starts), C{fast-path-off}
            (it gave up: no pipe could be made) and C{closed}.
        @param idle_timeout: seconds with no byte moved either way after
            which the pair is closed (socat -T), or L{None}.
        @param half_close_timeout: seconds the second direction may stay open
            after the first has ended (socat -t), or L{None}.
        """
        self.reactor = reactor
        self.conn_id = conn_id
        self.idle_timeout = idle_timeout
        self.half_close_timeout = half_close_timeout
        self.close_reason: str | None = None
        self._timers: dict[str, Any] = {}
        self.inbound = RelaySide(self, "inbound", inbound_half_close)
        self.outbound = RelaySide(self, "outbound", outbound_half_close)
        #: (made when someone asks for it: most pairs are never waited on)
        self._done: Deferred[Pair] | None = None
        self._done_fired = False
        self.started_at = reactor.seconds()
        self.last_activity = self.started_at
        self.first_closer: str | None = None
        self.joined = False
        #: descriptions of the two sides, for logs (L{None}: stdin/stdout)
        self.inbound_description: str | None = None
        self.outbound_description: str | None = None
        #: the inbound side is stdin/stdout
        self.stdio_inbound = False
        #: failures are not worth reporting (epcat is stopping)
        self.quiet = False
        #: returns bytes to write to the outbound side before anything
        #: relayed (a PROXY header)
        self.preamble: Callable[[], bytes] | None = None
        #: what went wrong inside epcat while joining the sides, if anything
        self.internal_error: Failure | None = None
        #: EOF from either side ends the pair (a --reconnect tunnel, where
        #: one leg ending means the tunnel dropped)
        self.eof_closes = False
        #: sees every relayed chunk (-x, --dump, --pcap): an L{epcat.tap.Tap}
        self.tap: Any = None
        #: every open pair, when this one is one of many (for the dump's
        #: connection ids)
        self.all_pairs: Collection[Pair] | None = None
        #: may the fast path be used (nothing needs to see the bytes)?
        self.fast_path = False
        #: the L{epcat.splice.SpliceEngine} while it relays this pair
        self.splice: Any = None
        #: joined for the fast path, which starts at the first byte or
        #: EOF (an idle pair costs no engine)
        self.splice_waiting = False
        self.outbound_failure: Failure | None = None
        #: the outbound attempt in progress: anything with cancel() (a
        #: Deferred, or an epcat.lean attempt)
        self.attempt: Any = None
        #: the timer of an outbound TLS handshake (epcat.run)
        self.handshake_timer: Any = None
        self._on_event = on_event or _no_event
        self._finished = False

    @property
    def done(self) -> Deferred[Pair]:
        """
        A L{Deferred} that fires with this pair when both sides are gone (or
        one side is gone and the other never came).
        """
        done = self._done
        if done is None:
            done = self._done = Deferred()
            if self._done_fired:
                done.callback(self)
        return done

    def pairs_open(self) -> int:
        """How many pairs are open, this one included."""
        return 1 if self.all_pairs is None else len(self.all_pairs)

    # the outbound attempt

    def outbound_failed(self, failure: Failure) -> None:
        """
        The outbound connection could not be made: close the inbound side
        (after flushing anything written to it) and finish.

        @param failure: why the attempt failed.
        """
        self.attempt = None
        self.outbound_failure = failure
        self._on_event("failed", self, self.outbound)
        if self.inbound.connected_at is not None and not self.inbound.lost:
            self.inbound._close()
        self._maybe_finish()

    # events from the sides

    def _side_connected(self, side: RelaySide) -> None:
        self._on_event("connected" if side is self.outbound else "accepted", self, side)
        both = self.inbound.connected_at is not None and self.outbound.connected_at is not None
        if both and not self.joined:
            # (the event handler above may have joined already: attaching
            # stdin/stdout connects the other side synchronously)
            try:
                self._join()
            except Exception:
                # a bug of epcat's (a PROXY header that could not be built,
                # say) costs this pair only, and is said: both sides are
                # closed rather than left open for ever
                self.internal_error = Failure()
                self._on_event("internal-error", self, None)
                self.quiet = True  # (said: the aborted sides add nothing)
                self.attempt = None  # (succeeding now: nothing to cancel)
                self.abort()

    def _handshake_completed(self, side: RelaySide) -> None:
        self._on_event("handshake", self, side)

    def _join(self) -> None:
        a, b = self.inbound, self.outbound
        if a.lost and b.lost:
            self._maybe_finish()
            return
        self.joined = True
        if self.tap is not None:
            self.tap.joined(self)
        if self.idle_timeout is not None:
            self._timers["idle"] = self.reactor.callLater(self.idle_timeout, self._check_idle)
        a.peer, b.peer = b, a
        if self._splice_ok():
            if self.preamble is not None:
                a._held = [self.preamble(), *(a._held or ())]  # written first
            if a._held or b._held or a.read_ended or b.read_ended:
                self._start_splice()
            else:
                self.splice_waiting = True  # until the first byte or EOF
                for side in (a, b):
                    if side._paused_for_hold:
                        # (a side paused until the join must read that byte)
                        side._resume_after_hold()
            return
        if self.preamble is not None and not b.lost:
            b.transport.write(self.preamble())
        self._relay_in_userspace()
        for side in (a, b):
            side._release_held()
        for side in (a, b):
            if side.read_ended:
                side.peer.shutdown_write()
        for side in (a, b):
            if side.lost:
                self._side_lost(side)

    def _start_splice(self) -> None:
        """
        Hand the joined pair to the fast-path engine, with what either side
        has read so far (see L{RelaySide.dataReceived}).
        """
        self.splice_waiting = False
        self.splice = zero_copy.SpliceEngine(self.reactor, self)
        self._on_event("fast-path", self, None)
        self.splice.start()

    def _relay_in_userspace(self, resume: bool = False) -> None:
        """
        The normal path: each transport a streaming producer for the other.

        @param resume: the transports were stopped (by the splice engine,
            which could not go on) and must read again.
        """
        a, b = self.inbound, self.outbound
        if resume:
            self._on_event("fast-path-off", self, None)
        if a.lost or b.lost:
            return
        a.transport.registerProducer(producer_of(b.transport), True)
        b.transport.registerProducer(producer_of(a.transport), True)
        if resume:
            for side in (a, b):
                if not side.read_ended:
                    side.transport.startReading()

    def _splice_ok(self) -> bool:
        if not self.fast_path:
            return False
        a, b = self.inbound, self.outbound
        return (
            zero_copy.available()
            and not a.lost
            and not b.lost
            and a.half_close == HALF_CLOSE_SHUTDOWN
            and b.half_close == HALF_CLOSE_SHUTDOWN
            and a.transform is None
            and b.transform is None
            and zero_copy.eligible(a.transport)
            and zero_copy.eligible(b.transport)
        )

    def _half_close_started(self) -> None:
        """
        One direction has ended: the half-close timeout, if any, runs now.
        """
        if (
            self.half_close_timeout is not None
            and not self._finished
            and "half-close" not in self._timers
        ):
            self._timers["half-close"] = self.reactor.callLater(
                self.half_close_timeout, self._half_close_expired
            )

    def _read_ended(self, side: RelaySide) -> None:
        if self.tap is not None:
            self.tap.ended(self, side)
        if self.first_closer is None:
            self.first_closer = side.role
            self._half_close_started()
        if self.inbound.read_ended and self.outbound.read_ended:
            # Both directions have ended: what is left is flushing and
            # closing, which the half-close timeout is not about.
            timer = self._timers.pop("half-close", None)
            if timer is not None and timer.active():
                timer.cancel()
        if side.peer is None:
            return
        side.peer.shutdown_write()
        if side.write_ended and not side.lost:
            side._close()
        if self.eof_closes:
            self.close()

    def _side_lost(self, side: RelaySide) -> None:
        peer = side.peer
        if peer is None:
            other = self.outbound if side is self.inbound else self.inbound
            if other.connected_at is None:
                # The other side never came up.  Keep the attempt going only
                # if this side left bytes to deliver; else stop dialling.
                if (
                    side is self.inbound
                    and not side.held_bytes()
                    and self.attempt is not None
                ):
                    attempt, self.attempt = self.attempt, None
                    attempt.cancel()
                self._maybe_finish()
                return
            return
        # Nothing more can be delivered to this side: once what this side sent
        # has been flushed to the peer, the peer is closed too.
        peer._close()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._finished:
            return
        a, b = self.inbound, self.outbound
        if (
            not (a.lost or a.connected_at is None)
            or not (b.lost or b.connected_at is None)
            or self.attempt is not None
        ):
            return  # (a side still open, or the outbound attempt going on)
        self._finished = True
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        if self.tap is not None:
            self.tap.closed(self)
        self._on_event("closed", self, None)
        self._done_fired = True
        if self._done is not None:
            self._done.callback(self)

    def let_go(self) -> None:
        """
        Drop the links that make the pair, its sides and their transports a
        reference cycle (each side's pair and peer; a PROXY header's
        closure), so that they are freed with the last outside reference
        rather than at the garbage collector's next pass.  A relay makes a
        pair per connection, and the collections their cycles brought on
        were about a tenth of a short connection's cost.

        Only for a pair that has finished (C{done} has fired), once every
        handler that saw it finish has returned: a side still inside its
        C{connectionLost} goes on using its pair.  L{epcat.run.Runner} lets
        its finished pairs go at its next accept.
        """
        assert self._finished
        for side in (self.inbound, self.outbound):
            side.peer = None
            side.pair = None
        self.preamble = None
        self.handshake_timer = None

    # timeouts

    def _check_idle(self) -> None:
        idle_for = self.reactor.seconds() - self.last_activity
        assert self.idle_timeout is not None
        if idle_for >= self.idle_timeout:
            self.close(f"idle timeout: nothing moved for {self.idle_timeout:g} s")
        else:
            self._timers["idle"] = self.reactor.callLater(
                self.idle_timeout - idle_for, self._check_idle
            )

    def _half_close_expired(self) -> None:
        self.close(
            f"half-close timeout: the other direction did not end within "
            f"{self.half_close_timeout:g} s"
        )

    # control from outside

    def close(self, reason: str | None = None) -> None:
        """
        Close both sides after flushing what has been written to each, and
        stop any outbound attempt in progress.

        @param reason: why, for the log (e.g. an idle timeout).
        """
        if reason is not None and self.close_reason is None and not self._finished:
            self.close_reason = reason
            self._on_event("closing", self, None)
        if self.splice is not None:
            self.splice.stop()
        if self.attempt is not None:
            attempt, self.attempt = self.attempt, None
            attempt.cancel()
        for side in (self.inbound, self.outbound):
            if side.connected_at is not None:
                side._close()
        self._maybe_finish()

    def abort(self) -> None:
        """
        Close both sides at once.
        """
        if self.splice is not None:
            self.splice.stop()
        if self.attempt is not None:
            attempt, self.attempt = self.attempt, None
            attempt.cancel()
        for side in (self.inbound, self.outbound):
            if side.connected_at is not None:
                side.abort()
        self._maybe_finish()

    @property
    def duration(self) -> float:
        """Seconds since the pair was created."""
        return self.reactor.seconds() - self.started_at


def pending_socket_error(transport: Any) -> int:
    """
    The error pending on a transport's socket (C{SO_ERROR}), taking it.

    Twisted's C{_PollLikeMixin._doReadOrWrite} reads C{EPOLLERR} or
    C{EPOLLHUP} without C{EPOLLIN} on a descriptor it is reading as a clean
    end of input (C{ConnectionDone}, C{readConnectionLost}).  Linux can wake
    epoll for a TCP reset in exactly that state: C{tcp_done_with_error} sets
    C{sk_err} and reports it before C{tcp_done} marks the receive side shut,
    so a reset after the last byte has been read comes up as a FIN about one
    time in twenty on loopback.  The pending C{ECONNRESET} is still there to
    ask for.

    @param transport: any transport; those without a C{socket} attribute
        (stdio, processes, TLS over a wrapped transport) have no error to
        report.
    @return: an C{errno} value (C{ECONNRESET}), or 0.
    """
    sock = getattr(transport, "socket", None)
    if sock is None:
        return 0
    try:
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
    except OSError:
        return 0


class SideFactory(Factory):
    """
    A factory that hands out one pre-built L{RelaySide}: what
    C{endpoint.connect()} needs for the outbound side of a L{Pair}.
    """

    #: no "Starting factory" log line for every connection
    noisy = False

    def __init__(self, side: RelaySide) -> None:
        self.side = side

    def buildProtocol(self, addr: Any) -> RelaySide:
        return self.side
