# -*- test-case-name: tests.e2e.test_workers_e2e -*-
"""
C{listen ... --workers N}: N epcat processes share one TCP port, so a relay
can use every core.

Each worker is a full epcat process running the same plan, whose listening
socket has SO_REUSEPORT set (socket(7)): the kernel spreads new connections
across the workers.  The parent imports what a relay needs (Twisted, but no
reactor yet), then forks the workers, so they start in the time one process
takes and share its imported code copy-on-write; each installs its own
reactor.  The parent only passes SIGTERM/SIGINT/SIGUSR1 on and exits with the
worst status the workers exit with.  With port 0 the parent picks the port
first, holding it with a bound SO_REUSEPORT socket that never listens.

Only C{tcp:}, C{tcp6:} and C{haproxy:} over them are supported: other
endpoint types cannot share a port this way.
"""

from __future__ import annotations

import gc
import os
import random
import signal
import socket
import sys
import traceback
from collections.abc import Callable
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
    from epcat.endpoints import endpoint_type, inner_description, quote
    from epcat.explain import arguments

    kind = endpoint_type(description)
    if kind == "haproxy":
        description = inner_description(description)
        kind = endpoint_type(description)
    if kind not in ("tcp", "tcp6"):
        raise UsageError(
            f"listen --workers: {quote(description)}: only tcp: and tcp6: listeners (or haproxy: "
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
        raise UsageError(f"listen --workers: {quote(description)}: cannot read its port") from None
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


def supervise(listen: str, workers: int, run_worker: Callable[[], Any]) -> int:
    """
    Fork C{workers} processes that each call C{run_worker()} with
    C{EPCAT_REUSEPORT} naming the port of C{listen}; pass signals on; return
    the worst exit status.

    @param run_worker: runs the relay in a worker and exits (by
        C{SystemExit}, as C{react} does); its exit code is the worker's
        status.
    @raise UsageError: C{listen} cannot be shared.
    @raise EpcatError: its port cannot be bound (in use): status 1.
    """
    from twisted.internet.testing import MemoryReactor

    from epcat.endpoints import parse_server

    # (Twisted's own checks and epcat's, before any worker exists: no
    # reactor is installed yet, and parsing opens nothing)
    parse_server(MemoryReactor(), listen)
    port, interface, _, family = tcp_listen_arguments(listen)
    # The port is bound here first (never listening, SO_REUSEPORT as the
    # workers' sockets): port 0 is chosen once for all of them, and a port
    # another program holds fails once, in one line, not in every worker.
    try:
        holder = reuseport_socket(family, interface, port)
    except (OSError, OverflowError) as e:
        from epcat.status import EpcatError, ExitStatus

        reason = (getattr(e, "strerror", None) or str(e)).lower()
        raise EpcatError(ExitStatus.FAILURE, f"cannot listen on {listen}: {reason}") from None
    port = holder.getsockname()[1]
    os.environ[PORT_VARIABLE] = str(port)
    _preload()
    # Out of the collector's sight: a collection in a worker would write to
    # every object's header and so copy every page it shares with the parent
    # (the gc.freeze documentation's own use).
    gc.freeze()
    sys.stdout.flush()
    sys.stderr.flush()
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover (a forked worker; tests/e2e run it)
            _worker(holder, run_worker)
        children.append(pid)

    def forward(signum: int, frame: Any) -> None:
        for pid in children:
            try:
                os.kill(pid, signum)
            except OSError:
                pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, forward)
    statuses = []
    for pid in children:
        while True:
            try:
                _, wait_status = os.waitpid(pid, 0)
                break
            except InterruptedError:  # pragma: no cover (PEP 475 retries)
                continue
        code = os.waitstatus_to_exitcode(wait_status)
        statuses.append(code if code >= 0 else 1)
    holder.close()
    # (the workers are done: a late signal must not kill the parent, and its
    # status become the signal's, while Python finalizes; see
    # epcat.run.ignore_stop_signals)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    return max(statuses)


def _preload() -> None:
    """
    Import what every worker needs before forking them, so that it is
    imported once.  Nothing here may install a reactor or start a thread.
    """
    import twisted.internet.endpoints  # noqa: F401
    import twisted.internet.epollreactor  # noqa: F401
    import twisted.internet.task  # noqa: F401

    import epcat.run  # noqa: F401


def _worker(holder: socket.socket | None, run_worker: Callable[[], Any]) -> None:
    """
    In a forked worker: a session of its own (a terminal's Ctrl-C reaches
    the parent only, which passes it on once), then the relay; never
    returns.
    """
    status = 1
    try:
        if holder is not None:
            holder.close()
        os.setsid()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(signum, signal.SIG_DFL)
        random.seed()  # (not the parent's jitter sequence)
        run_worker()
        status = 0
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)
