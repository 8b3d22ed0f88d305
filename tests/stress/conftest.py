"""
Fixtures and helpers for the reliability suite (issue 8): load, faults and
hostile input against the real C{epcat} on loopback.

Counts: every test runs reduced counts by default, so that the whole
directory stays well inside the CI budget on a 2-core machine.  The issue's
full counts are switched on by C{--stress-full} (only when pytest loads this
conftest at start-up, i.e. C{pytest tests/stress --stress-full}: pytest reads
C{pytest_addoption} from initial conftests only) or, from anywhere, by the
environment variable C{EPCAT_STRESS_FULL=1}.

Every process started here is killed by its PID at teardown (the C{spawn}
fixture of the end-to-end suite).  Figures measured by the tests are printed
as they are measured (C{pytest -s}) and listed again in the terminal summary.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

try:  # the end-to-end suite's process and peer fixtures, re-exported
    from e2e.conftest import (  # noqa: F401
        EPCAT,
        WAIT,
        LineReader,
        Proc,
        epcat_proc,
        free_port,
        rss_kib,
        server,
        short_dir,
        spawn,
        tls_files,
        wait_listening,
    )
except ImportError:  # pragma: no cover - run with the repository root on sys.path
    from tests.e2e.conftest import (  # type: ignore[no-redef]  # noqa: F401
        EPCAT,
        WAIT,
        LineReader,
        Proc,
        epcat_proc,
        free_port,
        rss_kib,
        server,
        short_dir,
        spawn,
        tls_files,
        wait_listening,
    )

#: True with --stress-full or EPCAT_STRESS_FULL=1 (set in pytest_configure).
FULL = os.environ.get("EPCAT_STRESS_FULL", "") not in ("", "0")

#: Figures measured by the tests: (test, text), for the terminal summary.
FIGURES: list[tuple[str, str]] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--stress-full",
        action="store_true",
        default=False,
        help="tests/stress: run the full counts of issue 8 (10,000 connections, 1,000 faults, "
        "1 GiB, 2,000 slowloris clients) instead of the reduced CI counts.  Also "
        "EPCAT_STRESS_FULL=1.",
    )


def pytest_configure(config: pytest.Config) -> None:
    global FULL
    config.addinivalue_line(
        "markers",
        "stress: reliability suite (tests/stress): load, faults and hostile input against "
        "the real epcat; reduced counts unless --stress-full / EPCAT_STRESS_FULL=1",
    )
    try:
        option = bool(config.getoption("--stress-full"))
    except ValueError:  # this conftest was not an initial one: no such option
        option = False
    FULL = FULL or option


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    mode = "full" if FULL else "reduced"
    terminalreporter.section(f"epcat reliability figures ({mode} counts)")
    for test, text in FIGURES:
        terminalreporter.write_line(f"{test}: {text}")


def count(reduced: int, full: int) -> int:
    """The reduced count, or the issue's full count under --stress-full."""
    return full if FULL else reduced


def full_counts() -> bool:
    """Are the issue's full counts in force (--stress-full, EPCAT_STRESS_FULL=1)?"""
    return FULL


def figure(test: str, **values: Any) -> None:
    """
    Print one line of measured figures (shown by C{pytest -s}) and keep it
    for the terminal summary.
    """
    text = ", ".join(f"{k.replace('_', ' ')}={v}" for k, v in values.items())
    FIGURES.append((test, text))
    print(f"\n[stress] {test}: {text}", flush=True)


# -- the test process's own limits


