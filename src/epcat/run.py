# -*- test-case-name: tests.e2e -*-
"""
Carry out a L{Plan}: listen, accept, dial, relay, stop, and decide the exit
status.

Every function here takes the reactor as an argument; nothing imports the
global reactor.  L{run} is what C{twisted.internet.task.react} calls.
"""

from __future__ import annotations

import collections
import os
import itertools
import signal
import socket
from typing import Any
from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from epcat import plan as modes
from epcat.dial import Dial, connect_with_timeout, reconnect_policy_for
from epcat.endpoints import (
    HALF_CLOSE_SHUTDOWN,
    HALF_CLOSE_TLS,
    endpoint_type,
    half_close_mode,
    inner_description,
    ip_network_of,
    ip_of,
    parse_client,
    parse_server,
)
from epcat.plan import ConnectOptions, Plan
from epcat.relay import Pair, RelaySide, SideFactory, StdioTransport
from epcat.report import Reporter, pair_failure
from epcat.status import EpcatError, ExitStatus, TimedOut, UsageError, classify
from epcat.tap import Tap
from epcat.ui import UI, address_fields, format_address

#: During a graceful stop, a pair counts as finished once nothing has moved
#: for this many seconds (as nginx closes idle keep-alive connections at once
#: and lets active requests finish).
DRAIN_IDLE = 1.0

#: Seconds a pair closed at the end of a drain gets to flush before it is
#: aborted.
CLOSE_GRACE = 2.0

#: Seconds epcat stops accepting after running out of file descriptors.
EMFILE_PAUSE = 0.5

#: finished pairs let go of a reactor round later when this many pile up
#: with no accept in between (Runner._let_go_finished)
LET_GO_BATCH = 64


class CrlfTranslator:
    """
    C{--crlf}: turn LF into CRLF in data read from stdin (ncat -C), leaving
    existing CRLF alone, across chunk boundaries.
    """

    def __init__(self) -> None:
        self._last_cr = False

    def __call__(self, data: bytes) -> bytes:
        if not data:
            return data
        out = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self._last_cr and data.startswith(b"\n"):
            out = out[1:]  # the CR came at the end of the previous chunk
        self._last_cr = data.endswith(b"\r")
        return out


class AccessList:
    """
    C{--allow} / C{--deny}: which peers a listener serves.

    @ivar allow: networks to serve; empty means everyone not denied.
    @ivar deny: networks to refuse.
    """

    def __init__(self, allow: tuple[str, ...], deny: tuple[str, ...]) -> None:
        self.allow = [ip_network_of(n) for n in allow]
        self.deny = [ip_network_of(n) for n in deny]

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny)

    def refuses(self, address: Any) -> str | None:
        """
        Why a peer at C{address} is refused, or L{None} if it is served.
        Only IP peers are checked; UNIX-socket and stdio peers pass.
        """
        if not (self.allow or self.deny):
            return None
        ip = ip_of(address)
        if ip is None:
            return None
        for network in self.deny:
            if ip.version == network.version and ip in network:
                return f"denied by --deny {network}"
        if self.allow and not any(
            ip.version == n.version and ip in n for n in self.allow
        ):
            return "not in any --allow network"
        return None


#: Twisted's legacy ssl: client arguments -> tlsx: client arguments
_SSL_CLIENT_ARGUMENTS = {
    "host": "host",
    "port": "port",
    "caCertsDir": "trustRoots",
    "certKey": "certificate",
    "privateKey": "privateKey",
    "timeout": "timeout",
    "bindAddress": "bindAddress",
}


def verified_ssl_client(description: str) -> str:
    """
    Twisted's legacy C{ssl:} client verifies nothing without C{caCertsDir=},
    and never the host name.  epcat verifies TLS by default everywhere, so it
    builds C{ssl:} clients as C{tlsx:} ones: the same arguments
    (C{caCertsDir=} becomes C{trustRoots=}, C{certKey=} C{certificate=}),
    with the certificate and host name checked (the system trust store
    without C{caCertsDir=}).  C{tlsx:...:verify=no} is the way to skip it.

    @return: the C{tlsx:} description, or C{description} unchanged when it
        uses an argument C{tlsx:} does not take (Twisted's parser then
        reports it).
    """
    from twisted.internet.endpoints import _parse

    try:
        args, kwargs = _parse(description)
    except Exception:
        return description
    names = ["host", "port"]
    values: dict[str, str] = dict(zip(names, args[1:3], strict=False))
    if len(args) > 3:
        return description
    for key, value in kwargs.items():
        values[key] = value
    if not set(values) <= set(_SSL_CLIENT_ARGUMENTS) or "host" not in values:
        return description

    def escape(value: str) -> str:
        return str(value).replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")

    parts = ["tlsx", escape(values.pop("host")), escape(values.pop("port", ""))]
    parts += [f"{_SSL_CLIENT_ARGUMENTS[k]}={escape(v)}" for k, v in values.items()]
    return ":".join(parts)


def _terminates_tls(description: str | None) -> bool:
    """
    Does this server description terminate TLS (so Twisted's ALPN fix is
    needed, L{epcat.tlsfix})?  C{tlsx:} installs the fixes itself.
    """
    if description is None:
        return False
    kind = endpoint_type(description)
    while kind == "haproxy":  # (a loop: wrappers may nest past the recursion limit)
        description = inner_description(description)
        kind = endpoint_type(description)
    return kind in ("ssl", "tls")


