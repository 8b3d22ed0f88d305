"""
End to end: third-party Twisted endpoint plugins, installed as they come and
untouched, in the real C{epcat} (issue 6, "Third-party plugins must work
untouched").

autobahn (the C{[websocket]} extra) ships C{twisted/plugins/autobahn_endpoints.py}:
a server and a client type, both with the prefix C{autobahn}, that wrap any
other stream endpoint in WebSocket::

    autobahn:INNER-DESCRIPTION:url=WS-URL[:compression=true|false][:autofrag=N]
             [:subprotocol=NAME][:debug=true|false]

INNER-DESCRIPTION is one positional argument, so its own colons and equals
signs are escaped (C{tcp\\:8080\\:interface\\=127.0.0.1}), and so are the
colons of the URL (C{url=ws\\://127.0.0.1\\:8080/}).  C{url=} is required;
the server only uses it for its handshake (no C{externalPort} is set, so the
Host header's port is not checked and the inner port may be 0).

Framing (autobahn's C{WrappingWebSocketAdapter}, websockify-compatible): the
WebSocket client must offer the subprotocol C{binary} or C{base64} (otherwise
the handshake is refused with HTTP 406).  With C{binary}, every chunk epcat
writes towards the WebSocket (every read from the TCP side) is one binary
message, and every message received is handed on as one chunk of the byte
stream (message boundaries are not kept on the TCP side); with C{base64}, the
same as base64 text messages.  A message of the other type closes the
connection (1003).  WebSocket has no half-close: EOF from the other side
closes the WebSocket (a clean close frame without a status code, reported by
clients as 1005), and an EOF from a TCP client tunnelled over it ends the
whole connection, so replies still in flight are lost.

txtorcon (the C{[tor]} extra) ships C{twisted/plugins/txtorcon_endpoint_parser.py}:
client C{tor:HOST:PORT[:socksHostname=H][:socksPort=N][:socksUsername=U]
[:socksPassword=P]} and server C{onion:PUBLIC_PORT[:localPort=N]
[:controlPort=N|PATH][:hiddenServiceDir=DIR][:privateKey=K][:privateKeyFile=F]
[:version=2|3][:singleHop=true|false]}.  Tor cannot run here: only listing and
parsing are tested, and parsing must neither run a tor nor connect anywhere.

A missing package skips these tests, and fails them on CI (the C{test} extra
installs autobahn, txtorcon and websockets).
"""

from __future__ import annotations

import base64
import importlib
import os
import re
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .conftest import EPCAT, WAIT, no_traceback, run_epcat

pytestmark = pytest.mark.e2e


