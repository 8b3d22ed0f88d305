# -*- test-case-name: tests.unit.test_lean,tests.e2e.test_splice_e2e -*-
"""
Lean sockets: the accepting, connecting and reading that a relay of plain
stream sockets needs, without Twisted's per-connection machinery.

A pair whose two sides are plain sockets is relayed by the fast-path engine
(L{epcat.splice}), which moves the bytes itself; Twisted's C{tcp.Server} and
C{tcp.Client} then only accept, connect, read the first bytes and close, yet
building them (connectors, wrapping protocols, address resolution, logging
contexts, Deferreds) is most of what a short connection costs epcat.  Here
the same jobs are done on the same reactor, through the same interfaces:

  - L{accept_with_sockets}: a Twisted TCP or UNIX listening port (from
    C{serverFromString}, so every option and C{--workers} still apply) hands
    each accepted socket to its factory's protocol in a L{SocketTransport}.
  - L{TCPClient}: an C{IStreamClientEndpoint} for C{tcp:} to an IP address
    or a host name (looked up with the reactor's resolver, as Twisted does):
    a non-blocking C{connect(2)}, the result reported as Twisted's endpoints
    do (L{twisted.internet.error.ConnectError} subclasses from
    C{getConnectError}, C{ConnectingCancelledError} when cancelled), so
    L{epcat.dial} times out and retries it as any endpoint.
  - L{SocketTransport}: an C{ITCPTransport}-like transport that reads (until
    the engine takes the socket), writes with a buffer, half-closes and
    closes with Twisted's semantics (C{readConnectionLost} for a FIN,
    C{ConnectionLost} for an error, C{connectionLost} called from the
    reactor, never from inside C{loseConnection}).

TCP sockets, accepted or connected, get C{TCP_NODELAY}, as haproxy and
nginx's stream proxy set it: a relay passes each read on at once, and
Nagle's algorithm would only hold back the last partial segment of a write
until what went before it is acknowledged (on loopback, copying UNIX->TCP,
it cost the relay about 7 % more CPU time per GB).

Used only where L{epcat.run} knows the pair will be spliced: both sides
plain TCP or UNIX sockets, nothing looking at the bytes (see
L{epcat.run.Runner._lean}).
"""

from __future__ import annotations

import _socket
import errno
import os
import select
import socket
import struct
from typing import Any

from twisted.internet import defer, error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import (
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IReadWriteDescriptor,
)
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.python.failure import Failure
from zope.interface import implementer

#: bytes one read takes (Twisted's tcp.Connection reads 64 KiB too)
READ_SIZE = 65536

#: buffered bytes past which the registered producer is paused
WRITE_HIGH_WATER = 65536

#: SO_LINGER on, 0 seconds: close(2) resets the connection (struct linger)
_LINGER_RESET = struct.pack("ii", 1, 0)

#: errors of accept(2) that mean "no descriptor or memory for now"
_ACCEPT_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

#: errors of accept(2) about one connection that went away in the backlog
_ACCEPT_SKIP = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR)


def close_socket(sock: Any, reset: bool, shut: bool) -> None:
    """
    Close a connected socket as Twisted's C{tcp._SocketCloser} does,
    ignoring errors (the peer may be gone already).

    @param reset: abort: close with a reset (C{SO_LINGER} on, 0 seconds).
    @param shut: otherwise, shut both directions down first, so that the
        peer sees a FIN before any reset that C{close(2)} sends for bytes
        left unread.
    """
    try:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        elif shut:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def address_of(family: int, address: Any) -> Any:
    """
    A Twisted address object for an address as the socket module gives it.

    @param family: C{AF_INET}, C{AF_INET6} or C{AF_UNIX}.
    @param address: (host, port), (host, port, flowinfo, scope_id), or a
        path (C{str} or C{bytes}; empty for an unnamed UNIX socket).
    """
    if family == socket.AF_INET:
        return IPv4Address("TCP", address[0], address[1])
    if family == socket.AF_INET6:
        # (Twisted drops the scope from the host, as here)
        return IPv6Address("TCP", address[0].split("%", 1)[0], address[1])
    if isinstance(address, str):
        address = address.encode("utf-8", "surrogateescape")
    return UNIXAddress(address or None)


