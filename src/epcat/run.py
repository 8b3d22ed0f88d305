# -*- test-case-name: tests.test_run -*-
"""
Carry out a L{Plan}: listen, accept, dial, relay, and decide the exit status.

Every function here takes the reactor as an argument; nothing imports the
global reactor.  L{run} is what C{twisted.internet.task.react} calls.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectingCancelledError, ConnectionLost
from twisted.internet.protocol import Factory
from twisted.internet.stdio import StandardIO
from twisted.python.failure import Failure

from epcat import plan as modes
from epcat.endpoints import (
    HALF_CLOSE_SHUTDOWN,
    HALF_CLOSE_TLS,
    half_close_mode,
    parse_client,
    parse_server,
)
from epcat.plan import Plan
from epcat.relay import Pair, RelaySide, SideFactory
from epcat.status import EpcatError, ExitStatus, classify
from epcat.ui import UI, address_fields, format_address

#: Seconds open pairs get to finish after SIGTERM/SIGINT before they are
#: aborted.
DRAIN_TIMEOUT = 10.0


def pair_failure(pair: Pair) -> tuple[ExitStatus, str, RelaySide] | None:
    """
    Did this pair end because something failed, and how?

    @return: (status, reason, side) for an outbound attempt that failed, a
        TLS handshake that failed, or a connection reset; L{None} for a pair
        that ended normally.
    """
    if pair.outbound_failure is not None:
        status, reason = classify(pair.outbound_failure)
        return status, reason, pair.outbound
    for side in (pair.outbound, pair.inbound):
        reason = side.lost_reason
        if reason is None or side.connected_at is None:
            continue
        if side.half_close == HALF_CLOSE_TLS and not side.handshake_done:
            status, text = classify(reason)
            if status in (ExitStatus.OK, ExitStatus.FAILURE):
                status = ExitStatus.TLS_HANDSHAKE
                text = "TLS handshake failed: connection closed during the handshake"
            return status, text, side
        if side.half_close == HALF_CLOSE_TLS and reason.check(ConnectionLost):
            # A TLS peer that closes TCP without close_notify after the
            # handshake: common (curl, many servers), and Twisted reports it
            # as ConnectionLost; the bytes it sent have all been relayed.
            continue
        status, text = classify(reason)
        if status != ExitStatus.OK:
            return status, text, side
    return None


class Runner:
    """
    One run of epcat.

    @ivar pairs: the pairs open now.
    """

    def __init__(self, reactor: Any, plan: Plan, ui: UI) -> None:
        self.reactor = reactor
        self.plan = plan
        self.ui = ui
        self.pairs: set[Pair] = set()
        self.ports: list[Any] = []
        self._ids = itertools.count(1)
        self._stopping = False
        self._one_shot = plan.mode != modes.RELAY

    # -- entry

    def run(self) -> defer.Deferred[int]:
        """
        Start the plan.

        @return: a L{Deferred} that fires with the exit status when the
            process has nothing more to do (never, for a relay server, which
            runs until a signal stops the reactor); errbacks with
            L{EpcatError} or L{epcat.status.UsageError}.
        """
        from epcat import tlsfix

        tlsfix.install()
        plan = self.plan
        # Parse every description first: a bad one is a usage error before
        # anything listens or connects.
        server = parse_server(self.reactor, plan.listen) if plan.listen else None
        clients = [parse_client(self.reactor, d) for d in plan.connect]
        self.reactor.addSystemEventTrigger("before", "shutdown", self._shutdown)
        if plan.mode == modes.RELAY:
            return self._listen(server, clients[0])
        if plan.mode == modes.LISTEN:
            return self._listen(server, None)
        if plan.mode == modes.CONNECT:
            return self._connect_stdio(clients[0])
        return self._tunnel(clients[0], clients[1])

    # -- modes

    @defer.inlineCallbacks
    def _listen(self, server: Any, client: Any) -> Any:
        plan = self.plan
        done: defer.Deferred[int] = defer.Deferred()
        runner = self

        class InboundFactory(Factory):
            def buildProtocol(self, addr: Any) -> RelaySide | None:
                if client is None and runner.pairs:
                    return None  # one-shot: only the first connection
                pair = runner._new_pair(
                    half_close_mode(plan.listen or ""),
                    half_close_mode(plan.connect[0]) if client else HALF_CLOSE_SHUTDOWN,
                )
                if client is not None:
                    pair.outbound_description = plan.connect[0]
                    pair.dial = lambda: runner._dial(pair, client, plan.connect[0])
                else:
                    pair.outbound_description = "stdio"
                    pair.dial = lambda: runner._attach_stdio(pair, pair.outbound)
                    pair.done.addCallback(runner._status_of).chainDeferred(done)
                    runner._stop_listening()
                return pair.inbound

        try:
            port = yield server.listen(InboundFactory())
        except Exception as e:
            status, reason = classify(Failure(e))
            raise EpcatError(ExitStatus.FAILURE, f"cannot listen on {plan.listen}: {reason}")
        self.ports.append(port)
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

    def _connect_stdio(self, client: Any) -> defer.Deferred[int]:
        description = self.plan.connect[0]
        pair = self._new_pair(HALF_CLOSE_SHUTDOWN, half_close_mode(description))
        pair.stdio_inbound = True
        pair.outbound_description = description
        d = self._dial(pair, client, description, then=lambda: self._attach_stdio(pair, pair.inbound))
        del d
        return pair.done.addCallback(self._status_of)

    def _tunnel(self, first: Any, second: Any) -> defer.Deferred[int]:
        a, b = self.plan.connect
        pair = self._new_pair(half_close_mode(a), half_close_mode(b))
        pair.inbound_description = a
        pair.outbound_description = b
        pair.dial = lambda: self._dial(pair, second, b)
        self._log_connecting(pair, a)
        attempt = first.connect(SideFactory(pair.inbound))
        pair.attempt = attempt

        def failed(failure: Failure) -> None:
            # The first leg failed: report it as the pair's failure.
            pair.outbound_description = a
            pair.outbound_failed(failure)

        attempt.addCallbacks(lambda _: self._attempt_done(pair, attempt), failed)
        return pair.done.addCallback(self._status_of)

    # -- pairs

    def _new_pair(self, inbound_half_close: str, outbound_half_close: str) -> Pair:
        pair = Pair(
            self.reactor,
            next(self._ids),
            inbound_half_close,
            outbound_half_close,
            on_event=self._on_event,
        )
        pair.stdio_inbound = False
        pair.inbound_description = self.plan.listen
        pair.outbound_description = None
        pair.dial = None
        self.pairs.add(pair)
        pair.done.addBoth(self._forget, pair)
        return pair

    def _forget(self, result: Any, pair: Pair) -> Any:
        self.pairs.discard(pair)
        return result

    def _dial(self, pair: Pair, client: Any, description: str, then: Any = None) -> Any:
        self._log_connecting(pair, description)
        attempt = client.connect(SideFactory(pair.outbound))
        pair.attempt = attempt

        def connected(_: Any) -> None:
            self._attempt_done(pair, attempt)
            if then is not None:
                then()

        attempt.addCallbacks(connected, pair.outbound_failed)
        return attempt

    def _attempt_done(self, pair: Pair, attempt: Any) -> None:
        if pair.attempt is attempt:
            pair.attempt = None
        pair._maybe_finish()

    def _attach_stdio(self, pair: Pair, side: RelaySide) -> None:
        StandardIO(side, reactor=self.reactor)

    def _stop_listening(self) -> None:
        ports, self.ports = self.ports, []
        for port in ports:
            port.stopListening()

    def _status_of(self, pair: Pair) -> int:
        failure = pair_failure(pair)
        if failure is None:
            return ExitStatus.OK
        status, _, _ = failure
        raise EpcatError(status, "")  # already reported by _on_event

    # -- events

    def _log_connecting(self, pair: Pair, description: str) -> None:
        self.ui.info(
            "connecting",
            f"[{pair.conn_id}] connecting to {description}",
            conn=pair.conn_id,
            endpoint=description,
        )

    def _on_event(self, event: str, pair: Pair, side: RelaySide | None) -> None:
        ui = self.ui
        if event == "accepted":
            if pair.inbound_description is not None and not pair.stdio_inbound:
                transport = side.transport
                peer, host = transport.getPeer(), transport.getHost()
                if self.plan.mode == modes.TUNNEL:
                    ui.info(
                        "connected",
                        f"[{pair.conn_id}] connected to {format_address(peer)} "
                        f"from {format_address(host)}",
                        conn=pair.conn_id,
                        endpoint=pair.inbound_description,
                        peer=format_address(peer),
                        local=format_address(host),
                    )
                else:
                    ui.info(
                        "accepted",
                        f"[{pair.conn_id}] accepted {format_address(peer)} "
                        f"on {format_address(host)}",
                        conn=pair.conn_id,
                        peer=format_address(peer),
                        local=format_address(host),
                    )
            if pair.dial is not None:
                pair.dial()
        elif event == "connected":
            if pair.outbound_description == "stdio" or side.transport is None:
                return
            peer, host = side.transport.getPeer(), side.transport.getHost()
            ui.info(
                "connected",
                f"[{pair.conn_id}] connected to {format_address(peer)} from {format_address(host)}",
                conn=pair.conn_id,
                endpoint=pair.outbound_description,
                peer=format_address(peer),
                local=format_address(host),
            )
        elif event == "handshake":
            self._log_handshake(pair, side)
        elif event == "failed":
            self._log_failed(pair)
        elif event == "closed":
            self._log_closed(pair)

    def _log_handshake(self, pair: Pair, side: RelaySide) -> None:
        if not self.ui.enabled("info"):
            return
        try:
            connection = side.transport.getHandle()
            version = connection.get_protocol_version_name()
            cipher = connection.get_cipher_name()
            alpn = connection.get_alpn_proto_negotiated() or b""
        except Exception:
            return
        alpn_text = alpn.decode("ascii", "replace")
        self.ui.info(
            "tls",
            f"[{pair.conn_id}] TLS handshake done with {side.role} side: {version}, {cipher}"
            + (f", ALPN {alpn_text}" if alpn_text else ""),
            conn=pair.conn_id,
            side=side.role,
            tls_version=version,
            cipher=cipher,
            alpn=alpn_text or None,
        )

    def _log_failed(self, pair: Pair) -> None:
        failure = pair.outbound_failure
        if failure is None or getattr(pair, "_quiet_failure", False):
            return
        if failure.check(defer.CancelledError, ConnectingCancelledError) and (
            self._stopping or pair.inbound.lost
        ):
            return  # we stopped it ourselves
        status, reason = classify(failure)
        message = f"cannot connect to {pair.outbound_description}: {reason}"
        if self._one_shot:
            self.ui.error(message, event="failed", conn=pair.conn_id, status=int(status),
                          endpoint=pair.outbound_description)
        else:
            self.ui.warning(f"[{pair.conn_id}] {message}", event="failed", conn=pair.conn_id,
                            status=int(status), endpoint=pair.outbound_description)

    def _log_closed(self, pair: Pair) -> None:
        failure = pair_failure(pair)
        if failure is not None and pair.outbound_failure is None:
            status, reason, side = failure
            if side is pair.outbound:
                what = f"{pair.outbound_description}"
            else:
                what = f"{pair.inbound_description or 'stdio'}"
            if side.half_close == HALF_CLOSE_TLS and not side.handshake_done:
                if side is pair.outbound:
                    message = f"cannot connect to {what}: {reason}"
                else:
                    message = f"TLS handshake with a client on {what} failed: {reason}"
            else:
                message = f"connection on {what} failed: {reason}"
            if self._one_shot:
                self.ui.error(message, event="failed", conn=pair.conn_id, status=int(status))
            else:
                self.ui.warning(f"[{pair.conn_id}] {message}", event="failed",
                                conn=pair.conn_id, status=int(status))
        if not self.ui.enabled("info"):
            return
        sent = pair.inbound.bytes_received
        received = pair.outbound.bytes_received
        first = pair.first_closer or "-"
        self.ui.info(
            "closed",
            f"[{pair.conn_id}] closed: {sent} bytes inbound->outbound, "
            f"{received} bytes outbound->inbound, {pair.duration:.3f} s, "
            f"{first} side ended first",
            conn=pair.conn_id,
            bytes_in_to_out=sent,
            bytes_out_to_in=received,
            duration=round(pair.duration, 6),
            first_closer=pair.first_closer,
        )

    # -- stopping

    def _shutdown(self) -> defer.Deferred[Any] | None:
        """
        Before the reactor shuts down (SIGTERM, SIGINT, or the end of a
        one-shot run): stop listening, close every open pair cleanly, and
        abort what has not finished within L{DRAIN_TIMEOUT} seconds.
        """
        self._stopping = True
        waits = [port.stopListening() for port in self.ports]
        self.ports = []
        pairs = list(self.pairs)
        if pairs:
            self.ui.info("stopping", f"stopping: closing {len(pairs)} open connection(s)")
        for pair in pairs:
            pair._quiet_failure = True
            pair.close()
            waits.append(pair.done)
        if not waits:
            return None
        all_done = defer.DeferredList([defer.maybeDeferred(lambda w=w: w) for w in waits],
                                      consumeErrors=True)
        timer = self.reactor.callLater(DRAIN_TIMEOUT, self._abort_all)
        started = time.monotonic()

        def finished(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            self.ui.debug("stopped", f"stopped after {time.monotonic() - started:.3f} s")
            return result

        return all_done.addBoth(finished)

    def _abort_all(self) -> None:
        for pair in list(self.pairs):
            pair.abort()


def run(reactor: Any, plan: Plan, ui: UI) -> defer.Deferred[int]:
    """
    Carry out C{plan} on C{reactor}; the function C{react()} runs.

    @return: a L{Deferred} that fires with the exit status, or errbacks with
        L{EpcatError} / L{epcat.status.UsageError}.
    """
    return defer.maybeDeferred(Runner(reactor, plan, ui).run)
