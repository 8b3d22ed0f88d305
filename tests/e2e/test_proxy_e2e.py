"""
End to end: the PROXY protocol (haproxy's proxy-protocol.txt, v1 and v2)
both ways, against the real haproxy and nginx, on loopback only.

  - receive: curl -> haproxy send-proxy(-v2) -> epcat listen haproxy:... ->
    plain nginx;
  - send: curl -> epcat --proxy-header v1|v2 -> nginx proxy_protocol, and
    -> haproxy accept-proxy (which also reads the v2 TLVs back);
  - the chain: curl -> haproxy -> epcat (receives and sends) -> nginx;
  - IPv6 on ::1; malformed headers; --allow/--deny on the carried address.
"""

from __future__ import annotations

import json
import os

import pytest

from .conftest import echo_handler, no_traceback
from .proxy_support import (
    V2_SIGNATURE,
    connect,
    curl,
    exchange,
    need_ipv6,
    read_to_end,
    rejected_exchange,
    send_quietly,
    start_haproxy,
    start_proxy_nginx,
    v1_header,
    v2_header_ipv4,
)

pytestmark = pytest.mark.e2e

#: epcat -v, an accepted connection whose address came from a PROXY header
ACCEPTED = (
    r"^epcat: \[(?P<conn>\d+)\] accepted (?P<peer>\S+) on (?P<local>\S+) "
    r"\(from a PROXY header sent by (?P<sender>\S+)\)$"
)

V1_LONG_BUG = (
    "BUG: a v1 PROXY line longer than 107 bytes is accepted and relayed when it arrives in "
    "one read with its CRLF: ProxyHeaderWrapper feeds twisted's V1Parser, whose feed() "
    "enforces the 107-byte limit only while the buffer holds no CRLF (V1_MAX in "
    "proxyproto.py is never used)"
)
V1_FIELDS_BUG = (
    "BUG: a v1 header with a non-numeric port makes twisted's V1Parser.parse raise a bare "
    "ValueError, which epcat (catching only InvalidProxyHeader) lets escape dataReceived: "
    "an 'Unhandled Error' traceback on stderr and a misleading 'connection closed before a "
    "complete PROXY header' warning instead of 'malformed PROXY header'"
)
V1_ADDRESS_BUG = (
    "BUG: a v1 header whose source is not an IP address ('PROXY TCP4 not-an-ip ...') is "
    "accepted (twisted's V1Parser does not validate addresses) and then passes --allow, "
    "because AccessList.refuses in run.py serves any host ipaddress cannot parse"
)
V1_UNKNOWN_BUG = (
    "BUG: 'PROXY UNKNOWN\\r\\n' (proxy-protocol.txt 2.1; what haproxy send-proxy sends for a "
    "UNIX-socket client and epcat --proxy-header v1 sends for unix/stdio inbound) is closed "
    "as malformed: twisted's V1Parser.parse splits the rest of the line after UNKNOWN on a "
    "space and raises InvalidNetworkProtocol when nothing follows"
)


def epcat_haproxy_listener(epcat_proc, *listen_options: str, connect: str, connect_options=()):
    """
    epcat -v listen haproxy:tcp:0 on 127.0.0.1; returns (process, port).
    """
    ep = epcat_proc(
        "-v",
        "listen",
        "haproxy:tcp:0:interface=127.0.0.1",
        *listen_options,
        "connect",
        connect,
        *connect_options,
    )
    return ep, ep.port()


def epcat_sender(epcat_proc, listen: str, connect: str, version: str):
    """
    epcat -v listen LISTEN connect CONNECT --proxy-header VERSION; returns
    (process, port).
    """
    ep = epcat_proc("-v", "listen", listen, "connect", connect, "--proxy-header", version)
    return ep, ep.port()


# -- receive: haproxy send-proxy -> epcat haproxy: -> plain nginx


@pytest.mark.timeout(60)
@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
def test_haproxy_to_epcat_to_plain_nginx(spawn, epcat_proc, tmp_path, send_proxy):
    """
    curl --local-port LP -> haproxy (send-proxy) -> epcat listen haproxy:...
    -> plain nginx: the body arrives, nginx saw a clean HTTP request (a PROXY
    header in front of it would be a 400), and epcat -v names curl's address
    and port as the peer, and haproxy as the sender of the header.
    """
    nginx = start_proxy_nginx(spawn, tmp_path / "nginx")
    ep, ep_port = epcat_haproxy_listener(epcat_proc, connect=f"tcp:127.0.0.1:{nginx.plain}")
    ports = start_haproxy(
        spawn,
        tmp_path / "haproxy",
        lambda p: (
            f"""
frontend fe
    mode tcp
    bind 127.0.0.1:{p["front"]}
    default_backend be
backend be
    mode tcp
    server epcat 127.0.0.1:{ep_port} {send_proxy}
"""
        ),
        names=["front"],
    )
    body, local_port = curl(f"http://127.0.0.1:{ports['front']}/")
    assert body == f"{nginx.token} GET / HTTP/1.1"
    m = ep.wait_stderr(ACCEPTED)
    assert m.group("peer") == f"127.0.0.1:{local_port}", ep.err
    assert m.group("local") == f"127.0.0.1:{ports['front']}", ep.err
    sender = m.group("sender")
    assert sender.startswith("127.0.0.1:") and sender != m.group("peer")
    ep.wait_stderr(rf"\[{m.group('conn')}\] connected to 127\.0\.0\.1:{nginx.plain} ")
    no_traceback(ep.err)


