#!/usr/bin/env python3
"""
A measurement sketch, not part of epcat: how fast could a relay of short
connections be on epcat's own reactor if one object carried each connection
from accept to close?

    python benchmarks/fused_sketch.py LISTEN_PORT BACKEND_PORT

relays 127.0.0.1:LISTEN_PORT to 127.0.0.1:BACKEND_PORT with epcat's reactor
(L{epcat.reactor}: Twisted's epoll reactor), lean sockets and the fast
path's mover and pool (L{epcat.splice}), but none of epcat's per-connection
layers: no L{epcat.run.Runner} events, no L{epcat.relay.Pair} or
C{RelaySide}s, no lean transports, no splice engine objects.  Each accepted
connection is one C{_Connection} with an C{_End} per socket; each readable
end moves what it has to the other through a pooled buffer (or pipe), passes EOF on as
C{shutdown(SHUT_WR)}, and the second EOF closes both.

epcat itself has had such a path since 50c6ed9 (L{epcat.fused}, with all
of epcat's behaviour kept: reports, byte counts, the SIGUSR1 table, SIGTERM's
drain, backpressure, connects that take time, the userspace fallback):
77k machine instructions of Python per short connection at C{ab -c 32}
against this sketch's 58k, both counted with callgrind.  The sketch stays
as the upper bound of what one object per connection can do.

Left out, so that the figure is an upper bound: reports and byte counts,
--max-connections, timeouts, access rules, PROXY headers, a connect that
does not complete at once (such connections are dropped: on loopback
connect(2) completes inside the call), backpressure (a write that would
block waits for the socket, at most 5 s, blocking the process) and the
fallback when no pipe can be made.  Loopback only.

2026-11-22 at `ab -c 32` to nginx on the 2-core VM of the README's
Performance section, two sets of three interleaved rounds of 20,000
connections each: this sketch 8.8-10.4k connections/s with 22-25 µs of user
time a connection, epcat 5.3-7.6k with 64-84 µs, haproxy 8.7-12.2k with
16-20 µs.  On one kept-alive connection (`ab -k -c 1`, three rounds):
this sketch 12.3-12.4k requests/s with 14-18 µs of user time a request,
epcat 10.6-11.9k with 17-23 µs, socat 11.8-13.6k with 6 µs.
"""

from __future__ import annotations

import _socket
import errno
import select
import socket
import sys
from typing import Any

from epcat import reactor as epcat_reactor
from epcat import splice

reactor: Any = epcat_reactor.install()

# (the fast path's mover, as the engine's: epcat.splice.MOVER)
_fill = splice._fill
_drain = splice._drain


class _End:
    """One socket of a connection, as a reactor read descriptor."""

    __slots__ = ("connection", "sock", "fd", "other", "ended")

    def __init__(self, connection: _Connection, sock: Any) -> None:
        self.connection = connection
        self.sock = sock
        self.fd = sock.fileno()
        self.other: _End | None = None
        self.ended = False

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "fused-sketch"

    def connectionLost(self, reason: Any) -> None:
        self.connection.close()

    def doRead(self) -> None:
        other = self.other
        assert other is not None
        try:
            pipe = splice._acquire_pipe()
        except OSError:
            self.connection.close()
            return
        try:
            moved = _fill(self.fd, pipe)
        except BlockingIOError:
            splice._release_pipe(pipe)
            return
        except OSError:
            splice._release_pipe(pipe)
            self.connection.close()
            return
        if not moved:
            splice._release_pipe(pipe)
            self.ended = True
            if other.ended:
                self.connection.close()
            else:
                reactor.removeReader(self)
                try:
                    other.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            return
        try:
            while moved:
                try:
                    moved -= _drain(pipe, other.fd, moved)
                except BlockingIOError:
                    if not select.select([], [other.fd], [], 5)[1]:
                        raise
        except OSError:
            splice._close_pipe(pipe)
            self.connection.close()
            return
        splice._release_pipe(pipe)


class _Connection:
    """An accepted connection and its outbound one."""

    __slots__ = ("ends", "closed")

    def __init__(self) -> None:
        self.ends: tuple[_End, ...] = ()
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for end in self.ends:
            reactor.forget(end)  # (closing takes it out of the epoll set)
            end.sock.close()


class _Listener:
    """The listening socket, as a reactor read descriptor."""

    def __init__(self, port: int, backend: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(1024)
        self.sock.setblocking(False)
        self.backend = ("127.0.0.1", backend)

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "fused-sketch"

    def connectionLost(self, reason: Any) -> None:
        pass

    def doRead(self) -> None:
        for _ in range(100):
            try:
                fd, _address = self.sock._accept()  # type: ignore[attr-defined]
            except BlockingIOError:
                return
            inbound = _socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
            inbound.setblocking(False)
            outbound = _socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            err = outbound.connect_ex(self.backend)
            if err == errno.EINPROGRESS:
                err = outbound.connect_ex(self.backend)
                if err == errno.EISCONN:
                    err = 0
            if err:
                inbound.close()
                outbound.close()
                continue
            connection = _Connection()
            a, b = _End(connection, inbound), _End(connection, outbound)
            a.other, b.other = b, a
            connection.ends = (a, b)
            reactor.addReader(a)
            reactor.addReader(b)
            a.doRead()  # (the client has usually sent its request by now)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    reactor.addReader(_Listener(int(argv[1]), int(argv[2])))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
