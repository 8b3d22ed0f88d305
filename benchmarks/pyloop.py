#!/usr/bin/env python3
"""
The least a relay written in Python can do: a reference point for the
benchmark, not a tool.

    python benchmarks/pyloop.py tcp PORT BACKEND_PORT
    python benchmarks/pyloop.py unix PATH BACKEND_PORT

Listens on 127.0.0.1:PORT (or the UNIX socket PATH) and relays each accepted
connection to 127.0.0.1:BACKEND_PORT, with one level-triggered epoll loop,
C{os.readv} into a 1 MiB buffer and C{os.write} out of it, as epcat's fast
path does, and nothing else: no Twisted, no byte counts, no idle clock, no
logging, no error reports; the outbound connect blocks the loop.  What it
does keep is what a relay cannot do without: a sink that takes less stops
reading the source until it has taken the rest (backpressure), an EOF is
passed on as a half-close (C{shutdown(SHUT_WR)}), and a pair is closed once
both directions have ended or either socket fails.

Whatever this loop costs per event is what the CPython interpreter costs,
before any code of epcat's runs: bench.py measures it beside epcat
(candidate C{python-loop}) so that epcat's figures can be read against the
interpreter's floor as well as against socat's.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys

BUFFER_SIZE = 1 << 20
IN, OUT, ERR = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("tcp", "unix"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    kind, where, backend = argv[0], argv[1], int(argv[2])
    if kind == "tcp":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", int(where)))
    else:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(where)
    listener.listen(4096)
    listener.setblocking(False)
    print(f"pyloop: listening on {kind}:{where}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    ep = select.epoll()
    lfd = listener.fileno()
    ep.register(lfd, IN)
    buf = memoryview(bytearray(BUFFER_SIZE))
    bufs = [buf]
    socks: dict[int, socket.socket] = {}
    peer: dict[int, int] = {}
    #: a sink's unwritten bytes, by the sink's descriptor; its source is
    #: not read meanwhile
    pending: dict[int, memoryview] = {}
    #: descriptors whose input has ended (EOF read and passed on)
    ended: set[int] = set()
    readv, write, poll = os.readv, os.write, ep.poll

    def interest(fd: int) -> None:
        mask = (0 if (fd in ended or peer[fd] in pending) else IN) | (
            OUT if fd in pending else 0)
        ep.modify(fd, mask)

    def close_pair(fd: int) -> None:
        other = peer.pop(fd, None)
        for d in (fd, other):
            if d is None:
                continue
            peer.pop(d, None)
            pending.pop(d, None)
            ended.discard(d)
            s = socks.pop(d, None)
            if s is not None:
                ep.unregister(d)
                s.close()

    while True:
        for fd, ev in poll():
            if fd == lfd:
                try:
                    client, _ = listener.accept()
                except BlockingIOError:
                    continue
                try:
                    server = socket.create_connection(("127.0.0.1", backend))
                except OSError:
                    client.close()
                    continue
                for s in (client, server):
                    if s.family != socket.AF_UNIX:
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    s.setblocking(False)
                    socks[s.fileno()] = s
                    ep.register(s.fileno(), IN)
                peer[client.fileno()] = server.fileno()
                peer[server.fileno()] = client.fileno()
                continue
            sink = peer.get(fd)
            if sink is None:
                continue
            if ev & OUT:
                # the sink of a blocked direction can take more
                rest = pending[fd]
                try:
                    written = write(fd, rest)
                except BlockingIOError:
                    written = 0
                except OSError:
                    close_pair(fd)
                    continue
                if written < len(rest):
                    pending[fd] = rest[written:]
                    continue
                del pending[fd]
                interest(fd)
                interest(sink)
                continue
            if sink in pending or fd in ended:
                # (not reading fd now; epoll reports an error regardless)
                if ev & ERR:
                    close_pair(fd)
                continue
            try:
                n = readv(fd, bufs)
            except BlockingIOError:
                continue
            except OSError:
                close_pair(fd)
                continue
            if not n:
                ended.add(fd)
                try:
                    socks[sink].shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                if sink in ended:
                    close_pair(fd)
                else:
                    interest(fd)
                continue
            try:
                written = write(sink, buf[:n])
            except BlockingIOError:
                written = 0
            except OSError:
                close_pair(fd)
                continue
            if written < n:
                pending[sink] = memoryview(bytes(buf[written:n]))
                interest(fd)
                interest(sink)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
