# -*- test-case-name: tests.unit.test_fused,tests.e2e.test_fused_e2e -*-
"""
The fused path: one object carries a relayed connection from accept to
close, for the plainest and commonest relay, C{listen tcp:...} (or
C{unix:}, C{systemd:}) to C{connect tcp:ADDRESS:PORT} with no option that
needs epcat's per-connection layers.

On the layered path every accepted connection becomes a L{epcat.relay.Pair}
with two L{epcat.relay.RelaySide}s, two L{epcat.lean.SocketTransport}s, a
L{epcat.splice.SpliceEngine} with an end and a direction per socket, and
events through L{epcat.run.Runner} to L{epcat.report.Reporter}: about 200k
machine instructions of Python per short connection (callgrind), against
58k for a bare loop of the same system calls.  Here a connection is a
L{FusedPair} and a L{_Side} per socket, and each side is the reactor's
descriptor for its socket, the source of the direction it reads and the
sink of the other: accepting, a non-blocking C{connect(2)}, and the
fast-path engine's moves (L{epcat.splice.MOVER}) through a pooled buffer
or pipe, with the same
semantics:

  - half-close: EOF from one socket is passed on as C{shutdown(SHUT_WR)} on
    the other once everything read before it has been written; the second
    EOF closes both;
  - backpressure: a direction reads only while its pipe is empty, and
    waits for the sink to be writable when it takes less;
  - failures: a socket whose read or write fails (a reset, a broken pipe)
    is closed with a reset and the other is closed cleanly, and a
    connection that could not be made closes the accepted one, each
    reported as on the layered path (the same words, exit-status class and
    C{--stats} counts);
  - connecting: what the client sends while an outbound connection that
    takes time is made (off loopback) is held, up to
    L{epcat.relay.HOLD_LIMIT} bytes, and passed on first, an EOF after it;
    a client that resets meanwhile stops the attempt, quietly;
  - TCP sockets get C{TCP_NODELAY}, as on the layered path's lean sockets
    (L{epcat.lean});
  - a pair that holds no bytes holds no pipe, and when no pipe can be made
    (out of descriptors) a direction copies through userspace instead;
  - the runner's bookkeeping: a fused pair is one of L{epcat.run.Runner}'s
    C{pairs}, so SIGTERM's drain and close, the SIGUSR1 table and
    C{--stats} see it as any pair.

What it leaves to the layered path (L{eligible} says no): C{-v} and more
(events to report), C{--idle-timeout}, C{--half-close-timeout},
C{--max-connections}, C{--allow}/C{--deny}, C{--once}, C{--progress},
C{--proxy-header}, C{--retry}, C{--connect-timeout}, a host name to look
up, anything that sees the bytes (C{-x}, C{--dump}, C{--pcap},
C{--crlf}), and C{EPCAT_NO_FUSED} set.

Linux only (splice(2)); the runner asks L{epcat.splice.available} first.
"""

from __future__ import annotations

import _socket
import errno
import os
import socket
import struct
from typing import Any

from twisted.internet import defer, error
from twisted.python.failure import Failure

from epcat import splice
from epcat.lean import READ_SIZE, address_of, close_socket
from epcat.relay import HOLD_LIMIT
from epcat.status import ExitStatus, classify

_fill = splice._fill
_drain = splice._drain
_COPY = splice._COPY
_readv = splice._readv
_write = splice._write
_splice = splice._splice
_FLAGS = splice._FLAGS
_pool = splice._pool
_make_pipe = splice._make_pipe
_release_pipe = splice._release_pipe
_close_pipe = splice._close_pipe
ROUNDS = splice.ROUNDS

_IN_PROGRESS = (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK)

#: struct tcp_info (linux/tcp.h): eight single bytes, then 32-bit fields, of
#: which tcpi_last_data_sent, tcpi_last_ack_sent and tcpi_last_data_recv
#: (milliseconds ago) are the tenth to the twelfth
_LAST_DATA = struct.Struct("=III")
_LAST_DATA_OFFSET = 8 + 9 * 4
_TCP_INFO_SIZE = _LAST_DATA_OFFSET + _LAST_DATA.size


