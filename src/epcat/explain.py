# -*- test-case-name: tests.unit.test_explain -*-
"""
C{epcat explain DESCRIPTION}: what an endpoint description means, without
listening or connecting.

The description is parsed by Twisted's own parsers (with a memory reactor,
so nothing happens), as a server and as a client; for each that parses, the
endpoint class, every argument with its value or default, what it wraps, and
whether it half-closes.

Some plugin parsers start work at parse time: txtorcon's C{onion:} without
C{controlPort=} launches Tor (makes a temporary DataDirectory, registers its
removal as a shutdown trigger, spawns the process) and keeps the Deferred of
that launch on the endpoint.  The memory reactor here spawns nothing, and
explain runs its shutdown triggers and consumes the failures of Deferreds
left on the endpoints, so that nothing runs, nothing is left behind and no
"Unhandled error in Deferred" is printed.
"""

from __future__ import annotations

import inspect
from typing import IO, Any

from epcat.endpoints import (
    HALF_CLOSE_WORDS,
    endpoint_type,
    half_close_mode,
    inner_description,
)
from epcat.status import EpcatError, UsageError


def _parser_for(role: str, prefix: str) -> Any:
    """
    The function or plugin method Twisted calls for C{prefix}, for its
    signature.
    """
    from twisted.internet import endpoints
    from twisted.internet.interfaces import (
        IStreamClientEndpointStringParserWithReactor,
        IStreamServerEndpointStringParser,
    )
    from twisted.plugin import getPlugins

    table = endpoints._serverParsers if role == "server" else endpoints._clientParsers
    for name, parser in table.items():
        if name.lower() == prefix:
            return parser
    interface = (
        IStreamServerEndpointStringParser
        if role == "server"
        else IStreamClientEndpointStringParserWithReactor
    )
    method = "parseStreamServer" if role == "server" else "parseStreamClient"
    for plugin in getPlugins(interface):
        plugin_prefix = getattr(plugin, "prefix", "")
        if isinstance(plugin_prefix, bytes):
            plugin_prefix = plugin_prefix.decode("ascii", "replace")
        if plugin_prefix.lower() == prefix:
            # Twisted's own plugins forward *args to a function whose
            # signature names the arguments
            for inner in ("_parseServer", "_parseClient", "_actualParseStreamServer"):
                if hasattr(plugin, inner):
                    return getattr(plugin, inner)
            if prefix == "tls" and role == "client":
                return endpoints._parseClientTLS
            return getattr(plugin, method, None)
    return None


def arguments(role: str, description: str) -> list[tuple[str, str, bool]]:
    """
    Every argument of a description: (name, value, given) with the parser's
    defaults for those not given.

    @return: in the parser's order, then any extra keyword arguments.
    """
    from twisted.internet.endpoints import _parse

    args, kwargs = _parse(description)
    prefix = args.pop(0).lower() if args else ""
    if prefix == "haproxy":
        return []  # all of it is the wrapped description
    if role == "client" and prefix in _COERCED_CLIENTS:
        return _coerced_client_arguments(prefix, args, kwargs)
    parser = _parser_for(role, prefix)
    result: list[tuple[str, str, bool]] = []
    names: list[str] = []
    if parser is not None:
        try:
            parameters = list(inspect.signature(parser).parameters.values())
        except (TypeError, ValueError):
            parameters = []
        positional = list(args)
        for parameter in parameters:
            if parameter.name in ("self", "reactor", "factory"):
                continue
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            names.append(parameter.name)
            if positional:
                result.append((parameter.name, str(positional.pop(0)), True))
            elif parameter.name in kwargs:
                result.append((parameter.name, str(kwargs[parameter.name]), True))
            elif parameter.default is not parameter.empty:
                result.append((parameter.name, repr(parameter.default), False))
        # (what is left: the pieces a *args parameter takes, such as exec:'s
        # command split at its colons, named after it; stdio:'s empty one
        # is nothing)
        leftover = [str(value) for value in positional if str(value) != ""]
        rest = next((p.name for p in parameters if p.kind == p.VAR_POSITIONAL), None)
        if leftover and rest is not None:
            result.append((rest, ":".join(leftover), True))
        else:
            result.extend(("(extra)", value, True) for value in leftover)
    else:
        result.extend((f"#{i}", str(a), True) for i, a in enumerate(args, 1))
    for key, value in kwargs.items():
        if key not in names:
            result.append((key, str(value), True))
    return result


#: Twisted's client types whose parser takes C{*args, **kwargs} and returns
#: the keyword arguments of the endpoint class (C{_parseClientTCP} and
#: C{_parseClientUNIX}, Twisted 26.10): (parser name, endpoint class name,
#: arguments of the class's that no description gives)
_COERCED_CLIENTS = {
    "tcp": ("_parseClientTCP", "TCP4ClientEndpoint", ()),
    "unix": ("_parseClientUNIX", "UNIXClientEndpoint", ()),
    # (the host, port, timeout and bindAddress part; the rest builds the
    # context, and epcat connect builds ssl: as tlsx:, which verifies)
    "ssl": ("_parseClientTCP", "SSL4ClientEndpoint", ("sslContextFactory",)),
}