# -- send: epcat --proxy-header -> nginx proxy_protocol / haproxy accept-proxy


@pytest.mark.timeout(60)
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_epcat_proxy_header_to_nginx(spawn, epcat_proc, tmp_path, version):
    """
    curl --local-port LP -> epcat --proxy-header -> nginx proxy_protocol:
    nginx's $proxy_protocol_addr and $proxy_protocol_port are curl's.
    """
    nginx = start_proxy_nginx(spawn, tmp_path / "nginx")
    ep, port = epcat_sender(
        epcat_proc, "tcp:0:interface=127.0.0.1", f"tcp:127.0.0.1:{nginx.pp}", version
    )
    body, local_port = curl(f"http://127.0.0.1:{port}/")
    assert body == f"127.0.0.1 {local_port}", nginx.error_log()
    no_traceback(ep.err)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_epcat_proxy_header_to_haproxy(spawn, epcat_proc, tmp_path, version):
    """
    The same against haproxy's C{bind ... accept-proxy}: its %[src] and
    %[src_port] are curl's.
    """
    ports = start_haproxy(
        spawn,
        tmp_path / "haproxy",
        lambda p: (
            f"""
frontend fe
    mode http
    bind 127.0.0.1:{p["pp"]} accept-proxy
    http-request return status 200 content-type text/plain lf-string "%[src] %[src_port]\\n"
"""
        ),
        names=["pp"],
    )
    ep, port = epcat_sender(
        epcat_proc, "tcp:0:interface=127.0.0.1", f"tcp:127.0.0.1:{ports['pp']}", version
    )
    body, local_port = curl(f"http://127.0.0.1:{port}/")
    assert body == f"127.0.0.1 {local_port}"
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_v2_tlvs_read_back_by_haproxy(spawn, epcat_proc, tmp_path, tls_files):
    """
    curl (TLS, SNI localhost) -> epcat listen ssl: --proxy-header v2 ->
    haproxy accept-proxy: haproxy reads PP2_TYPE_UNIQUE_ID (epcat's
    connection id, 1 for the first connection) and PP2_TYPE_AUTHORITY (the
    SNI) back.  (nginx 1.22 has no $proxy_protocol_tlv_* variables.)
    """
    ports = start_haproxy(
        spawn,
        tmp_path / "haproxy",
        lambda p: (
            f"""
frontend fe
    mode http
    bind 127.0.0.1:{p["pp"]} accept-proxy
    http-request return status 200 content-type text/plain lf-string \
"%[src] %[src_port] %[fc_pp_unique_id] %[fc_pp_authority]\\n"
"""
        ),
        names=["pp"],
    )
    listen = f"ssl:0:interface=127.0.0.1:privateKey={tls_files.key}:certKey={tls_files.cert}"
    ep, port = epcat_sender(epcat_proc, listen, f"tcp:127.0.0.1:{ports['pp']}", "v2")
    body, local_port = curl(
        f"https://localhost:{port}/",
        "--cacert",
        str(tls_files.ca_pem),
        "--resolve",
        f"localhost:{port}:127.0.0.1",
    )
    assert body == f"127.0.0.1 {local_port} 1 localhost"
    ep.wait_stderr(r"^epcat: \[1\] accepted 127\.0\.0\.1:" + str(local_port) + " ")
    no_traceback(ep.err)


# -- the chain