def need(module: str) -> ModuleType:
    """
    Import C{module}; missing, it skips the test, or fails it on CI.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        message = f"{module} is not installed ({e}): pip install -e '.[test]'"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def ws_connect() -> Any:
    """
    The C{websockets} package's synchronous client C{connect}.
    """
    need("websockets")
    return importlib.import_module("websockets.sync.client").connect


def section(stdout: str, role: str) -> str:
    """
    The SERVER or CLIENT part of C{epcat endpoints}' table.
    """
    server, sep, client = stdout.partition("CLIENT ENDPOINT TYPES")
    assert sep and "SERVER ENDPOINT TYPES" in server, stdout
    return server if role == "server" else client


def row(table: str, prefix: str) -> str:
    """
    The two lines of C{table} that describe C{prefix}.
    """
    m = re.search(rf"^  {re.escape(prefix)}: .*\n.*$", table, re.MULTILINE)
    assert m, f"no {prefix}: row in\n{table}"
    return m.group(0)


def ws_description(inner_port: int = 0) -> str:
    """
    An autobahn: server description on loopback: the inner description and
    the URL, each escaped as one argument.
    """
    return (
        rf"autobahn:tcp\:{inner_port}\:interface\=127.0.0.1"
        r":url=ws\://127.0.0.1/"
    )


def recv_bytes(ws: Any, count: int, timeout: float = WAIT) -> tuple[bytes, int]:
    """
    Read binary messages until C{count} bytes have come; return them and the
    number of messages they came in.
    """
    got = b""
    messages = 0
    deadline = time.monotonic() + timeout
    while len(got) < count:
        message = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        assert isinstance(message, bytes), f"a text message in binary mode: {message!r}"
        got += message
        messages += 1
    return got, messages


class StreamRecorder:
    """
    A TCP server handler: echo everything until EOF and return it all.
    Tolerates the peer having closed completely (WebSocket has no half-close,
    so epcat closes both directions at once).
    """

    def __call__(self, conn: socket.socket) -> bytes:
        received = []
        while True:
            try:
                data = conn.recv(1 << 16)
            except OSError:
                break
            if not data:
                break
            received.append(data)
            conn.sendall(data)
        try:
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        return b"".join(received)


# -- 1. epcat endpoints lists the plugins' types


@pytest.mark.timeout(60)
def test_endpoints_lists_autobahn_tor_and_onion():
    """
    With autobahn and txtorcon installed, C{epcat endpoints} (stdout) lists
    C{autobahn:} as a server and as a client type, C{onion:} as a server type
    and C{tor:} as a client type, each with the module that provides it.
    """
    need("autobahn")
    need("txtorcon")
    result = run_epcat("endpoints")
    stdout = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    no_traceback(result.stderr.decode())
    servers, clients = section(stdout, "server"), section(stdout, "client")
    assert "[twisted.plugins.autobahn_endpoints]" in row(servers, "autobahn")
    assert "[twisted.plugins.autobahn_endpoints]" in row(clients, "autobahn")
    onion = row(servers, "onion")
    assert "[txtorcon.endpoints]" in onion
    assert "PUBLIC_PORT" in onion and "controlPort=" in onion
    assert "[txtorcon.endpoints]" in row(clients, "tor")
    assert not re.search(r"^  tor: ", servers, re.MULTILINE), "tor: is a client type only"
    assert not re.search(r"^  onion: ", clients, re.MULTILINE), "onion: is a server type only"


@pytest.mark.timeout(60)
def test_endpoints_type_shows_tor_onion_and_autobahn():
    """
    C{epcat endpoints TYPE} shows one plugin type: its role and its module.
    """
    need("autobahn")
    need("txtorcon")
    tor = run_epcat("endpoints", "tor")
    assert tor.returncode == 0, tor.stderr.decode()
    out = tor.stdout.decode()
    assert re.search(r"^tor: \(client\)", out, re.MULTILINE), out
    assert "provided by: txtorcon.endpoints" in out
    assert "(server)" not in out

    onion = run_epcat("endpoints", "onion:")
    assert onion.returncode == 0, onion.stderr.decode()
    out = onion.stdout.decode()
    assert re.search(r"^onion: \(server\)", out, re.MULTILINE), out
    assert "provided by: txtorcon.endpoints" in out
    assert "PUBLIC_PORT" in out and "controlPort=" in out

    autobahn = run_epcat("endpoints", "autobahn")
    assert autobahn.returncode == 0, autobahn.stderr.decode()
    out = autobahn.stdout.decode()
    assert re.search(r"^autobahn: \(server\)", out, re.MULTILINE), out
    assert re.search(r"^autobahn: \(client\)", out, re.MULTILINE), out
    assert out.count("provided by: twisted.plugins.autobahn_endpoints") == 2
    # WebSocket has no half-close: epcat says so
    assert "half-close:  no" in out
    for result in (tor, onion, autobahn):
        no_traceback(result.stderr.decode())


# -- 2. an autobahn: WebSocket listener relays to TCP for a real WebSocket client


@pytest.mark.timeout(60)
def test_autobahn_listener_relays_websocket_messages_to_tcp(epcat_proc, server):
    """
    C{epcat listen autobahn:... connect tcp:...}: a real WebSocket client
    (the C{websockets} package) sends binary messages and gets each echoed
    back by a plain TCP echo server through epcat; the TCP server sees the
    bare bytes (no WebSocket framing).  With the C{base64} subprotocol the
    same stream travels as base64 text messages.  A client that offers
    neither subprotocol is refused in the handshake.
    """
    need("autobahn")
    connect = ws_connect()
    from websockets.exceptions import InvalidStatus

    echo = server(StreamRecorder())
    ep = epcat_proc("-v", "listen", ws_description(), "connect", f"tcp:{echo.address}")
    port = ep.port()
    url = f"ws://127.0.0.1:{port}/"

    payloads = [b"hello over websocket\n", os.urandom(1000), bytes(range(256)) * 40, b"\x00"]
    with connect(url, subprotocols=["binary"], open_timeout=WAIT) as ws:
        assert ws.subprotocol == "binary"
        for payload in payloads:
            ws.send(payload)
            got, _ = recv_bytes(ws, len(payload))
            assert got == payload
    ep.wait_stderr(r"^epcat: \[1\] closed: ")
    assert echo.wait_results(1) == [b"".join(payloads)]

    text = b"base64 framing \xff\x00"
    with connect(url, subprotocols=["base64"], open_timeout=WAIT) as ws:
        assert ws.subprotocol == "base64"
        ws.send(base64.b64encode(text).decode())
        echoed = ws.recv(timeout=WAIT)
        assert isinstance(echoed, str), "base64 mode answers in text messages"
        assert base64.b64decode(echoed) == text
    ep.wait_stderr(r"^epcat: \[2\] closed: ")
    assert echo.wait_results(2)[1] == text

    with pytest.raises(InvalidStatus) as refused, connect(url, open_timeout=WAIT):
        pass
    assert refused.value.response.status_code == 406
    assert ep.popen.poll() is None, ep.describe()
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_autobahn_listener_one_message_per_tcp_chunk_and_close(epcat_proc, server):
    """
    Each chunk the TCP side sends becomes one WebSocket message; when the TCP
    side ends, the WebSocket client gets a clean close (a close frame without
    a status code, which the client reports as 1005), since WebSocket has no
    half-close.
    """
    need("autobahn")
    connect = ws_connect()
    from websockets.exceptions import ConnectionClosedOK

    def greet(conn: socket.socket) -> None:
        conn.sendall(b"one\n")
        time.sleep(0.3)  # two separate reads in epcat, so two messages
        conn.sendall(b"two\n")
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # until epcat closes

    tcp = server(greet)
    ep = epcat_proc("-v", "listen", ws_description(), "connect", f"tcp:{tcp.address}")
    port = ep.port()
    with connect(f"ws://127.0.0.1:{port}/", subprotocols=["binary"], open_timeout=WAIT) as ws:
        assert ws.recv(timeout=WAIT) == b"one\n"
        assert ws.recv(timeout=WAIT) == b"two\n"
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=WAIT)
        # autobahn's wrapper closes with sendClose() and no status code: the
        # client reports 1005 ("no status received"), a clean close
        assert ws.close_code in (1000, 1005)
    ep.wait_stderr(r"^epcat: \[1\] closed: 0 bytes inbound->outbound, 8 bytes outbound->inbound")
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_autobahn_client_and_server_tunnel_tcp_over_websocket(epcat_proc, server):
    """
    Both autobahn types at once: C{listen tcp connect autobahn:...} on one
    epcat, C{listen autobahn:... connect tcp:...} on another, is a TCP
    tunnel over WebSocket; a TCP client gets its bytes echoed back.
    """
    need("autobahn")
    echo = server(StreamRecorder())
    ws_side = epcat_proc("-v", "listen", ws_description(), "connect", f"tcp:{echo.address}")
    ws_port = ws_side.port()
    client_description = (
        rf"autobahn:tcp\:127.0.0.1\:{ws_port}:url=ws\://127.0.0.1\:{ws_port}/tunnel"
    )
    tcp_side = epcat_proc(
        "-v", "listen", "tcp:0:interface=127.0.0.1", "connect", client_description
    )
    tcp_port = tcp_side.port()
    data = os.urandom(40000)  # under 64 KiB: see the xfail test below
    with socket.create_connection(("127.0.0.1", tcp_port), timeout=WAIT) as sock:
        sock.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = sock.recv(1 << 16)
            assert chunk, f"EOF after {len(got)} bytes:\n{tcp_side.describe()}"
            got += chunk
    assert got == data
    tcp_side.wait_stderr(
        r"^epcat: \[1\] closed: 40000 bytes inbound->outbound, "
        r"40000 bytes outbound->inbound"
    )
    ws_side.wait_stderr(r"^epcat: \[1\] closed: ")
    assert echo.wait_results(1) == [data]
    no_traceback(tcp_side.err)
    no_traceback(ws_side.err)


@pytest.mark.timeout(60)
def test_autobahn_listener_relays_a_large_message(epcat_proc, server):
    """
    One 256 KiB WebSocket message comes back whole through a TCP echo server.
    """
    need("autobahn")
    connect = ws_connect()
    from websockets.exceptions import ConnectionClosed

    echo = server(StreamRecorder())
    ep = epcat_proc("-v", "listen", ws_description(), "connect", f"tcp:{echo.address}")
    port = ep.port()
    data = os.urandom(256 * 1024)
    try:
        with connect(f"ws://127.0.0.1:{port}/", subprotocols=["binary"], open_timeout=WAIT) as ws:
            ws.send(data)
            got, _ = recv_bytes(ws, len(data))
    except ConnectionClosed as e:
        ep.wait_stderr(r"^epcat: \[1\] closed: ")
        raise AssertionError(f"connection closed: {e!r}\n{ep.describe()}") from None
    assert got == data
    no_traceback(ep.err)


# -- 3. tor: and onion: parse without running or contacting tor


@pytest.fixture
def fake_tor(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """
    A C{tor} first on PATH that only records that it ran, and an empty
    TMPDIR: what epcat's parse of a tor:/onion: description leaves behind.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ran = tmp_path / "tor-ran"
    tor = bin_dir / "tor"
    tor.write_text(f'#!/bin/sh\necho "$@" >> {ran}\nexit 1\n')
    tor.chmod(tor.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(
        os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", TMPDIR=str(tmp)
    )
    yield {"env": env, "ran": ran, "tmp": tmp}


def explain(description: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        EPCAT + ["explain", description], capture_output=True, env=env, timeout=WAIT, text=True
    )


def listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    return sock


def assert_no_connection(sock: socket.socket, what: str) -> None:
    try:
        conn, peer = sock.accept()
    except BlockingIOError:
        return
    conn.close()
    raise AssertionError(f"{what}: a connection came from {peer}")


@pytest.mark.timeout(60)
def test_explain_tor_client_parses_without_tor(fake_tor):
    """
    C{epcat explain tor:example.com:80} names txtorcon's C{TorClientEndpoint}
    and its arguments, runs no tor and connects nowhere: not to the SOCKS
    port given, nor to Tor's usual 9050/9150 (checked where they are free).
    """
    need("txtorcon")
    env = fake_tor["env"]
    usual = []
    for port in (9050, 9150):
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(8)
            sock.setblocking(False)
            usual.append(sock)
        except OSError:
            sock.close()  # a real tor, or anything else: not ours to check
    socks = listener()
    try:
        result = explain("tor:example.com:80", env)
        assert result.returncode == 0, result.stderr
        assert "endpoint:   TorClientEndpoint (txtorcon.endpoints)" in result.stdout
        assert "host = example.com" in result.stdout
        assert "port = 80" in result.stdout
        assert "as a server" not in result.stdout
        no_traceback(result.stderr)

        port = socks.getsockname()[1]
        given = explain(f"tor:host=example.com:port=443:socksPort={port}", env)
        assert given.returncode == 0, given.stderr
        assert "TorClientEndpoint (txtorcon.endpoints)" in given.stdout
        assert f"socksPort = {port}" in given.stdout
        no_traceback(given.stderr)
        assert_no_connection(socks, "explain tor:...:socksPort=")
        for sock in usual:
            assert_no_connection(sock, f"explain tor: (port {sock.getsockname()[1]})")
    finally:
        socks.close()
        for sock in usual:
            sock.close()
    assert not fake_tor["ran"].exists(), fake_tor["ran"].read_text()
    assert not list(fake_tor["tmp"].iterdir())


@pytest.mark.timeout(60)
def test_explain_onion_server_parses_without_running_tor(fake_tor):
    """
    C{epcat explain onion:80} names txtorcon's C{TCPHiddenServiceEndpoint}
    and never runs tor, even with one on PATH; C{onion:80:controlPort=N}
    does not connect to that control port.
    """
    need("txtorcon")
    env = fake_tor["env"]
    result = explain("onion:80", env)
    assert result.returncode == 0, result.stderr
    assert "endpoint:   TCPHiddenServiceEndpoint (txtorcon.endpoints)" in result.stdout
    assert "public_port = 80" in result.stdout
    assert "as a client" not in result.stdout
    assert not fake_tor["ran"].exists(), fake_tor["ran"].read_text()

    control = listener()
    try:
        port = control.getsockname()[1]
        given = explain(f"onion:443:localPort=8080:controlPort={port}", env)
        assert given.returncode == 0, given.stderr
        assert "TCPHiddenServiceEndpoint (txtorcon.endpoints)" in given.stdout
        assert f"controlPort = {port}" in given.stdout
        assert "localPort = 8080" in given.stdout
        no_traceback(given.stderr)
        assert_no_connection(control, "explain onion:...:controlPort=")
    finally:
        control.close()
    assert not fake_tor["ran"].exists(), fake_tor["ran"].read_text()


@pytest.mark.timeout(60)
def test_explain_onion_is_quiet_and_leaves_nothing_behind(fake_tor):
    """
    C{epcat explain onion:80} prints no traceback and leaves no temporary
    directory, whether or not a tor binary is installed.
    """
    need("txtorcon")
    env = fake_tor["env"]
    with_tor = explain("onion:80", env)
    without_tor = explain("onion:80", dict(env, PATH=os.path.dirname(sys.executable)))
    for result in (with_tor, without_tor):
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        assert "Unhandled error" not in result.stderr, result.stderr
    assert not list(fake_tor["tmp"].iterdir()), "left behind in TMPDIR"
    assert not fake_tor["ran"].exists(), "explain ran tor"