@implementer(IReadWriteDescriptor, IHalfCloseableDescriptor)
class SocketTransport:
    """
    A connected stream socket as a transport for one L{epcat.relay.RelaySide}.

    Reading: C{dataReceived} for each chunk read while reading is on (the
    splice engine turns it off when it takes the socket); EOF is
    C{readConnectionLost} (a half-close, as Twisted reports it to an
    C{IHalfCloseableProtocol}); a failed read is C{connectionLost} with
    L{error.ConnectionLost}.  Writing: C{write} sends at once and buffers
    what the socket does not take, pausing the registered producer past
    L{WRITE_HIGH_WATER} bytes.  Closing: C{loseConnection} flushes, then
    closes; C{abortConnection} closes at once; C{connectionLost} comes from
    the reactor, as with Twisted's transports.

    @ivar socket: the socket: a L{socket.socket}, or the C{_socket.socket}
        it is built on (what epcat's lean accepts and connects make: the
        same methods without the Python-level constructor and C{close}
        wrapper, which were a few per cent of a short connection).
    @ivar disconnected: the socket is closed.
    """

    #: the splice engine may take this transport's socket (L{epcat.splice.eligible})
    zero_copy = True

    __slots__ = (
        "reactor", "socket", "fd", "protocol", "family", "disconnected", "connected",
        "_peer", "_host", "_reading", "_writing", "_buffer", "_buffered", "_producer",
        "_paused_producer", "_closing", "_aborting", "_write_closing", "_write_closed",
        "_half_close", "_end", "_ended", "_read_closed",
    )

    def __init__(self, reactor: Any, sock: socket.socket, peer: Any = None,
                 family: int | None = None) -> None:
        """
        @param reactor: an C{IReactorFDSet} provider.
        @param sock: a connected, non-blocking stream socket.
        @param peer: the peer's Twisted address, if known.
        @param family: the socket's address family, if known (asking the
            socket makes an enum each time).
        """
        self.reactor = reactor
        self.socket = sock
        self.fd = sock.fileno()
        self.family = sock.family if family is None else family
        self.protocol: Any = None
        self.disconnected = False
        self.connected = 1
        self._peer = peer
        self._host: Any = None
        self._reading = False
        self._writing = False
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._producer: Any = None
        self._paused_producer = False
        self._closing = False
        self._aborting = False
        self._write_closing = False
        self._write_closed = False
        self._half_close = False
        #: the splice engine's end (L{epcat.splice._End}) while it owns the socket
        self._end: Any = None
        self._ended = False
        #: the peer's FIN has been read
        self._read_closed = False

    def attach(self, protocol: Any) -> None:
        """
        Give the transport its protocol and start reading: the protocol's
        C{makeConnection} runs (so its C{connectionMade}).
        """
        self.protocol = protocol
        self._half_close = IHalfCloseableProtocol.providedBy(protocol)
        self.startReading()
        protocol.makeConnection(self)

    # the reactor's side (IReadWriteDescriptor)

    def fileno(self) -> int:
        return -1 if self.disconnected else self.fd

    def logPrefix(self) -> str:
        return "epcat-socket"

    def doRead(self) -> Any:
        end = self._end
        if end is not None:
            end.doRead()
            return None
        try:
            data = self.socket.recv(READ_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            return CONNECTION_LOST
        if not data:
            return CONNECTION_DONE  # -> readConnectionLost (half-close)
        self.protocol.dataReceived(data)
        return None

    def doWrite(self) -> Any:
        end = self._end
        if end is not None:
            end.doWrite()
            return None
        while self._buffer:
            chunk = self._buffer[0]
            try:
                sent = self.socket.send(chunk)
            except BlockingIOError:
                return None
            except OSError:
                return CONNECTION_LOST
            self._buffered -= sent
            if sent < len(chunk):
                self._buffer[0] = chunk[sent:]
                return None
            self._buffer.pop(0)
        self.stopWriting()
        if self._paused_producer and self._producer is not None:
            self._paused_producer = False
            self._producer.resumeProducing()
        if self._closing:
            return CONNECTION_DONE
        if self._write_closing and not self._write_closed:
            self._shutdown_write()
        return None

    def read_now(self) -> None:
        """
        Read as if the reactor had just reported the socket readable (if
        this transport, or the engine that took it, is reading): nothing
        happens when there is nothing to read.
        """
        if self.disconnected or not (self._reading or self._end is not None):
            return
        why = self.doRead()
        if why is CONNECTION_DONE:
            self.readConnectionLost(Failure(why))
        elif why is not None:
            self.connectionLost(Failure(why))

    def readConnectionLost(self, reason: Failure) -> None:
        """
        The peer sent FIN (the reactor's C{IHalfCloseableDescriptor} call).
        """
        if self._end is not None:
            # (EPOLLHUP without EPOLLIN while the engine owns the socket)
            self._end.connectionLost(reason)
            return
        self.stopReading()
        self._read_closed = True
        if self._half_close:
            self.protocol.readConnectionLost()
        else:
            self.connectionLost(reason)

    def connectionLost(self, reason: Failure) -> None:
        """
        The connection is over: close the socket, tell the protocol.
        """
        if self.disconnected:
            return
        if self._end is not None:
            # (the reactor gave up on the socket while the engine owns it)
            self._end.connectionLost(reason)
            return
        self.disconnected = True
        self.connected = 0
        if self._reading:
            self.stopReading()
        if self._writing:
            self.stopWriting()
        self._buffer = []
        sock = self.socket
        # As Twisted's tcp._SocketCloser: an abort resets the connection
        # (SO_LINGER 1, 0); an orderly close shuts both directions down first,
        # so that the peer sees a FIN before any reset that close() sends
        # for bytes left unread -- unless the splice engine has already
        # ended both directions (nothing is left to read or to send).
        close_socket(sock, reset=self._aborting, shut=not self._ended)
        protocol, self.protocol = self.protocol, None
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                pass
        if protocol is not None:
            protocol.connectionLost(reason)

    # the splice engine's side

    def hand_over(self, end: Any) -> tuple[bool, bool]:
        """
        The splice engine takes the socket: from now on readiness goes to
        C{end}, whose interest starts as this transport's.

        @return: (registered for reading, registered for writing).
        """
        self._end = end
        interest = (self._reading, self._writing)
        self._reading = self._writing = False
        return interest

    def closing(self) -> None:
        """
        The engine has ended both directions (EOF read, C{shutdown(SHUT_WR)}
        sent) and is about to call C{connectionLost}: a C{loseConnection}
        from the protocol until then has nothing left to do, and the socket
        needs no shutdown before it is closed.
        """
        self._closing = True
        self._ended = True

    def take_back(self) -> None:
        """
        The engine is done with the socket (its interest already dropped).
        """
        self._end = None

    # reading

    def startReading(self) -> None:
        if not self._reading and not self.disconnected:
            self._reading = True
            self.reactor.addReader(self)

    def stopReading(self) -> None:
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)

    def startWriting(self) -> None:
        if not self._writing and not self.disconnected:
            self._writing = True
            self.reactor.addWriter(self)

    def stopWriting(self) -> None:
        if self._writing:
            self._writing = False
            self.reactor.removeWriter(self)

    # IPushProducer (the peer's backpressure)

    def pauseProducing(self) -> None:
        self.stopReading()

    def resumeProducing(self) -> None:
        if not self._closing:
            self.startReading()

    def stopProducing(self) -> None:
        self.loseConnection()

    # IConsumer

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer
        if self._buffered > WRITE_HIGH_WATER:
            self._paused_producer = True
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self._producer = None
        self._paused_producer = False

    # ITransport

    def write(self, data: bytes) -> None:
        if self.disconnected or self._closing or self._write_closing or not data:
            return
        if not self._buffer:
            try:
                sent = self.socket.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                # (the reactor reports the failure at the next read)
                return
            if sent == len(data):
                return
            data = data[sent:]
        self._buffer.append(bytes(data))
        self._buffered += len(data)
        self.startWriting()
        producer = self._producer
        if self._buffered > WRITE_HIGH_WATER and producer is not None and not self._paused_producer:
            self._paused_producer = True
            producer.pauseProducing()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """
        Close once everything written has been sent; C{connectionLost}
        follows from the reactor.
        """
        if self.disconnected or self._closing:
            return
        self._closing = True
        self.stopReading()
        if self._read_closed and self._write_closed and not self._buffer:
            # Both directions are shut down already: nothing to flush, and
            # the reactor would report the hung-up socket (EPOLLHUP, not
            # reading) as lost rather than closed.
            self.reactor.callLater(0, self.connectionLost, Failure(error.ConnectionDone()))
            return
        self.startWriting()  # (doWrite finds the buffer empty, or flushes it)

    def loseWriteConnection(self) -> None:
        """
        Half-close: C{shutdown(SHUT_WR)} once everything written has been
        sent, then the protocol's C{writeConnectionLost}.
        """
        if self.disconnected or self._write_closing:
            return
        self._write_closing = True
        self.startWriting()

    def _shutdown_write(self) -> None:
        self._write_closed = True
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if self._half_close and self.protocol is not None:
            self.protocol.writeConnectionLost()

    def abortConnection(self) -> None:
        """
        Close now, dropping what is not sent; C{connectionLost} with
        L{error.ConnectionAborted} follows from the reactor.
        """
        if self.disconnected or self._aborting:
            return
        self._aborting = self._closing = True
        self._buffer = []
        self._buffered = 0
        self.stopReading()
        self.stopWriting()
        self.reactor.callLater(0, self.connectionLost, Failure(error.ConnectionAborted()))

    def getPeer(self) -> Any:
        if self._peer is None:
            try:
                self._peer = address_of(self.family, self.socket.getpeername())
            except OSError:
                return address_of(self.family, ("", 0) if self.family != socket.AF_UNIX
                                   else "")
        return self._peer

    def getHost(self) -> Any:
        if self._host is None:
            try:
                self._host = address_of(self.family, self.socket.getsockname())
            except OSError:
                return address_of(self.family, ("", 0) if self.family != socket.AF_UNIX
                                  else "")
        return self._host

    #: its TCP socket was made with C{TCP_NODELAY} (L{accept_with_sockets},
    #: L{TCPClient}): L{epcat.relay} need not set it again
    made_with_nodelay = True

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(enabled))

    def getTcpNoDelay(self) -> bool:
        return bool(self.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(enabled))

    def getTcpKeepAlive(self) -> bool:
        return bool(self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))


