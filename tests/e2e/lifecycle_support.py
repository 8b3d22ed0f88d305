"""
Helpers for the connection-lifecycle end-to-end tests
(L{tests.e2e.test_lifecycle_e2e}): raw listening sockets whose connections
the test accepts by hand, a port whose connection attempts hang, and a socket
read to its end in a background thread.

Everything binds to 127.0.0.1 only.  Every wait is on an event (a connection,
bytes, EOF) bounded by a timeout; nothing polls.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
from collections.abc import Iterator

#: Seconds to wait for an expected event.
WAIT = 20.0


class Listener:
    """
    A TCP socket listening on 127.0.0.1 whose connections the test accepts
    one at a time with L{accept}, so it controls exactly when each is taken,
    answered and closed.

    With C{listen=False} the port is only bound, not listening: connection
    attempts to it are refused (as to a closed port) until L{listen} is
    called, and no other process can take the port in the meantime (a
    server that starts late, without a race for its port).

    @ivar port: the port it listens on.
    """

    def __init__(self, port: int = 0, backlog: int = 16, listen: bool = True) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", port))
        self.backlog = backlog
        if listen:
            self.listen()
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._conns: list[socket.socket] = []

    def listen(self) -> None:
        """Start listening (for a listener made with C{listen=False})."""
        self.sock.listen(self.backlog)

    def accept(self, timeout: float = WAIT) -> socket.socket:
        """
        The next connection, with C{timeout} set on it too.

        @raise socket.timeout: none arrived within C{timeout} seconds.
        """
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        conn.settimeout(timeout)
        self._conns.append(conn)
        return conn

    def no_connection_within(self, seconds: float) -> bool:
        """
        C{True} if no connection arrives within C{seconds} (a bounded wait on
        the accept event; it cannot fail spuriously under load).
        """
        try:
            self.accept(seconds)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()
        with contextlib.suppress(OSError):
            self.sock.close()


@contextlib.contextmanager
def full_backlog(fill: int = 4, probe_timeout: float = 1.0
                 ) -> Iterator[tuple[socket.socket, int, set[int]] | None]:
    """
    A socket listening on 127.0.0.1 with backlog 0, first filled with
    C{fill} non-blocking connects so that the kernel drops further SYNs: a
    connection attempt to it hangs until the queue is emptied by accepting
    (then a retransmitted SYN gets in).

    @return: (as a context manager) (the listening socket, its port, the
        local ports of the filling connections), or L{None} if a probe
        connection was accepted by the kernel anyway (the caller then skips
        or uses another way to make a connection hang).
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(fill):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            fillers.append(s)
            err = s.connect_ex(("127.0.0.1", port))
            assert err in (0, errno.EINPROGRESS, errno.EAGAIN), errno.errorcode.get(err, err)
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        fillers.append(probe)
        probe.settimeout(probe_timeout)
        try:
            probe.connect(("127.0.0.1", port))
        except TimeoutError:
            # the probe's SYN was dropped: attempts hang
            yield listener, port, {s.getsockname()[1] for s in fillers}
        else:
            yield None
    finally:
        for s in fillers:
            with contextlib.suppress(OSError):
                s.close()
        listener.close()


@contextlib.contextmanager
def hanging_port(fill: int = 4, probe_timeout: float = 1.0) -> Iterator[int | None]:
    """
    A port on 127.0.0.1 where a connection attempt hangs (L{full_backlog},
    never accepted from).

    @return: (as a context manager) the port, or L{None} if the kernel
        accepted a probe connection anyway.
    """
    with full_backlog(fill, probe_timeout) as backlog:
        yield None if backlog is None else backlog[1]


class Drain:
    """
    Read a socket to EOF in a background thread.

    @ivar eof: set when EOF (or a reset) was read.
    @ivar data: the bytes read so far.
    @ivar error: the error that ended reading, if it was not a clean EOF.
    """

    def __init__(self, sock: socket.socket, name: str = "drain") -> None:
        self.sock = sock
        self.eof = threading.Event()
        self.error: BaseException | None = None
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._grew = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    break
                with self._grew:
                    self._chunks.append(chunk)
                    self._grew.notify_all()
        except OSError as e:
            self.error = e
        finally:
            with self._grew:
                self.eof.set()
                self._grew.notify_all()

    @property
    def data(self) -> bytes:
        with self._lock:
            return b"".join(self._chunks)

    def wait_bytes(self, count: int, timeout: float = WAIT) -> bytes:
        """
        Wait until at least C{count} bytes have been read (or EOF); return
        what has been read.
        """
        with self._grew:
            self._grew.wait_for(
                lambda: sum(map(len, self._chunks)) >= count or self.eof.is_set(), timeout
            )
            return b"".join(self._chunks)

    def wait_eof(self, timeout: float = WAIT) -> bytes:
        """
        Wait for EOF; return everything read.

        @raise AssertionError: no EOF within C{timeout} seconds.
        """
        assert self.eof.wait(timeout), f"no EOF within {timeout} s ({len(self.data)} bytes read)"
        self._thread.join(timeout)
        return self.data


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    """
    Read exactly C{count} bytes (the socket's own timeout bounds each read).

    @raise AssertionError: EOF came first.
    """
    parts, got = [], 0
    while got < count:
        chunk = sock.recv(min(1 << 16, count - got))
        assert chunk, f"EOF after {got} of {count} bytes"
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def closed_or_reset(sock: socket.socket) -> bool:
    """
    Read from C{sock} until it ends; C{True} if it ended with EOF or a reset
    and nothing was received before that.  The socket's timeout bounds the
    wait (a C{socket.timeout} propagates: the peer did not close).
    """
    try:
        return sock.recv(4096) == b""
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        return True
