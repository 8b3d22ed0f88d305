# -*- test-case-name: tests.unit.test_cli -*-
"""
What one run of epcat is to do, checked, with no Twisted in sight.

The CLI turns arguments into a L{Plan}; L{epcat.run} carries it out.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Sequence

from epcat.status import UsageError

#: the modes, by the subcommands given
RELAY = "relay"  # listen SERVER connect CLIENT
CONNECT = "connect"  # connect CLIENT, with stdin/stdout
LISTEN = "listen"  # listen SERVER, first connection with stdin/stdout
TUNNEL = "tunnel"  # connect A connect B


@dataclasses.dataclass(frozen=True)
class ConnectOptions:
    """
    Options of one C{connect CLIENT}.

    @ivar connect_timeout: seconds one connection attempt may take, or
        L{None} for the endpoint's own limit.
    @ivar retry: further attempts after a failed one.
    @ivar reconnect: keep the connection up for the life of the process
        (C{ClientService}).
    @ivar fail_after: with C{reconnect}: give up after this many failures in a
        row, or L{None} for never.
    @ivar backoff_initial: seconds before the first retry.
    @ivar backoff_max: the longest wait between attempts, in seconds.
    @ivar backoff_factor: how much the wait grows after each failure.
    @ivar proxy_header: C{"v1"} or C{"v2"}: send a PROXY header first on
        every connection; L{None}: none.
    """

    connect_timeout: float | None = None
    retry: int = 0
    reconnect: bool = False
    fail_after: int | None = None
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    backoff_factor: float = 1.5
    proxy_header: str | None = None


@dataclasses.dataclass(frozen=True)
class ListenOptions:
    """
    Options of C{listen SERVER}.

    @ivar once: serve one connection, exit when it ends.
    @ivar max_connections: at most this many relayed pairs at once.
    @ivar allow: CIDR networks whose peers are served (empty: all).
    @ivar deny: CIDR networks whose peers are refused.
    @ivar drain_timeout: seconds open pairs get to finish after SIGTERM or
        SIGINT.
    @ivar proxy_trusted: with a C{haproxy:} listener, CIDR networks allowed
        to send PROXY headers (empty: anyone).
    @ivar proxy_header_timeout: seconds a C{haproxy:} client may take to send
        its PROXY header.
    """

    once: bool = False
    max_connections: int | None = None
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    drain_timeout: float = 10.0
    proxy_trusted: tuple[str, ...] = ()
    proxy_header_timeout: float = 5.0
    workers: int = 1


@dataclasses.dataclass(frozen=True)
class Plan:
    """
    A checked description of one run.

    @ivar mode: L{RELAY}, L{CONNECT}, L{LISTEN} or L{TUNNEL}.
    @ivar listen: the server endpoint description, if any.
    @ivar connect: the client endpoint descriptions, in order (none, one or
        two).
    @ivar verbosity: -1 (-q) to 2 (-vv).
    @ivar log_format: C{"text"} or C{"json"}.
    """

    mode: str
    listen: str | None = None
    connect: tuple[str, ...] = ()
    verbosity: int = 0
    log_format: str = "text"
    listen_options: ListenOptions = ListenOptions()
    connect_options: tuple[ConnectOptions, ...] = ()
    idle_timeout: float | None = None
    half_close_timeout: float | None = None
    progress: bool = False
    stats: bool = False
    crlf: bool = False
    keylog: str | None = None
    hexdump: bool = False
    dump: str | None = None
    pcap: str | None = None

    @property
    def reconnect(self) -> bool:
        """
        Is the outbound side persistent (C{--reconnect} after any C{connect})?
        """
        return any(o.reconnect for o in self.connect_options)

    def options_for(self, index: int) -> ConnectOptions:
        """
        The options of the C{index}th C{connect}; in a tunnel, C{--reconnect}
        and the backoff options given after either leg apply to both.
        """
        own = self.connect_options[index] if index < len(self.connect_options) else ConnectOptions()
        if self.mode != TUNNEL:
            return own
        default = ConnectOptions()
        merged = {}
        for name in ("reconnect", "fail_after", "backoff_initial", "backoff_max", "backoff_factor"):
            values = [getattr(o, name) for o in self.connect_options]
            changed = [v for v in values if v != getattr(default, name)]
            merged[name] = changed[0] if changed else getattr(own, name)
        return dataclasses.replace(own, **merged)


def check_network(cidr: str, option: str) -> str:
    """
    Check one C{--allow}/C{--deny}/C{--proxy-trusted} value.

    @param cidr: e.g. C{"127.0.0.0/8"}, C{"::1"}, C{"192.0.2.3"}.
    @raise UsageError: it is not an IPv4 or IPv6 network.
    """
    import ipaddress

    try:
        ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise UsageError(
            f"{option} {cidr!r}: not an IP network; e.g. 127.0.0.0/8, 192.0.2.7 or ::1/128"
        ) from None
    return cidr


def make_plan(
    steps: Sequence[tuple[str, Any]],
    verbosity: int = 0,
    log_format: str = "text",
    **global_options: Any,
) -> Plan:
    """
    Check the order of C{listen}/C{connect} subcommands and build a L{Plan}.

    @param steps: (subcommand, (endpoint description, options)) in
        command-line order; the options are a L{ListenOptions} or
        L{ConnectOptions}, or absent.
    @param global_options: the other L{Plan} fields (C{idle_timeout}, ...).
    @raise UsageError: for any order other than C{listen}, C{connect},
        C{listen ... connect ...} and C{connect ... connect ...}, or options
        that do not fit the mode.
    """
    names = [name for name, _ in steps]
    descriptions = []
    listen_options = ListenOptions()
    connect_options = []
    for name, value in steps:
        description, options = value if isinstance(value, tuple) else (value, None)
        if name in ("listen", "connect") and not (description or "").strip():
            kind, example = ("server", "tcp:8080") if name == "listen" else (
                "client", "tcp:127.0.0.1:80")
            raise UsageError(f"{name}: empty {kind} endpoint description; try e.g. '{example}'")
        descriptions.append(description)
        if name == "listen" and options is not None:
            listen_options = options
        elif name == "connect":
            connect_options.append(options or ConnectOptions())
    common = dict(
        verbosity=verbosity,
        log_format=log_format,
        listen_options=listen_options,
        connect_options=tuple(connect_options),
        **global_options,
    )
    plan = None
    if names == ["listen"]:
        plan = Plan(LISTEN, listen=descriptions[0], **common)
    elif names == ["connect"]:
        plan = Plan(CONNECT, connect=(descriptions[0],), **common)
    elif names == ["listen", "connect"]:
        plan = Plan(RELAY, listen=descriptions[0], connect=(descriptions[1],), **common)
    elif names == ["connect", "connect"]:
        plan = Plan(TUNNEL, connect=tuple(descriptions), **common)
    if plan is not None:
        from epcat.endpoints import endpoint_type

        stdio_clients = [d for d in plan.connect if endpoint_type(d) == "stdio"]
        if stdio_clients and plan.mode != RELAY:
            raise UsageError(
                "connect stdio: joins stdin/stdout to an accepted connection: use it after "
                "'listen SERVER' (alone, 'connect CLIENT' already uses stdin/stdout)"
            )
        if stdio_clients:
            # 'listen X connect stdio:' reads the same as 'listen X'
            plan = dataclasses.replace(plan, mode=LISTEN, connect=(), connect_options=())
        if plan.listen is not None and endpoint_type(plan.listen) == "stdio":
            # Twisted's stdio: server "accepts" stdin/stdout once and never
            # stops listening: 'listen stdio: connect X' reads the same as
            # 'connect X' (which ends with the connection)
            if plan.mode != RELAY:
                raise UsageError(
                    "listen stdio: alone would join stdin/stdout to themselves: give "
                    "'connect CLIENT' after it, or use 'connect CLIENT' alone"
                )
            plan = dataclasses.replace(
                plan, mode=CONNECT, listen=None, listen_options=ListenOptions()
            )
        if plan.listen_options.proxy_header_timeout != ListenOptions().proxy_header_timeout and (
            plan.listen is None or endpoint_type(plan.listen) != "haproxy"
        ):
            raise UsageError(
                "listen: --proxy-header-timeout applies to haproxy: listeners only "
                f"(e.g. 'listen haproxy:{plan.listen or 'tcp:8080'}')"
            )
        if plan.listen_options.proxy_trusted and (
            plan.listen is None or endpoint_type(plan.listen) != "haproxy"
        ):
            raise UsageError(
                "listen: --proxy-trusted applies to haproxy: listeners only "
                f"(e.g. 'listen haproxy:{plan.listen or 'tcp:8080'}')"
            )
        if plan.listen_options.workers > 1 and (plan.mode != RELAY or plan.listen_options.once):
            raise UsageError(
                "listen: --workers N applies to a relay (listen SERVER connect CLIENT) "
                "that serves many connections"
            )
        if any(o.fail_after is not None for o in plan.connect_options) and not plan.reconnect:
            # (in a tunnel, --reconnect after either leg will do)
            raise UsageError(
                "connect: --fail-after goes with --reconnect (for one-off attempts use --retry N)"
            )
        if plan.mode == TUNNEL:
            default = ConnectOptions()
            for name in ("fail_after", "backoff_initial", "backoff_max", "backoff_factor"):
                given = {getattr(o, name) for o in plan.connect_options} - {getattr(default, name)}
                if len(given) > 1:
                    option = "--" + name.replace("_", "-")
                    raise UsageError(
                        f"connect: {option} is given twice with different values "
                        f"({', '.join(str(v) for v in sorted(given))}); in a tunnel it applies "
                        "to both legs: give it once"
                    )
        if plan.mode == RELAY and plan.reconnect:
            raise UsageError(
                "--reconnect keeps one outbound connection up: use it with 'connect CLIENT' "
                "or 'connect A connect B'; for a relay use --retry N"
            )
        return plan
    if not names:
        raise UsageError(
            "nothing to do: give 'listen SERVER' and/or 'connect CLIENT' (see epcat --help)"
        )
    raise UsageError(
        f"cannot run {' '.join(names)}: use 'listen SERVER [connect CLIENT]', "
        "'connect CLIENT' or 'connect CLIENT_A connect CLIENT_B'"
    )
