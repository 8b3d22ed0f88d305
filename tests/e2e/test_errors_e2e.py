"""
End to end: how epcat fails -- exit statuses, one-line messages that name
the endpoint and the reason, never a traceback.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import struct

import pytest

from .conftest import WAIT, no_traceback, one_error_line, recv_all, run_epcat

pytestmark = pytest.mark.e2e

LOCAL = "tcp:0:interface=127.0.0.1"


@pytest.fixture
def closed_port():
    """
    A port that refuses connections: bound (so nobody else takes it) but not
    listening.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args, expect",
    [
        (["listen", "tpc:80"], r"'tpc:80'.*did you mean tcp"),
        (["connect", "tcp:localhost"], r"'tcp:localhost'.*port"),
        (["listen", "tcp:0:bogus=1", "connect", "tcp:127.0.0.1:80"], r"'tcp:0:bogus=1'.*bogus"),
        (["connect", "tcp:127.0.0.1:eighty"], r"'tcp:127\.0\.0\.1:eighty'"),
        (["connect", "tcp:127.0.0.1:80", "listen", "tcp:0"], r"listen|connect"),
    ],
    ids=["unknown-type", "missing-port", "bad-keyword", "bad-number", "bad-order"],
)
def test_bad_description_exit_2(args, expect):
    result = run_epcat(*args)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert result.stdout == b""
    line = one_error_line(err)
    assert re.search(expect, line), line


@pytest.mark.timeout(60)
def test_address_in_use_exit_1():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        description = f"tcp:{port}:interface=127.0.0.1"
        result = run_epcat("listen", description, "connect", "tcp:127.0.0.1:9")
    err = result.stderr.decode()
    assert result.returncode == 1, err
    line = one_error_line(err)
    assert description in line, line
    assert "address already in use" in line.lower(), line


@pytest.mark.timeout(60)
def test_cannot_listen_on_bad_unix_path_exit_1(tmp_path):
    description = f"unix:{tmp_path}/no/such/dir/sock"
    result = run_epcat("listen", description)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    line = one_error_line(err)
    assert description in line, line
    assert "no such file or directory" in line.lower(), line


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["stdio", "tunnel"])
def test_connection_refused_exit_7(closed_port, mode):
    description = f"tcp:127.0.0.1:{closed_port}"
    args = ["connect", description]
    if mode == "tunnel":
        args += ["connect", description]
    result = run_epcat(*args, stdin=b"hello\n")
    err = result.stderr.decode()
    assert result.returncode == 7, err
    line = one_error_line(err)
    assert description in line, line
    assert "connection refused" in line.lower(), line


@pytest.mark.timeout(60)
def test_connection_refused_json_log(closed_port):
    """
    With --log-format json the error is a JSON object too.
    """
    description = f"tcp:127.0.0.1:{closed_port}"
    result = run_epcat("--log-format", "json", "connect", description, stdin=b"")
    assert result.returncode == 7, result.stderr
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["level"] == "error"
    assert description in record["message"]
    assert "connection refused" in record["message"]


@pytest.mark.timeout(60)
def test_relay_outbound_refused_is_logged_and_server_goes_on(epcat_proc, closed_port, server):
    """
    In relay mode a failed outbound connection closes only its own inbound
    connection, is reported at the default verbosity naming the endpoint and
    the reason, and the server goes on; SIGTERM then exits 0.
    """
    description = f"tcp:127.0.0.1:{closed_port}"
    ep = epcat_proc("--log-format", "json", "-v", "listen", LOCAL, "connect", description)
    port = ep.port()
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
            client.sendall(b"hello\n")
            try:
                assert recv_all(client) == b""
            except ConnectionResetError:
                pass  # closed with our unread "hello" pending: also closed
    ep.wait_stderr(r'"event": "failed".*"conn": 2')
    failed = [json.loads(line) for line in ep.stderr.lines if '"event": "failed"' in line]
    assert len(failed) == 2, ep.err
    assert failed[0]["level"] == "warning"
    assert description in failed[0]["message"]
    assert "connection refused" in failed[0]["message"]
    assert ep.popen.poll() is None, ep.describe()
    ep.signal(signal.SIGTERM)
    assert ep.finish() == 0, ep.describe()
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_relay_outbound_refused_text_warning_line(epcat_proc, closed_port):
    """
    The same as text: a "warning" line naming the endpoint and the reason
    (-v only to learn the port; the warning shows at the default verbosity,
    see the JSON test's "level").
    """
    description = f"tcp:127.0.0.1:{closed_port}"
    ep = epcat_proc("-v", "listen", LOCAL, "connect", description)
    port = ep.port()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        try:
            assert recv_all(client) == b""
        except ConnectionResetError:
            pass
    line = ep.wait_stderr(r"^epcat: warning: .*cannot connect").string
    assert description in line and "connection refused" in line, line
    ep.signal(signal.SIGTERM)
    assert ep.finish() == 0, ep.describe()


@pytest.mark.timeout(60)
def test_tcp_reset_by_peer_exit_1(server):
    """
    A server that answers part and then resets the connection: exit 1 (I/O
    error), one error line, the bytes that did arrive on stdout.
    """
    def partial_then_reset(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"partial answer\n")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    srv = server(partial_then_reset)  # Server closes conn after the handler: RST
    result = run_epcat("connect", f"tcp:{srv.address}", stdin=b"request\n")
    srv.wait_results(1)
    err = result.stderr.decode()
    # the kernel may drop what was not read yet when the RST arrives
    assert b"partial answer\n".startswith(result.stdout)
    assert result.returncode == 1, err
    line = one_error_line(err)
    assert srv.address in line, line


@pytest.mark.timeout(60)
def test_no_traceback_anywhere_on_garbage_options():
    for args in (["--log-format", "xml", "connect", "tcp:127.0.0.1:1"], ["--bogus"], ["listen"],
                 ["connect", ""], ["connect", "tls:localhost:443:trustRoots=/nonexistent"]):
        result = run_epcat(*args)
        err = result.stderr.decode()
        assert result.returncode == 2, (args, err)
        no_traceback(err)
        assert err.startswith("epcat: error:"), (args, err)
