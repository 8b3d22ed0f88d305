"""
Tests for L{epcat.endpoints}: friendly parse errors, half-close capability
and type prefixes, with a L{MemoryReactor} so nothing listens or connects.
"""

from __future__ import annotations

import re

import pytest
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from twisted.internet.testing import MemoryReactor

from epcat.endpoints import (
    HALF_CLOSE_NONE,
    HALF_CLOSE_SHUTDOWN,
    HALF_CLOSE_TLS,
    client_types,
    endpoint_type,
    explain_parse_error,
    half_close_mode,
    parse_client,
    parse_server,
    quote,
    server_types,
)
from epcat.status import UsageError


@pytest.fixture
def reactor() -> MemoryReactor:
    return MemoryReactor()


def server_error(reactor: MemoryReactor, description: str) -> str:
    with pytest.raises(UsageError) as raised:
        parse_server(reactor, description)
    return str(raised.value)


def client_error(reactor: MemoryReactor, description: str) -> str:
    with pytest.raises(UsageError) as raised:
        parse_client(reactor, description)
    return str(raised.value)


def assert_one_line(message: str, description: str) -> None:
    assert "\n" not in message
    assert quote(description) in message


# -- what parses


@pytest.mark.parametrize(
    "description",
    ["tcp:8080", "tcp:0:interface=127.0.0.1", "tcp6:0:interface=\\:\\:1", "unix:/tmp/x.sock"],
)
def test_parse_server(reactor: MemoryReactor, description: str) -> None:
    assert IStreamServerEndpoint.providedBy(parse_server(reactor, description))
    assert reactor.tcpServers == [] and reactor.unixServers == []  # nothing listens yet


@pytest.mark.parametrize(
    "description",
    ["tcp:example.com:80", "tcp:host=127.0.0.1:port=80:timeout=5", "unix:/tmp/x.sock"],
)
def test_parse_client(reactor: MemoryReactor, description: str) -> None:
    assert IStreamClientEndpoint.providedBy(parse_client(reactor, description))
    assert reactor.tcpClients == []


def test_known_types() -> None:
    assert {"tcp", "tcp6", "unix", "ssl", "tls", "haproxy", "systemd"} <= server_types()
    assert {"tcp", "unix", "ssl", "tls"} <= client_types()


# -- what does not, and what the user is told


def test_misspelt_type_suggests_the_right_one(reactor: MemoryReactor) -> None:
    message = server_error(reactor, "tpc:80")
    assert_one_line(message, "tpc:80")
    assert "did you mean tcp" in message
    assert "known server types" in message
    message = client_error(reactor, "tpc:example.com:80")
    assert "did you mean tcp" in message
    assert "known client types" in message


def test_unknown_type_with_nothing_close(reactor: MemoryReactor) -> None:
    message = client_error(reactor, "zzzzzz:1")
    assert "unknown endpoint type 'zzzzzz'" in message
    assert "did you mean" not in message


def test_upper_case_type_says_types_are_lower_case(reactor: MemoryReactor) -> None:
    message = server_error(reactor, "TCP:80")
    assert_one_line(message, "TCP:80")
    assert "unknown endpoint type 'TCP' (types are lower case: tcp)" in message


def test_unknown_type_inside_tls_endpoint_is_the_one_named(reactor: MemoryReactor) -> None:
    message = client_error(reactor, "tls:localhost:443:endpoint=tpc\\:1\\:2")
    assert "unknown endpoint type 'tpc' (did you mean tcp?)" in message


@pytest.mark.parametrize(
    "description, named",
    [
        ("tcp:99999", "port=99999: expected a port number, 0-65535"),
        ("tcp:-1", "port=-1: expected a port number, 0-65535"),
        ("tcp6:70000", "port=70000"),
        ("tcp:80:backlog=99999999999999999999", "backlog=99999999999999999999"),
        ("tcp:80:backlog=-1", "backlog=-1"),
        ("haproxy:tcp:99999", "port=99999"),
    ],
)
def test_server_numbers_out_of_range(reactor: MemoryReactor, description: str, named: str) -> None:
    message = server_error(reactor, description)
    assert_one_line(message, description)
    assert named in message


