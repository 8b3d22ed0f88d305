"""
End to end: epcat's own client endpoint types C{exec:}, C{stdio:} and
C{hostname:} (L{epcat.plugins}) in the real C{epcat}, with real children,
real stdin/stdout and real sockets on loopback.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from epcat.plugins import CUT_OFF_GRACE

from .conftest import WAIT, no_traceback, recv_all

pytestmark = pytest.mark.e2e

LOCAL = "tcp:0:interface=127.0.0.1"


def exchange(port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    """
    Connect, send C{data} (from a thread, so a peer that answers while
    reading never blocks us), half-close, and read to EOF.
    """
    with socket.create_connection((host, port), timeout=WAIT) as sock:
        def send() -> None:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        received = recv_all(sock)
        sender.join(WAIT)
        return received


# -- exec:


@pytest.mark.timeout(60)
def test_exec_cat_is_an_echo_server_for_concurrent_clients(epcat_proc):
    """
    C{listen tcp connect exec:cat}: each client gets its own cat, and gets
    back exactly what it sent (1 MiB each, two at once), then EOF.
    """
    ep = epcat_proc("-v", "listen", LOCAL, "connect", "exec:cat")
    port = ep.port()
    payloads = [os.urandom(1024 * 1024) for _ in range(2)]
    results: list[Any] = [None, None]
    socks = [socket.create_connection(("127.0.0.1", port), timeout=WAIT) for _ in range(2)]
    try:
        def run(i: int) -> None:
            sock = socks[i]
            sender = threading.Thread(
                target=lambda: (sock.sendall(payloads[i]), sock.shutdown(socket.SHUT_WR)),
                daemon=True,
            )
            sender.start()
            results[i] = recv_all(sock)
            sender.join(WAIT)

        # both connected before either sends: two children at once
        ep.wait_stderr(r"^epcat: \[2\] connected to exec cat \(pid \d+\)")
        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT * 2)
    finally:
        for sock in socks:
            sock.close()
    assert results[0] == payloads[0]
    assert results[1] == payloads[1]
    ep.wait_stderr(r"^epcat: \[1\] closed: ")
    ep.wait_stderr(r"^epcat: \[2\] closed: ")
    assert ep.popen.poll() is None  # a relay goes on serving
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_exec_output_goes_to_stdout(epcat_proc):
    ep = epcat_proc("connect", 'exec:sh -c "echo hi; cat >/dev/null"', stdin=b"")
    assert ep.finish() == 0, ep.describe()
    assert ep.out == b"hi\n"
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_exec_stdin_goes_to_the_child(epcat_proc):
    ep = epcat_proc("connect", "exec:tr a-z A-Z", stdin=b"hello, child\n")
    assert ep.finish() == 0, ep.describe()
    assert ep.out == b"HELLO, CHILD\n"


@pytest.mark.timeout(60)
def test_exec_eof_closes_the_childs_stdin_and_its_output_goes_on(epcat_proc):
    """
    Half-close: the client's EOF closes the child's stdin; what the child
    writes after that still reaches the client, then EOF.
    """
    ep = epcat_proc("-v", "listen", LOCAL, "connect",
                    'exec:sh -c "cat; echo after-eof"')
    port = ep.port()
    assert exchange(port, b"before\n") == b"before\nafter-eof\n"
    ep.wait_stderr(r"^epcat: \[1\] closed: ")


@pytest.mark.timeout(60)
def test_exec_stderr_shows_on_epcats_stderr(epcat_proc):
    ep = epcat_proc("connect", 'exec:sh -c "echo child-complains >&2; echo out"', stdin=b"")
    assert ep.finish() == 0, ep.describe()
    assert ep.out == b"out\n"
    assert "child-complains" in ep.stderr.lines  # the child's own line, as it wrote it


@pytest.mark.timeout(60)
def test_exec_escaped_colon_reaches_the_child(epcat_proc):
    ep = epcat_proc("connect", "exec:echo localhost\\:22 a:b", stdin=b"")
    assert ep.finish() == 0, ep.describe()
    assert ep.out == b"localhost:22 a:b\n"


@pytest.mark.timeout(60)
def test_exec_exit_status_is_reported(epcat_proc):
    ep = epcat_proc("connect", 'exec:sh -c "echo partial; exit 3"', stdin=b"")
    assert ep.finish() == 1, ep.describe()
    assert ep.out == b"partial\n"
    assert "exit code 3" in ep.err
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_exec_command_not_found(epcat_proc):
    ep = epcat_proc("connect", "exec:epcat-no-such-command --flag", stdin=b"")
    assert ep.finish() == 7, ep.describe()
    assert "command not found (epcat-no-such-command)" in ep.err
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_exec_bad_quoting_is_a_usage_error(epcat_proc):
    ep = epcat_proc("connect", 'exec:sh -c "echo', stdin=b"")
    assert ep.finish() == 2, ep.describe()
    assert "no closing quotation" in ep.err


@pytest.mark.timeout(60)
def test_exec_child_that_ignores_its_pipes_is_terminated(epcat_proc):
    """
    When epcat closes a pair (here by --half-close-timeout) it closes the
    child's pipes; a child that takes no notice is sent SIGTERM after the
    cut-off grace period (1 s), and the pair ends cleanly.
    """
    ep = epcat_proc("-v", "--half-close-timeout", "0.5", "listen", LOCAL, "connect",
                    "exec:sleep 40")
    port = ep.port()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        child = int(ep.wait_stderr(
            r"^epcat: \[1\] connected to exec sleep 40 \(pid (\d+)\)").group(1))
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b""
        ep.wait_stderr(r"^epcat: \[1\] closed: ", timeout=WAIT)
    assert ep.popen.poll() is None
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # ended and reaped
    no_traceback(ep.err)
    assert "error" not in ep.err and "warning" not in ep.err, ep.err


def reset(sock: socket.socket) -> None:
    """Close C{sock} with a TCP RST (SO_LINGER on, 0 seconds) instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def is_our_sleep(pid: int) -> bool:
    """Is C{pid} (still) a C{sleep 600} child, zombie or not?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read() == b"sleep\x00600\x00"
    except OSError:
        return False


@pytest.mark.timeout(60)
def test_exec_a_reset_client_ends_the_pair_and_the_child_promptly(epcat_proc):
    """
    A client that sends a byte and resets: the child (C{sleep}, which reads
    no stdin and writes no stdout, so never notices its pipes closing) is
    terminated a moment later, not after the 5 s grace of a pair that ended
    both ways; the pair is logged closed with the reason, SIGUSR1 lists it
    no more, and its --max-connections slot serves the next client.
    """
    ep = epcat_proc("-vv", "listen", LOCAL, "--max-connections", "1", "connect",
                    "exec:sleep 600")
    port = ep.port()
    children: list[int] = []
    try:
        for conn_id in (1, 2):
            sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
            child = int(ep.wait_stderr(
                rf"^epcat: \[{conn_id}\] connected to exec sleep 600 \(pid (\d+)\)").group(1))
            children.append(child)
            sock.sendall(b"x")
            reset(sock)
            ep.wait_stderr(rf"^epcat: warning: \[{conn_id}\] connection on .* failed: "
                           r"connection (lost|reset)")
            # promptly: SIGTERM after the short cut-off grace, where before
            # it came KILL_GRACE seconds after the pipes were closed (-vv
            # says how long it waited: no clock read here)
            ep.wait_stderr(rf"exec: sleep 600 \(pid {child}\) still running "
                           rf"{CUT_OFF_GRACE:g} s after its pipes were ")
            ep.wait_stderr(rf"^epcat: \[{conn_id}\] exec:sleep 600: killed by signal 15 "
                           r"\(SIGTERM\)$")
            ep.wait_stderr(
                rf"^epcat: \[{conn_id}\] closed: 1 bytes inbound->outbound, 0 bytes "
                r"outbound->inbound, ([\d.]+) s, inbound side ended first$")
            assert not os.path.exists(f"/proc/{child}")  # ended and reaped
            with pytest.raises(ProcessLookupError):
                os.kill(child, 0)
        ep.signal(signal.SIGUSR1)
        ep.wait_stderr(r"^0 open pair\(s\)$")
        ep.wait_stderr(r"^totals: 2 accepted, 0 refused, 2 failed, 2 closed, 0 open;")
        assert ep.popen.poll() is None  # a relay goes on serving
    finally:
        # (the fixture SIGKILLs epcat, which would leave a child behind)
        for child in children:
            if is_our_sleep(child):
                os.kill(child, signal.SIGKILL)
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_exec_eof_is_no_reset_a_slow_child_still_answers(epcat_proc):
    """
    A clean EOF from the client (a half-close) only closes the child's
    stdin: a child that answers later than the cut-off grace (1 s) after
    it is neither cut off nor signalled, and exits by itself.
    """
    ep = epcat_proc("-v", "listen", LOCAL, "connect",
                    'exec:sh -c "cat; sleep 2; echo done"')
    port = ep.port()
    assert exchange(port, b"data\n") == b"data\ndone\n"
    ep.wait_stderr(r'^epcat: \[1\] exec:sh -c .*: exit status 0$')
    ep.wait_stderr(r"^epcat: \[1\] closed: 5 bytes inbound->outbound, 10 bytes "
                   r"outbound->inbound, .* s, inbound side ended first$")
    no_traceback(ep.err)
    assert "warning" not in ep.err and "SIG" not in ep.err, ep.err


@pytest.mark.timeout(60)
def test_exec_child_environment_describes_the_peer(epcat_proc):
    ep = epcat_proc("-v", "listen", LOCAL, "connect", 'exec:sh -c "env"')
    port = ep.port()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        client_port = sock.getsockname()[1]
        sock.shutdown(socket.SHUT_WR)
        output = recv_all(sock).decode()
    lines = set(output.splitlines())
    assert "EPCAT_PEER_ADDR=127.0.0.1" in lines
    assert f"EPCAT_PEER_PORT={client_port}" in lines
    assert "EPCAT_LOCAL_ADDR=127.0.0.1" in lines
    assert f"EPCAT_LOCAL_PORT={port}" in lines
    assert "EPCAT_CONN_ID=1" in lines


# -- stdio:


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "command",
    [["listen", LOCAL], ["listen", LOCAL, "--once", "connect", "stdio:"]],
    ids=["listen-alone", "connect-stdio"],
)
def test_stdio_client_reads_like_listen_alone(epcat_proc, command):
    """
    C{listen tcp --once connect stdio:} does what C{listen tcp} does: the
    client's bytes go to stdout, stdin's bytes to the client, each followed
    by EOF, and epcat exits 0.
    """
    ep = epcat_proc("-v", *command, stdin=b"from stdin\n")
    port = ep.port()
    assert exchange(port, b"to stdout\n") == b"from stdin\n"
    assert ep.finish() == 0, ep.describe()
    assert ep.out == b"to stdout\n"
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_stdio_client_serves_one_connection_at_a_time(epcat_proc):
    """
    'listen X connect stdio:' reads the same as 'listen X': the first
    connection gets stdin/stdout and the port stops listening.  The
    listening socket is closed before "accepted" is printed, so a client
    that connects after that line is refused: never left on a handshake
    the kernel completed while the socket was closing, which nobody holds.
    """
    ep = epcat_proc("-v", "listen", LOCAL, "connect", "stdio:", stdin=subprocess.PIPE,
                    stdout="pipe")
    port = ep.port()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as first:
        ep.wait_stderr(r"^epcat: \[1\] accepted ")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
        # the first still works both ways
        ep.popen.stdin.write(b"to the first\n")
        ep.popen.stdin.flush()
        got = b""
        while not got.endswith(b"\n"):
            chunk = first.recv(100)
            assert chunk, "the first connection was closed"
            got += chunk
        assert got == b"to the first\n"
        first.sendall(b"from the first\n")
        assert ep.popen.stdout.readline() == b"from the first\n"
    no_traceback(ep.err)


# -- hostname:


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def ipv6_only_server() -> Iterator[int]:
    """
    A TCP server on ::1 only that answers each connection with C{v6:} and
    what it received, then closes.
    """
    if not ipv6_loopback():
        pytest.skip("::1 is not available here")
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    listener.bind(("::1", 0))
    listener.listen(16)
    listener.settimeout(WAIT * 2)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(WAIT)
                try:
                    conn.sendall(b"v6:" + recv_all(conn))
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    try:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
    except OSError:
        pass
    listener.close()
    thread.join(WAIT)


def name_for_ipv6_loopback() -> str | None:
    """
    A host name this machine resolves to ::1 (the usual C{localhost}), or
    L{None}.
    """
    for name in ("localhost", "ip6-localhost", "localhost6", "ip6-loopback"):
        try:
            infos = socket.getaddrinfo(name, 80, socket.AF_UNSPEC, socket.SOCK_STREAM)
        except OSError:
            continue
        if any(info[4][0] == "::1" for info in infos):
            return name
    return None


@pytest.mark.timeout(60)
def test_hostname_reaches_an_ipv6_only_server_by_name(epcat_proc, ipv6_only_server):
    """
    A server listening on ::1 only: C{hostname:NAME:PORT} reaches it, while
    C{tcp:NAME:PORT} (IPv4 only) cannot.
    """
    name = name_for_ipv6_loopback()
    if name is None:
        pytest.skip("no host name resolves to ::1 here (/etc/hosts has no ::1 line); "
                    "see test_hostname_tries_both_families_of_a_name")
    port = ipv6_only_server
    ep = epcat_proc("connect", f"hostname:{name}:{port}", stdin=b"ping")
    assert ep.finish() == 0, ep.describe()
    assert ep.out == b"v6:ping"
    tcp = epcat_proc("connect", f"tcp:{name}:{port}", stdin=b"ping")
    assert tcp.finish() in (6, 7), tcp.describe()
    assert tcp.out == b""


@pytest.mark.timeout(60)
def test_hostname_ipv6_literal(epcat_proc, ipv6_only_server):
    ep = epcat_proc("connect", f"hostname:\\:\\:1:{ipv6_only_server}", stdin=b"ping")
    assert ep.finish() == 0, ep.describe()
    assert ep.out == b"v6:ping"


#: The real epcat, with one change: getaddrinfo() answers C{dual.epcat.test}
#: from a table (::1 and 127.0.0.1, in that order, like C{localhost} on most
#: machines) instead of /etc/hosts, which the tests may not edit.  Both
#: Twisted resolvers (C{tcp:}'s IPv4-only one and C{HostnameEndpoint}'s) call
#: getaddrinfo, so each still asks only for the families it asks for.
RESOLVING_EPCAT = r"""
import socket, sys
real = socket.getaddrinfo
HOSTS = {"dual.epcat.test": ["::1", "127.0.0.1"]}
def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    name = host.decode() if isinstance(host, bytes) else host
    if name not in HOSTS:
        return real(host, port, family, type, proto, flags)
    found = []
    for address in HOSTS[name]:
        kind = socket.AF_INET6 if ":" in address else socket.AF_INET
        if family in (0, socket.AF_UNSPEC, kind):
            found += real(address, port, kind, type, proto, flags | socket.AI_NUMERICHOST)
    if not found:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return found
socket.getaddrinfo = getaddrinfo
from epcat.cli import main
main()
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("order", [["::1", "127.0.0.1"], ["127.0.0.1", "::1"]],
                         ids=["ipv6-first", "ipv4-first"])
def test_hostname_tries_both_families_of_a_name(spawn, ipv6_only_server, order):
    """
    A name with an IPv6 and an IPv4 address, and a server on ::1 only:
    C{hostname:} reaches it whichever address comes first, C{tcp:} is
    refused (it tries the IPv4 address alone).
    """
    port = ipv6_only_server
    script = RESOLVING_EPCAT.replace('["::1", "127.0.0.1"]', repr(order))
    base = [sys.executable, "-c", script]
    ep = spawn(base + ["connect", f"hostname:dual.epcat.test:{port}"], name="epcat",
               stdin=b"ping")
    assert ep.finish() == 0, ep.describe()
    assert ep.out == b"v6:ping"
    tcp = spawn(base + ["connect", f"tcp:dual.epcat.test:{port}"], name="epcat",
                stdin=b"ping")
    assert tcp.finish() == 7, tcp.describe()
    assert "connection refused" in tcp.err
    assert tcp.out == b""

