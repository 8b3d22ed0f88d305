# -*- test-case-name: tests.unit.test_completion -*-
"""
C{epcat endpoints}: the endpoint types this installation can parse, server
and client, Twisted's own and every installed plugin's, with their arguments.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import IO, Any

from epcat.endpoints import HALF_CLOSE_WORDS, half_close_mode


@dataclass
class EndpointType:
    """
    One endpoint type as C{epcat endpoints} shows it.

    @ivar prefix: the description prefix, e.g. C{"tcp"}.
    @ivar role: C{"server"} or C{"client"}.
    @ivar module: the Python module that provides it.
    @ivar arguments: argument synopsis, e.g. C{"PORT [interface=IP] [backlog=N]"}.
    @ivar summary: one line about it.
    """

    prefix: str
    role: str
    module: str
    arguments: str
    summary: str = ""
    examples: list[str] = field(default_factory=list)


# Twisted's built-in types: arguments from the endpoints documentation
# (twisted.internet.endpoints.serverFromString / clientFromString docstrings).
_KNOWN: dict[tuple[str, str], tuple[str, str, list[str]]] = {
    ("server", "tcp"): (
        "PORT [interface=IP] [backlog=N]",
        "TCP over IPv4",
        ["tcp:8080", "tcp:8080:interface=127.0.0.1"],
    ),
    ("server", "tcp6"): (
        "PORT [interface=IP6] [backlog=N]",
        "TCP over IPv6 (escape colons in the interface: interface=\\:\\:1)",
        ["tcp6:8080", "tcp6:8080:interface=\\:\\:1"],
    ),
    ("server", "unix"): (
        "PATH [mode=OCTAL] [backlog=N] [lockfile=0|1]",
        "UNIX stream socket",
        ["unix:/tmp/app.sock", "unix:/tmp/app.sock:mode=660:lockfile=1"],
    ),
    ("server", "ssl"): (
        "PORT privateKey=PEM [certKey=PEM] [extraCertChain=PEM] [sslmethod=M] "
        "[dhParameters=PEM] [interface=IP] [backlog=N]",
        "TLS over TCP (terminate TLS)",
        ["ssl:8443:privateKey=key.pem:certKey=cert.pem"],
    ),
    ("server", "tls"): (
        "DIRECTORY [port=N] [backlog=N] [interface=IP6]",
        "TLS over TCP6 with a certificate per SNI name: DIRECTORY holds NAME.pem files "
        "(key and chain), reloaded as they change (Twisted's newer tls: server)",
        ["tls:/etc/epcat/certs:port=8443"],
    ),
    ("server", "systemd"): (
        "domain=INET|INET6|UNIX (index=N | name=FDNAME)",
        "a listening socket inherited from systemd socket activation",
        ["systemd:domain=INET:index=0", "systemd:domain=INET:name=epcat.socket"],
    ),
    ("server", "stdio"): ("", "standard input and output", ["stdio:"]),
    ("server", "haproxy"): (
        "SERVER-DESCRIPTION",
        "reads a PROXY protocol v1/v2 header, then wraps the inner server endpoint",
        ["haproxy:tcp:8080"],
    ),
    ("client", "tcp"): (
        "HOST PORT [timeout=S] [bindAddress=IP]",
        "TCP (IPv4 names; IPv6 literals with escaped colons: tcp:\\:\\:1:80)",
        ["tcp:example.com:80", "tcp:host=127.0.0.1:port=80:timeout=5"],
    ),
    ("client", "unix"): (
        "PATH [timeout=S] [lockfile=0|1]",
        "UNIX stream socket",
        ["unix:/tmp/app.sock"],
    ),
    ("client", "ssl"): (
        "HOST PORT [certKey=PEM] [privateKey=PEM] [caCertsDir=DIR] [timeout=S] [bindAddress=IP]",
        "TLS over TCP, Twisted's legacy client; epcat builds it as tlsx: so that the "
        "certificate and host name are verified (caCertsDir= names the CAs)",
        ["ssl:example.com:443:caCertsDir=/etc/ssl/certs"],
    ),
    ("client", "tlsx"): (
        "HOST PORT [sni=NAME] [alpn=P1,P2] [verify=yes|no] [minVersion=V] [maxVersion=V] "
        "[trustRoots=DIR|PEM] [certificate=PEM] [privateKey=PEM] [timeout=S] "
        "[bindAddress=IP] [endpoint=DESCRIPTION]",
        "epcat's TLS client: tls: plus SNI, ALPN, verify=no and TLS versions",
        [
            "tlsx:example.com:443:alpn=h2,http/1.1",
            "tlsx:127.0.0.1:8443:sni=www.example.com:trustRoots=ca.pem",
            "tlsx:localhost:8443:verify=no",
        ],
    ),
    ("server", "tlsx"): (
        "PORT [privateKey=PEM] [certKey=PEM] [extraCertChain=PEM] [alpn=P1,P2] "
        "[requireClientCert=yes|no] [clientCA=PEM|DIR] [minVersion=V] [maxVersion=V] "
        "[sslmethod=M] [dhParameters=PEM] [interface=IP] [backlog=N]",
        "epcat's TLS server: ssl: plus ALPN, mutual TLS and TLS versions",
        ["tlsx:8443:privateKey=key.pem:certKey=cert.pem:requireClientCert=yes:clientCA=ca.pem"],
    ),
    ("client", "exec"): (
        "COMMAND (split as a POSIX shell would; escape colons as \\:)",
        "a child process per connection: its stdin/stdout are the stream",
        ["exec:cat", "'exec:ssh -W localhost\\:22 jumphost'"],
    ),
    ("client", "hostname"): (
        "HOST PORT [timeout=S] [bindAddress=IP]",
        "TCP to both address families, whichever answers first (happy eyeballs)",
        ["hostname:localhost:8080"],
    ),
    ("client", "stdio"): (
        "",
        "stdin and stdout ('listen X connect stdio:' is 'listen X')",
        ["stdio:"],
    ),
    ("client", "tls"): (
        "HOST PORT [trustRoots=DIR] [certificate=PEM] [privateKey=PEM] [timeout=S] "
        "[bindAddress=IP] [endpoint=DESCRIPTION]",
        "TLS with certificate and host name verification (the system trust store by default)",
        ["tls:example.com:443", "tls:localhost:8443:trustRoots=/path/to/ca-dir"],
    ),
}


def _plugins(interface: Any) -> list[Any]:
    from twisted.plugin import getPlugins

    return list(getPlugins(interface))


def _prefix(plugin: Any) -> str:
    prefix = getattr(plugin, "prefix", "")
    if isinstance(prefix, bytes):
        prefix = prefix.decode("ascii", "replace")
    return prefix.lower()


def _signature(func: Any) -> str:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return "..."
    parts = []
    for name, param in sig.parameters.items():
        if name in ("self", "reactor"):
            continue
        if param.kind is param.VAR_POSITIONAL:
            parts.append("ARGS...")
        elif param.kind is param.VAR_KEYWORD:
            parts.append("[KEY=VALUE...]")
        elif param.default is param.empty:
            parts.append(name.upper())
        else:
            parts.append(f"[{name}={param.default!r}]")
    return " ".join(parts)


# Third-party plugins that epcat's extras install ([websocket], [tor]), by
# (role, prefix) and the module that provides them: their own docstrings give
# no one-line summary (autobahn's has none, txtorcon's starts "This provides a
# twisted IPlugin"), and their parsers take *args/**kwargs.  From their
# documentation and parsers (autobahn's twisted/plugins/autobahn_endpoints.py,
# txtorcon's endpoints.py).
_KNOWN_PLUGINS: dict[tuple[tuple[str, str], str], tuple[str, str, list[str]]] = {
    (("server", "autobahn"), "twisted.plugins.autobahn_endpoints"): (
        "INNER url=WS-URL [KEY=VALUE...]",
        "WebSocket (autobahn) over the INNER server endpoint; escape INNER's : and = "
        "and the URL's colons as \\: and \\=",
        ["autobahn:tcp\\:8080\\:interface\\=127.0.0.1:url=ws\\://127.0.0.1\\:8080/"],
    ),
    (("client", "autobahn"), "twisted.plugins.autobahn_endpoints"): (
        "INNER url=WS-URL [KEY=VALUE...]",
        "WebSocket (autobahn) over the INNER client endpoint; escape as for the server",
        ["autobahn:tcp\\:127.0.0.1\\:8080:url=ws\\://127.0.0.1\\:8080/"],
    ),
    (("client", "tor"), "txtorcon.endpoints"): (
        "HOST PORT [socksPort=N] [KEY=VALUE...]",
        "a connection through Tor (txtorcon) to HOST:PORT, an onion service or not",
        ["tor:HOST.onion:80", "tor:HOST.onion:80:socksPort=9050"],
    ),
    (("server", "onion"), "txtorcon.endpoints"): (
        "PUBLIC_PORT [controlPort=N] [hiddenServiceDir=DIR] [localPort=N] [KEY=VALUE...]",
        "a Tor onion service (txtorcon); without controlPort= it launches its own tor "
        "when parsed",
        ["onion:80:controlPort=9051", "onion:80:hiddenServiceDir=/var/lib/epcat/onion"],
    ),
}


def _summary(plugin: Any) -> str:
    """
    The first paragraph of a plugin's docstring, on one line (a plugin's
    first sentence may run over several lines: txtorcon's does); at most
    its first sentence when the paragraph goes on, and never more than
    L{SUMMARY_MAX} characters.
    """
    doc = (inspect.getdoc(type(plugin)) or "").strip()
    if not doc:
        return ""
    paragraph = " ".join(doc.split("\n\n", 1)[0].split())
    sentence = re.split(r"(?<=[.:;])\s", paragraph, maxsplit=1)[0]
    if len(sentence) > SUMMARY_MAX:
        sentence = sentence[: SUMMARY_MAX - 3].rstrip() + "..."
    return sentence


#: the longest one-line summary L{_summary} gives, characters
SUMMARY_MAX = 100


def endpoint_types() -> list[EndpointType]:
    """
    Every endpoint type this installation can parse, sorted by role and
    prefix.
    """
    from twisted.internet import endpoints
    from twisted.internet.interfaces import (
        IStreamClientEndpointStringParserWithReactor,
        IStreamServerEndpointStringParser,
    )

    found: dict[tuple[str, str], EndpointType] = {}
    for name, parser in endpoints._serverParsers.items():
        found[("server", name.lower())] = EndpointType(
            name.lower(), "server", parser.__module__, _signature(parser)
        )
    for name, parser in endpoints._clientParsers.items():
        found[("client", name.lower())] = EndpointType(
            name.lower(), "client", parser.__module__, _signature(parser)
        )
    for role, interface, method in (
        ("server", IStreamServerEndpointStringParser, "parseStreamServer"),
        ("client", IStreamClientEndpointStringParserWithReactor, "parseStreamClient"),
    ):
        for plugin in _plugins(interface):
            prefix = _prefix(plugin)
            if not prefix or (role, prefix) in found:
                continue
            found[(role, prefix)] = EndpointType(
                prefix,
                role,
                type(plugin).__module__,
                _signature(getattr(plugin, method, None)),
                _summary(plugin),
            )
    for key, entry in found.items():
        known = _KNOWN.get(key) or _KNOWN_PLUGINS.get((key, entry.module))
        if known is not None:
            entry.arguments, entry.summary, entry.examples = known
    return sorted(found.values(), key=lambda e: (e.role != "server", e.prefix))


def show_endpoints(type_name: str | None, out: IO[str]) -> None:
    """
    Write the endpoint type table (or one type's detail) to C{out}.

    @param type_name: a prefix to show alone, or L{None} for all.
    @raise epcat.status.UsageError: no type has that prefix.
    """
    from epcat.status import UsageError

    types = endpoint_types()
    if type_name is not None:
        wanted = type_name.rstrip(":").lower()
        types = [t for t in types if t.prefix == wanted]
        if not types:
            known = sorted({t.prefix for t in endpoint_types()})
            raise UsageError(f"unknown endpoint type {type_name!r}; known: {', '.join(known)}")
        for t in types:
            out.write(f"{t.prefix}: ({t.role}) {t.summary}\n")
            out.write(f"  provided by: {t.module}\n")
            out.write(f"  arguments:   {t.prefix}: {t.arguments or '(none)'}\n")
            out.write(f"  half-close:  {_half_close_words(t.prefix)}\n")
            for example in t.examples:
                out.write(f"  example:     {example}\n")
            out.write("\n")
        return
    width = max(len(t.prefix) for t in types) + 1
    for role in ("server", "client"):
        out.write(f"{role.upper()} ENDPOINT TYPES (epcat listen ...)\n" if role == "server"
                  else f"{role.upper()} ENDPOINT TYPES (epcat connect ...)\n")
        for t in (t for t in types if t.role == role):
            out.write(f"  {t.prefix + ':':<{width}} {t.arguments}\n")
            out.write(f"  {'':<{width}}   {t.summary or '-'}  [{t.module}]\n")
        out.write("\n")
    out.write("Escape a colon inside a value as '\\:'.  'epcat endpoints TYPE' shows one type.\n")


def _half_close_words(prefix: str) -> str:
    if prefix == "haproxy":
        return "as the endpoint it wraps (epcat's PROXY header reader passes half-close through)"
    return HALF_CLOSE_WORDS[half_close_mode(prefix + ":")]