def _coerced_client_arguments(
    prefix: str, args: list[Any], kwargs: dict[str, Any]
) -> list[tuple[str, str, bool]]:
    """
    L{arguments} for a client type of L{_COERCED_CLIENTS}: its parser's own
    reading of the description, then the endpoint class's defaults for what
    is not given (C{timeout=30}, C{bindAddress=None}...), then the other
    keywords as given.
    """
    from twisted.internet import endpoints

    parser_name, class_name, hidden = _COERCED_CLIENTS[prefix]
    given = getattr(endpoints, parser_name)(*args, **dict(kwargs))
    if isinstance(given.get("bindAddress"), tuple):
        given["bindAddress"] = given["bindAddress"][0]  # (host, 0)
    result: list[tuple[str, str, bool]] = []
    parameters = inspect.signature(getattr(endpoints, class_name).__init__).parameters
    for parameter in parameters.values():
        name = parameter.name
        if name in ("self", "reactor", *hidden):
            continue
        if name == "checkPID":
            # (a description says lockfile=, which the parser renames)
            if name in given:
                result.append(("lockfile", str(given.pop(name)), True))
            else:
                result.append(("lockfile", repr(parameter.default), False))
            continue
        if name in given:
            result.append((name, str(given.pop(name)), True))
        elif parameter.default is not parameter.empty:
            result.append((name, repr(parameter.default), False))
    result.extend((name, str(value), True) for name, value in given.items())
    return result


class _NoProcess:
    """
    The process transport L{_InertReactor.spawnProcess} returns: a process
    that never started.
    """

    pid = None

    def closeStdin(self) -> None:
        pass

    def closeStdout(self) -> None:
        pass

    def closeStderr(self) -> None:
        pass

    def closeChildFD(self, descriptor: int) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def writeToChild(self, childFD: int, data: bytes) -> None:
        pass

    def loseConnection(self) -> None:
        pass

    def signalProcess(self, signalID: Any) -> None:
        pass


def _inert_reactor() -> Any:
    """
    A L{MemoryReactor} that also takes C{spawnProcess} (recording the
    executable in C{spawned}, running nothing) and can run the shutdown
    triggers parsers registered on it (C{shutdown()}).
    """
    from twisted.internet.testing import MemoryReactor

    class InertReactor(MemoryReactor):
        def __init__(self) -> None:
            super().__init__()
            self.spawned: list[Any] = []

        def spawnProcess(self, processProtocol: Any, executable: Any, *args: Any,
                         **kwargs: Any) -> _NoProcess:
            self.spawned.append(executable)
            return _NoProcess()

        def shutdown(self) -> None:
            for phase in ("before", "during", "after"):
                for trigger, a, kw in self.triggers.get(phase, {}).get("shutdown", []):
                    try:
                        trigger(*a, **kw)
                    except Exception:
                        pass  # (a cleanup that failed; explain has no more to do)

    return InertReactor()


def _consume_failures(endpoint: Any) -> None:
    """
    Errback every Deferred left on C{endpoint} (its instance attributes) with
    one that swallows the failure: explain never uses them.
    """
    from twisted.internet.defer import Deferred

    for value in list(getattr(endpoint, "__dict__", {}).values()):
        if isinstance(value, Deferred):
            value.addErrback(lambda failure: None)


def explain(description: str, out: IO[str]) -> None:
    """
    Write what C{description} means to C{out}.

    @raise UsageError: it parses neither as a server nor as a client (the
        message gives both reasons).
    """
    reactor = _inert_reactor()
    try:
        _explain(reactor, description, out)
    finally:
        reactor.shutdown()


def _explain(reactor: Any, description: str, out: IO[str]) -> None:
    from epcat.endpoints import parse_client, parse_server

    prefix = endpoint_type(description)
    lines = [description]
    errors = []
    for role, parse in (("server", parse_server), ("client", parse_client)):
        try:
            endpoint = parse(reactor, description)
        except UsageError as e:
            errors.append(str(e))
            continue
        except EpcatError as e:
            # (a description that parses but could never connect, e.g. a
            # UNIX socket path too long): said in its role's section
            lines.append(
                f"  as a {role} ({'epcat listen' if role == 'server' else 'epcat connect'}):"
            )
            lines.append(f"    would fail: {e.message}")
            continue
        _consume_failures(endpoint)
        cls = type(endpoint)
        lines.append(f"  as a {role} ({'epcat listen' if role == 'server' else 'epcat connect'}):")
        lines.append(f"    endpoint:   {cls.__name__} ({cls.__module__})")
        for name, value, given in arguments(role, description):
            lines.append(f"    {name} = {value}{'' if given else '  (default)'}")
        if prefix == "haproxy":
            lines.append(
                f"    wraps:      {inner_description(description)} "
                "(a PROXY protocol header is read first on every connection)"
            )
        elif "endpoint=" in description:
            lines.append("    wraps:      the endpoint= description (TLS over it)")
        if role == "client" and prefix == "ssl":
            lines.append(
                "    note:       epcat connect builds it as tlsx: with the same arguments, "
                "so that the server's certificate and name are verified (caCertsDir= "
                "names the CAs)"
            )
        lines.append(f"    half-close: {HALF_CLOSE_WORDS[half_close_mode(description)]}")
    if len(lines) == 1:
        raise UsageError("; ".join(errors))
    out.write("\n".join(lines) + "\n")
