# -*- test-case-name: tests.e2e.test_errors_e2e,tests.e2e.test_relay_e2e -*-
"""
What epcat tells people about connections: the -v events, failures at the
default verbosity, totals for C{--stats} and the SIGUSR1 table.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectingCancelledError, ConnectionDone, ConnectionLost

from epcat import splice as zero_copy
from epcat.endpoints import HALF_CLOSE_TLS
from epcat.relay import Pair, RelaySide
from epcat.status import ExitStatus, classify
from epcat.ui import NULL, UI, address_fields, format_address


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
        if side.write_lost and pair.close_reason is None:
            # (as socat's and curl's write errors: what was still coming
            # for that reader was not delivered)
            return ExitStatus.FAILURE, "its reader went away (broken pipe)", side
    for side in (pair.outbound, pair.inbound):
        reason = side.lost_reason
        if reason is None or side.connected_at is None:
            continue
        if reason.type is ConnectionDone and (
            side.half_close != HALF_CLOSE_TLS or side.handshake_done
        ):
            continue  # the common case, cheaply
        if side.half_close == HALF_CLOSE_TLS and not side.handshake_done:
            status, text = classify(reason)
            if status in (ExitStatus.OK, ExitStatus.FAILURE):
                status = ExitStatus.TLS_HANDSHAKE
                text = "TLS handshake failed: connection closed during the handshake"
            if status == ExitStatus.TLS_VERIFY:
                from epcat.tlsinfo import verification_failure

                detail = verification_failure(reason.value, side.tls_record, None)
                if detail:
                    text = f"TLS certificate verification failed: {detail}"
            return status, text, side
        if pair.close_reason is not None and reason.check(ConnectionLost):
            continue  # we aborted it ourselves (timeout, drain)
        if side.half_close == HALF_CLOSE_TLS and reason.check(ConnectionLost):
            # Twisted reports a TLS peer that closed TCP without close_notify
            # and one that reset the connection alike (ConnectionLost).
            # Either way the stream may have been cut short (RFC 8446 section
            # 6.1: close_notify is what tells truncation from the end) --
            # unless epcat had sent its own close_notify first: servers such
            # as nginx answer that by closing without one.
            record = side.tls_record
            if record is not None and record.reset:
                return ExitStatus.FAILURE, "connection reset by peer", side
            if side.write_shutdown_sent:
                continue
            return ExitStatus.FAILURE, TLS_TRUNCATED, side
        status, text = classify(reason)
        if status != ExitStatus.OK:
            return status, text, side
    return None


#: the reason given for a TLS connection that ended without close_notify
TLS_TRUNCATED = (
    "connection closed without a TLS close_notify: what was received may be cut short"
)


class Totals:
    """
    Counters over the life of the process, for C{--stats} and SIGUSR1.
    """

    def __init__(self) -> None:
        self.accepted = 0
        self.refused = 0
        self.failed = 0
        self.closed = 0
        self.bytes_in_to_out = 0
        self.bytes_out_to_in = 0


class Reporter:
    """
    Turns pair events into log lines.

    @ivar one_shot: failures end the process (stdin/stdout and tunnel modes),
        so they are errors rather than warnings.
    """

    def __init__(self, ui: UI, one_shot: bool, tunnel: bool = False) -> None:
        self.ui = ui
        self.one_shot = one_shot
        self.tunnel = tunnel
        self.totals = Totals()
        self.stopping = False
        #: what the verbosity lets through, asked once (several events
        #: come for every connection)
        self._shows_info = ui.enabled("info")
        #: event name -> handler(pair, side), looked up once, for the
        #: events of L{epcat.relay.Pair} (L{epcat.run.Runner} calls them);
        #: events that would show nothing at this verbosity have none
        self.handlers = {
            name[4:].replace("_", "-"): getattr(self, name)
            for name in dir(self)
            if name.startswith("_on_")
        }
        if not ui.enabled("debug"):
            del self.handlers["fast-path"]
            del self.handlers["fast-path-off"]

    # -- events

    def _on_accepted(self, pair: Pair, side: RelaySide) -> None:
        if pair.stdio_inbound:
            return
        if not self.tunnel:
            self.totals.accepted += 1
        if not self._shows_info:
            return  # (the common case: no addresses to look up)
        transport = side.transport
        peer, host = transport.getPeer(), transport.getHost()
        if self.tunnel:
            self.ui.info(
                "connected",
                f"[{pair.conn_id}] connected to {format_address(peer)} from {format_address(host)}",
                conn=pair.conn_id,
                endpoint=pair.inbound_description,
                peer=format_address(peer),
                local=format_address(host),
            )
            return
        proxied_by = getattr(transport, "proxied_by", None)
        via = f" (from a PROXY header sent by {format_address(proxied_by)})" if proxied_by else ""
        self.ui.info(
            "accepted",
            f"[{pair.conn_id}] accepted {format_address(peer)} on {format_address(host)}{via}",
            conn=pair.conn_id,
            peer=format_address(peer),
            local=format_address(host),
            peer_address=address_fields(peer) or None,
            proxy_header_from=format_address(proxied_by) if proxied_by else None,
        )

    def _on_connected(self, pair: Pair, side: RelaySide) -> None:
        if (
            pair.outbound_description == "stdio"
            or side.transport is None
            or not self._shows_info
        ):
            return
        peer, host = side.transport.getPeer(), side.transport.getHost()
        self.ui.info(
            "connected",
            f"[{pair.conn_id}] connected to {format_address(peer)} from {format_address(host)}",
            conn=pair.conn_id,
            endpoint=pair.outbound_description,
            peer=format_address(peer),
            local=format_address(host),
        )

    def _on_handshake(self, pair: Pair, side: RelaySide) -> None:
        role = "client" if side is pair.outbound or self.tunnel else "server"
        self.handshake(pair.conn_id, side.role, role, side.transport, side.tls_record)

    def handshake(self, conn_id: int | None, side_name: str, role: str, transport: Any,
                  record: Any) -> None:
        """
        -v: what a TLS handshake negotiated, and the peer's certificates.
        """
        if not self.ui.enabled("info"):
            return
        from epcat.tlsinfo import describe_session, session_summary, time_left

        try:
            info = describe_session(transport, record, role)
        except Exception as e:  # a transport that is not pyOpenSSL's
            self.ui.debug("tls", f"cannot describe the TLS session: {e}")
            return
        tag = f"[{conn_id}] " if conn_id is not None else ""
        if self.ui.log_format == "json":
            self.ui.info(
                "tls",
                f"{tag}TLS handshake done with the {side_name} side",
                conn=conn_id,
                side=side_name,
                role=role,
                tls_version=info["version"],
                cipher=info["cipher"],
                alpn=NULL if info["alpn"] is None else info["alpn"],
                sni=NULL if info["sni"] is None else info["sni"],
                verification=info["verification"],
                chain=info["chain"],
            )
            return
        lines = [f"{tag}TLS with the {side_name} side: " + session_summary(info, role)]
        for depth, cert in enumerate(info["chain"]):
            sans = ", ".join(cert["subject_alt_names"]) or "none"
            lines.append(
                f"{tag}  certificate {depth}: subject {cert['subject']}; issuer {cert['issuer']}"
            )
            lines.append(
                f"{tag}    SAN {sans}; valid {cert['not_before'][:10]} to "
                f"{cert['not_after'][:10]} ({time_left(cert)}); "
                f"{cert['key']}; SHA-256 {cert['sha256']}"
            )
        for line in lines:
            self.ui.info("tls", line, conn=conn_id)

    def connecting(self, pair: Pair, description: str) -> None:
        if not self._shows_info:
            return
        self.ui.info(
            "connecting",
            f"[{pair.conn_id}] connecting to {description}",
            conn=pair.conn_id,
            endpoint=description,
        )

    def retrying(self, pair: Pair, description: str, failure: Any, delay: float,
                 attempt: int) -> None:
        _, reason = classify(failure)
        self.ui.info(
            "retrying",
            f"[{pair.conn_id}] cannot connect to {description}: {reason}; "
            f"attempt {attempt} in {delay:.1f} s",
            conn=pair.conn_id,
            endpoint=description,
            reason=reason,
            delay=round(delay, 3),
            attempt=attempt,
        )

    def refused(self, address: Any, why: str) -> None:
        self.totals.refused += 1
        self.ui.warning(
            f"refused {format_address(address)}: {why}",
            event="refused",
            peer=format_address(address),
            reason=why,
        )

    def proxy_rejected(self, wrapper: Any, reason: str) -> None:
        """
        A connection to a C{haproxy:} listener closed without being relayed.
        """
        self.totals.refused += 1
        sender = format_address(getattr(wrapper, "proxied_by", None))
        self.ui.warning(
            f"closed {sender}: {reason}",
            event="proxy-header-rejected",
            peer=sender,
            reason=reason,
        )

    def _on_failed(self, pair: Pair, side: RelaySide | None) -> None:
        failure = pair.outbound_failure
        if failure is None or pair.quiet:
            return
        if failure.check(defer.CancelledError, ConnectingCancelledError) and (
            self.stopping or pair.inbound.lost or pair.close_reason
        ):
            return  # we stopped it ourselves
        self.totals.failed += 1
        status, reason = classify(failure)
        self.failure(pair, status, f"cannot connect to {pair.outbound_description}: {reason}")

    def failure(self, pair: Any, status: int, message: str) -> None:
        """
        Report a failed connection of a pair (an L{epcat.relay.Pair} or an
        L{epcat.fused.FusedPair}: only its C{conn_id} is used): an error
        when failures end the process, else a warning.
        """
        fields = dict(event="failed", conn=pair.conn_id, status=int(status))
        if self.one_shot:
            self.ui.error(message, **fields)
        else:
            self.ui.warning(f"[{pair.conn_id}] {message}", **fields)

    def _on_fast_path(self, pair: Pair, side: RelaySide | None) -> None:
        if not self.ui.enabled("debug"):
            return
        self.ui.debug(
            "fast-path",
            f"[{pair.conn_id}] fast path: {zero_copy.MOVER_DESCRIPTION}",
            conn=pair.conn_id,
        )

    def _on_fast_path_off(self, pair: Pair, side: RelaySide | None) -> None:
        # (epcat.splice: no pipe could be made, e.g. EMFILE)
        self.ui.debug(
            "fast-path-off",
            f"[{pair.conn_id}] no pipe for splice(2) (out of file descriptors?): "
            "relaying in userspace",
            conn=pair.conn_id,
        )

    def _on_internal_error(self, pair: Pair, side: RelaySide | None) -> None:
        failure = pair.internal_error
        self.totals.failed += 1
        self.ui.error(
            f"[{pair.conn_id}] internal error, connection closed: "
            f"{failure.type.__name__}: {failure.getErrorMessage()} (a bug in epcat; "
            "-vv shows the traceback)",
            event="internal-error",
            conn=pair.conn_id,
        )
        self.ui.debug("traceback", failure.getTraceback().rstrip(), conn=pair.conn_id)

    def _on_closing(self, pair: Pair, side: RelaySide | None) -> None:
        self.ui.info(
            "closing",
            f"[{pair.conn_id}] closing: {pair.close_reason}",
            conn=pair.conn_id,
            reason=pair.close_reason,
        )

    def _on_closed(self, pair: Pair, side: RelaySide | None) -> None:
        totals = self.totals
        totals.closed += 1
        totals.bytes_in_to_out += pair.inbound.bytes_received
        totals.bytes_out_to_in += pair.outbound.bytes_received
        failure = pair_failure(pair)
        if failure is not None and pair.outbound_failure is None and not pair.quiet:
            status, reason, failed_side = failure
            totals.failed += 1
            if failed_side is pair.outbound:
                what = pair.outbound_description
            else:
                what = pair.inbound_description or "stdio"
            if failed_side.half_close == HALF_CLOSE_TLS and not failed_side.handshake_done:
                if failed_side is pair.outbound:
                    message = f"cannot connect to {what}: {reason}"
                else:
                    message = f"TLS handshake with a client on {what} failed: {reason}"
            else:
                message = f"connection on {what} failed: {reason}"
            if reason == TLS_TRUNCATED and not self.one_shot:
                # clients (curl among them) often close this way; a relay
                # says so at -v only
                self.ui.info("failed", f"[{pair.conn_id}] {message}", conn=pair.conn_id)
            else:
                self.failure(pair, status, message)
        if not self._shows_info:
            return
        if pair.outbound_failure is not None and not pair.joined:
            if pair.inbound.lost and pair.outbound_failure.check(
                defer.CancelledError, ConnectingCancelledError
            ):
                self.ui.info(
                    "closed",
                    f"[{pair.conn_id}] closed: the client went away before "
                    f"{pair.outbound_description} answered; "
                    f"{pair.inbound.bytes_received} bytes from it, {pair.duration:.3f} s",
                    conn=pair.conn_id,
                    bytes_in_to_out=pair.inbound.bytes_received,
                    bytes_out_to_in=0,
                    duration=round(pair.duration, 6),
                )
            return
        sent = pair.inbound.bytes_received
        received = pair.outbound.bytes_received
        child_exit = getattr(pair.outbound.transport, "exit", None)
        if child_exit is not None:
            self.ui.info("exit", f"[{pair.conn_id}] {pair.outbound_description}: {child_exit}",
                         conn=pair.conn_id, child_exit=str(child_exit))
        if pair.close_reason:
            ending = f"closed by epcat: {pair.close_reason}"
        elif pair.first_closer:
            ending = f"{pair.first_closer} side ended first"
        else:
            ending = "closed by epcat"
        self.ui.info(
            "closed",
            f"[{pair.conn_id}] closed: {sent} bytes inbound->outbound, "
            f"{received} bytes outbound->inbound, {pair.duration:.3f} s, {ending}",
            conn=pair.conn_id,
            bytes_in_to_out=sent,
            bytes_out_to_in=received,
            duration=round(pair.duration, 6),
            first_closer=pair.first_closer,
            reason=pair.close_reason,
        )

    # -- tables

    def table(self, pairs: list[Pair], now: float) -> None:
        """
        SIGUSR1: the open pairs (id, peers, bytes each way, age) and totals,
        on stderr, whatever the verbosity (it was asked for).
        """
        lines = [f"{len(pairs)} open pair(s)"]
        lines.append(f"{'id':>6}  {'inbound peer':<24} {'outbound peer':<24} "
                     f"{'in->out':>12} {'out->in':>12} {'age s':>9}")
        for pair in sorted(pairs, key=lambda p: p.conn_id):
            lines.append(
                f"{pair.conn_id:>6}  {_peer(pair.inbound):<24} {_peer(pair.outbound):<24} "
                f"{pair.inbound.bytes_received:>12} {pair.outbound.bytes_received:>12} "
                f"{now - pair.started_at:>9.1f}"
            )
        lines.append(self._totals_line(pairs))
        if self.ui.log_format == "json":
            self.ui.emit(
                "error", "table", lines[0],
                pairs=[{
                    "conn": p.conn_id,
                    "inbound_peer": _peer(p.inbound),
                    "outbound_peer": _peer(p.outbound),
                    "bytes_in_to_out": p.inbound.bytes_received,
                    "bytes_out_to_in": p.outbound.bytes_received,
                    "age": round(now - p.started_at, 3),
                } for p in pairs],
                **self._totals_fields(pairs),
            )
            return
        from epcat.ui import printable

        # (each line escaped on its own: a peer's name, a UNIX socket path
        # say, must not add a line of its own)
        self.ui.raw("\n".join(printable(line) for line in lines) + "\n")

    def print_stats(self, pairs: list[Pair]) -> None:
        """
        C{--stats}: the totals, once, at exit.
        """
        if self.ui.log_format == "json":
            self.ui.emit("error", "stats", "totals", **self._totals_fields(pairs))
        else:
            self.ui.raw("epcat: " + self._totals_line(pairs) + "\n")

    def _totals_fields(self, pairs: list[Pair]) -> dict[str, int]:
        t = self.totals
        return {
            "accepted": t.accepted,
            "refused": t.refused,
            "failed": t.failed,
            "closed": t.closed,
            "open": len(pairs),
            "bytes_in_to_out": t.bytes_in_to_out + sum(p.inbound.bytes_received for p in pairs),
            "bytes_out_to_in": t.bytes_out_to_in + sum(p.outbound.bytes_received for p in pairs),
        }

    def _totals_line(self, pairs: list[Pair]) -> str:
        f = self._totals_fields(pairs)
        return (
            f"totals: {f['accepted']} accepted, {f['refused']} refused, {f['failed']} failed, "
            f"{f['closed']} closed, {f['open']} open; {f['bytes_in_to_out']} bytes "
            f"inbound->outbound, {f['bytes_out_to_in']} bytes outbound->inbound"
        )


def _peer(side: RelaySide) -> str:
    transport = side.transport
    if transport is None or side.connected_at is None:
        return "-"
    try:
        return format_address(transport.getPeer())
    except Exception:
        return "?"