# -- accepting


def accept_with_sockets(port: Any, on_exhausted: Any = None, handle: Any = None) -> bool:
    """
    Make a Twisted TCP or UNIX listening port give every accepted connection
    a L{SocketTransport} instead of a C{tcp.Server}/C{unix.Server}.

    The port keeps everything else (its socket, C{getHost}, C{stopReading},
    C{stopListening}, C{numberAccepts}); only its C{doRead} is replaced.  As
    in Twisted's, one read accepts up to C{port.numberAccepts} connections,
    and the factory's C{buildProtocol} may refuse one by returning L{None}.

    @param port: what C{listen} gave: a C{twisted.internet.tcp.Port} or
        C{twisted.internet.unix.Port}.
    @param on_exhausted: called with no argument when C{accept(2)} fails for
        want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM); the
        connection stays in the kernel's backlog, so the caller should stop
        reading from the port for a while.
    @param handle: if given, called as C{handle(sock, family, address)}
        with each accepted socket (still blocking), the peer's address as
        the socket module gives it, instead of building a protocol and a
        transport (L{epcat.fused}).
    @return: whether the port is of a kind this can serve (if not, it is
        left as it was).
    """
    from twisted.internet import tcp, unix

    if type(port) not in (tcp.Port, unix.Port):
        return False
    reactor = port.reactor
    listening = port.socket
    family = int(listening.family)
    kind = int(listening.type)
    factory = port.factory
    # (socket.accept() without its wrapper, which asks the listening socket
    # for its family and type, each an enum conversion, at every call)
    accept = listening._accept
    make = _socket.socket

    def doRead() -> None:
        for _ in range(port.numberAccepts):
            try:
                fd, address = accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in _ACCEPT_SKIP:
                    continue
                if e.errno in _ACCEPT_EXHAUSTED and on_exhausted is not None and (
                    _connection_waiting(listening)
                ):
                    on_exhausted()
                return
            sock = make(family, kind, 0, fd)
            if handle is not None:
                handle(sock, family, address)
                continue
            peer = address_of(family, address)
            protocol = factory.buildProtocol(peer)
            if protocol is None:
                sock.close()
                continue
            sock.setblocking(False)
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport = SocketTransport(reactor, sock, peer, family)
            transport.attach(protocol)
            # (a client that speaks first has usually sent its first bytes
            # by now: reading them at once saves a reactor round)
            transport.read_now()

    port.doRead = doRead
    return True


