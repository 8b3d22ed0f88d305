"""
listen --workers N: N processes share the port (SO_REUSEPORT).
"""

from __future__ import annotations

import os
import signal
import socket

import pytest

from .conftest import WAIT, no_traceback, one_error_line, run_epcat

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(60)
def test_two_workers_share_the_port(epcat_proc, server):
    def echo(conn: socket.socket) -> None:
        while data := conn.recv(1 << 16):
            conn.sendall(data)

    srv = server(echo)
    ep = epcat_proc(
        "-v", "listen", "tcp:0:interface=127.0.0.1", "--workers", "2", "connect",
        f"tcp:{srv.address}",
    )
    port = ep.port()
    # both workers listen on the same port
    first = ep.stderr.wait_for(r"listening on 127\.0\.0\.1:(\d+)")
    index = ep.stderr.lines.index(first.string)
    second = ep.stderr.wait_for(r"listening on 127\.0\.0\.1:(\d+)", start=index + 1)
    assert first.group(1) == second.group(1) == str(port)
    for i in range(40):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
            message = b"worker test %d" % i
            client.sendall(message)
            assert client.recv(100) == message
    ep.popen.send_signal(signal.SIGTERM)
    assert ep.popen.wait(WAIT) == 0
    no_traceback(ep.err)


@pytest.mark.timeout(30)
def test_workers_need_a_tcp_listener(tmp_path):
    result = run_epcat(
        "listen", f"unix:{tmp_path}/s.sock", "--workers", "2", "connect", "tcp:127.0.0.1:1"
    )
    assert result.returncode == 2
    err = result.stderr.decode()
    assert err.startswith("epcat: error:") and "--workers" in err, err
    assert len(err.strip().splitlines()) == 1


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.timeout(60)
def test_workers_are_forked_children_that_get_signals_and_go(epcat_proc, server):
    """
    The parent forks the workers (its children, in sessions of their own),
    passes SIGUSR1 on to each (two tables) and SIGTERM too, and leaves none
    behind.
    """
    srv = server(lambda conn: conn.recv(100))
    ep = epcat_proc(
        "-v", "listen", "tcp:0:interface=127.0.0.1", "--workers", "2", "connect",
        f"tcp:{srv.address}",
    )
    ep.port()
    first = ep.stderr.wait_for(r"listening on ")
    ep.stderr.wait_for(r"listening on ", start=ep.stderr.lines.index(first.string) + 1)
    workers = _children(ep.popen.pid)
    assert len(workers) == 2, workers
    for pid in workers:
        assert os.getsid(pid) == pid  # a session of its own
    ep.popen.send_signal(signal.SIGUSR1)
    table = ep.stderr.wait_for(r"^totals: ")
    ep.stderr.wait_for(r"^totals: ", start=ep.stderr.lines.index(table.string) + 1)
    ep.popen.send_signal(signal.SIGTERM)
    assert ep.popen.wait(WAIT) == 0
    assert not [pid for pid in workers if _alive(pid)]
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_workers_on_a_port_in_use_fail_once():
    """
    listen tcp:PORT --workers 2 with PORT held by another program: exit 1,
    one error line naming the endpoint and the reason (not one per worker).
    """
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        description = f"tcp:{port}:interface=127.0.0.1"
        result = run_epcat("listen", description, "--workers", "2",
                           "connect", "tcp:127.0.0.1:1")
    err = result.stderr.decode()
    assert result.returncode == 1, err
    line = one_error_line(err)
    assert description in line and "address already in use" in line, line
    no_traceback(err)