@pytest.mark.timeout(60)
def test_chain_haproxy_epcat_nginx(spawn, epcat_proc, tmp_path):
    """
    curl --local-port LP -> haproxy send-proxy-v2 -> epcat listen haproxy:
    --proxy-header v1 -> nginx proxy_protocol: nginx reports curl's address
    and port, not haproxy's.
    """
    nginx = start_proxy_nginx(spawn, tmp_path / "nginx")
    ep, ep_port = epcat_haproxy_listener(
        epcat_proc,
        connect=f"tcp:127.0.0.1:{nginx.pp}",
        connect_options=("--proxy-header", "v1"),
    )
    ports = start_haproxy(
        spawn,
        tmp_path / "haproxy",
        lambda p: (
            f"""
frontend fe
    mode tcp
    bind 127.0.0.1:{p["front"]}
    default_backend be
backend be
    mode tcp
    server epcat 127.0.0.1:{ep_port} send-proxy-v2
"""
        ),
        names=["front"],
    )
    body, local_port = curl(f"http://127.0.0.1:{ports['front']}/")
    assert body == f"127.0.0.1 {local_port}", nginx.error_log()
    m = ep.wait_stderr(ACCEPTED)
    haproxy_port = int(m.group("sender").rsplit(":", 1)[1])
    assert haproxy_port != local_port
    assert m.group("peer") == f"127.0.0.1:{local_port}"
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_haproxy_unknown_from_unix_client(spawn, epcat_proc, tmp_path, short_dir):
    """
    curl --unix-socket -> haproxy (bind unix@, send-proxy: it sends
    'PROXY UNKNOWN\\r\\n' as the client has no IP address) -> epcat listen
    haproxy: -> plain nginx: the body arrives (the spec says to accept UNKNOWN
    and use the real connection's addresses).
    """
    nginx = start_proxy_nginx(spawn, tmp_path / "nginx")
    ep, ep_port = epcat_haproxy_listener(epcat_proc, connect=f"tcp:127.0.0.1:{nginx.plain}")
    sock_path = short_dir / "hap.sock"
    start_haproxy(
        spawn,
        tmp_path / "haproxy",
        lambda p: (
            f"""
frontend fe
    mode tcp
    bind unix@{sock_path}
    default_backend be
backend be
    mode tcp
    server epcat 127.0.0.1:{ep_port} send-proxy
"""
        ),
    )
    try:
        body, _ = curl("http://localhost/", "--unix-socket", str(sock_path), local_port=False)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{ep.describe()}") from None
    assert body == f"{nginx.token} GET / HTTP/1.1"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_unix_inbound_to_nginx(spawn, epcat_proc, tmp_path, short_dir, version):
    """
    curl --unix-socket -> epcat listen unix: --proxy-header -> nginx
    proxy_protocol: epcat sends PROXY UNKNOWN (v1) or a LOCAL command (v2),
    which nginx accepts, with no address to report.
    """
    nginx = start_proxy_nginx(spawn, tmp_path / "nginx")
    path = short_dir / "in.sock"
    ep = epcat_proc(
        "-v",
        "listen",
        f"unix:{path}",
        "connect",
        f"tcp:127.0.0.1:{nginx.pp}",
        "--proxy-header",
        version,
    )
    ep.listening()
    body, _ = curl("http://localhost/", "--unix-socket", str(path), local_port=False)
    assert body == "", nginx.error_log()
    no_traceback(ep.err)


# -- IPv6


@pytest.mark.timeout(60)
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_ipv6_to_nginx(spawn, epcat_proc, tmp_path, version):
    """
    curl -> epcat listen tcp6: on ::1 --proxy-header -> nginx listening on
    [::1] with proxy_protocol: it reports ::1 and curl's port.
    """
    need_ipv6()
    nginx = start_proxy_nginx(spawn, tmp_path / "nginx", ipv6=True)
    ep, port = epcat_sender(
        epcat_proc, "tcp6:0:interface=\\:\\:1", f"tcp:host=\\:\\:1:port={nginx.pp6}", version
    )
    body, local_port = curl(f"http://[::1]:{port}/", "-g")
    assert body == f"::1 {local_port}", nginx.error_log()
    ep.wait_stderr(rf"\[1\] accepted \[::1\]:{local_port} on \[::1\]:{port}")
    no_traceback(ep.err)


# -- malformed headers


def good_client(port: int) -> None:
    """
    A client with a valid header is served: its data comes back from the
    echo server behind epcat, and epcat logs the address it carried.
    """
    payload = b"hello through epcat " + os.urandom(8).hex().encode()
    reply, _ = exchange(port, v1_header("198.51.100.20", 4321) + payload)
    assert reply == payload


def truncated_v2() -> bytes:
    return v2_header_ipv4("198.51.100.1", 1234)[:20]