def _connection_waiting(listening: Any) -> bool:
    """
    Is a connection waiting in C{listening}'s backlog?  Linux's C{accept(2)}
    takes a descriptor before it looks at the backlog, so it fails with
    EMFILE at the descriptor limit even when nobody is waiting (as after the
    last connection of a batch): then there is nobody turned away to warn
    about, and the next connection's readiness tries again.

    @param listening: the listening socket.
    """
    poller = select.poll()  # (poll(2) takes no descriptor of its own)
    poller.register(listening.fileno(), select.POLLIN)
    return bool(poller.poll(0))


# -- connecting


def tcp_client(endpoint: Any) -> TCPClient | None:
    """
    The lean equivalent of a parsed C{tcp:} client endpoint (Twisted's
    C{TCP4ClientEndpoint}, or C{TCP6ClientEndpoint}), to an IP address or a
    host name.

    @param endpoint: what C{clientFromString} gave.
    @return: a L{TCPClient}, or L{None} for any other endpoint.
    """
    if type(endpoint) not in (TCP4ClientEndpoint, TCP6ClientEndpoint):
        return None
    host = getattr(endpoint, "_host", None)
    port = getattr(endpoint, "_port", None)
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    resolve = False
    if isIPAddress(host):
        family = socket.AF_INET
    elif isIPv6Address(host):
        if "%" in host:
            return None  # (a scoped address: Twisted's own path knows those)
        family = socket.AF_INET6
    elif host:
        # a host name: resolved for every connection with the reactor's
        # resolver, IPv4, as Twisted's TCP4ClientEndpoint does
        family = socket.AF_INET
        resolve = True
    else:
        return None
    return TCPClient(
        endpoint._reactor,
        family,
        host,
        port,
        getattr(endpoint, "_timeout", 30),
        getattr(endpoint, "_bindAddress", None),
        resolve=resolve,
    )