def eligible(runner: Any, client: Any) -> bool:
    """
    May C{runner}'s relay to C{client} take the fused path?

    @param runner: an L{epcat.run.Runner} whose plan is a relay.
    @param client: the lean outbound endpoint (L{epcat.lean.TCPClient}).
    @return: C{True} when nothing in the plan needs the layered path (see
        the module's docstring for the list).
    """
    from epcat import plan as modes

    plan = runner.plan
    options = plan.options_for(0)
    listen = plan.listen_options
    return (
        plan.mode == modes.RELAY
        and not os.environ.get("EPCAT_NO_FUSED")
        and not runner.one_connection
        and not runner.reporter._shows_info
        and not runner.access
        and not plan.progress
        and plan.idle_timeout is None
        and plan.half_close_timeout is None
        and listen.max_connections is None
        and options.proxy_header is None
        and options.retry == 0
        and options.connect_timeout is None
        and not options.reconnect
        and not getattr(client, "resolve", True)
    )


class FusedRelay:
    """
    A relay's fused path: what every L{FusedPair} of one listener shares.

    @ivar runner: the L{epcat.run.Runner} whose C{pairs}, reporter and
        stopping state the pairs use.
    @ivar client: the outbound endpoint (L{epcat.lean.TCPClient}): address,
        port, timeout in seconds, and the bind address.
    """

    def __init__(self, runner: Any, client: Any, description: str,
                 listen_description: str) -> None:
        """
        @param description: the C{connect} endpoint description, for reports.
        @param listen_description: the C{listen} endpoint description.
        """
        self.runner = runner
        self.reactor = runner.reactor
        self.client = client
        self.description = description
        self.listen_description = listen_description
        self.totals = runner.reporter.totals
        self.family = client.family
        self.destination = (client.host, client.port)
        #: epcat's reactor forgets a descriptor about to be closed without
        #: a system call (L{epcat.reactor.EPollReactor.forget})
        self.forget = getattr(self.reactor, "forget", None)

    def serve(self, port: Any) -> bool:
        """
        Relay every connection C{port} accepts on the fused path.

        @param port: a Twisted TCP or UNIX listening port.
        @return: whether the port is of a kind this can serve (see
            L{epcat.lean.accept_with_sockets}).
        """
        from epcat import lean

        return lean.accept_with_sockets(
            port, on_exhausted=self.runner._emfile_burst, handle=self.accepted
        )

    def accepted(self, sock: Any, family: int, address: Any) -> None:
        """
        A connection was accepted: connect out for it.

        @param sock: the accepted socket (blocking, as accept(2) made it).
        @param family: its address family.
        @param address: the peer's address, as the socket module gives it.
        """
        runner = self.runner
        if runner._finished_pairs:
            runner._let_go_finished()
        if runner._stopping:
            sock.close()
            return
        sock.setblocking(False)
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = FusedPair(self, next(runner._ids))
        inbound = pair.inbound = _Side(pair, "inbound", sock, family, address)
        inbound.connected_at = pair.started_at
        runner.pairs.add(pair)
        self.totals.accepted += 1
        try:
            pair.connect()
        except Exception:
            # (a bug: logged, and this connection closed, rather than the
            # exception ending the listening port's accept loop, which the
            # reactor would then disconnect)
            from twisted.python import log

            log.err(None, "epcat: unexpected error relaying a connection")
            pair.abort()


