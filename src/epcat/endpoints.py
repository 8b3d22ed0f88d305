# -*- test-case-name: tests.unit.test_endpoints -*-
"""
Endpoint descriptions: parsing with messages a person can act on, the list
of endpoint types this installation knows, and which types half-close.

All parsing is Twisted's own (L{serverFromString} / L{clientFromString}), so
every built-in type and every installed endpoint plugin works; this module
only turns their exceptions into L{UsageError}s.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from typing import Any

from epcat.status import EpcatError, UsageError

#: How a type's transport ends one direction of a stream.
#:  - C{"shutdown"}: a real half-close (C{shutdown(SHUT_WR)}, or closing
#:    stdout), and the peer's half-close arrives as C{readConnectionLost}.
#:  - C{"tls"}: TLS; epcat sends close_notify for its write side and keeps
#:    reading.  A peer's close_notify arrives as C{readConnectionLost} (with
#:    L{epcat.tlsfix} installed; Twisted alone closes the connection on it).
#:  - C{"none"}: no half-close; when the other side ends, this side is closed
#:    once everything written to it has been flushed.
HALF_CLOSE_SHUTDOWN = "shutdown"
HALF_CLOSE_TLS = "tls"
HALF_CLOSE_NONE = "none"

#: each mode in words, for C{epcat endpoints TYPE} and C{epcat explain}
HALF_CLOSE_WORDS = {
    HALF_CLOSE_SHUTDOWN: "yes (shutdown of the write side)",
    HALF_CLOSE_TLS: "sends close_notify and keeps reading; a peer's close_notify arrives as EOF",
    HALF_CLOSE_NONE: "no: closed after flushing when the other side ends",
}

_HALF_CLOSE_BY_TYPE = {
    "tcp": HALF_CLOSE_SHUTDOWN,
    "tcp6": HALF_CLOSE_SHUTDOWN,
    "unix": HALF_CLOSE_SHUTDOWN,
    "stdio": HALF_CLOSE_SHUTDOWN,
    "systemd": HALF_CLOSE_SHUTDOWN,
    "hostname": HALF_CLOSE_SHUTDOWN,
    # epcat.plugins: loseWriteConnection closes the child's stdin
    "exec": HALF_CLOSE_SHUTDOWN,
    "tls": HALF_CLOSE_TLS,
    "ssl": HALF_CLOSE_TLS,
    "tlsx": HALF_CLOSE_TLS,
}


@functools.lru_cache(maxsize=256)
def endpoint_type(description: str) -> str:
    """
    The type prefix of an endpoint description, lower-cased: C{"tcp"} for
    C{"tcp:8080"}.  A description with no colon is all prefix.

    @param description: an endpoint description string.
    """
    head = re.split(r"(?<!\\):", description, maxsplit=1)[0]
    return head.lower()


@functools.lru_cache(maxsize=256)
def half_close_mode(description: str) -> str:
    """
    How an endpoint of this description half-closes: one of
    L{HALF_CLOSE_SHUTDOWN}, L{HALF_CLOSE_TLS}, L{HALF_CLOSE_NONE}.

    Derived from the description, not by sniffing transports: Twisted's
    C{haproxy:} wrapper and TLS transports provide the interfaces of the TCP
    transport they wrap, so a transport cannot be asked.  Types we do not know
    are assumed not to half-close, which never loses data.

    @param description: an endpoint description string.
    """
    kind = endpoint_type(description)
    while kind == "haproxy":
        # epcat's PROXY header wrapper passes half-close through (Twisted's
        # own does not): the inner endpoint decides.  (A loop: a description
        # may nest wrappers deeper than Python's recursion limit.)
        description = inner_description(description)
        kind = endpoint_type(description)
    return _HALF_CLOSE_BY_TYPE.get(kind, HALF_CLOSE_NONE)


def inner_description(description: str) -> str:
    """
    What a wrapper description wraps: C{"tcp:80"} for C{"haproxy:tcp:80"}.
    """
    parts = re.split(r"(?<!\\):", description, maxsplit=1)
    return parts[1] if len(parts) > 1 else ""


def parse_server(reactor: Any, description: str) -> Any:
    """
    Parse a server endpoint description with Twisted's L{serverFromString}.

    @param reactor: the reactor the endpoint will listen with.
    @param description: e.g. C{"tcp:8080:interface=127.0.0.1"}.
    @return: an C{IStreamServerEndpoint} provider.
    @raise UsageError: the description is malformed, names an unknown type,
        or a file it names cannot be read; the message quotes it.
    """
    from twisted.internet.endpoints import serverFromString

    return _parse(serverFromString, reactor, description, "server")


def parse_client(reactor: Any, description: str) -> Any:
    """
    Parse a client endpoint description with Twisted's L{clientFromString}.

    @param reactor: the reactor the endpoint will connect with.
    @param description: e.g. C{"tls:example.com:443"}.
    @return: an C{IStreamClientEndpoint} provider.
    @raise UsageError: as for L{parse_server}.
    """
    from twisted.internet.endpoints import clientFromString

    return _parse(clientFromString, reactor, description, "client")


def _parse(parser: Any, reactor: Any, description: str, kind: str) -> Any:
    if not description or not description.strip():
        example = "tcp:8080" if kind == "server" else "tcp:127.0.0.1:80"
        raise UsageError(f"empty {kind} endpoint description; try e.g. '{example}'")
    try:
        endpoint = parser(reactor, description)
        problem = check_values(description, kind)
    except (UsageError, EpcatError):
        raise
    except RecursionError:
        raise UsageError(
            f"bad {kind} endpoint description {quote(description[:60])}...: nested too deeply"
        ) from None
    except Exception as e:
        message = explain_parse_error(description, kind, e)
        if not message.isprintable():
            message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
        raise UsageError(message) from None
    if problem is not None:
        raise UsageError(f"bad {kind} endpoint description {quote(description)}: {problem}")
    return endpoint


#: the types whose ports and timeouts Twisted takes with int() and only
#: checks once it listens or connects (C{tcp:99999} failed as "cannot
#: listen", C{timeout=-1} with a traceback from C{callLater})
_SERVER_PORT_FIRST = frozenset({"tcp", "tcp6", "ssl"})
_CLIENT_PORT_SECOND = frozenset({"tcp", "tls", "ssl"})
_CLIENT_TIMEOUT = frozenset({"tcp", "unix", "tls", "ssl"})


#: the longest path a UNIX socket address holds: C{sun_path} is 108 bytes
#: on Linux, with room for the terminating NUL (unix(7))
UNIX_PATH_MAX = 107


def check_values(description: str, kind: str) -> str | None:
    """
    What is wrong with the ports, backlogs, timeouts and UNIX socket paths
    of a description Twisted has accepted, for its own types (plugins check
    their own): a port must be 0-65535 to listen on and 1-65535 to connect
    to, a backlog 0 or more, a timeout more than 0 seconds, a path at most
    L{UNIX_PATH_MAX} bytes.  Wrappers (C{haproxy:}) and C{tls:}'s
    C{endpoint=} are checked too.

    @raise EpcatError: (status 1) a client's UNIX socket path is too long,
        the runtime failure a server's gets when it listens.

    @param kind: C{"server"} or C{"client"}.
    @return: the problem, in words naming the argument, or L{None}.
    """
    from twisted.internet.endpoints import _parse as split

    kind_of = endpoint_type(description)
    while kind_of == "haproxy":
        description = inner_description(description)
        kind_of = endpoint_type(description)
    args, kwargs = split(description)
    args = args[1:]
    if kind_of == "unix" and kind == "client":
        # (Twisted's UNIX connector fails such a path with a TypeError inside
        # doConnect and the attempt never ends; a server's fails to listen,
        # exit 1, as a bad path to listen on does)
        path = args[0] if args else kwargs.get("address")
        if isinstance(path, str) and len(os.fsencode(path)) > UNIX_PATH_MAX:
            from epcat.status import EpcatError, ExitStatus

            raise EpcatError(
                ExitStatus.FAILURE,
                f"cannot connect to {description}: AF_UNIX path too long "
                f"({len(os.fsencode(path))} bytes; a UNIX socket path holds at most "
                f"{UNIX_PATH_MAX})",
            )

    def number(name: str, value: Any, low: float, high: float, what: str) -> str | None:
        try:
            n = float(value)
        except (TypeError, ValueError):
            return None  # (Twisted's own parser has its say on those)
        if not low <= n <= high:
            return f"{name}={value}: expected {what}"
        return None

    checks: list[tuple[str, Any, float, float, str]] = []
    if kind == "server":
        if kind_of in _SERVER_PORT_FIRST and args:
            checks.append(("port", args[0], 0, 65535, "a port number, 0-65535"))
        if kind_of == "tls" and "port" in kwargs:
            checks.append(("port", kwargs["port"], 0, 65535, "a port number, 0-65535"))
        if "backlog" in kwargs and kind_of in _SERVER_PORT_FIRST | {"tls", "unix"}:
            checks.append(("backlog", kwargs["backlog"], 0, 2**31 - 1, "a number, 0 or more"))
    else:
        port = args[1] if len(args) > 1 else kwargs.get("port")
        if kind_of in _CLIENT_PORT_SECOND and port is not None:
            checks.append(("port", port, 1, 65535, "a port number, 1-65535"))
        if kind_of in _CLIENT_TIMEOUT and "timeout" in kwargs:
            checks.append(
                ("timeout", kwargs["timeout"], 1e-9, float("inf"), "a positive number of seconds")
            )
        if kind_of == "tls" and "endpoint" in kwargs:
            problem = check_values(kwargs["endpoint"], "client")
            if problem is not None:
                return f"endpoint={kwargs['endpoint']}: {problem}"
    for check in checks:
        problem = number(*check)
        if problem is not None:
            return problem
    return None


_FUNC_PREFIX = re.compile(r"^[\w.]+\(\) ")

#: a working description of each common type, for hints
_EXAMPLES = {
    ("server", "tcp"): "tcp:8080",
    ("server", "tcp6"): "tcp6:8080",
    ("server", "unix"): "unix:/tmp/app.sock",
    ("server", "ssl"): "ssl:8443:privateKey=key.pem:certKey=cert.pem",
    ("client", "tcp"): "tcp:example.com:80",
    ("client", "unix"): "unix:/tmp/app.sock",
    ("client", "tls"): "tls:example.com:443",
    ("client", "ssl"): "ssl:example.com:443",
}


#: systemd's variables as epcat found them at start-up: Twisted's systemd:
#: endpoint deletes LISTEN_FDS (and LISTEN_PID) once it has read them
_STARTED_WITH = {name: os.environ.get(name) for name in ("LISTEN_FDS", "LISTEN_FDNAMES")}


def _fds_without_names() -> bool:
    """
    Was epcat given inherited descriptors (C{LISTEN_FDS}) without their
    names (C{LISTEN_FDNAMES}), as C{systemd-socket-activate} does without
    C{--fdname}?
    """
    env: Any = os.environ if "LISTEN_FDS" in os.environ else _STARTED_WITH
    return bool(env.get("LISTEN_FDS")) and env.get("LISTEN_FDNAMES") is None


def explain_parse_error(description: str, kind: str, error: BaseException) -> str:
    """
    Turn an exception from Twisted's description parsers into one line that
    quotes the description and says what would work.

    @param description: the description that failed to parse.
    @param kind: C{"server"} or C{"client"}.
    @param error: what the parser raised.
    """
    quoted = f"bad {kind} endpoint description {quote(description)}"
    # (the rest quotes pieces of the description: keep them on one line)
    etype = endpoint_type(description)
    text = str(error)
    if isinstance(error, ValueError) and text.startswith("Unknown endpoint type"):
        # (the type Twisted names: the prefix, as typed, or the type of a
        # description nested in it, such as tls:'s endpoint=)
        named = re.search(r"Unknown endpoint type: '([^']*)'", text)
        unknown = named.group(1) if named else etype
        typed = re.split(r"(?<!\\):", description, maxsplit=1)[0]
        if typed.lower() == unknown:
            unknown = typed  # (Twisted names it in lower case)
        known = sorted(server_types() if kind == "server" else client_types())
        if unknown.lower() in known and unknown != unknown.lower():
            hint = f" (types are lower case: {unknown.lower()})"
        else:
            close = difflib.get_close_matches(unknown.lower(), known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
        return (
            f"{quoted}: unknown endpoint type {unknown!r}{hint}; "
            f"known {kind} types: {', '.join(known)}"
        )
    if (
        isinstance(error, TypeError)
        and len(error.args) == 2
        and error.args[0] == "unrecognized keyword arguments present"
    ):
        # (Twisted's tls: client raises this, with the names in a list)
        names = ", ".join(f"{name}=" for name in error.args[1])
        return f"{quoted}: {etype}: does not take {names}; see 'epcat endpoints {etype}'"
    if etype == "tcp" and kind == "client" and _positional_count(description) > 2:
        return (
            f"{quoted}: tcp: too many arguments for HOST:PORT; escape a colon inside a "
            "value as '\\:' (an IPv6 address: tcp:\\:\\:1:80, no brackets)"
        )
    if isinstance(error, UnicodeError) and etype == "tls" and kind == "client":
        return (
            f"{quoted}: tls: HOST must be a host name or an IPv4 address (its IDNA "
            f"encoding failed: {text}); for an IPv6 address use tlsx:, e.g. tlsx:\\:\\:1:443"
        )
    if type(error).__name__ == "Error" and type(error).__module__.startswith("OpenSSL"):
        names = "certificate=" if kind == "client" and etype in ("tls", "tlsx") else "certKey="
        return f"{quoted}: {etype}: OpenSSL could not load a certificate or key: " + (
            _openssl_error_text(error)
            + f" ({names} and privateKey= take PEM files: a certificate and its key)"
        )
    if isinstance(error, TypeError):
        text = _FUNC_PREFIX.sub("", text)
        m = re.search(r"unexpected keyword argument '([^']+)'", text)
        if m:
            return f"{quoted}: {etype}: does not take {m.group(1)}=; see 'epcat endpoints'"
        m = re.search(r"missing \d+ required positional arguments?: (.*)", text)
        if m:
            names = m.group(1).replace("'", "")
            example = _EXAMPLES.get((kind, etype))
            hint = f"; e.g. {example!r}" if example else f"; see 'epcat endpoints {etype}'"
            return f"{quoted}: {etype}: missing {names}{hint}"
        return f"{quoted}: {etype}: {text}"
    if isinstance(error, ValueError) and "invalid literal for int()" in text:
        value = text.rsplit(":", 1)[-1].strip()
        return f"{quoted}: expected a number, got {value}"
    if isinstance(error, RuntimeError) and "StopIteration" in text:
        return f"{quoted}: it ends in a lone backslash; escape a colon as '\\:'"
    if isinstance(error, KeyError) and etype == "systemd":
        names = _STARTED_WITH.get("LISTEN_FDNAMES")
        have = f"the inherited names are {names!r}" if names else "no socket names were passed"
        return (
            f"{quoted}: no inherited socket named {error.args[0]!r} ({have}; systemd sets "
            "them from FileDescriptorName=, systemd-socket-activate from --fdname=)"
        )
    if isinstance(error, IndexError) and etype == "systemd":
        if _fds_without_names():
            # (systemd-socket-activate without --fdname: Twisted's ListenFDs
            # takes descriptors without names as no descriptors at all)
            return (
                f"{quoted}: LISTEN_FDS is set without LISTEN_FDNAMES, which Twisted "
                "takes as no inherited socket; systemd always sets both, and "
                "systemd-socket-activate does with --fdname=NAME"
            )
        return (
            f"{quoted}: no inherited socket at that index or name "
            "(is epcat started by systemd or systemd-socket-activate?)"
        )
    cls = type(error).__name__
    if cls == "UnlistableError":
        # (an OSError subclass from twisted.python.filepath, with no strerror)
        return (
            f"{quoted}: a directory it names cannot be listed "
            "(trustRoots= and caCertsDir= must name a readable directory of CA certificates)"
        )
    if isinstance(error, OSError):
        name = f" {error.filename!r}" if getattr(error, "filename", None) else ""
        reason = error.strerror or str(error) or cls
        return f"{quoted}: cannot read{name}: {reason.lower()}"
    return f"{quoted}: {text or cls}"


def quote(description: str) -> str:
    """
    C{description} in single quotes as it was typed (C{'tls:\\:\\:1:443'}, where
    Python's C{repr} would double each backslash), or as C{repr} writes it
    when it holds a quote or a character that is not printable.
    """
    if description.isprintable() and "'" not in description:
        return f"'{description}'"
    return repr(description)


def _positional_count(description: str) -> int:
    """
    How many positional arguments (after the type) a description has.
    """
    from twisted.internet.endpoints import _parse as split

    try:
        args, _ = split(description)
    except Exception:
        return 0
    return len(args) - 1


def _openssl_error_text(error: BaseException) -> str:
    """
    An C{OpenSSL.crypto.Error} / C{OpenSSL.SSL.Error} in words: its
    C{(library, function, reason)} entries as C{library: reason}.
    """
    entries = error.args[0] if error.args and isinstance(error.args[0], list) else []
    words = [
        f"{entry[0]}: {entry[2]}"
        for entry in entries
        if isinstance(entry, tuple) and len(entry) == 3
    ]
    return "; ".join(words) or str(error) or type(error).__name__


def _plugin_prefixes(interface: Any) -> set[str]:
    from twisted.plugin import getPlugins

    prefixes = set()
    for plugin in getPlugins(interface):
        prefix = getattr(plugin, "prefix", None)
        if isinstance(prefix, bytes):
            prefix = prefix.decode("ascii", "replace")
        if prefix:
            prefixes.add(prefix.lower())
    return prefixes


def server_types() -> set[str]:
    """
    Every server endpoint type prefix this installation can parse: Twisted's
    built-in ones and those of every installed plugin.
    """
    from twisted.internet import endpoints
    from twisted.internet.interfaces import IStreamServerEndpointStringParser

    return {k.lower() for k in endpoints._serverParsers} | _plugin_prefixes(
        IStreamServerEndpointStringParser
    )


def client_types() -> set[str]:
    """
    Every client endpoint type prefix this installation can parse.
    """
    from twisted.internet import endpoints
    from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor

    return {k.lower() for k in endpoints._clientParsers} | _plugin_prefixes(
        IStreamClientEndpointStringParserWithReactor
    )


def ip_of(address: Any) -> Any:
    """
    The IP address of a Twisted address (an C{ipaddress} object, an
    IPv4-mapped IPv6 address as IPv4, any scope id dropped), or L{None} for a
    UNIX, stdio or otherwise non-IP address.
    """
    import ipaddress

    host = getattr(address, "host", None)
    if host is None:
        return None
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def ip_network_of(cidr: str) -> Any:
    """
    The network of an C{--allow}/C{--deny}/C{--proxy-trusted} value, an
    IPv4-mapped IPv6 network (C{::ffff:127.0.0.1/128}, C{::ffff:0:0/96}) as
    the IPv4 network it maps: L{ip_of} gives mapped peers as IPv4, so such a
    rule would otherwise never match (and a C{--deny} fail open).

    @param cidr: a network, checked already (L{epcat.plan.check_network}).
    @return: an C{ipaddress} network.
    """
    import ipaddress

    network = ipaddress.ip_network(cidr, strict=False)
    mapped = ipaddress.ip_network("::ffff:0:0/96")
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(mapped):
        start = network.network_address.ipv4_mapped
        return ipaddress.IPv4Network((start, network.prefixlen - 96))
    return network
