# -*- test-case-name: tests.unit.test_splice,tests.e2e.test_splice_e2e -*-
"""
The fast path: when both sides of a pair are plain stream sockets (TCP or
UNIX) and nothing needs to see the bytes, they move from socket to socket
without becoming Python objects, by one of two movers (L{MOVER}): read(2)
into a reused 1 MiB buffer and write(2) out of it (the default), or, with
C{EPCAT_SPLICE} set, socket -> pipe -> socket with splice(2), never copied
through the relay.  (Below, a direction's "pipe" is whichever the mover
uses: a buffer or a pipe.)

The engine is driven by the reactor's readiness callbacks: it takes the two
sockets out of Twisted's transports (which stop reading and writing), adds
descriptors of its own for the same file descriptors, and hands the sockets
back to the transports to be closed when both directions have ended, so the
pair ends exactly as on the normal path (C{connectionLost} on both sides).

Same semantics as L{epcat.relay}: EOF on one socket is passed on as
C{shutdown(SHUT_WR)} on the other once everything read before it has been
written (half-close); a direction reads only while its pipe is empty, so a
slow reader stops the fast writer (backpressure, at most one pipe's worth in
flight); byte counts and the idle clock are kept on the pair.  A direction
holds a pipe only while it has bytes to move: once drained, with nothing more
to read, the pipe goes back to a small pool, so pairs at rest cost no file
descriptors beyond their two sockets.  A pair is handed to the engine at its
first byte or EOF (L{epcat.relay.Pair.splice_waiting}): one that never moves
data costs no engine at all.

Linux only (L{available}); elsewhere the pair stays on the normal path.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import socket
from collections import deque
from typing import Any

from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

#: F_SETPIPE_SZ from fcntl(2) (Linux); Python has it as fcntl.F_SETPIPE_SZ
#: from 3.10 on.
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)

#: bytes a pipe may hold (fs.pipe-max-size is 1 MiB by default)
PIPE_SIZE = 1 << 20

#: bytes a copying direction's buffer holds: a pipe's worth, so that a read
#: from a TCP socket takes what a splice would (up to 1 MiB; socat -b 262144
#: takes 256 KiB, and 256 KiB buffers made 0.99-1.03x its TCP->TCP rate where
#: 1 MiB ones made 1.0-1.2x, interleaved iperf3 runs, 2026-11-23)
BUFFER_SIZE = PIPE_SIZE

#: splice rounds one readiness callback may do before yielding to the reactor
ROUNDS = 8

#: (given to os.splice by position, after its two offsets: a keyword argument
#: costs Argument Clinic's keyword parsing, about 250 machine instructions a
#: call, 5 % of what a kept-alive request costs epcat, counted with callgrind)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)

_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)

_splice = getattr(os, "splice", None)


def available() -> bool:
    """
    Can this platform splice?
    """
    return hasattr(os, "splice") and hasattr(os, "pipe2")


def eligible(transport: Any) -> bool:
    """
    Is C{transport} a plain stream socket transport (Twisted's TCP or UNIX
    connection or an L{epcat.lean.SocketTransport}; not TLS, not a wrapper,
    not stdio)?
    """
    if getattr(transport, "zero_copy", False):
        return True  # epcat.lean.SocketTransport
    from twisted.internet import tcp

    return type(transport).__module__ in ("twisted.internet.tcp", "twisted.internet.unix") and (
        isinstance(transport, tcp.Connection)
    )


class _End:
    """
    One socket as the reactor sees it while the engine owns it: an
    C{IReadDescriptor} and C{IWriteDescriptor} for the socket's file
    descriptor.
    """

    __slots__ = (
        "engine", "side", "transport", "fd", "reading", "writing", "selectable", "lean",
        "reads", "writes",
    )

    def __init__(self, engine: SpliceEngine, side: Any) -> None:
        self.engine = engine
        self.side = side
        #: the direction this socket is the source of, and the sink of
        self.reads: _Direction | None = None
        self.writes: _Direction | None = None
        transport = self.transport = side.transport
        self.fd = transport.fileno()
        hand_over = getattr(transport, "hand_over", None)
        #: the socket is an epcat.lean.SocketTransport's
        self.lean = hand_over is not None
        if hand_over is not None:
            # A lean transport stays registered with the reactor, interest
            # and all (no removing and adding again).  epcat's reactor is
            # told to give its readiness to this end from now on
            # (L{epcat.reactor.EPollReactor.swap}); elsewhere the transport
            # passes it on.
            self.reading, self.writing = hand_over(self)
            swap = getattr(engine.reactor, "swap", None)
            if swap is not None and (swap(transport, self) or not (self.reading or self.writing)):
                self.selectable = self
            else:
                self.selectable = transport
        else:
            transport.stopReading()
            transport.stopWriting()
            self.selectable = self
            self.reading = False
            self.writing = False

    # the reactor's side

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "epcat-splice"

    # (after the engine has stopped, engine is None and the reactor no
    # longer knows this end)

    def doRead(self) -> None:
        """
        The socket is readable: move what it has on to the other one.

        The common case, a direction at rest (a request, a response), is
        handled here in one go: one read into the pool's last pipe, left in
        the pool, and one write out of it, with the interest left as it is
        (reading the source, not waiting on the sink).  Anything else
        (held bytes, EOF, a sink that takes less, a read that fills the
        pipe) goes on in L{SpliceEngine._pump}.  (This runs for every
        request and response of a kept-alive pair, so it is written flat:
        no calls beyond the read and the write when the pool has a pipe.)
        """
        engine = self.engine
        d = self.reads
        if engine is None or d is None:
            return  # (the engine has stopped)
        if d.pipe is not None or d.pending or d.eof or d.done or engine.stopped:
            engine._pump(d, True)
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
                engine._pump(d, True)  # (out of descriptors: its fallback)
                return
            _pool.append(pipe)
        try:
            # (the mover's fill and drain written out here, not called: this
            # runs for every request and response)
            if _COPY:
                moved = _readv(self.fd, pipe[3])
            else:
                moved = _splice(self.fd, pipe[1], pipe[2], None, None, _FLAGS)
        except BlockingIOError:
            return
        except OSError as e:
            engine._failed(self, Failure(e))
            return
        if not moved:
            # EOF, with nothing held (the direction was at rest)
            d.eof = True
            engine._direction_ended(d)
            return
        # (passed on before it is counted: the bookkeeping is not in the
        # bytes' way)
        try:
            if _COPY:
                written = _write(d.sink.fd, pipe[0][:moved])
            else:
                written = _splice(pipe[0], d.sink.fd, moved, None, None, _FLAGS)
        except BlockingIOError:
            written = 0
        except OSError as e:
            self.side.bytes_received += moved
            _pool.pop()  # (the direction holds what the sink refused)
            if _COPY:
                pipe[1] = moved
            d.pipe, d.in_pipe = pipe, moved
            engine._failed(d.sink, Failure(e))
            return
        self.side.bytes_received += moved
        engine.pair.last_activity = engine.reactor.seconds()
        if written == moved and moved < pipe[2]:
            return  # (drained: at rest again, the pipe still in the pool)
        _pool.pop()  # (this direction holds it now)
        if _COPY:
            pipe[1] = moved  # (the copying mover's size of the last fill)
        d.in_pipe = moved - written
        d.pipe = pipe
        engine._pump(d)

    def doWrite(self) -> None:
        if self.engine is not None:
            self.engine._writable(self)

    def connectionLost(self, reason: Failure) -> None:
        # the reactor gave up on the descriptor (e.g. an error from epoll)
        if self.engine is not None:
            self.engine._failed(self, reason)

    # ours

    def want_read(self, on: bool) -> None:
        if on and not self.reading:
            self.engine.reactor.addReader(self.selectable)
        elif not on and self.reading:
            self.engine.reactor.removeReader(self.selectable)
        self.reading = on

    def want_write(self, on: bool) -> None:
        if on and not self.writing:
            self.engine.reactor.addWriter(self.selectable)
        elif not on and self.writing:
            self.engine.reactor.removeWriter(self.selectable)
        self.writing = on

    def forget(self) -> None:
        """
        Drop all interest in a socket that is about to be closed, without
        telling the kernel: closing it takes it out of the epoll set
        (L{epcat.reactor.EPollReactor.forget}).  Other reactors are told
        as usual.
        """
        forget = getattr(self.engine.reactor, "forget", None)
        if forget is None:
            self.want_read(False)
            self.want_write(False)
            return
        if self.reading or self.writing:
            forget(self.selectable)
        self.reading = self.writing = False

    def release(self) -> None:
        """
        The engine is done with the socket: no more interest in it, and a
        lean transport handles its own readiness again.
        """
        if self.reading:
            self.want_read(False)
        if self.writing:
            self.want_write(False)
        if self.lean:
            self.transport.take_back()


class _Direction:
    """
    Bytes from C{source} to C{sink}, through a pipe.
    """

    __slots__ = ("source", "sink", "pending", "eof", "in_pipe", "pipe", "done")

    def __init__(self, source: _End, sink: _End, pending: list[bytes], eof: bool) -> None:
        self.source = source
        self.sink = sink
        self.pending = b"".join(pending)  # read by Twisted before the switch
        self.eof = eof
        self.in_pipe = 0
        self.pipe: tuple[int, int, int] | None = None  # read end, write end, capacity
        self.done = False

    def close_pipe(self) -> None:
        """
        Let go of the pipe: back to the pool if it is empty, else closed
        (with whatever it held).
        """
        if self.pipe is not None:
            pipe, self.pipe = self.pipe, None
            if self.in_pipe:
                self.in_pipe = 0
                _close_pipe(pipe)
            else:
                _release_pipe(pipe)


class SpliceEngine:
    """
    Relays a joined pair with splice(2).

    @ivar directions: inbound->outbound and outbound->inbound.
    """

    __slots__ = ("reactor", "pair", "stopped", "_ends", "directions")

    def __init__(self, reactor: Any, pair: Any) -> None:
        self.reactor = reactor
        self.pair = pair
        self.stopped = False
        self._ends: tuple[_End, ...] = ()
        self.directions: tuple[_Direction, ...] = ()

    def start(self) -> None:
        """
        Take both sockets from their transports and start moving bytes.
        Bytes the transports already read (held before the join) go first.
        """
        pair = self.pair
        a, b = pair.inbound, pair.outbound
        end_a, end_b = _End(self, a), _End(self, b)  # (the transports stop reading)
        self._ends = (end_a, end_b)
        held_a, held_b = a._take_held(), b._take_held()
        self.directions = (
            _Direction(end_a, end_b, held_a, a.read_ended),
            _Direction(end_b, end_a, held_b, b.read_ended),
        )
        end_a.reads = end_b.writes = self.directions[0]
        end_b.reads = end_a.writes = self.directions[1]
        for direction in self.directions:
            # (one with nothing to move goes to rest at once; _pump also
            # does nothing once the other's failure has stopped the engine)
            self._pump(direction)

    def stop(self) -> None:
        """
        Give the sockets back to their transports (which stay stopped until
        closed).  Bytes still in a pipe are dropped: this is for closing.
        """
        if self.stopped:
            return
        self.stopped = True
        for end in self._ends:
            end.release()
            # (the engine, its ends and its directions refer to each other,
            # and an end that took its socket's registration refers to
            # itself as the selectable: cut the ends' links, so that all of
            # it, the sides and transports too, is freed with the last
            # outside reference rather than by the garbage collector)
            end.engine = end.reads = end.writes = end.selectable = None
        for direction in self.directions:
            if direction.pipe is not None:
                direction.close_pipe()
        self.pair.splice = None

    # readiness

    def _writable(self, end: _End) -> None:
        direction = end.writes
        if direction is not None:
            self._pump(direction)

    # the pump

    def _pump(self, d: _Direction, readable: bool = False) -> None:
        if self.stopped or d.done:
            return
        failed_end = d.sink
        drained = False
        try:
            for _ in range(ROUNDS):
                failed_end = d.sink
                if d.pending:
                    sent = d.sink.transport.socket.send(d.pending)
                    d.pending = d.pending[sent:]
                    if d.pending:
                        raise BlockingIOError(errno.EAGAIN, "partial send")
                    continue
                if d.in_pipe:
                    moved = _drain(d.pipe, d.sink.fd, d.in_pipe)
                    d.in_pipe -= moved
                    if not d.in_pipe and drained:
                        # The last read took less than the pipe holds: the
                        # socket was empty then.  Wait for the reactor (level-
                        # triggered) instead of a read that would say EAGAIN.
                        break
                    continue
                if d.eof:
                    self._direction_ended(d)
                    return
                failed_end = d.source
                if d.pipe is None:
                    if not readable:
                        # no pipe until there is something to move: an idle
                        # pair costs no descriptors beyond its two sockets
                        # (at rest, as after EAGAIN below, without raising)
                        self._interest(d, read=True, write=False)
                        return
                    try:
                        d.pipe = _acquire_pipe()
                    except OSError:
                        # out of descriptors (EMFILE): go on without splice
                        self._fall_back()
                        return
                moved = _fill(d.source.fd, d.pipe)
                if moved == 0:
                    d.eof = True
                    continue
                drained = moved < d.pipe[2]
                d.in_pipe += moved
                d.source.side.bytes_received += moved
                self.pair.last_activity = self.reactor.seconds()
            else:
                # more may be waiting: let the reactor call again
                busy = bool(d.in_pipe or d.pending)
                self._interest(d, read=not busy, write=busy)
                return
            # drained: at rest until the source is readable again, holding
            # no pipe (the common end of a request or a response)
            d.close_pipe()
            self._interest(d, read=True, write=False)
        except BlockingIOError:
            blocked_on_write = bool(d.in_pipe or d.pending)
            if not blocked_on_write:
                # drained and nothing to read: a pair at rest holds no pipe
                d.close_pipe()
            self._interest(d, read=not blocked_on_write, write=blocked_on_write)
        except OSError as e:
            # (a failed read is the source's fault, a failed write the sink's)
            self._failed(failed_end, Failure(e))

    def _fall_back(self) -> None:
        """
        No pipe can be made: hand the pair back to the normal path.  Bytes
        the engine holds (in the other direction's pipe, or read before the
        switch and not yet sent) are read out of the pipe and written to
        their sink's transport before anything the normal path reads, so
        nothing is lost; an EOF already read follows them.
        """
        held = []
        try:
            for d in self.directions:
                data = d.pending
                d.pending = b""
                if d.in_pipe:
                    data += _read_out(d.pipe, d.in_pipe)
                    d.in_pipe = 0
                held.append(data)
        except OSError as e:
            self._failed(self._ends[0], Failure(e))
            return
        eof = [d.eof and not d.done for d in self.directions]
        self.stop()
        self.pair._relay_in_userspace(resume=True)
        for d, data, ended in zip(self.directions, held, eof, strict=True):
            if data:
                d.sink.side.transport.write(data)
            if ended:
                d.source.side.readConnectionLost()

    def _interest(self, d: _Direction, read: bool, write: bool) -> None:
        # (each socket is the source of one direction and the sink of the
        # other, so read interest belongs to one direction, write to the other)
        source, sink = d.source, d.sink
        if source.reading != read:
            source.want_read(read)
        if sink.writing != write:
            sink.want_write(write)

    def _direction_ended(self, d: _Direction) -> None:
        """
        EOF from the source and everything before it written: half-close the
        sink, as the normal path does.
        """
        d.done = True
        if d.pipe is not None:
            d.close_pipe()
        source, sink = d.source.side, d.sink.side
        pair = self.pair
        if pair.first_closer is None:
            pair.first_closer = source.role
        source.read_ended = True
        if pair.tap is not None:
            pair.tap.ended(pair, source)
        first, second = self.directions
        if first.done and second.done and d.source.lean and d.sink.lean:
            # The last direction, between lean sockets (closed just below,
            # by _finish): closing the sink sends the FIN that a shutdown
            # would, as its own input has ended too (nothing unread to make
            # it a reset), and closing the source takes it out of the epoll
            # set.  Two system calls fewer per connection.
            d.source.forget()
        else:
            if d.source.reading:
                d.source.want_read(False)
            if d.sink.writing:
                d.sink.want_write(False)
            try:
                d.sink.transport.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        sink.write_ended = True
        sink.write_shutdown_sent = True
        if (first.done and second.done) or pair.eof_closes:
            self._finish()
        else:
            pair._half_close_started()

    def _finish(self) -> None:
        """
        Both directions ended: close both sockets, reporting a clean close as
        Twisted does for a socket whose write side it shut down itself.

        (Going through C{loseConnection} would not do: the transports do not
        know the engine shut their write sides down, so they would wait to
        write, and the reactor reports a fully shut down socket it is not
        reading from as lost.)
        """
        self.stop()
        sides = (self.pair.inbound, self.pair.outbound)
        if self.directions[0].done and self.directions[1].done:
            for side in sides:
                closing = getattr(side.transport, "closing", None)
                if closing is not None:
                    # (a lean transport: the first side's connectionLost
                    # closes the other, which need not wait for the reactor)
                    closing()
        for side in sides:
            side.transport.unregisterProducer()
            if not side.lost:
                # (Twisted's shared Failure(ConnectionDone()))
                side.transport.connectionLost(connectionDone)

    def _failed(self, end: _End, reason: Failure) -> None:
        """
        A socket failed (reset, broken pipe): abort it, close the other after
        flushing, as the normal path does when one side is lost.
        """
        if self.stopped:
            return
        self.stop()
        other = self._ends[1] if end is self._ends[0] else self._ends[0]
        end.side.abort()
        other.side._close()


#: empty pipes (or buffers) kept for the next direction that has bytes to
#: move.  A move that drains at once (a request, a response) goes through
#: the last one in place (L{_End.doRead}); a direction left holding bytes
#: takes it out, and gives it back once drained.  (A deque, not a list: a
#: list going from one item to none and back reallocates its storage both
#: times.)
_pool: deque[Any] = deque()

#: at most this many pipes (or buffers) wait in the pool; the rest are let go
POOL_SIZE = 16


def _acquire_pipe() -> Any:
    """
    An empty pipe (or buffer): from the pool, or a new one.

    @raise OSError: no descriptor left for a new pipe (EMFILE, ENFILE).
    """
    if _pool:
        return _pool.pop()
    return _make_pipe()


def _release_pipe(pipe: Any) -> None:
    """
    Give back an empty pipe (or buffer): one that holds no byte.
    """
    if len(_pool) < POOL_SIZE:
        _pool.append(pipe)
    else:
        _close_pipe(pipe)


# The two movers.  Each has the same five operations on its "pipe" (which
# only they look inside, but for its capacity, item 2): make one, fill it
# from a socket, drain it into a socket, read out what it holds, close it.
# A direction fills its pipe only when it is empty, so what a pipe holds is
# always the tail of its last fill.

# splice(2): socket -> pipe -> socket in the kernel; a pipe is (read end,
# write end, capacity in bytes)


def _splice_fill(fd: int, pipe: tuple[int, int, int]) -> int:
    """
    Move what socket C{fd} has (at most the pipe's capacity) into the empty
    C{pipe}.

    @return: bytes moved, 0 at EOF.
    @raise BlockingIOError: nothing to read.
    @raise OSError: the read failed (e.g. ECONNRESET).
    """
    return _splice(fd, pipe[1], pipe[2], None, None, _FLAGS)  # type: ignore[misc]


def _splice_drain(pipe: tuple[int, int, int], fd: int, size: int) -> int:
    """
    Move up to C{size} bytes (all C{pipe} holds) from C{pipe} into socket
    C{fd}.

    @return: bytes moved.
    @raise BlockingIOError: the socket takes nothing now.
    @raise OSError: the write failed (e.g. EPIPE).
    """
    return _splice(pipe[0], fd, size, None, None, _FLAGS)  # type: ignore[misc]


def _splice_read_out(pipe: tuple[int, int, int], size: int) -> bytes:
    """
    The C{size} bytes a pipe holds, read out of it (leaving it empty).

    @raise OSError: the pipe could not be read.
    """
    chunks = []
    while size > 0:
        chunk = os.read(pipe[0], size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _splice_close(pipe: tuple[int, int, int]) -> None:
    for fd in pipe[:2]:
        try:
            os.close(fd)
        except OSError:
            pass


def _splice_make() -> tuple[int, int, int]:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        capacity = fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        # the default will do (64 KiB; less past pipe-user-pages-soft)
        capacity = fcntl.fcntl(w, F_GETPIPE_SZ)
    return r, w, capacity


# copying through one buffer per busy direction: read(2) into it, write(2)
# out of it, as socat -b does; a "pipe" is [the buffer as a memoryview,
# bytes of the last fill, capacity in bytes, (the memoryview,) for readv]

_readv = os.readv
_write = os.write


def _copy_fill(fd: int, pipe: list[Any]) -> int:
    """
    As L{_splice_fill}, into the empty buffer C{pipe}.
    """
    moved = pipe[1] = _readv(fd, pipe[3])
    return moved


def _copy_drain(pipe: list[Any], fd: int, size: int) -> int:
    """
    As L{_splice_drain}: the last C{size} bytes of the buffer's last fill.
    """
    end = pipe[1]
    return _write(fd, pipe[0][end - size:end])


def _copy_read_out(pipe: list[Any], size: int) -> bytes:
    """
    As L{_splice_read_out}.
    """
    end = pipe[1]
    return bytes(pipe[0][end - size:end])


def _copy_close(pipe: list[Any]) -> None:
    pass  # (the buffer goes with its last reference)


def _copy_make() -> list[Any]:
    # (anonymous memory, not a bytearray: its pages are the kernel's zero
    # page until written, so a buffer that has only carried requests and
    # responses of a few KiB holds a few KiB of memory, not 1 MiB; private,
    # not the mmap module's default MAP_SHARED, which is shared memory
    # (shmem) and cost a copying relay about 6 % more CPU time per GB)
    view = memoryview(mmap.mmap(-1, BUFFER_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
    return [view, 0, BUFFER_SIZE, (view,)]


#: which mover the fast path uses: "copy" (the default) or "splice"
#: (EPCAT_SPLICE set).  Copying is the default because it is the faster of
#: the two on loopback on Linux 6.18: splicing into a TCP socket costs more
#: of the kernel's time than writing to it, on the relay's side and again on
#: the receiver's, so that on a quiet 2-core VM splice(2) made 0.72x
#: (UNIX->TCP) and 0.82x (TCP->TCP) of socat -b 262144's rate, and copying
#: 1.00x and 1.11x (benchmarks/bench.py, 2026-11-23; README, Performance).
#: Splicing uses less of the relay's own CPU time per byte from a TCP
#: socket, which may count for more where the receiver is another machine.
MOVER = "splice" if os.environ.get("EPCAT_SPLICE") else "copy"
_COPY = MOVER == "copy"

#: how L{MOVER} moves bytes, for C{-vv}
MOVER_DESCRIPTION = (
    "zero-copy with splice(2)" if MOVER == "splice"
    else f"read(2)/write(2) through a {BUFFER_SIZE / (1 << 20):g} MiB buffer"
)

#: each mover's operations: fill, drain, read out, close, make
MOVERS: dict[str, tuple[Any, ...]] = {
    "copy": (_copy_fill, _copy_drain, _copy_read_out, _copy_close, _copy_make),
    "splice": (_splice_fill, _splice_drain, _splice_read_out, _splice_close, _splice_make),
}

_fill, _drain, _read_out, _close_pipe, _make_pipe = MOVERS[MOVER]