class _Side:
    """
    One socket of a L{FusedPair}: the reactor's descriptor for it, the
    source of the direction it reads (its state is kept here) and the sink
    of the other.

    @ivar bytes_received: bytes read from this socket.
    @ivar connected_at: reactor seconds when the socket was connected, or
        L{None} while an outbound connection is being made.
    """

    __slots__ = (
        "pair", "role", "sock", "fd", "family", "address", "other", "bytes_received",
        "connected_at", "reading", "writing", "pipe", "in_pipe", "pending", "eof", "done",
        "lost", "_peer",
    )

    def __init__(self, pair: FusedPair, role: str, sock: Any, family: int,
                 address: Any) -> None:
        self.pair: FusedPair | None = pair
        self.role = role
        self.sock = sock
        self.fd = sock.fileno()
        self.family = family
        #: the peer's address, as the socket module gives it
        self.address = address
        self.other: _Side | None = None
        self.bytes_received = 0
        self.connected_at: float | None = None
        self.reading = False
        self.writing = False
        #: (read end, write end, capacity) while this direction holds bytes
        self.pipe: tuple[int, int, int] | None = None
        self.in_pipe = 0
        #: bytes read without a pipe (none could be made, or held while the
        #: outbound connection was made), not yet sent
        self.pending: bytes | bytearray = b""
        #: EOF has been read from this socket
        self.eof = False
        #: this direction has ended: EOF read and passed on
        self.done = False
        self.lost = False
        self._peer: Any = None

    # what the runner's table and reports ask of a side

    @property
    def transport(self) -> _Side:
        return self

    def getPeer(self) -> Any:
        if self._peer is None:
            self._peer = address_of(self.family, self.address)
        return self._peer

    def getHost(self) -> Any:
        return address_of(self.family, self.sock.getsockname())

    # the reactor's side

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "epcat-fused"

    def doRead(self) -> None:
        """
        The socket is readable: move what it has on to the other one.

        As L{epcat.splice._End.doRead}: the common case (a request or a
        response, the direction at rest) is one read into the pool's last
        pipe, left in the pool, and one write out of it; anything else goes
        on in L{_pump}.
        """
        pair = self.pair
        sink = self.other
        if sink is None:
            # (the accepted socket while the outbound connection is made)
            if pair is not None and not pair.finished:
                self._hold()
            return
        if pair is None or pair.finished:
            return
        if self.pipe is not None or self.pending or self.eof or self.done:
            self._pump(True)
            return
        # The move goes through the pool's last pipe, left in the pool: it
        # is taken out only if bytes are left in it (the sink took less, or
        # the read filled it), so a move that drains needs no pool work.
        if _pool:
            pipe = _pool[-1]
        else:
            try:
                pipe = _make_pipe()
            except OSError:
                self._pump(True)  # (out of descriptors: its fallback)
                return
            _pool.append(pipe)
        try:
            # (the mover's fill and drain written out here, not called: this
            # runs for every request and response; see epcat.splice)
            if _COPY:
                moved = _readv(self.fd, pipe[3])
            else:
                moved = _splice(self.fd, pipe[1], pipe[2], None, None, _FLAGS)
        except BlockingIOError:
            return
        except OSError as e:
            pair._failed(self, e)
            return
        if not moved:
            self.eof = True
            self._ended()
            return
        try:
            if _COPY:
                written = _write(sink.fd, pipe[0][:moved])
            else:
                written = _splice(pipe[0], sink.fd, moved, None, None, _FLAGS)
        except BlockingIOError:
            written = 0
        except OSError as e:
            self.bytes_received += moved
            _close_pipe(_pool.pop())  # (it holds what the sink refused)
            pair._failed(sink, e)
            return
        self.bytes_received += moved
        if written == moved and moved < pipe[2]:
            return  # (drained: the pipe stays in the pool)
        _pool.pop()  # (this direction holds it now)
        if _COPY:
            pipe[1] = moved  # (the copying mover's size of the last fill)
        self.in_pipe = moved - written
        self.pipe = pipe
        self._pump()

    def doWrite(self) -> None:
        pair = self.pair
        if pair is None or pair.finished:
            return
        if self.connected_at is None:
            pair._connect_finished()
            return
        other = self.other
        if other is not None:
            other._pump()  # (the direction this socket is the sink of)

    def connectionLost(self, reason: Failure) -> None:
        # the reactor gave up on the descriptor (an error from epoll)
        pair = self.pair
        if pair is None or pair.finished:
            return
        # (the reactor has dropped its interest already)
        self.reading = self.writing = False
        if not pair.joined:
            if self.connected_at is None:
                pair._connect_finished(lost=True)
            else:
                pair._client_gone()
            return
        pair._failed(self, reason.value)

    # while the outbound connection is made

    def _hold(self) -> None:
        """
        Read what the client sends while the outbound connection is being
        made, as the layered path does: bytes are held (up to
        L{epcat.relay.HOLD_LIMIT}, then reading stops) and an EOF is kept,
        both passed on first once connected; a client that resets is gone,
        and the attempt is stopped.
        """
        try:
            data = self.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self.pair._client_gone()  # type: ignore[union-attr]
            return
        if not data:
            self.eof = True
            self._stop_reading()
            return
        if not self.pending:
            # (a bytearray grows in place: a client sending a byte at a time
            # costs no copy of all it sent before at each read)
            self.pending = bytearray()
        self.pending += data
        self.bytes_received += len(data)
        if len(self.pending) >= HOLD_LIMIT:
            self._stop_reading()

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.pair.relay.reactor.removeReader(self)  # type: ignore[union-attr]

    # the direction this socket is the source of

    def _pump(self, readable: bool = False) -> None:
        """
        Move bytes towards the sink until the source has none or the sink
        takes no more (as L{epcat.splice.SpliceEngine._pump}), then set the
        interest to match: read the source, or wait for the sink.
        """
        pair = self.pair
        sink = self.other
        if pair is None or sink is None or pair.finished or self.done:
            return
        failed = sink
        drained = False
        try:
            for _ in range(ROUNDS):
                failed = sink
                if self.pending:
                    sent = sink.sock.send(self.pending)
                    self.pending = self.pending[sent:]
                    if self.pending:
                        raise BlockingIOError(errno.EAGAIN, "partial send")
                    continue
                if self.in_pipe:
                    assert self.pipe is not None
                    self.in_pipe -= _drain(self.pipe, sink.fd, self.in_pipe)
                    if not self.in_pipe and drained:
                        break  # (the last read found the socket emptied)
                    continue
                if self.eof:
                    self._ended()
                    return
                failed = self
                if self.pipe is None:
                    if not readable:
                        self._interest(True, False)
                        return
                    try:
                        self.pipe = splice._acquire_pipe()
                    except OSError:
                        # out of descriptors: this read goes through userspace
                        data = self.sock.recv(READ_SIZE)
                        if not data:
                            self.eof = True
                        else:
                            self.pending = data
                            self.bytes_received += len(data)
                        continue
                moved = _fill(self.fd, self.pipe)
                if not moved:
                    self.eof = True
                    continue
                drained = moved < self.pipe[2]
                self.in_pipe += moved
                self.bytes_received += moved
            else:
                # more may be waiting: let the reactor call again
                busy = bool(self.in_pipe or self.pending)
                self._interest(not busy, busy)
                return
            self._close_pipe()
            self._interest(True, False)
        except BlockingIOError:
            blocked = bool(self.in_pipe or self.pending)
            if not blocked:
                self._close_pipe()
            self._interest(not blocked, blocked)
        except OSError as e:
            pair._failed(failed, e)

    def _interest(self, read: bool, write: bool) -> None:
        """
        Read this socket or not; wait for the sink to be writable or not.
        """
        reactor = self.pair.relay.reactor  # type: ignore[union-attr]
        if self.reading != read:
            self.reading = read
            (reactor.addReader if read else reactor.removeReader)(self)
        sink = self.other
        if sink.writing != write:  # type: ignore[union-attr]
            sink.writing = write  # type: ignore[union-attr]
            (reactor.addWriter if write else reactor.removeWriter)(sink)

    def _close_pipe(self) -> None:
        pipe = self.pipe
        if pipe is not None:
            self.pipe = None
            if self.in_pipe:
                self.in_pipe = 0
                _close_pipe(pipe)
            else:
                _release_pipe(pipe)

    def _ended(self) -> None:
        """
        EOF from this socket and everything before it written: half-close
        the other (C{shutdown(SHUT_WR)}), or close both if the other
        direction has ended too.
        """
        pair = self.pair
        sink = self.other
        assert pair is not None and sink is not None
        self.done = True
        self._close_pipe()
        if pair.first_closer is None:
            pair.first_closer = self.role
        if sink.done:
            # Both directions have ended: closing each socket sends the FIN
            # a shutdown would (nothing is left unread to make it a reset),
            # and takes it out of the epoll set.
            pair._finish(shut=False)
            return
        self._interest(False, False)
        try:
            sink.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    # closing

    def _close(self, reset: bool, shut: bool) -> None:
        """
        Stop watching the socket and close it.

        @param reset: close with a reset (C{SO_LINGER} 0 s), as an abort.
        @param shut: shut both directions down first, so that the peer
            sees a FIN before any reset for bytes left unread (as Twisted's
            C{tcp._SocketCloser}).
        """
        if self.lost:
            return
        self.lost = True
        relay = self.pair.relay  # type: ignore[union-attr]
        if self.reading or self.writing:
            if relay.forget is not None:
                relay.forget(self)
            else:
                if self.reading:
                    relay.reactor.removeReader(self)
                if self.writing:
                    relay.reactor.removeWriter(self)
            self.reading = self.writing = False
        self._close_pipe()
        close_socket(self.sock, reset, shut)