class TCPClient:
    """
    An C{IStreamClientEndpoint} for TCP to an IP address or a host name, whose connections
    are L{SocketTransport}s.

    C{connect(factory)} returns a L{defer.Deferred} that fires with the
    protocol once C{connect(2)} has completed and the protocol's
    C{makeConnection} has run; it errbacks with what Twisted's C{tcp:}
    endpoint gives: a L{error.ConnectError} subclass for the errno
    (C{getConnectError}), L{error.TimeoutError} after C{timeout} seconds,
    L{error.ConnectingCancelledError} when cancelled.
    """

    #: (L{epcat.run.Runner._dial} connects a lean endpoint without
    #: L{epcat.dial.Dial} when there is nothing to retry or time out)
    lean = True

    def __init__(self, reactor: Any, family: int, host: str, port: int,
                 timeout: float | None = 30, bind_address: Any = None,
                 resolve: bool = False) -> None:
        """
        @param family: C{AF_INET} or C{AF_INET6}.
        @param host: an IPv4 or IPv6 address literal, or with C{resolve} a
            host name, looked up for every connection with the reactor's
            C{resolve} (IPv4, as Twisted's C{connectTCP} does; its failure,
            e.g. L{error.DNSLookupError}, is the attempt's).
        @param port: the TCP port.
        @param timeout: seconds to wait for the connection, or L{None}/0.
        @param bind_address: (host, port) to bind to first, or L{None}.
        """
        self.reactor = reactor
        self.family = family
        self.host = host
        self.port = port
        self.timeout = timeout
        self.bind_address = bind_address
        self.resolve = resolve
        #: attempts in progress and their deadlines (reactor seconds), in
        #: the order they started, which is also their deadlines' order
        self._deadlines: dict[_Connecting, float] = {}
        self._sweeper: Any = None
        if family == socket.AF_INET:
            self.destination: Any = IPv4Address("TCP", host, port)
        else:
            self.destination = IPv6Address("TCP", host, port)

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        # (cancelling can only come after attempt() has returned)
        result: defer.Deferred[Any] = defer.Deferred(lambda _: attempt.cancel())
        attempt = self.attempt(factory, result.callback, result.errback)
        return result

    def attempt(self, factory: Any, connected: Any, failed: Any) -> _Connecting:
        """
        What C{connect} does, reporting to two callables instead of a
        L{defer.Deferred} (L{epcat.run.Runner._dial}'s plain attempt, made
        for every relayed connection).

        @param connected: called with the protocol once its
            C{makeConnection} has run; possibly before this returns (on
            loopback the connection is often up at once).
        @param failed: called with a L{Failure}, as C{connect}'s errback;
            possibly before this returns.
        @return: the attempt, whose C{cancel()} stops it (C{failed} is then
            called with L{error.ConnectingCancelledError}) and whose C{done}
            says whether it has reported.
        """
        return _Connecting(self, factory, connected, failed)

    # One timer for all attempts, not a DelayedCall made and cancelled for
    # each: every attempt of this endpoint has the same timeout, so their
    # deadlines come in the order they started.

    def _watch(self, attempt: _Connecting) -> None:
        timeout = self.timeout
        if not timeout:
            return
        self._deadlines[attempt] = self.reactor.seconds() + timeout
        if self._sweeper is None:
            self._sweeper = self.reactor.callLater(timeout, self._sweep)

    def _unwatch(self, attempt: _Connecting) -> None:
        self._deadlines.pop(attempt, None)

    def _sweep(self) -> None:
        self._sweeper = None
        now = self.reactor.seconds()
        deadlines = self._deadlines
        while deadlines:
            attempt, deadline = next(iter(deadlines.items()))
            if deadline > now:
                self._sweeper = self.reactor.callLater(deadline - now, self._sweep)
                return
            del deadlines[attempt]
            attempt._timed_out()


