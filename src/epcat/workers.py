# -*- test-case-name: tests.e2e.test_workers_e2e -*-
"""
C{listen ... --workers N}: N epcat processes share one TCP port, so a relay
can use every core.

Each worker is a full epcat process (the same command line without
C{--workers}) whose listening socket has SO_REUSEPORT set (socket(7)): the
kernel spreads new connections across the workers.  The parent only starts
them, passes SIGTERM/SIGINT/SIGUSR1 on, and exits with the worst status
they exit with.  With port 0 the parent picks the port first, holding it
with a bound SO_REUSEPORT socket that never listens.

Only C{tcp:}, C{tcp6:} and C{haproxy:} over them are supported: other
endpoint types cannot share a port this way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from epcat.status import UsageError

#: environment variables that tell a worker which port to share
PORT_VARIABLE = "EPCAT_REUSEPORT"


def tcp_listen_arguments(description: str) -> tuple[int, str, int, int]:
    """
    The port, interface, backlog and address family of a C{tcp:}/C{tcp6:}
    server description (or the one a C{haproxy:} description wraps).

    @raise UsageError: another endpoint type.
    """
    from epcat.endpoints import endpoint_type, inner_description
    from epcat.explain import arguments

    kind = endpoint_type(description)
    if kind == "haproxy":
        description = inner_description(description)
        kind = endpoint_type(description)
    if kind not in ("tcp", "tcp6"):
        raise UsageError(
            f"listen --workers: {description!r}: only tcp: and tcp6: listeners (or haproxy: "
            "over them) can be shared by worker processes"
        )
    values = {name: value for name, value, _ in arguments("server", description)}
    family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
    interface = values.get("interface", "").strip("'")
    if kind == "tcp6" and interface in ("", "''"):
        interface = "::"
    try:
        port = int(values["port"])
        backlog = int(str(values.get("backlog", "50")).strip("'"))
    except (KeyError, ValueError):
        raise UsageError(f"listen --workers: {description!r}: cannot read its port") from None
    return port, interface, backlog, family


def reuseport_socket(family: int, interface: str, port: int) -> socket.socket:
    """
    A TCP socket bound with SO_REUSEADDR and SO_REUSEPORT.

    @raise OSError: it cannot be bound.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((interface, port))
    return sock


class ReusePortEndpoint:
    """
    A server endpoint for a worker: listens on the shared port with
    SO_REUSEPORT and hands the socket to the reactor with
    C{adoptStreamPort}.
    """

    def __init__(self, reactor: Any, family: int, interface: str, port: int,
                 backlog: int) -> None:
        self.reactor = reactor
        self.family = family
        self.interface = interface
        self.port = port
        self.backlog = backlog

    def listen(self, factory: Any) -> Any:
        from twisted.internet import defer
        from twisted.internet.error import CannotListenError

        try:
            sock = reuseport_socket(self.family, self.interface, self.port)
            sock.listen(self.backlog)
            sock.setblocking(False)
        except OSError as e:
            return defer.fail(CannotListenError(self.interface, self.port, e))
        try:
            port = self.reactor.adoptStreamPort(sock.fileno(), self.family, factory)
        finally:
            sock.close()  # the reactor holds its own copy of the descriptor
        return defer.succeed(port)


def worker_endpoint(reactor: Any, description: str) -> ReusePortEndpoint | None:
    """
    In a worker (C{EPCAT_REUSEPORT} set), the endpoint to listen on instead
    of the description's own; else L{None}.
    """
    shared = os.environ.get(PORT_VARIABLE)
    if not shared:
        return None
    _, interface, backlog, family = tcp_listen_arguments(description)
    return ReusePortEndpoint(reactor, family, interface, int(shared), backlog)


def without_workers_option(argv: Sequence[str]) -> list[str]:
    """
    The command line with C{--workers N} (or C{--workers=N}) removed.
    """
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    return out


def supervise(argv: Sequence[str], listen: str, workers: int) -> int:
    """
    Start C{workers} epcat processes for the command line C{argv} (minus
    C{--workers}), sharing the port of C{listen}; pass signals on; return
    the worst exit status.
    """
    port, interface, _, family = tcp_listen_arguments(listen)
    holder = None
    if port == 0:
        try:
            holder = reuseport_socket(family, interface, 0)
        except OSError as e:
            raise UsageError(f"listen --workers: cannot bind {listen!r}: {e.strerror}") from None
        port = holder.getsockname()[1]
    env = dict(os.environ, **{PORT_VARIABLE: str(port)})
    command = [sys.executable, "-m", "epcat", *without_workers_option(argv)]
    # (new sessions: a terminal's Ctrl-C reaches the parent only, which
    # passes it on once; a second one would close everything at once)
    children = [
        subprocess.Popen(command, env=env, start_new_session=True) for _ in range(workers)
    ]

    def forward(signum: int, frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                try:
                    child.send_signal(signum)
                except OSError:
                    pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, forward)
    statuses = [child.wait() for child in children]
    if holder is not None:
        holder.close()
    return max((s if s >= 0 else 1) for s in statuses)