class FusedPair:
    """
    One relayed connection on the fused path, from accept to close: an
    accepted socket and the connection made for it.

    It answers what L{epcat.run.Runner} and L{epcat.report.Reporter} ask of
    an L{epcat.relay.Pair}: C{conn_id}, C{inbound}/C{outbound} (with
    C{bytes_received}, C{connected_at} and C{transport.getPeer()}),
    C{started_at}, C{last_activity}, C{joined}, C{quiet}, C{done},
    C{close}, C{abort} and C{let_go}.
    """

    __slots__ = (
        "relay", "conn_id", "inbound", "outbound", "started_at",
        "first_closer", "joined", "quiet", "close_reason", "finished", "_done",
        "_done_fired", "_watched",
    )

    def __init__(self, relay: FusedRelay, conn_id: int) -> None:
        self.relay = relay
        self.conn_id = conn_id
        self.inbound: _Side = None  # type: ignore[assignment]  (set at once)
        self.outbound: _Side | None = None
        self.started_at = relay.reactor.seconds()
        self.first_closer: str | None = None
        self.joined = False
        #: failures are not worth reporting (epcat is stopping)
        self.quiet = False
        self.close_reason: str | None = None
        self.finished = False
        self._done: defer.Deferred[Any] | None = None
        self._done_fired = False
        #: the outbound endpoint's timer is watching the connect
        self._watched = False

    @property
    def last_activity(self) -> float:
        """
        Reactor seconds when bytes last moved either way (what the drain on
        SIGTERM asks, L{epcat.run.Runner._drain_idle}), from the kernel:
        the outbound socket carries every byte the pair moves, and its
        C{TCP_INFO} says how long ago it last sent and last received data
        (C{tcpi_last_data_sent}, C{tcpi_last_data_recv}, in milliseconds;
        linux/tcp.h C{struct tcp_info}).  Asked, not noted on every read:
        noting the time costs a kept-alive request a tenth of the Python
        epcat spends on it.  Before the outbound connection is up, or once
        its socket is closed, when the pair started.
        """
        outbound = self.outbound
        if outbound is None or outbound.connected_at is None:
            return self.started_at
        try:
            info = outbound.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
        except OSError:
            return self.started_at
        sent, _ack_sent, received = _LAST_DATA.unpack_from(info, _LAST_DATA_OFFSET)
        now = self.relay.reactor.seconds()
        return max(self.started_at, now - min(sent, received) / 1000)

    @property
    def done(self) -> defer.Deferred[Any]:
        """
        A L{defer.Deferred} that fires with this pair once both sockets are
        closed.
        """
        done = self._done
        if done is None:
            done = self._done = defer.Deferred()
            if self._done_fired:
                done.callback(self)
        return done

    # connecting out

    def connect(self) -> None:
        """
        Begin the outbound connection: a non-blocking C{connect(2)}, over at
        once when a second C{connect(2)} says so (as on loopback), else when
        the socket turns writable (or after the endpoint's timeout).  Until
        then what the client sends is held (L{_Side._hold}).
        """
        relay = self.relay
        client = relay.client
        try:
            sock = _socket.socket(relay.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as e:
            self._connect_failed(error.getConnectError((e.errno, e.strerror)))
            return
        outbound = self.outbound = _Side(self, "outbound", sock, relay.family, relay.destination)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if client.bind_address is not None:
                sock.bind(client.bind_address)
            err = sock.connect_ex(relay.destination)
            if err in _IN_PROGRESS:
                # (on loopback the handshake has usually completed inside
                # connect(2): asking again says so, 0 or EISCONN)
                err = self._connect_again(sock)
                if err == errno.EISCONN:
                    err = 0
        except OSError as e:
            self._connect_failed(error.getConnectError((e.errno, e.strerror)))
            return
        if err == 0:
            self._connected()
        elif err in _IN_PROGRESS:
            outbound.writing = True
            relay.reactor.addWriter(outbound)
            # (what the client sends meanwhile is held: see _Side._hold)
            self.inbound.reading = True
            relay.reactor.addReader(self.inbound)
            if client.timeout:
                self._watched = True
                client._watch(self)
        else:
            self._connect_failed(error.getConnectError((err, os.strerror(err))))

    def _connect_again(self, sock: Any) -> int:
        """
        The state of a non-blocking connect in progress, from a second
        C{connect(2)}: 0 or C{EISCONN} once connected, C{EALREADY} while the
        handshake goes on, or the errno it failed with.
        """
        return int(sock.connect_ex(self.relay.destination))

    def _connect_finished(self, lost: bool = False) -> None:
        """
        The connecting socket turned writable (or the reactor reported an
        error on it): C{SO_ERROR} says how it went.

        @param lost: the reactor reported an error (EPOLLERR, EPOLLHUP): a
            failed connect, refused if C{SO_ERROR} says nothing else.
        """
        outbound = self.outbound
        assert outbound is not None
        err = outbound.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if lost and not err:
            err = errno.ECONNREFUSED
        if err:
            self._connect_failed(error.getConnectError((err, os.strerror(err))))
            return
        self._unwatch()
        outbound.writing = False
        self.relay.reactor.removeWriter(outbound)
        self._connected()

    def _timed_out(self) -> None:
        """
        The outbound endpoint's timeout (L{epcat.lean.TCPClient._sweep}).
        """
        self._watched = False
        if not self.finished and self.outbound is not None and (
            self.outbound.connected_at is None
        ):
            self._connect_failed(error.TimeoutError())

    def _unwatch(self) -> None:
        if self._watched:
            self._watched = False
            self.relay.client._unwatch(self)

    def _connected(self) -> None:
        """
        Both sockets are connected: relay.
        """
        inbound, outbound = self.inbound, self.outbound
        assert outbound is not None
        reactor = self.relay.reactor
        outbound.connected_at = inbound.connected_at = reactor.seconds()
        inbound.other, outbound.other = outbound, inbound
        self.joined = True
        # (addReader does nothing for a socket already read: the accepted
        # one, while a connection that took time was made)
        inbound.reading = outbound.reading = True
        reactor.addReader(inbound)
        reactor.addReader(outbound)
        # (a client that speaks first has usually sent its first bytes by
        # now: reading them at once saves a reactor round)
        inbound.doRead()

    def _client_gone(self) -> None:
        """
        The client reset (or the reactor reported an error on its socket)
        before the outbound connection was made: stop the attempt, quietly,
        as the layered path does when a client leaves before its outbound
        connection is up.  Bytes it sent before are dropped with it.
        """
        self._connect_failed(error.ConnectingCancelledError(None))

    def _connect_failed(self, exception: Exception) -> None:
        """
        The outbound connection could not be made: say so (as the layered
        path does, L{epcat.report.Reporter._on_failed}), close the accepted
        connection cleanly.
        """
        self._unwatch()
        relay = self.relay
        cancelled = isinstance(exception, error.ConnectingCancelledError)
        if not self.quiet and not cancelled:
            relay.totals.failed += 1
            status, reason = classify(exception)
            relay.runner.reporter.failure(
                self, status, f"cannot connect to {relay.description}: {reason}"
            )
        if self.outbound is not None:
            self.outbound._close(reset=False, shut=False)
        inbound = self.inbound
        # What the client sent is read (and dropped) first: closing a socket
        # with bytes unread sends a reset, and the client is to see a clean
        # close, as on the layered path (which has read them by now).
        try:
            for _ in range(16):
                data = inbound.sock.recv(READ_SIZE)
                if not data:
                    break
                inbound.bytes_received += len(data)
        except OSError:
            pass
        inbound._close(reset=False, shut=True)
        self._closed()

    # ending

    def _finish(self, shut: bool) -> None:
        """
        Close both sockets cleanly (both directions have ended, or epcat
        closes the pair).
        """
        self.inbound._close(reset=False, shut=shut)
        if self.outbound is not None:
            self.outbound._close(reset=False, shut=shut)
        self._closed()

    def _failed(self, side: _Side, reason: BaseException) -> None:
        """
        A socket failed (a reset, a broken pipe): close it with a reset and
        the other cleanly, as L{epcat.splice.SpliceEngine._failed} does, and
        say which connection failed, as the layered path does
        (L{epcat.report.pair_failure}: the reset side's transport was
        aborted, which reads "connection lost").
        """
        if self.finished:
            return
        other = side.other
        side._close(reset=True, shut=False)
        if other is not None:
            other._close(reset=False, shut=True)
        if not self.quiet and self.close_reason is None:
            relay = self.relay
            relay.totals.failed += 1
            what = relay.description if side.role == "outbound" else relay.listen_description
            relay.runner.reporter.failure(
                self, ExitStatus.FAILURE, f"connection on {what} failed: connection lost"
            )
        self._closed()

    def _closed(self) -> None:
        """
        Both sockets are closed: count the pair's bytes, let the runner
        forget it, fire C{done}.
        """
        if self.finished:
            return
        self.finished = True
        relay = self.relay
        totals = relay.totals
        totals.closed += 1
        totals.bytes_in_to_out += self.inbound.bytes_received
        if self.outbound is not None:
            totals.bytes_out_to_in += self.outbound.bytes_received
        relay.runner._forget(self)
        self._done_fired = True
        if self._done is not None:
            self._done.callback(self)

    def let_go(self) -> None:
        """
        Drop the links that make the pair and its sides a reference cycle,
        once every handler that saw it finish has returned (as
        L{epcat.relay.Pair.let_go}).
        """
        for side in (self.inbound, self.outbound):
            if side is not None:
                side.pair = side.other = None

    # control from outside (the runner's shutdown)

    def close(self, reason: str | None = None) -> None:
        """
        Close both sockets cleanly, stopping a connection attempt in
        progress.  Bytes still in a pipe are dropped, as when the layered
        path closes a spliced pair.

        @param reason: why (a drain timeout), for the log.
        """
        if self.finished:
            return
        if reason is not None and self.close_reason is None:
            self.close_reason = reason
        if not self.joined:
            self._connect_failed(error.ConnectingCancelledError(None))
            return
        self._finish(shut=True)

    def abort(self) -> None:
        """
        Close both sockets at once, with a reset.
        """
        if self.finished:
            return
        self._unwatch()
        self.inbound._close(reset=True, shut=False)
        if self.outbound is not None:
            self.outbound._close(reset=True, shut=False)
        self._closed()

    @property
    def duration(self) -> float:
        """Seconds since the connection was accepted."""
        return float(self.relay.reactor.seconds() - self.started_at)


__all__ = ["FusedRelay", "FusedPair", "eligible"]
