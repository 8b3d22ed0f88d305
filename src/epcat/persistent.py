# -*- test-case-name: tests.e2e.test_lifecycle_e2e -*-
"""
C{epcat connect CLIENT --reconnect}: stdin/stdout outlive the connections
that C{ClientService} keeps re-establishing.

L{StdioHub} is the protocol on stdin/stdout; each connection C{ClientService}
makes is a L{Leg}.  While no leg is up, stdin is paused and what it already
gave is held, then delivered to the next leg.  The run ends when stdin has
ended and the leg that carried its EOF has closed, or when stdout goes away.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from epcat.endpoints import HALF_CLOSE_SHUTDOWN, HALF_CLOSE_TLS
from epcat.relay import HOLD_LIMIT, tls_shutdown_write
from epcat.ui import UI, format_address


@implementer(IPushProducer)
class _Membrane:
    """
    Stands for stdin as the producer of a leg's transport: a transport that
    is lost calls C{stopProducing} on its producer, which must not close
    stdin, since the next leg still needs it.
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def pauseProducing(self) -> None:
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class Leg(Protocol):
    """
    One connection made by C{ClientService} for a L{StdioHub}.
    """

    def __init__(self, hub: StdioHub) -> None:
        self.hub = hub
        self.write_ended = False
        self.handshake_done = False
        self.tls_record: Any = None
        self._shutdown_wanted = False
        if hub.leg_half_close == HALF_CLOSE_TLS:
            alsoProvides(self, IHandshakeListener)

    def connectionMade(self) -> None:
        if self.hub.leg_half_close == HALF_CLOSE_TLS:
            from epcat import tlsinfo

            self.tls_record = tlsinfo.watch(self.transport)
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.hub.ui.info(
            "connected",
            f"connected to {format_address(peer)} from {format_address(host)}",
            peer=format_address(peer),
            local=format_address(host),
        )
        self.hub.attach(self)

    def handshakeCompleted(self) -> None:
        from epcat.tlsinfo import check_identity

        error = check_identity(self.transport)
        if error is not None:
            self.transport.failVerification(Failure(error))
            return
        self.handshake_done = True
        if self.hub.reporter is not None:
            self.hub.reporter.handshake(None, "outbound", "client", self.transport, self.tls_record)
        if self._shutdown_wanted:
            self.hub.reactor.callLater(0, self._tls_shutdown)

    def dataReceived(self, data: bytes) -> None:
        self.hub.deliver(data)

    def readConnectionLost(self) -> None:
        # The server ended this connection's data; for a persistent client
        # that ends the connection: close it (after flushing) and reconnect.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:
        self.hub.detach(self, reason)

    def end_write(self) -> None:
        """
        stdin has ended: end the direction towards the server the way this
        transport can.
        """
        if self.write_ended:
            return
        self.write_ended = True
        self.transport.unregisterProducer()
        mode = self.hub.leg_half_close
        if mode == HALF_CLOSE_SHUTDOWN:
            self.transport.loseWriteConnection()
        elif mode == HALF_CLOSE_TLS:
            if self.handshake_done:
                self._tls_shutdown()
            else:
                self._shutdown_wanted = True
        else:
            self.transport.loseConnection()

    def _tls_shutdown(self) -> None:
        if not tls_shutdown_write(self.transport):
            self.transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class StdioHub(Protocol):
    """
    The protocol on stdin/stdout for C{connect CLIENT --reconnect}.

    @ivar done: fires with exit status 0 when the run is over.
    @ivar service: the C{ClientService} to stop at the end.
    @ivar on_leg_lost: called after each leg is lost.
    """

    def __init__(self, reactor: Any, ui: UI, leg_half_close: str, done: Deferred[int]) -> None:
        self.reactor = reactor
        self.ui = ui
        self.leg_half_close = leg_half_close
        self.done = done
        self.leg: Leg | None = None
        self.service: Any = None
        #: the Reporter, for -v TLS detail
        self.reporter: Any = None
        self.on_leg_lost: Callable[[], None] | None = None
        self.transform: Callable[[bytes], bytes] | None = None
        self.stdin_ended = False
        self._held: list[bytes] = []
        self._held_size = 0
        self._paused = False
        self._stdout_gone = False
        self._stdio_lost = False
        self._finishing = False

    def leg_factory(self) -> Factory:
        hub = self

        class LegFactory(Factory):
            noisy = False

            def buildProtocol(self, addr: Any) -> Leg:
                return Leg(hub)

        return LegFactory()

    # stdin/stdout

    def dataReceived(self, data: bytes) -> None:
        if self.transform is not None:
            data = self.transform(data)
        leg = self.leg
        if leg is not None and not leg.write_ended:
            leg.transport.write(data)
            return
        self._held.append(data)
        self._held_size += len(data)
        if self._held_size > HOLD_LIMIT:
            self._pause()

    def readConnectionLost(self) -> None:
        # The EOF (and anything held) goes to the current leg, or the next
        # one to connect; the run ends when that leg closes.
        self.stdin_ended = True
        if self.leg is not None:
            self.leg.end_write()

    def writeConnectionLost(self) -> None:
        self._stdout_gone = True
        self.finish()  # stdout went away: nobody reads what comes

    def connectionLost(self, reason: Failure = None) -> None:
        self._stdio_lost = True
        self.finish()

    def deliver(self, data: bytes) -> None:
        self.transport.write(data)

    # legs

    def attach(self, leg: Leg) -> None:
        self.leg = leg
        leg.transport.registerProducer(_Membrane(self.transport), True)
        self.transport.registerProducer(leg.transport, True)
        held, self._held, self._held_size = self._held, [], 0
        if held:
            leg.transport.writeSequence(held)
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        if self.stdin_ended:
            leg.end_write()

    def detach(self, leg: Leg, reason: Failure | None) -> None:
        if self.leg is not leg:
            return
        self.leg = None
        self.transport.unregisterProducer()
        if self.stdin_ended:
            self.finish()
            return
        self.ui.info("disconnected", "connection lost; reconnecting")
        self._pause()
        if self.on_leg_lost is not None:
            self.on_leg_lost()

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def finish(self) -> None:
        """
        The run is over: stop reconnecting, close stdout after flushing, exit 0.
        """
        if not self._finishing:
            self._finishing = True
            if self.leg is not None:
                self.leg.transport.unregisterProducer()
                self.leg.transport.loseConnection()
            if self.service is not None:
                self.service.stopService()
            if not self._stdio_lost:
                self.transport.unregisterProducer()
                self.transport.loseConnection()
        # Exit only once stdout has been flushed and closed (StandardIO says
        # so with connectionLost, unless stdout had already gone).
        if (self._stdio_lost or self._stdout_gone) and not self.done.called:
            self.done.callback(0)