@pytest.mark.parametrize(
    "description, named",
    [
        ("tcp:127.0.0.1:99999", "port=99999: expected a port number, 1-65535"),
        ("tcp:127.0.0.1:0", "port=0"),
        ("tcp:host=127.0.0.1:port=70000", "port=70000"),
        ("tls:localhost:99999", "port=99999"),
        ("tcp:127.0.0.1:80:timeout=-1", "timeout=-1: expected a positive number of seconds"),
        ("tcp:127.0.0.1:80:timeout=0", "timeout=0"),
        ("unix:/tmp/x.sock:timeout=-1", "timeout=-1"),
        ("tls:localhost:443:timeout=-5", "timeout=-5"),
        ("tls:localhost:443:endpoint=tcp\\:127.0.0.1\\:443\\:timeout=-1", "timeout=-1"),
    ],
)
def test_client_numbers_out_of_range(reactor: MemoryReactor, description: str, named: str) -> None:
    """
    Twisted takes ports and timeouts with int() and fails only when it
    connects (a timeout below 0 with a traceback from callLater): they are
    usage errors when parsed.
    """
    message = client_error(reactor, description)
    assert_one_line(message, description)
    assert named in message


@pytest.mark.parametrize("kind", ["server", "client"])
def test_wrappers_nested_past_the_recursion_limit(reactor: MemoryReactor, kind: str) -> None:
    description = "haproxy:" * 2000 + "tcp:1"
    error = server_error if kind == "server" else client_error
    message = error(reactor, description)
    assert message.startswith(f"bad {kind} endpoint description")
    assert half_close_mode(description) == HALF_CLOSE_SHUTDOWN


def test_missing_port(reactor: MemoryReactor) -> None:
    message = client_error(reactor, "tcp:example.com")
    assert_one_line(message, "tcp:example.com")
    assert "missing port" in message


def test_empty_port(reactor: MemoryReactor) -> None:
    message = client_error(reactor, "tcp:example.com:")
    assert_one_line(message, "tcp:example.com:")
    assert "expected a number" in message


def test_missing_server_port(reactor: MemoryReactor) -> None:
    message = server_error(reactor, "tcp")
    assert_one_line(message, "tcp")
    assert "missing port" in message


@pytest.mark.parametrize(("kind", "description"), [("server", "tcp"), ("client", "unix")])
def test_missing_argument_hint_fits_the_kind_and_type(
    reactor: MemoryReactor, kind: str, description: str
) -> None:
    parse = parse_server if kind == "server" else parse_client
    with pytest.raises(UsageError) as raised:
        parse(reactor, description)
    message = str(raised.value)
    assert "missing" in message
    example = re.search(r"e\.g\. '([^']*)'", message)
    assert example is not None
    assert endpoint_type(example.group(1)) == endpoint_type(description)
    parse(reactor, example.group(1))  # the example itself must parse


@pytest.mark.parametrize("kind", ["server", "client"])
def test_unknown_keyword(reactor: MemoryReactor, kind: str) -> None:
    if kind == "server":
        message = server_error(reactor, "tcp:8080:bogus=1")
    else:
        message = client_error(reactor, "tcp:example.com:80:bogus=1")
    assert "does not take bogus=" in message
    assert "epcat endpoints" in message


@pytest.mark.parametrize(
    ("kind", "description", "value"),
    [
        ("server", "tcp:http", "http"),
        ("client", "tcp:example.com:abc", "abc"),
        ("client", "tcp:host=example.com:port=x", "x"),
    ],
)
def test_non_numeric_port(reactor: MemoryReactor, kind: str, description: str, value: str) -> None:
    parse = server_error if kind == "server" else client_error
    message = parse(reactor, description)
    assert_one_line(message, description)
    assert "expected a number" in message
    assert value in message


@pytest.mark.parametrize("description", ["tcp:8080\\", "unix:/tmp/x\\"])
def test_trailing_backslash(reactor: MemoryReactor, description: str) -> None:
    message = server_error(reactor, description)
    assert_one_line(message, description)
    assert "lone backslash" in message
    assert "'\\:'" in message


@pytest.mark.parametrize("description", ["", "   "])
def test_empty_description(reactor: MemoryReactor, description: str) -> None:
    assert "empty server endpoint" in server_error(reactor, description)
    assert "empty client endpoint" in client_error(reactor, description)