MALFORMED = [
    pytest.param(b"\x00" + os.urandom(200), True, "malformed PROXY header", id="random-bytes"),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False, "malformed PROXY header", id="no-header"
    ),
    pytest.param(
        truncated_v2(), True, "closed before a complete PROXY header", id="truncated-v2-then-eof"
    ),
    pytest.param(
        b"PROXY TCP4 198.51.100.1 127.0.0.1 1234 80 " + b"x" * 100,
        False,
        "malformed PROXY header",
        id="v1-over-107-bytes-no-crlf",
    ),
    pytest.param(
        b"PROXY TCP4 198.51.100.1 127.0.0.1 1234 80" + b" " * 70 + b"\r\n",
        False,
        "malformed PROXY header",
        id="v1-over-107-bytes",
    ),
    pytest.param(
        b"PROXY TCP4 198.51.100.1 127.0.0.1 http 80\r\n",
        False,
        "malformed PROXY header",
        id="v1-port-not-a-number",
    ),
    pytest.param(
        V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),
        False,
        "malformed PROXY header",
        id="v2-addresses-too-short",
    ),
    pytest.param(None, False, "no complete PROXY header within 1 s", id="silent"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("data, half_close, reason", MALFORMED)
def test_malformed_header_closed_and_next_client_served(
    epcat_proc, server, data, half_close, reason
):
    """
    epcat listen haproxy: --proxy-header-timeout 1: a bad client is closed
    with a warning naming it and the reason, no traceback, and the next good
    client is served.
    """
    echo = server(echo_handler)
    ep, port = epcat_haproxy_listener(
        epcat_proc, "--proxy-header-timeout", "1", connect=f"tcp:127.0.0.1:{echo.port}"
    )
    sock, bad_port = connect(port)
    with sock:
        send_quietly(sock, data, half_close)
        m = ep.wait_stderr(rf"^epcat: warning: closed 127\.0\.0\.1:{bad_port}: (.*)$", timeout=8)
        assert reason in m.group(1), ep.err
        reply, _ = read_to_end(sock, timeout=8)
        assert reply == b""  # closed (or reset), nothing relayed
    good_client(port)
    m = ep.wait_stderr(ACCEPTED)
    assert m.group("peer") == "198.51.100.20:4321"
    assert m.group("sender").startswith("127.0.0.1:")
    assert echo.accepted == 1  # the bad client never reached the backend
    no_traceback(ep.err)


# -- --proxy-trusted


@pytest.mark.timeout(60)
def test_untrusted_sender_closed(epcat_proc, server):
    """
    --proxy-trusted 192.0.2.0/24: a header from 127.0.0.1 is refused
    (closed and logged) before anything is relayed.
    """
    echo = server(echo_handler)
    ep, port = epcat_haproxy_listener(
        epcat_proc, "--proxy-trusted", "192.0.2.0/24", connect=f"tcp:127.0.0.1:{echo.port}"
    )
    reply, source_port = rejected_exchange(port, v1_header("198.51.100.1", 1234) + b"data")
    assert reply == b""
    ep.wait_stderr(rf"^epcat: warning: closed 127\.0\.0\.1:{source_port}: .*--proxy-trusted")
    assert echo.accepted == 0
    no_traceback(ep.err)


# -- --allow / --deny on the carried address


@pytest.mark.timeout(60)
def test_deny_applies_to_the_carried_address(epcat_proc, server):
    """
    --deny 192.0.2.0/24 with every TCP peer on 127.0.0.1: a header claiming
    192.0.2.1 is refused, one claiming 198.51.100.1 is served; JSON logs give
    the carried address and say where the header came from.
    """
    echo = server(echo_handler)
    ep = epcat_proc(
        "-v",
        "--log-format",
        "json",
        "listen",
        "haproxy:tcp:0:interface=127.0.0.1",
        "--deny",
        "192.0.2.0/24",
        "connect",
        f"tcp:127.0.0.1:{echo.port}",
    )
    port = ep.port()

    reply, _ = rejected_exchange(port, v2_header_ipv4("192.0.2.1", 1111) + b"denied")
    assert reply == b""
    m = ep.wait_stderr(r'"event": "refused"')
    record = json.loads(m.string)
    assert record["peer"] == "192.0.2.1:1111"
    assert "192.0.2.0/24" in record["reason"]

    reply, source_port = exchange(port, v1_header("198.51.100.1", 2222) + b"allowed")
    assert reply == b"allowed"
    m = ep.wait_stderr(r'"event": "accepted"')
    record = json.loads(m.string)
    assert record["peer"] == "198.51.100.1:2222"
    assert record["proxy_header_from"] == f"127.0.0.1:{source_port}"
    assert echo.accepted == 1
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_allow_refuses_a_header_without_an_ip(epcat_proc, server):
    """
    --allow 198.51.100.0/24: a header whose source is not an IP address
    must not get through.
    """
    echo = server(echo_handler)
    ep, port = epcat_haproxy_listener(
        epcat_proc, "--allow", "198.51.100.0/24", connect=f"tcp:127.0.0.1:{echo.port}"
    )
    reply, source_port = rejected_exchange(port, b"PROXY TCP4 not-an-ip 127.0.0.1 1 80\r\nsecret")
    assert reply == b"", f"relayed: {reply!r}\n{ep.describe()}"
    assert echo.accepted == 0
    # (the refusal is logged as the connection closes: wait for the line,
    # as the other refusal tests do, rather than read stderr at once)
    ep.wait_stderr(rf"127\.0\.0\.1:{source_port}|not-an-ip")