@implementer(IReadWriteDescriptor)
class _Connecting:
    """
    One connection attempt of a L{TCPClient}: a non-blocking
    C{connect(2)}, over at once when a second C{connect(2)} says so (as on
    loopback), else when the socket turns writable and C{SO_ERROR} tells
    how it went.
    """

    __slots__ = (
        "client", "factory", "sock", "fd", "done", "writing", "destination", "_connected_to",
        "_failed_with",
    )

    def __init__(self, client: TCPClient, factory: Any, connected: Any, failed: Any) -> None:
        """
        Begin: C{connected(protocol)} or C{failed(failure)} is called once
        (possibly before this returns).
        """
        self.client = client
        self.factory = factory
        self.done = False
        self.writing = False
        self.sock: socket.socket | None = None
        self.fd = -1
        self.destination = client.destination
        self._connected_to = connected
        self._failed_with = failed
        if client.resolve:
            client._watch(self)  # (the timeout covers the lookup too)
            client.reactor.resolve(client.host).addCallbacks(self._resolved, self._not_found)
        else:
            self._connect(client.host)

    def _resolved(self, address: str) -> None:
        if not self.done:
            self.destination = IPv4Address("TCP", address, self.client.port)
            self._connect(address)

    def _not_found(self, failure: Failure) -> None:
        if not self.done:
            self._stop()
            self._failed_with(failure)

    def _connect(self, address: str) -> None:
        client = self.client
        try:
            # (non-blocking from the start: no fcntl call of its own)
            sock = _socket.socket(client.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as e:
            self._fail(error.getConnectError((e.errno, e.strerror)))
            return
        self.sock = sock
        self.fd = sock.fileno()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if client.bind_address is not None:
                sock.bind(client.bind_address)
            err = sock.connect_ex((address, client.port))
        except OSError as e:
            self._fail(error.getConnectError((e.errno, e.strerror)))
            return
        if err in (errno.EINPROGRESS, errno.EWOULDBLOCK):
            # On loopback the handshake has usually completed inside
            # connect(2) already: asking again says so (0, then EISCONN;
            # EALREADY while it is still going on), which saves waiting for
            # the reactor to report the socket writable.
            err = self._connect_again(sock, address)
            if err == errno.EISCONN:
                err = 0
        if err == 0:
            self._connected()
            return
        if err not in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
            self._fail(error.getConnectError((err, os.strerror(err))))
            return
        if not client.resolve:
            client._watch(self)  # (a lookup was watched from its start)
        client.reactor.addWriter(self)
        self.writing = True

    def _connect_again(self, sock: socket.socket, address: str) -> int:
        """
        The state of a non-blocking connect in progress, from a second
        C{connect(2)}: 0 or C{EISCONN} once connected, C{EALREADY} while
        the handshake goes on, or the errno it failed with (which it takes,
        as reading C{SO_ERROR} would).
        """
        return sock.connect_ex((address, self.client.port))

    # the reactor's side

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "epcat-connect"

    def doRead(self) -> None:
        pass

    def doWrite(self) -> None:
        if self.done:
            return
        sock = self.sock
        assert sock is not None
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(error.getConnectError((err, os.strerror(err))))
            return
        self._connected()

    def _connected(self) -> None:
        """
        C{connect(2)} has completed: the protocol gets its transport, then
        the result fires with it.
        """
        self._stop()
        sock = self.sock
        assert sock is not None
        protocol = self.factory.buildProtocol(self.destination)
        if protocol is None:
            sock.close()
            self._failed_with(Failure(error.ConnectionClosed()))
            return
        client = self.client
        SocketTransport(client.reactor, sock, self.destination, client.family).attach(protocol)
        self._connected_to(protocol)

    def connectionLost(self, reason: Failure) -> None:
        # (the reactor gave up on the descriptor: EPOLLERR/EPOLLHUP while
        # connecting is a failed connect)
        if self.done or self.sock is None:
            return
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or errno.ECONNREFUSED
        self._fail(error.getConnectError((err, os.strerror(err))))

    # ours

    def _stop(self) -> None:
        self.done = True
        self.client._unwatch(self)
        if self.writing:
            self.writing = False
            self.client.reactor.removeWriter(self)

    def _fail(self, exception: Exception) -> None:
        self._stop()
        if self.sock is not None:
            self.sock.close()
        self._failed_with(Failure(exception))

    def _timed_out(self) -> None:
        self._fail(error.TimeoutError())

    def cancel(self) -> None:
        """
        Stop the attempt, if it has not reported yet: it fails with
        L{error.ConnectingCancelledError}.
        """
        if self.done:
            return
        self._stop()
        if self.sock is not None:
            self.sock.close()
        self._failed_with(Failure(error.ConnectingCancelledError(self.client.destination)))