def ignore_stop_signals() -> None:
    """
    Once the shutdown is over (the process only has to exit): ignore further
    SIGTERM and SIGINT.  Python's finalization puts back the default action
    of every signal that has a Python handler, so a second signal arriving
    a few milliseconds after the first (Ctrl-C under C{timeout}, which
    passes it on) killed the finished process and its exit status became
    143 or 130 instead of the run's.  An ignored signal is left ignored.
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(signum, signal.SIG_IGN)
        except ValueError:
            pass  # not the main thread (tests)


def _unix_listen_reason(description: str, reason: str) -> str:
    """
    A UNIX listener that could not bind: say so when the path is something
    other than a socket (bind's EADDRINUSE reads as if a server held it), and
    drop the lock file Twisted took for it (it does not when bind() fails).
    """
    import stat

    if endpoint_type(description) == "haproxy":
        description = inner_description(description)
    if endpoint_type(description) != "unix":
        return reason
    from epcat.explain import arguments

    values = {name: value for name, value, _ in arguments("server", description)}
    path = values.get("address")
    if not path:
        return reason
    lock = f"{path}.lock"
    try:
        if os.path.islink(lock) and os.readlink(lock) == str(os.getpid()):
            os.unlink(lock)
    except OSError:
        pass
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return reason
    if not stat.S_ISSOCK(mode):
        return f"{path} exists and is not a socket; epcat does not replace it"
    return reason


def raise_fd_limit() -> int | None:
    """
    Raise the soft RLIMIT_NOFILE to the hard limit, so that one process can
    hold as many connections as the system lets it (each relayed pair takes
    two file descriptors, four while the fast path moves data with splice(2)).

    @return: the soft limit now in force, or L{None} if it cannot be read.
    """
    try:
        import resource
    except ImportError:
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = 1 << 20
        if soft == resource.RLIM_INFINITY or soft >= hard:
            return soft
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    except (OSError, ValueError):
        return None


def open_keylog(path: str) -> Callable[[Any, bytes], None]:
    """
    Open C{--keylog FILE} for appending (created with mode 0600: it holds
    session secrets) and return a pyOpenSSL keylog callback writing NSS key
    log lines to it (the format of SSLKEYLOGFILE, which Wireshark reads).

    @raise UsageError: the file cannot be opened.
    """
    import os

    from epcat.status import UsageError

    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as e:
        raise UsageError(f"--keylog {path!r}: cannot open: {e.strerror.lower()}") from None
    stream = os.fdopen(fd, "ab", buffering=0)

    def keylog(connection: Any, line: bytes) -> None:
        try:
            stream.write(line + b"\n")
        except OSError:
            pass

    return keylog


class Runner:
    """
    One run of epcat.

    @ivar pairs: the pairs open now.
    """

    def __init__(self, reactor: Any, plan: Plan, ui: UI) -> None:
        self.reactor = reactor
        self.plan = plan
        self.ui = ui
        options = plan.listen_options
        self.one_connection = plan.mode == modes.LISTEN or (
            plan.mode == modes.RELAY and options.once
        )
        self.reporter = Reporter(
            ui,
            # failures end the process, so they are errors, not warnings
            one_shot=(plan.mode != modes.RELAY or options.once) and not plan.reconnect,
            tunnel=plan.mode == modes.TUNNEL,
        )
        self._report = self.reporter.handlers
        self.access = AccessList(options.allow, options.deny)
        self.pairs: set[Pair] = set()
        #: pairs finished since the last accept (see _let_go_finished)
        self._finished_pairs: list[Pair] = []
        #: (one bound method for every pair, not one each)
        self._on_event_callback = self._on_event
        self.ports: list[Any] = []
        #: the PROXY header factories of haproxy: listeners (their waiting
        #: connections count against --max-connections)
        self._header_waits: list[Any] = []
        self.services: list[Any] = []
        self.queue: collections.deque[Pair] = collections.deque()
        self._started: set[Pair] = set()
        self._outbound: dict[Pair, Callable[[], None]] = {}
        self._ids = itertools.count(1)
        self._stopping = False
        self._signals = 0
        #: the name of the first SIGTERM/SIGINT received, if any
        self._stop_signal: str | None = None
        self._accept_paused = False
        self._served = False
        self.keylog: Callable[[Any, bytes], None] | None = None
        self.tap: Tap | None = None
        self._emfile_paused = False
        self._zero_copy: bool | None = None  # (known once the tap is made)
        self._needs_session: bool | None = None  # (see _wants_handshake_first)

    # -- entry

    def run(self) -> defer.Deferred[int]:
        """
        Start the plan.

        @return: a L{Deferred} that fires with the exit status when the
            process has nothing more to do (never, for a relay server, which
            runs until a signal stops the reactor); errbacks with
            L{EpcatError} or L{epcat.status.UsageError}.
        """
        plan = self.plan
        if _terminates_tls(plan.listen) or any(
            half_close_mode(d) == HALF_CLOSE_TLS for d in plan.connect
        ):
            # (only then: it loads pyOpenSSL, a few MiB per process): ALPN
            # for TLS servers, close_notify as a half-close on every TLS side
            from epcat import tlsfix

            tlsfix.install()
        limit = raise_fd_limit()
        if limit is not None:
            self.ui.info("fd-limit", f"file descriptor limit: {limit}", fd_limit=limit)
        self._watch_emfile()
        self.keylog = open_keylog(plan.keylog) if plan.keylog else None
        if self.keylog is not None:
            from epcat import tlsx

            tlsx.set_keylog(self.keylog)
        # Parse every description first: a bad one is a usage error before
        # anything listens or connects.
        server = self._parse_listen(plan.listen) if plan.listen else None
        clients = [parse_client(self.reactor, self._own_tls(d, "client")) for d in plan.connect]
        try:
            self.tap = Tap.from_options(plan.hexdump, plan.dump, plan.pcap)
        except OSError as e:
            raise UsageError(f"cannot create {e.filename!r}: {e.strerror.lower()}") from None
        self.reactor.addSystemEventTrigger("before", "shutdown", self._shutdown)
        self.reactor.addSystemEventTrigger("after", "shutdown", ignore_stop_signals)
        self._install_signal_handlers()
        self._start_progress()
        if plan.mode == modes.RELAY:
            lean_client = self._lean(clients[0])
            return self._listen(server, lean_client or clients[0], lean=lean_client is not None)
        if plan.mode == modes.LISTEN:
            return self._listen(server, None)
        if plan.mode == modes.CONNECT:
            if plan.reconnect:
                return self._connect_stdio_persistent(clients[0])
            return self._connect_stdio(clients[0])
        if plan.reconnect:
            return self._tunnel_persistent(clients[0], clients[1])
        return self._tunnel(clients[0], clients[1])

    # -- listening

    def _own_tls(self, description: str, kind: str) -> str:
        """
        With C{--keylog}, Twisted's C{tls:} client and C{ssl:} server are
        built as epcat's C{tlsx:} types, which take every argument they take:
        only a context epcat builds can log session secrets (pyOpenSSL lets a
        context be changed only before its first connection, and Twisted's
        types keep theirs private).
        """
        if kind == "client" and endpoint_type(description) == "ssl":
            return verified_ssl_client(description)
        if self.keylog is None:
            return description
        kind_prefix = {"client": "tls", "server": "ssl"}[kind]
        if endpoint_type(description) == kind_prefix:
            return "tlsx:" + inner_description(description)
        return description

    def _parse_own_server(self, description: str) -> Any:
        """
        Parse a (non-C{haproxy:}) server description, with C{--keylog}'s
        callback on every TLS context it uses (L{_own_tls}; Twisted's SNI
        C{tls:} server through L{epcat.tlsx.sni_server_with_keylog}).
        """
        if self.keylog is not None and endpoint_type(description) == "tls":
            from epcat import tlsx

            return tlsx.sni_server_with_keylog(self.reactor, description)
        return parse_server(self.reactor, self._own_tls(description, "server"))

    def _parse_listen(self, description: str) -> Any:
        """
        Parse the server description; a C{haproxy:} one gets epcat's own
        PROXY header wrapper (L{epcat.proxyproto}) around its inner endpoint.
        """
        from epcat.workers import worker_endpoint

        shared = worker_endpoint(self.reactor, description)  # --workers
        if endpoint_type(description) != "haproxy":
            return shared or self._parse_own_server(description)
        from epcat.proxyproto import ProxyHeaderEndpoint, ProxyHeaderFactory

        inner = shared or self._parse_own_server(inner_description(description))
        options = self.plan.listen_options

        def rejected(wrapper: Any, reason: str) -> None:
            self.reporter.proxy_rejected(wrapper, reason)
            if self._accept_paused and self._below_limit():
                self._resume_accepting()

        def make_factory(factory: Any) -> ProxyHeaderFactory:
            proxy_factory = ProxyHeaderFactory(
                factory,
                self.reactor,
                timeout=options.proxy_header_timeout,
                trusted=options.proxy_trusted,
                on_reject=rejected,
            )
            self._header_waits.append(proxy_factory)
            return proxy_factory

        return ProxyHeaderEndpoint(inner, make_factory)

    def _zero_copy_wanted(self) -> bool:
        """
        May pairs take the fast path (L{epcat.splice}): nothing needs to
        see their bytes?
        """
        wanted = self._zero_copy
        if wanted is None:
            wanted = self._zero_copy = (
                self.tap is None and not self.plan.crlf and not os.environ.get("EPCAT_NO_SPLICE")
            )
        return wanted

    def _lean(self, client: Any) -> Any:
        """
        The lean outbound endpoint (L{epcat.lean.TCPClient}) for a relay whose
        every pair will be spliced: C{tcp:} to an IP address or a host name,
        a C{tcp:}, C{unix:} or C{systemd:} (socket-activated) listener,
        nothing that needs to see the bytes.  Such a relay also accepts with
        lean sockets (see L{_listen}).

        @param client: the parsed C{connect} endpoint.
        @return: a L{epcat.lean.TCPClient}, or L{None} for Twisted's own
            machinery (any other case, or C{EPCAT_NO_LEAN} set).
        """
        from epcat import splice

        if (
            not self._zero_copy_wanted()
            or os.environ.get("EPCAT_NO_LEAN")
            or not splice.available()
            or endpoint_type(self.plan.listen or "") not in ("tcp", "tcp6", "unix", "systemd")
        ):
            return None
        from epcat import lean

        return lean.tcp_client(client)

    @defer.inlineCallbacks
    def _listen(self, server: Any, client: Any, lean: bool = False) -> Any:
        """
        Listen, and relay every accepted connection to C{client} (or to
        stdin/stdout when C{client} is L{None}).

        @param lean: C{client} is a lean endpoint: accept with lean sockets
            too (L{epcat.lean.accept_with_sockets}), when the port is a plain
            TCP or UNIX one.
        """
        plan = self.plan
        done: defer.Deferred[int] = defer.Deferred()
        runner = self

        class InboundFactory(Factory):
            noisy = False

            def buildProtocol(self, addr: Any) -> RelaySide | None:
                return runner._accept(addr, client, done)

        factory = InboundFactory()
        try:
            port = yield server.listen(factory)
        except Exception as e:
            _, reason = classify(Failure(e))
            reason = _unix_listen_reason(plan.listen or "", reason)
            raise EpcatError(
                ExitStatus.FAILURE, f"cannot listen on {plan.listen}: {reason}"
            ) from None
        self.ports.append(port)
        if lean and getattr(port, "factory", None) is factory:
            # (not under a TLS or PROXY-header wrapper, which has a factory
            # of its own)
            from epcat import fused

            if fused.eligible(self, client):
                # one object per connection from accept to close
                fused.FusedRelay(self, client, plan.connect[0], plan.listen or "").serve(port)
            else:
                from epcat import lean as lean_sockets

                lean_sockets.accept_with_sockets(port, on_exhausted=self._emfile_burst)
        self._bound_accept_batches(port)
        host = port.getHost()
        self.ui.info(
            "listening",
            f"listening on {format_address(host)} ({plan.listen})",
            endpoint=plan.listen,
            address=format_address(host),
            **address_fields(host),
        )
        status = yield done
        return status

    def _accept(self, addr: Any, client: Any, done: defer.Deferred[int]) -> RelaySide | None:
        """
        A connection arrived: refuse it, queue it, or start relaying it.
        """
        plan = self.plan
        if self._finished_pairs:
            self._let_go_finished()
        if self._stopping or (self.one_connection and self._served):
            return None
        # (behind a haproxy: listener, addr is the one the PROXY header carried)
        why = self.access.refuses(addr)
        if why is not None:
            self.reporter.refused(addr, why)
            return None
        pair = self._new_pair(
            half_close_mode(plan.listen or ""),
            half_close_mode(plan.connect[0]) if client else HALF_CLOSE_SHUTDOWN,
        )
        pair.inbound_description = plan.listen
        if client is not None:
            description = plan.connect[0]
            pair.outbound_description = description
            self._outbound[pair] = lambda: self._dial(
                pair, client, description, plan.options_for(0)
            )
        else:
            pair.outbound_description = "stdio"
            self._outbound[pair] = lambda: self._attach_stdio(pair.outbound, crlf=True)
        if self.one_connection:
            self._served = True
            pair.done.addCallback(self._status_of).chainDeferred(done)
            self._stop_listening()
        limit = plan.listen_options.max_connections
        if limit is not None and len(self._started) >= limit:
            self.queue.append(pair)
        if not self._below_limit():
            self._pause_accepting()
        return pair.inbound

    def _let_go_finished(self) -> None:
        """
        Let go of the pairs finished since the last call (L{Pair.let_go}):
        called from a later event than the one they finished in (the next
        accept, or a round after L{LET_GO_BATCH} have piled up), when every
        handler that saw them finish has returned.
        """
        finished = self._finished_pairs
        for pair in finished:
            pair.let_go()
        finished.clear()

    def _below_limit(self) -> bool:
        """
        May another connection be accepted under C{--max-connections}?  Every
        accepted connection counts, including those still waiting for a
        PROXY header or a TLS handshake.
        """
        limit = self.plan.listen_options.max_connections
        if limit is None:
            return True
        return self._connections_held() < limit

    def _connections_held(self) -> int:
        """
        Accepted connections that are open now: relayed pairs and queued
        ones, and connections still waiting for a PROXY header.
        """
        return len(self.pairs) + sum(f.waiting for f in self._header_waits)

    def _bound_accept_batches(self, port: Any) -> None:
        """
        Make a Twisted TCP or UNIX port accept no more connections in one
        read than C{--max-connections} leaves room for, and only one in a
        read when the first connection ends listening (C{listen}, C{--once}).

        C{tcp.Port.doRead} accepts up to C{numberAccepts} connections in one
        loop (100 at first, growing by 20 after every full round); stopping
        reading from C{buildProtocol} takes effect only after the loop, so a
        burst would be accepted past the limit and held in epcat instead of
        waiting in the kernel's backlog.  Setting C{numberAccepts} before
        every read bounds the loop.  Ports of other kinds keep Twisted's
        behaviour; connections accepted past the limit are then queued
        (L{Runner.queue}).

        @param port: the L{IListeningPort} that C{listen} gave.
        """
        if not isinstance(getattr(port, "numberAccepts", None), int):
            return
        do_read = port.doRead
        if self.one_connection:
            # One accept per read: the first connection closes the listening
            # socket at once (_stop_listening), and the accept loop must not
            # go on to call accept(2) on it.
            def read_one() -> Any:
                port.numberAccepts = 1
                return do_read()

            port.doRead = read_one
            return
        limit = self.plan.listen_options.max_connections
        if limit is None:
            return

        def doRead() -> Any:
            room = limit - self._connections_held()
            if room <= 0:
                self._pause_accepting()
                return None
            port.numberAccepts = room
            result = do_read()
            if not self._below_limit():
                # (connections waiting for a PROXY header are not pairs yet)
                self._pause_accepting()
            return result

        port.doRead = doRead

    def _start(self, pair: Pair) -> None:
        """
        Begin relaying an accepted pair: dial its outbound side.
        """
        self._started.add(pair)
        limit = self.plan.listen_options.max_connections
        if limit is not None and len(self._started) >= limit:
            self._pause_accepting()
        start = self._outbound.pop(pair, None)
        if start is not None:
            start()

    def _watch_emfile(self) -> None:
        """
        Out of file descriptors at accept: Twisted's TCP port survives it
        (it accepts and closes with a reserved descriptor, and logs
        "EMFILE encountered").  epcat also stops accepting for
        L{EMFILE_PAUSE} seconds, so that clients wait in the backlog instead
        of being turned away, and says so once per burst.
        """
        from twisted.logger import globalLogPublisher

        def observer(event: dict[str, Any]) -> None:
            text = event.get("log_format") or ""
            if "EMFILE encountered" in text and not self._emfile_paused:
                self.reactor.callLater(0, self._emfile_burst)

        globalLogPublisher.addObserver(observer)

    def _emfile_burst(self) -> None:
        if self._emfile_paused or self._stopping:
            return
        self._emfile_paused = True
        self.ui.warning(
            f"out of file descriptors (EMFILE): not accepting for {EMFILE_PAUSE:g} s; "
            f"{len(self.pairs)} connection(s) open",
            event="emfile",
            open=len(self.pairs),
        )
        self._pause_accepting()

        def resume() -> None:
            self._emfile_paused = False
            if self._below_limit():
                self._resume_accepting()

        self.reactor.callLater(EMFILE_PAUSE, resume)

    def _pause_accepting(self) -> None:
        if self._accept_paused:
            return
        self._accept_paused = True
        for port in self.ports:
            stop = getattr(port, "stopReading", None)
            if stop is not None:
                stop()

    def _resume_accepting(self) -> None:
        if not self._accept_paused or self._stopping or self._emfile_paused:
            return
        self._accept_paused = False
        for port in self.ports:
            start = getattr(port, "startReading", None)
            if start is not None:
                start()

    def _stop_listening(self) -> None:
        """
        Stop listening at once, for the one connection of C{listen} (nc -l)
        or C{--once}: the listening socket is closed before the accepted
        connection is even reported, so a client that connects after seeing
        "accepted" is refused.  C{stopListening} alone closes it one reactor
        round later, and a handshake that completes while a listening TCP
        socket is being closed can be dropped by the kernel without a reset:
        the client then has an established connection that nobody holds,
        and waits on it for ever (seen on Linux 6.18 for about 1 client in
        400 connecting at the moment "accepted" was printed).
        """
        ports, self.ports = self.ports, []
        for port in ports:
            close_listening_now(port)
            port.stopListening()

    # -- one-shot modes

    def _connect_stdio(self, client: Any) -> defer.Deferred[int]:
        description = self.plan.connect[0]
        pair = self._new_pair(HALF_CLOSE_SHUTDOWN, half_close_mode(description))
        pair.stdio_inbound = True
        pair.outbound_description = description
        self._started.add(pair)
        self._dial(
            pair,
            client,
            description,
            self.plan.options_for(0),
            then=lambda: self._attach_stdio(pair.inbound, crlf=True),
        )
        return pair.done.addCallback(self._status_of)

    def _tunnel(self, first: Any, second: Any) -> defer.Deferred[int]:
        a, b = self.plan.connect
        pair = self._new_pair(half_close_mode(a), half_close_mode(b))
        pair.inbound_description = a
        pair.outbound_description = b
        self._outbound[pair] = lambda: self._dial(pair, second, b, self.plan.options_for(1))
        self._started.add(pair)
        self.reporter.connecting(pair, a)
        dial = Dial(
            self.reactor,
            first,
            SideFactory(pair.inbound),
            self.plan.options_for(0),
            on_retry=lambda f, delay, n: self.reporter.retrying(pair, a, f, delay, n),
        )
        pair.attempt = dial.result

        def failed(failure: Failure) -> None:
            # The first leg failed: report it as the pair's failure.
            pair.outbound_description = a
            pair.outbound_failed(failure)

        dial.result.addCallbacks(lambda _: self._attempt_done(pair, dial.result), failed)
        return pair.done.addCallback(self._status_of)

    # -- persistent modes (--reconnect)

    def _logging_endpoint(self, endpoint: Any, description: str,
                          options: ConnectOptions) -> Any:
        """
        Wrap an endpoint for C{ClientService}: each attempt gets the connect
        timeout, and each failure is reported (ClientService itself only logs
        through Twisted's logger).
        """
        runner = self
        failures = [0]

        class Endpoint:
            def connect(self, factory: Any) -> defer.Deferred[Any]:
                runner.ui.info("connecting", f"connecting to {description}", endpoint=description)
                d = connect_with_timeout(runner.reactor, endpoint, factory,
                                         options.connect_timeout)

                def connected(protocol: Any) -> Any:
                    failures[0] = 0
                    return protocol

                def failed(failure: Failure) -> Failure:
                    failures[0] += 1
                    giving_up = options.fail_after is not None and failures[0] >= options.fail_after
                    if not runner._stopping and not giving_up:
                        _, reason = classify(failure)
                        runner.ui.warning(
                            f"cannot connect to {description}: {reason}; will retry",
                            event="retrying",
                            endpoint=description,
                            reason=reason,
                        )
                    return failure

                return d.addCallbacks(connected, failed)

        return Endpoint()

    def _service(self, endpoint: Any, description: str, options: ConnectOptions,
                 factory: Any, other_failures: Callable[[], int] | None = None) -> Any:
        """
        A started C{ClientService} for C{--reconnect}.

        @param other_failures: failures in a row that C{ClientService}
            cannot see (a tunnel's second leg), which grow the wait too
            (L{epcat.dial.reconnect_policy_for}).
        """
        from twisted.application.internet import ClientService

        service = ClientService(
            self._logging_endpoint(endpoint, description, options),
            factory,
            retryPolicy=reconnect_policy_for(options, other_failures),
            clock=self.reactor,
        )
        service.startService()
        self.services.append(service)
        return service

    def _watch(self, service: Any, description: str, options: ConnectOptions,
               done: defer.Deferred[int]) -> None:
        """
        With C{--fail-after N}: end the run with the failure's status when
        N attempts in a row fail.
        """
        if options.fail_after is None or done.called:
            return

        def failed(failure: Failure) -> None:
            if done.called or self._stopping or failure.check(defer.CancelledError):
                return
            status, reason = classify(failure)
            done.errback(EpcatError(
                status,
                f"cannot connect to {description}: {reason} "
                f"(gave up after {options.fail_after} attempt(s))",
            ))

        service.whenConnected(failAfterFailures=options.fail_after).addErrback(failed)

    def _tunnel_persistent(self, first: Any, second: Any) -> defer.Deferred[int]:
        """
        C{connect A connect B --reconnect}: keep leg A up with
        C{ClientService}; each time it connects, dial B and join the two;
        when either drops, both are closed and A is re-established.
        """
        a, b = self.plan.connect
        options_a, options_b = self.plan.options_for(0), self.plan.options_for(1)
        runner = self
        done: defer.Deferred[int] = defer.Deferred()
        failures_b = [0]

        def pair_done(pair: Pair) -> None:
            if pair.outbound_failure is not None and pair.inbound.connected_at is not None:
                failures_b[0] += 1
                limit = options_b.fail_after
                if limit is not None and failures_b[0] >= limit and not done.called:
                    status, reason = classify(pair.outbound_failure)
                    message = f"cannot connect to {b}: {reason} (gave up after {limit} attempt(s))"
                    done.errback(EpcatError(status, message))
                    return
            elif pair.joined:
                failures_b[0] = 0
            # (a round later: ClientService hears of the lost connection
            # after its protocol does, and until then would answer a new
            # whenConnected with the connection that is going)
            runner.reactor.callLater(0, runner._watch, service, a, options_a, done)

        class LegFactory(Factory):
            noisy = False

            def buildProtocol(self, addr: Any) -> RelaySide:
                pair = runner._new_pair(half_close_mode(a), half_close_mode(b))
                pair.inbound_description = a
                pair.outbound_description = b
                pair.eof_closes = True  # either leg ending drops the tunnel
                runner._outbound[pair] = lambda: runner._dial(pair, second, b, options_b)
                runner._started.add(pair)
                pair.done.addCallback(pair_done)
                return pair.inbound

        service = self._service(first, a, options_a, LegFactory(), lambda: failures_b[0])
        self._watch(service, a, options_a, done)
        return done

    def _connect_stdio_persistent(self, client: Any) -> defer.Deferred[int]:
        """
        C{connect X --reconnect}: stdin/stdout stay open while the connection
        to X is re-established with C{ClientService} whenever it drops.
        """
        from epcat.persistent import StdioHub

        description = self.plan.connect[0]
        options = self.plan.options_for(0)
        done: defer.Deferred[int] = defer.Deferred()
        hub = StdioHub(self.reactor, self.ui, half_close_mode(description), done)
        hub.reporter = self.reporter
        self._attach_stdio(hub, crlf=True)
        service = self._service(client, description, options, hub.leg_factory())
        hub.service = service

        def watch_again() -> None:
            # (a round later: ClientService hears of the lost connection
            # after the leg does, and until then would answer whenConnected
            # with the connection that is going, so --fail-after would never
            # count the failures that follow)
            self.reactor.callLater(0, self._watch, service, description, options, done)

        hub.on_leg_lost = watch_again
        self._watch(service, description, options, done)
        return done

    # -- pairs

    def _new_pair(self, inbound_half_close: str, outbound_half_close: str) -> Pair:
        pair = Pair(
            self.reactor,
            next(self._ids),
            inbound_half_close,
            outbound_half_close,
            on_event=self._on_event_callback,
            idle_timeout=self.plan.idle_timeout,
            half_close_timeout=self.plan.half_close_timeout,
        )
        pair.tap = self.tap
        pair.all_pairs = self.pairs
        # the fast path when nothing needs to see the bytes (see epcat.splice)
        pair.fast_path = self._zero_copy_wanted()
        if self.plan.mode == modes.TUNNEL:
            pair.inbound.is_client = True
        self.pairs.add(pair)
        return pair

    def _forget(self, pair: Pair) -> None:
        """
        A pair has finished (its C{closed} event, just before its C{done}
        fires): stop counting it, admit a queued one.
        """
        self.pairs.discard(pair)
        self._outbound.pop(pair, None)
        if pair in self.queue:
            self.queue.remove(pair)
        self._started.discard(pair)
        if self.plan.mode == modes.RELAY:
            # (a relay's pairs, one per connection; see _let_go_finished)
            finished = self._finished_pairs
            finished.append(pair)
            if len(finished) == LET_GO_BATCH:
                # (no accept to let them go at for a while: a round from now)
                self.reactor.callLater(0, self._let_go_finished)
        if self.plan.listen_options.max_connections is not None:
            self._admit_queued()

    def _admit_queued(self) -> None:
        limit = self.plan.listen_options.max_connections
        while self.queue and (limit is None or len(self._started) < limit):
            if self._stopping:
                return
            pair = self.queue.popleft()
            if not pair.inbound.lost:
                self._start(pair)  # its inbound side resumes when joined
        if self._below_limit():
            self._resume_accepting()

    def _on_event(self, event: str, pair: Pair, side: RelaySide | None) -> None:
        report = self._report.get(event)
        if report is not None:
            report(pair, side)
        if event == "closed":
            self._forget(pair)
        elif event == "accepted":
            if self._wants_handshake_first(pair) and not pair.inbound.handshake_done:
                return  # (keeps reading: the handshake needs it)
            self._begin(pair)
        elif event == "handshake" and side is pair.inbound and self._wants_handshake_first(pair):
            self._begin(pair)
        if event == "handshake" and side is pair.outbound:
            timer = pair.handshake_timer
            if timer is not None and timer.active():
                timer.cancel()

    def _wants_handshake_first(self, pair: Pair) -> bool:
        """
        A v2 PROXY header describes the inbound TLS session, so with a TLS
        inbound side the outbound connection waits for the handshake.
        """
        needs_session = self._needs_session
        if needs_session is None:
            options = self.plan.options_for(1 if self.plan.mode == modes.TUNNEL else 0)
            needs_session = self._needs_session = options.proxy_header == "v2" or (
                # an exec: child is told the TLS peer's certificate subject
                bool(self.plan.connect) and endpoint_type(self.plan.connect[-1]) == "exec"
            )
        return (
            needs_session
            and pair.inbound.half_close == HALF_CLOSE_TLS
            and not pair.stdio_inbound
        )

    def _begin(self, pair: Pair) -> None:
        if pair not in self._started:
            if pair in self.queue:
                pair.inbound.pause_until_joined()
            else:
                self._start(pair)
        elif pair in self._outbound:
            start = self._outbound.pop(pair)
            start()

    def _dial(
        self,
        pair: Pair,
        client: Any,
        description: str,
        options: ConnectOptions,
        then: Callable[[], None] | None = None,
    ) -> None:
        self.reporter.connecting(pair, description)
        if hasattr(client, "with_environment"):
            # exec: children learn who the peer is, as socat and ncat tell theirs
            from epcat.plugins import environment_for

            inbound = None if pair.stdio_inbound else pair.inbound.transport
            client = client.with_environment(environment_for(inbound, pair.conn_id))
        if options.proxy_header is not None:
            from epcat.proxyproto import encode_header

            inbound = pair.inbound
            version = options.proxy_header
            pair.preamble = lambda: encode_header(
                version, None if pair.stdio_inbound else inbound.transport, pair.conn_id
            )

        if getattr(client, "lean", False) and options.retry == 0 and (
            options.connect_timeout is None
        ):
            # One plain attempt: nothing for Dial to add, and no Deferred
            # (epcat.lean; it may report before attempt() returns).
            def connected(_: Any) -> None:
                pair.attempt = None
                pair._maybe_finish()

            attempt = client.attempt(SideFactory(pair.outbound), connected, pair.outbound_failed)
            if not attempt.done:
                pair.attempt = attempt
            return

        def retrying(failure: Failure, delay: float, attempt: int) -> None:
            self.reporter.retrying(pair, description, failure, delay, attempt)
            if pair.inbound.connected_at is not None:
                pair.inbound.pause_until_joined()

        dial = Dial(self.reactor, client, SideFactory(pair.outbound), options, on_retry=retrying)
        pair.attempt = dial.result

        def connected(_: Any) -> None:
            self._attempt_done(pair, dial.result)
            if options.connect_timeout is not None and pair.outbound.half_close == HALF_CLOSE_TLS:
                left = options.connect_timeout - (self.reactor.seconds() - dial.attempt_started)
                self._handshake_deadline(pair, max(left, 0.0), options.connect_timeout)
            if then is not None:
                then()

        dial.result.addCallbacks(connected, pair.outbound_failed)

    def _handshake_deadline(self, pair: Pair, left: float, timeout: float) -> None:
        """
        C{--connect-timeout} covers the TLS handshake too: Twisted's TLS
        endpoints report the connection as made when TCP is up.
        """
        side = pair.outbound

        def expire() -> None:
            if side.connected_at is not None and not side.handshake_done and not side.lost:
                pair.outbound_failure = Failure(TimedOut(timeout, "TLS handshake"))
                pair._on_event("failed", pair, side)
                side.abort()

        timer = self.reactor.callLater(left, expire)

        def cancel(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        pair.done.addBoth(cancel)
        pair.handshake_timer = timer

    def _attempt_done(self, pair: Pair, attempt: Any) -> None:
        if pair.attempt is attempt:
            pair.attempt = None
        pair._maybe_finish()

    def _attach_stdio(self, protocol: Any, crlf: bool = False) -> None:
        if crlf and self.plan.crlf:
            protocol.transform = CrlfTranslator()
        StdioTransport(protocol, reactor=self.reactor)

    def _status_of(self, pair: Pair) -> int:
        failure = pair_failure(pair)
        if failure is None:
            return ExitStatus.OK
        status, _, _ = failure
        if self._stop_signal is not None and not pair.joined:
            # (stopped by the user while still connecting: the attempt was
            # cancelled by us, quietly, so nothing has said so yet)
            plan_connect = self.plan.connect
            waiting_for = (
                pair.outbound_description or plan_connect[-1]
                if pair.inbound.connected_at is not None
                else pair.inbound_description or plan_connect[0]
            )
            raise EpcatError(
                ExitStatus.FAILURE,
                f"stopped by {self._stop_signal} while connecting to {waiting_for}; "
                "nothing was relayed",
            )
        raise EpcatError(status, "")  # already reported by the Reporter

    # -- progress

    def _start_progress(self) -> None:
        from epcat.progress import ProgressDisplay, stdin_file_size

        self._progress = None
        if not self.plan.progress or not ProgressDisplay.wanted():
            return
        from_stdin_is_outbound = self.plan.mode == modes.LISTEN
        total = None
        if self.plan.mode in (modes.CONNECT, modes.LISTEN):
            total = stdin_file_size()

        def counters() -> tuple[int, int, int]:
            fields = self.reporter._totals_fields(list(self.pairs))
            sent, received = fields["bytes_in_to_out"], fields["bytes_out_to_in"]
            if from_stdin_is_outbound:
                sent, received = received, sent
            return len(self.pairs), sent, received

        self._progress = ProgressDisplay(self.reactor, counters, total)
        self._progress.start()

    def _stop_progress(self) -> None:
        if getattr(self, "_progress", None) is not None:
            self._progress.stop()
            self._progress = None

    # -- signals and stopping

    def _install_signal_handlers(self) -> None:
        """
        SIGTERM/SIGINT: a graceful stop (the reactor's shutdown, which runs
        L{_shutdown}); a second one closes everything at once.  SIGUSR1: the
        table of open pairs.  Installed at once, and again once the reactor
        runs, after the reactor's own handlers.
        """
        reactor = self.reactor

        def install() -> None:
            try:
                signal.signal(signal.SIGINT, self._on_stop_signal)
                signal.signal(signal.SIGTERM, self._on_stop_signal)
            except ValueError:
                pass  # not the main thread (tests)

        try:
            # the reactor installs no SIGUSR1 handler: ours can go in now,
            # before anything is printed
            signal.signal(signal.SIGUSR1, self._on_table_signal)
        except ValueError:
            pass
        # Now: react() runs the plan (listening, and saying so) before the
        # reactor runs and Twisted installs its own handlers, and a SIGTERM
        # right after "listening on" found the default action and killed the
        # process.  Again once the reactor runs: Twisted's SIGTERM handler
        # (installed as it starts) replaces ours, stopping the reactor too.
        install()
        if not getattr(reactor, "running", False):
            reactor.callWhenRunning(install)

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        # Only queued here: the count is kept in the reactor's loop, one
        # request after another.  (Counted here, a second signal arriving
        # inside this handler ran a nested one between the count and its
        # test: both queued _abort_all, nothing stopped the reactor, and
        # epcat went on listening.)
        self.reactor.callFromThread(self._stop_requested, signal.Signals(signum).name)

    def _stop_requested(self, name: str) -> None:
        """
        SIGTERM/SIGINT, in the reactor's loop: the first stops the reactor
        (a graceful stop, L{_shutdown}), a later one closes every pair now.

        @param name: the signal's name, e.g. C{"SIGTERM"}.
        """
        self._signals += 1
        if self._stop_signal is None:
            self._stop_signal = name
        if self._signals == 1:
            self._stop_reactor()
        else:
            self._abort_all()

    def _stop_reactor(self) -> None:
        from twisted.internet.error import ReactorNotRunning

        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass

    def _on_table_signal(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(
            lambda: self.reporter.table(list(self.pairs), self.reactor.seconds())
        )

    def _shutdown(self) -> defer.Deferred[Any] | None:
        """
        Before the reactor shuts down (SIGTERM, SIGINT, or the end of a
        one-shot run): stop listening and reconnecting; in a relay, let
        active pairs finish for up to C{--drain-timeout} seconds, closing each
        as soon as nothing has moved on it for L{DRAIN_IDLE} seconds; then
        close what is left cleanly, and abort what has not closed
        L{CLOSE_GRACE} seconds later.
        """
        self._stopping = True
        self.reporter.stopping = True
        # (wait for the ports to close: a UNIX port removes its socket file
        # and lock only then)
        for port in self.ports:
            close_listening_now(port)  # (refused from the "stopping" line on)
        waits: list[defer.Deferred[Any]] = [
            defer.maybeDeferred(port.stopListening) for port in self.ports
        ]
        self.ports = []
        for service in self.services:
            waits.append(defer.maybeDeferred(service.stopService))
        self.services = []
        for pair in list(self.queue):
            pair.close()
        pairs = list(self.pairs)
        if pairs:
            self.ui.info("stopping", f"stopping: {len(pairs)} open connection(s)")
        drain = self.plan.mode == modes.RELAY and self.plan.listen_options.drain_timeout > 0
        for pair in pairs:
            pair.quiet = True
            waits.append(pair.done)
        if not drain:
            for pair in pairs:
                pair.close()
        else:
            self._drain_idle()
        finished = defer.DeferredList(waits, consumeErrors=True)
        calls = []
        if drain:
            loop = LoopingCall(self._drain_idle)
            loop.clock = self.reactor
            loop.start(0.2, now=False)
            calls.append(loop)
            timeout = self.plan.listen_options.drain_timeout
            calls.append(self.reactor.callLater(timeout, self._close_all))
            calls.append(self.reactor.callLater(timeout + CLOSE_GRACE, self._abort_all))
        else:
            calls.append(self.reactor.callLater(CLOSE_GRACE, self._abort_all))

        def stopped(result: Any) -> Any:
            self._stop_progress()
            if self.tap is not None:
                self.tap.close()
            for call in calls:
                if isinstance(call, LoopingCall):
                    if call.running:
                        call.stop()
                elif call.active():
                    call.cancel()
            if self.plan.stats:
                self.reporter.print_stats(list(self.pairs))
            return result

        return finished.addBoth(stopped)

    def _drain_idle(self) -> None:
        now = self.reactor.seconds()
        for pair in list(self.pairs):
            if not pair.joined or now - pair.last_activity >= DRAIN_IDLE:
                pair.close("stopping")

    def _close_all(self) -> None:
        for pair in list(self.pairs):
            pair.close("drain timeout")

    def _abort_all(self) -> None:
        for pair in list(self.pairs):
            pair.abort()


def close_listening_now(port: Any) -> None:
    """
    Close a listening port's socket now, not one reactor round later as
    C{stopListening} does (which must still be called: it finishes the job,
    and a UNIX port removes its socket file then).  A client connecting
    after that is refused.

    @param port: an L{IListeningPort}; one without a socket of its own (a
        Tor onion service, say) is left to C{stopListening}.
    """
    sock = getattr(port, "socket", None)
    if isinstance(sock, socket.socket) and sock.fileno() != -1:
        port.stopReading()
        sock.close()  # (stopListening's close then finds it closed)


def run(reactor: Any, plan: Plan, ui: UI) -> defer.Deferred[int]:
    """
    Carry out C{plan} on C{reactor}; the function C{react()} runs.

    @return: a L{Deferred} that fires with the exit status, or errbacks with
        L{EpcatError} / L{epcat.status.UsageError}.
    """
    return defer.maybeDeferred(Runner(reactor, plan, ui).run)


__all__ = ["run", "Runner", "CrlfTranslator", "AccessList", "pair_failure"]