def raise_nofile() -> int:
    """
    Raise this process's soft RLIMIT_NOFILE to its hard limit (a test holds
    one socket per client); return the limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return soft if soft != resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


#: Runs epcat with RLIMIT_NOFILE set to argv[1] (soft and hard) first: a
#: wrapper, since a preexec_fn is not safe in a process with threads.
NOFILE_WRAPPER = (
    "import resource, runpy, sys\n"
    "n = int(sys.argv.pop(1))\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))\n"
    "runpy.run_module('epcat', run_name='__main__', alter_sys=True)\n"
)


def epcat_with_nofile(spawn: Callable[..., Proc], limit: int) -> Callable[..., Proc]:
    """Like the C{epcat_proc} fixture, for an epcat whose RLIMIT_NOFILE is C{limit}."""

    def start(*args: str, **kwargs: Any) -> Proc:
        argv = [sys.executable, "-c", NOFILE_WRAPPER, str(limit), *(str(a) for a in args)]
        return spawn(argv, name="epcat", **kwargs)

    return start


# -- what /proc says about a process


def fd_count(pid: int) -> int:
    """Open file descriptors of C{pid} (/proc/PID/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int) -> dict[str, int]:
    """C{pid}'s file descriptors by kind (socket, pipe, anon_inode, file)."""
    kinds: dict[str, int] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        kind = target.split(":", 1)[0] if ":" in target and not target.startswith("/") else "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of C{pid} so far (/proc/PID/stat utime + stime)."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT,
               interval: float = 0.05) -> Any:
    """
    Poll C{predicate} until it returns something true; return that, or the
    last (false) value after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# -- epcat as a relay


OPEN_PAIRS = re.compile(r"^(\d+) open pair\(s\)$")
FD_LIMIT = re.compile(r"^epcat: file descriptor limit: (\d+)$")


def catches(pid: int, signum: int) -> bool:
    """Has C{pid} installed a handler for C{signum} (SigCgt of /proc/PID/status)?"""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False


def open_pairs(proc: Proc, timeout: float = WAIT) -> int:
    """
    Ask epcat for its table of open pairs (SIGUSR1) and return how many
    there are.  Waits until epcat handles SIGUSR1 (it installs the handler
    only once its reactor runs, after it has said "listening": see
    test_faults.test_sigusr1_right_after_listening).
    """
    assert wait_until(lambda: catches(proc.pid, signal.SIGUSR1), timeout=timeout), (
        "epcat never installed its SIGUSR1 handler"
    )
    start = len(proc.stderr.lines)
    os.kill(proc.pid, signal.SIGUSR1)
    m = proc.stderr.wait_for(OPEN_PAIRS, timeout=timeout, start=start)
    return int(m.group(1))


def settle(proc: Proc, fd_baseline: int, fd_slack: int = 0,
           timeout: float = WAIT) -> tuple[int, int]:
    """
    Wait until epcat has no open pair and at most C{fd_baseline + fd_slack}
    file descriptors; return (open pairs, fd count) as last seen.
    """
    seen = [(-1, -1)]

    def done() -> bool:
        pairs, fds = open_pairs(proc), fd_count(proc.pid)
        seen[0] = (pairs, fds)
        return pairs == 0 and fds <= fd_baseline + fd_slack

    wait_until(done, timeout=timeout, interval=0.2)
    return seen[0]


def start_relay(epcat_proc: Callable[..., Proc], target: str, *args: str,
                splice: bool | str = True, listen: str = "tcp:0:interface=127.0.0.1",
                global_args: tuple[str, ...] = ("-v",), listen_args: tuple[str, ...] = (),
                fused: bool = False, **popen: Any) -> tuple[Proc, int]:
    """
    Start C{epcat GLOBAL listen LISTEN LISTEN_ARGS connect TARGET ARGS};
    return the process and its TCP port.  C{splice=False} sets
    EPCAT_NO_SPLICE=1 (the userspace path), C{splice="splice"} EPCAT_SPLICE=1
    (the fast path's splice(2) mover; C{True}: its default, copying).
    C{fused=True} runs it as a
    user would, with no global option (C{-v} takes the layered path, not
    the fused one, L{epcat.fused}): on a free port, waited for without a
    probe connection, as there is no "listening" line to read it from.
    """
    env = dict(os.environ)
    env.pop("EPCAT_NO_SPLICE", None)
    env.pop("EPCAT_SPLICE", None)
    if not splice:
        env["EPCAT_NO_SPLICE"] = "1"
    elif splice == "splice":
        env["EPCAT_SPLICE"] = "1"
    if fused:
        global_args = ()
        host = listen.split(":", 2)[2] if listen.startswith("tcp:0:") else ""
        port = free_port()
        listen = f"tcp:{port}:{host}" if host else f"tcp:{port}"
    proc = epcat_proc(*global_args, "listen", listen, *listen_args, "connect", target, *args,
                      env=env, **popen)
    if fused:
        wait_listening(port, proc)
        return proc, port
    return proc, proc.port()


# -- the backend: a selectors server in its own process


#: The backend reads a 13-byte header on every connection: a command byte, a
#: 32-bit argument N and a 64-bit tag (network order).
#:   E  echo everything; at EOF, flush and close.
#:   R  echo; once N bytes have arrived, reset the connection (SO_LINGER 0).
#:   H  echo the first N bytes, then half-close (FIN) and keep reading to EOF.
#:   S  send N random bytes (SHA-256 kept), then FIN; read and discard to EOF.
#: With a non-zero tag it prints "done tag=T received=R sent=S how=HOW sha=H"
#: when the connection ends (HOW: eof, reset, rst-sent, error).  On stdin,
#: "stats SEQ" prints "stats seq=SEQ open=... max=... accepted=... received=...
#: sent=... resets=...", "resetmax SEQ" sets the peak back to the current count.
HEADER = struct.Struct("!cIQ")

BACKEND_SOURCE = r'''
import errno, hashlib, os, resource, selectors, socket, struct, sys, threading

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
HEADER = struct.Struct("!cIQ")
LIMIT = 1 << 20
sel = selectors.DefaultSelector()
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(4096)
listener.setblocking(False)
sel.register(listener, selectors.EVENT_READ, None)
stats = dict(open=0, max=0, accepted=0, received=0, sent=0, resets=0)
lock = threading.Lock()


def say(line):
    with lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.head = b""
        self.mode = None
        self.n = 0
        self.tag = 0
        self.out = bytearray()
        self.eof = False
        self.events = 0
        self.received = 0
        self.sent = 0
        self.echo_left = 0
        self.to_send = 0
        self.wr_closed = False
        self.sha = hashlib.sha256()


def update(c):
    ev = 0
    if not c.eof and len(c.out) < LIMIT:
        ev |= selectors.EVENT_READ
    if c.out or (c.mode == b"S" and c.to_send):
        ev |= selectors.EVENT_WRITE
    if ev == c.events:
        return
    if c.events == 0:
        sel.register(c.sock, ev, c)
    elif ev == 0:
        sel.unregister(c.sock)
    else:
        sel.modify(c.sock, ev, c)
    c.events = ev


def finish(c, how):
    if c.events:
        sel.unregister(c.sock)
        c.events = 0
    if how == "rst-sent":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.sock.close()
    stats["open"] -= 1
    if c.tag:
        say(f"done tag={c.tag} received={c.received} sent={c.sent} how={how} "
            f"sha={c.sha.hexdigest()}")


def got(c, data):
    if c.mode is None:
        c.head += data
        if len(c.head) < HEADER.size:
            return
        c.mode, c.n, c.tag = HEADER.unpack(c.head[:HEADER.size])
        data, c.head = c.head[HEADER.size:], b""
        c.echo_left = c.n if c.mode == b"H" else -1
        c.to_send = c.n if c.mode == b"S" else 0
    c.received += len(data)
    stats["received"] += len(data)
    if c.mode in (b"E", b"R"):
        c.out += data
    elif c.mode == b"H" and c.echo_left > 0:
        take = data[:c.echo_left]
        c.echo_left -= len(take)
        c.out += take


def serve(c, mask):
    if mask & selectors.EVENT_READ:
        data = c.sock.recv(1 << 16)
        if data:
            got(c, data)
            if c.mode == b"R" and c.received >= c.n:
                stats["resets"] += 1
                finish(c, "rst-sent")
                return
        else:
            c.eof = True
    if c.mode == b"S" and c.to_send and len(c.out) < LIMIT:
        chunk = os.urandom(min(1 << 18, c.to_send))
        c.to_send -= len(chunk)
        c.sha.update(chunk)
        c.out += chunk
    if c.out:
        try:
            n = c.sock.send(c.out)
        except BlockingIOError:
            n = 0
        del c.out[:n]
        c.sent += n
        stats["sent"] += n
    if not c.out and not c.wr_closed and (
        (c.mode == b"H" and c.echo_left == 0) or (c.mode == b"S" and not c.to_send)
    ):
        c.wr_closed = True
        c.sock.shutdown(socket.SHUT_WR)
    if c.eof and not c.out and not (c.mode == b"S" and c.to_send):
        finish(c, "eof")
        return
    update(c)


def commands():
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "stats":
            say(f"stats seq={words[1]} " + " ".join(f"{k}={v}" for k, v in stats.items()))
        elif words[0] == "resetmax":
            stats["max"] = stats["open"]
            say(f"ok seq={words[1]}")
    os._exit(0)


threading.Thread(target=commands, daemon=True).start()
say(f"port {listener.getsockname()[1]}")
while True:
    # Connections first, the listener last: a connection the relay closed
    # just before opening a new one is counted out before the new one is
    # counted in (the FIN came first), so "max" is what the relay held at
    # once, not what this process had yet to notice had closed.
    for key, mask in sorted(sel.select(), key=lambda event: event[0].data is None):
        c = key.data
        if c is None:
            for _ in range(256):
                try:
                    s, _ = listener.accept()
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ECONNABORTED):
                        break
                    raise
                s.setblocking(False)
                stats["accepted"] += 1
                stats["open"] += 1
                stats["max"] = max(stats["max"], stats["open"])
                update(Conn(s))
            continue
        try:
            serve(c, mask)
        except OSError as e:
            stats["resets"] += 1
            finish(c, "reset" if e.errno in (errno.ECONNRESET, errno.EPIPE) else "error")
'''


class Backend:
    """
    The backend process (L{BACKEND_SOURCE}) on 127.0.0.1.

    @ivar proc: the process.
    @ivar port: the port it listens on.
    """

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        assert proc.stdout_lines is not None
        self.lines = proc.stdout_lines
        self.port = int(self.lines.wait_for(r"^port (\d+)$").group(1))
        self.address = f"127.0.0.1:{self.port}"
        self._seq = 0

    def _command(self, word: str) -> str:
        self._seq += 1
        assert self.proc.popen.stdin is not None
        self.proc.popen.stdin.write(f"{word} {self._seq}\n".encode())
        self.proc.popen.stdin.flush()
        return self.lines.wait_for(rf"^(stats|ok) seq={self._seq}( |$)").string

    def stats(self) -> dict[str, int]:
        """The backend's counters: open, max, accepted, received, sent, resets."""
        line = self._command("stats")
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line) if k != "seq"}

    def reset_max(self) -> None:
        self._command("resetmax")

    def done(self, tag: int, timeout: float = WAIT) -> dict[str, str]:
        """What the backend reported when the connection tagged C{tag} ended."""
        m = self.lines.wait_for(rf"^done tag={tag} ", timeout=timeout)
        return dict(re.findall(r"(\w+)=([\w-]+)", m.string))


@pytest.fixture
def backend(spawn: Callable[..., Proc]) -> Iterator[Callable[[], Backend]]:
    """C{backend()} starts a L{Backend}; killed by PID at teardown."""

    def start() -> Backend:
        return Backend(spawn([sys.executable, "-c", BACKEND_SOURCE], name="backend",
                             stdin=subprocess.PIPE, stdout="lines"))

    yield start


def header(mode: bytes, n: int = 0, tag: int = 0) -> bytes:
    """The backend's per-connection header."""
    return HEADER.pack(mode, n, tag)


def rst_close(sock: socket.socket) -> None:
    """Close C{sock} with a reset (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def echo_once(port: int, payload: bytes = b"ping", timeout: float = WAIT) -> bytes:
    """One echo round trip through epcat: send, half-close, read to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(header(b"E") + payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = s.recv(1 << 16)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


class EchoThread:
    """Accept on a listening socket and echo raw bytes, each connection in a thread."""

    def __init__(self, listener: socket.socket, wrap: ssl.SSLContext | None = None) -> None:
        self.listener = listener
        self.wrap = wrap
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(WAIT)
            if self.wrap is not None:
                conn = self.wrap.wrap_socket(conn, server_side=True)
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    break
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()