def test_unreadable_key_file_names_it(reactor: MemoryReactor, tmp_path: object) -> None:
    missing = f"{tmp_path}/missing.pem"
    message = server_error(reactor, f"ssl:0:privateKey={missing}")
    assert f"cannot read '{missing}'" in message
    assert "no such file or directory" in message


def test_missing_trust_roots_directory(reactor: MemoryReactor, tmp_path: object) -> None:
    missing = f"{tmp_path}/no-such-ca-dir"
    message = client_error(reactor, f"tls:example.com:443:trustRoots={missing}")
    assert "trustRoots" in message
    assert not message.endswith(": ")


def test_explain_parse_error_directly() -> None:
    message = explain_parse_error("tcp:x", "client", RuntimeError("boom"))
    assert message == "bad client endpoint description 'tcp:x': boom"
    message = explain_parse_error("systemd:domain=INET:index=9", "server", IndexError("list"))
    assert "no inherited socket" in message
    message = explain_parse_error("tcp:x", "client", KeyError())
    assert message.endswith(": KeyError")


def test_explain_systemd_without_fdnames(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    systemd-socket-activate without --fdname sets LISTEN_FDS alone, which
    Twisted ignores: the message says what to add.
    """
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.delenv("LISTEN_FDNAMES", raising=False)
    message = explain_parse_error("systemd:domain=INET:index=0", "server", IndexError("list"))
    assert "without LISTEN_FDNAMES" in message and "--fdname=NAME" in message
    monkeypatch.setenv("LISTEN_FDNAMES", "web")
    message = explain_parse_error("systemd:domain=INET:index=3", "server", IndexError("list"))
    assert "no inherited socket at that index or name" in message


def test_explain_strips_the_function_name_from_type_errors() -> None:
    error = TypeError("_parseFoo() takes 2 positional arguments but 3 were given")
    message = explain_parse_error("foo:a:b", "server", error)
    assert message.endswith("foo: takes 2 positional arguments but 3 were given")


def test_usage_errors_from_parsers_pass_through(reactor: MemoryReactor) -> None:
    def parser(reactor: object, description: str) -> None:
        raise UsageError("already friendly")

    from epcat.endpoints import _parse

    with pytest.raises(UsageError, match="^already friendly$"):
        _parse(parser, reactor, "x:1", "server")


# -- half-close and types


@pytest.mark.parametrize(
    ("description", "mode"),
    [
        ("tcp:8080", HALF_CLOSE_SHUTDOWN),
        ("TCP:8080", HALF_CLOSE_SHUTDOWN),
        ("tcp6:8080:interface=\\:\\:1", HALF_CLOSE_SHUTDOWN),
        ("unix:/tmp/x.sock", HALF_CLOSE_SHUTDOWN),
        ("stdio:", HALF_CLOSE_SHUTDOWN),
        ("systemd:domain=INET:index=0", HALF_CLOSE_SHUTDOWN),
        ("tls:example.com:443", HALF_CLOSE_TLS),
        ("ssl:8443:privateKey=k.pem", HALF_CLOSE_TLS),
        ("haproxy:tcp:8080", HALF_CLOSE_SHUTDOWN),
        ("haproxy:ssl:8443:privateKey=k.pem", HALF_CLOSE_TLS),
        ("onion:example.onion:80", HALF_CLOSE_NONE),
        ("", HALF_CLOSE_NONE),
    ],
)
def test_half_close_mode(description: str, mode: str) -> None:
    assert half_close_mode(description) == mode


@pytest.mark.parametrize(
    ("description", "prefix"),
    [
        ("tcp:8080", "tcp"),
        ("TLS:example.com:443", "tls"),
        ("tcp6:8080:interface=\\:\\:1", "tcp6"),
        ("unix:/run/a\\:b.sock", "unix"),
        ("tcp:host=\\:\\:1:port=80", "tcp"),
        ("stdio", "stdio"),
        ("", ""),
    ],
)
def test_endpoint_type(description: str, prefix: str) -> None:
    assert endpoint_type(description) == prefix


def test_a_client_unix_path_too_long_fails_as_connecting_would(reactor: MemoryReactor) -> None:
    """
    Twisted's UNIX connector fails a path longer than sun_path with a
    TypeError inside doConnect, and the attempt never ends: epcat fails it
    when parsing, as the runtime failure it is (exit 1, like listening on
    such a path).
    """
    from epcat.status import EpcatError, ExitStatus

    description = "unix:/tmp/" + "a" * 120 + ".sock"
    with pytest.raises(EpcatError) as raised:
        parse_client(reactor, description)
    assert raised.value.status == ExitStatus.FAILURE
    assert "AF_UNIX path too long" in raised.value.message
    assert "\n" not in raised.value.message
    parse_client(reactor, "unix:/tmp/" + "a" * 90 + ".sock")  # fits


@pytest.mark.parametrize(
    "cidr, network",
    [
        ("::ffff:127.0.0.1", "127.0.0.1/32"),
        ("::ffff:127.0.0.0/104", "127.0.0.0/8"),
        ("::ffff:0:0/96", "0.0.0.0/0"),
        ("127.0.0.0/8", "127.0.0.0/8"),
        ("::1", "::1/128"),
        ("::/0", "::/0"),  # (wider than the mapped range: left as IPv6)
    ],
)
def test_ip_network_of_maps_ipv4_mapped_rules(cidr: str, network: str) -> None:
    """
    Peers are compared as IPv4 when IPv4-mapped (ip_of), so mapped rules
    are turned into the IPv4 networks they map, or a --deny would never
    match them.
    """
    import ipaddress

    from epcat.endpoints import ip_network_of

    assert ip_network_of(cidr) == ipaddress.ip_network(network)


def test_access_list_denies_a_mapped_peer_by_a_mapped_rule() -> None:
    from twisted.internet.address import IPv6Address

    from epcat.run import AccessList

    peer = IPv6Address("TCP", "::ffff:127.0.0.1", 40000)
    assert AccessList((), ("::ffff:0:0/96",)).refuses(peer) is not None
    assert AccessList((), ("::ffff:127.0.0.1/128",)).refuses(peer) is not None
    assert AccessList(("::ffff:127.0.0.1/128",), ()).refuses(peer) is None


def test_quote_keeps_what_was_typed() -> None:
    assert quote("tls:\\:\\:1:443") == "'tls:\\:\\:1:443'"
    assert quote("tcp:80") == "'tcp:80'"
    assert quote("a'b") == repr("a'b")
    assert quote("a\nb") == repr("a\nb")


def test_tls_client_unknown_keyword_is_named(reactor: MemoryReactor) -> None:
    message = client_error(reactor, "tls:localhost:443:bogus=1")
    assert_one_line(message, "tls:localhost:443:bogus=1")
    assert "tls: does not take bogus=; see 'epcat endpoints tls'" in message


def test_tls_client_with_an_ipv6_address_points_to_tlsx(reactor: MemoryReactor) -> None:
    message = client_error(reactor, "tls:\\:\\:1:443")
    assert "tls: HOST must be a host name or an IPv4 address" in message
    assert "tlsx:\\:\\:1:443" in message


@pytest.mark.parametrize("description", ["tcp:h:80:extra", "tcp:[::1]:80"])
def test_tcp_client_with_too_many_arguments_says_so(
    reactor: MemoryReactor, description: str
) -> None:
    message = client_error(reactor, description)
    assert_one_line(message, description)
    assert "too many arguments for HOST:PORT" in message
    assert "tcp:\\:\\:1:80" in message


def test_a_pem_file_openssl_cannot_read_is_said_in_words(
    reactor: MemoryReactor, tmp_path: object
) -> None:
    bad = f"{tmp_path}/bad.pem"
    with open(bad, "w") as f:
        f.write("not PEM\n")
    description = f"ssl:0:privateKey={bad}:certKey={bad}"
    message = server_error(reactor, description)
    assert_one_line(message, description)
    assert "OpenSSL could not load a certificate or key: " in message
    assert "routines: " in message
    assert "[(" not in message


def test_systemd_name_not_inherited_is_said() -> None:
    message = explain_parse_error(
        "systemd:domain=INET:name=nope", "server", KeyError("nope")
    )
    assert "no inherited socket named 'nope'" in message
    assert "--fdname=" in message
