#!/usr/bin/env python3
"""
epcat beside socat, haproxy and no relay at all, on loopback.

    python benchmarks/bench.py [--quick] [--rounds N] [--chart FILE.png]
                               [--candidates epcat,epcat-workers,epcat-splice,python-loop,
                                             socat,socat-b256k,haproxy,direct]
                               [--workloads startup,bulk,unix,http,memory]
                               [--json FILE]

Candidates (each relays 127.0.0.1:RELAY to 127.0.0.1:BACKEND):

    epcat        epcat listen tcp:RELAY:interface=127.0.0.1 connect tcp:127.0.0.1:BACKEND
                 (one process, the default)
    epcat-workers
                 the same with --workers <cores>, for the TCP workloads (bulk,
                 http); left out when `epcat listen --help` offers no --workers
    epcat-splice the same as epcat with EPCAT_SPLICE=1 (its fast path moves
                 bytes with splice(2) rather than copying them), for the bulk
                 workloads (bulk, unix)
    python-loop  benchmarks/pyloop.py: the least a relay in Python can do (one
                 epoll loop, os.readv/os.write, no Twisted, no bookkeeping), a
                 reference for what the interpreter alone costs; for the bulk
                 and HTTP workloads (bulk, unix, http)
    socat        socat TCP-LISTEN:RELAY,bind=127.0.0.1,reuseaddr,fork TCP:127.0.0.1:BACKEND
    socat-b256k  the same with -b 262144
    haproxy      haproxy -db, mode tcp, from a written config
    direct       no relay: the clients talk to the backend itself

Workloads, each run for every candidate in turn (round-robin within a round,
the order rotated from one round to the next), medians over the rounds:

    bulk         iperf3 -c 127.0.0.1 -p RELAY -t 3 -J, forward and -R, against a
                 fresh `iperf3 -s -1` per run; the receiver's bits_per_second
    unix         UNIX->TCP: streamtools.py pushes a reused buffer into the
                 relay's UNIX socket for 3 s; a TCP sink (streamtools.py)
                 times first to last byte.  direct = pusher to sink over TCP.
    http         ab HTTP/1.0 to nginx (a tiny static file) through the relay,
                 each for 3 s (ab -t; every candidate measured over the same
                 time, so a slow spell of the host weighs on each alike):
                 -c 1 and -c 32 (new connections per second), then -k -c 1
                 (one kept-alive connection: mean time per request)
                 The relay's CPU time (user + system, summed over the process,
                 its threads and descendants, from /proc/PID/stat) over the
                 -c 32 run and the -k run, per request completed; and over the
                 forward iperf3 run, per gigabyte received: what each relay
                 spends on the work, which moves less with the host's load
                 than rates and latencies do.
    memory       N idle relayed connections; the relay's Pss (summed over the
                 process and its descendants, from /proc/PID/smaps_rollup)
                 above its idle baseline, per connection
    startup      `epcat --version`, `socat -V`, `haproxy -v` wall time;
                 spawn to listening (first accepted connect) for each relay

--quick runs a tenth of the counts in one round (iperf3 and ab take whole
seconds, so they run for 1 s rather than 0.3 s).  With --chart the script draws a
grouped bar chart (matplotlib: pip install -e '.[bench]') of epcat, socat and
haproxy normalised to socat = 1.  With more than one round it also prints
each figure's run-to-run spread, and epcat's figure over socat's, socat -b
262144's, haproxy's and the bare Python loop's taken round by round (median
and range): the two of a round are measured minutes apart at most, so a
slow spell of the host touches both.  On Linux it also says how much CPU
time the hypervisor took from this machine (steal, from /proc/stat) during
each measurement, naming those that lost 2 % or more: a virtual machine's
figures move with its neighbours' load, which its own load average does
not show.

Everything listens on 127.0.0.1 (or a UNIX socket in a private temporary
directory).  Every process started here is stopped by its PID (with the
processes it forked) when the run ends, also on Ctrl-C or SIGTERM.  Exit
status: 0 all measurements made, 1 some failed (the table says which),
2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
STREAMTOOLS = HERE / "streamtools.py"
PYLOOP = HERE / "pyloop.py"

ALL_CANDIDATES = ("epcat", "epcat-workers", "epcat-splice", "python-loop", "socat",
                  "socat-b256k", "haproxy", "direct")
RELAYS = ("epcat", "epcat-workers", "epcat-splice", "python-loop", "socat", "socat-b256k",
          "haproxy")
#: the workloads that relay TCP to TCP
TCP_WORKLOADS = ("bulk", "http")
#: Candidates measured only where they differ from another, and their
#: workloads: epcat --workers shares a TCP port (its UNIX listener, memory
#: and start-up are epcat's); EPCAT_SPLICE changes only how bulk bytes move;
#: the bare Python loop is a reference for the relaying itself.
ONLY = {"epcat-workers": TCP_WORKLOADS, "epcat-splice": ("bulk", "unix"),
        "python-loop": ("bulk", "unix", "http")}
LABELS = {
    "epcat": "epcat",
    "epcat-workers": f"epcat --workers {os.cpu_count() or 1}",
    "epcat-splice": "epcat, EPCAT_SPLICE=1",
    "python-loop": "bare Python loop",
    "socat": "socat (default)",
    "socat-b256k": "socat -b 262144",
    "haproxy": "haproxy",
    "direct": "direct (no relay)",
}
#: The candidate every ratio is taken against.
REFERENCE = "socat"


@dataclass(frozen=True)
class Settings:
    iperf_seconds: int
    ab_seconds: int
    idle_connections: int
    startup_repeats: int
    rounds: int


FULL = Settings(iperf_seconds=3, ab_seconds=3, idle_connections=2000, startup_repeats=5,
                rounds=3)
QUICK = Settings(iperf_seconds=1, ab_seconds=1, idle_connections=200, startup_repeats=3,
                 rounds=1)

#: ab's own cap on requests in a timed run (-t) is 50,000, which the direct
#: baseline passes in 3 s; ab allocates a few dozen bytes per request
AB_MAX_REQUESTS = 1_000_000


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    chart: bool = True


def figures(settings: Settings) -> list[Figure]:
    n = settings.idle_connections
    return [
        Figure("tcp_fwd", f"bulk TCP→TCP, iperf3 -t {settings.iperf_seconds}, forward",
               "Gbit/s", True),
        Figure("tcp_rev", f"bulk TCP→TCP, iperf3 -t {settings.iperf_seconds}, reverse (-R)",
               "Gbit/s", True),
        Figure("unix_tcp", f"bulk UNIX→TCP, {settings.iperf_seconds} s push", "Gbit/s", True),
        Figure("cps_c1", "new connections/s, ab HTTP/1.0 -c 1", "req/s", True),
        Figure("cps_c32", "new connections/s, ab HTTP/1.0 -c 32", "req/s", True),
        Figure("lat_us", "kept-alive request, ab -k -c 1", "µs", False),
        Figure("lat_added", "… added vs direct", "µs", False, chart=False),
        Figure("cpu_conn", "relay CPU per new connection, ab -c 32", "µs", False, chart=False),
        Figure("cpu_req", "relay CPU per kept-alive request, ab -k -c 1", "µs", False,
               chart=False),
        Figure("cpu_gb", "relay CPU per GB, iperf3 forward", "ms", False, chart=False),
        Figure("pss_per_conn", f"Pss per idle relayed connection ({n:,} open)", "KiB", False),
        Figure("pss_base", "relay Pss before those connections", "MiB", False, chart=False),
        Figure("version_ms", "start-up: --version / -V / -v", "ms", False),
        Figure("listen_ms", "start-up: spawn to listening", "ms", False),
    ]


#: Reference start-up figures that belong to no candidate.
REFERENCE_ROWS = {
    "python_pass_ms": "python -c pass",
    "import_reactor_ms": "python -c 'from twisted.internet import reactor'",
}


class BenchError(Exception):
    """A measurement failed; the run goes on without it."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: unwind like Ctrl-C so that every process is stopped."""


# -- processes


def _ppid_map() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 2:
            parents[int(entry)] = int(fields[1])
    return parents


def descendants(pid: int) -> list[int]:
    """Every process below C{pid} (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for child, parent in _ppid_map().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


#: clock ticks per second, the unit of /proc/PID/stat's times
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """
    CPU time (user + system, seconds) that C{pid} has used: its own and its
    threads', its live descendants', and that of the children each has
    waited for (proc(5), /proc/PID/stat fields 14-17: utime, stime, cutime,
    cstime).  A child that exits between two readings moves from the live
    sum to its parent's cutime/cstime, so differences stay right for relays
    that fork per connection (socat) or run workers.  L{None} where there is
    no /proc.
    """
    total = 0
    found = False
    for each in (pid, *descendants(pid)):
        try:
            with open(f"/proc/{each}/stat") as f:
                fields = f.read().rsplit(")", 1)[-1].split()
        except OSError:
            continue  # (gone meanwhile: its time is in its parent's cutime)
        found = True
        total += sum(int(x) for x in fields[11:15])
    return total / _TICKS if found else None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class Processes:
    """
    Every process the benchmark starts, by PID; output goes to log files in
    C{logdir} (never to pipes that could fill up).
    """

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.live: dict[int, tuple[subprocess.Popen[bytes], str, Path]] = {}
        self._count = 0

    def spawn(self, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        self._count += 1
        log = self.logdir / f"{self._count:04d}-{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
            )
        self.live[popen.pid] = (popen, name, log)
        return popen

    def log_tail(self, popen: subprocess.Popen[bytes], lines: int = 12) -> str:
        entry = self.live.get(popen.pid)
        if entry is None:
            return ""
        try:
            text = entry[2].read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, popen: subprocess.Popen[bytes], grace: float = 2.0) -> None:
        """
        SIGTERM C{popen} and everything it forked, SIGKILL whatever is left
        after C{grace} seconds.
        """
        kids = descendants(popen.pid) if popen.poll() is None else []
        if popen.poll() is None:
            _signal(popen.pid, signal.SIGTERM)
        for pid in kids:
            _signal(pid, signal.SIGTERM)
        try:
            popen.wait(grace)
        except subprocess.TimeoutExpired:
            _signal(popen.pid, signal.SIGKILL)
            popen.wait(10)
        deadline = time.monotonic() + grace
        for pid in kids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if _alive(pid):
                _signal(pid, signal.SIGKILL)
        self.live.pop(popen.pid, None)

    def stop_all(self) -> None:
        for popen, _, _ in list(self.live.values()):
            try:
                self.stop(popen, grace=1.0)
            except Exception as e:  # keep stopping the others
                print(f"bench: could not stop PID {popen.pid}: {e}", file=sys.stderr)


# -- readiness and ports


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_listening(port: int) -> bool:
    """
    Whether something listens on 127.0.0.1:PORT (or 0.0.0.0:PORT), read from
    /proc/net/tcp so that checking opens no connection (iperf3 -s -1 would
    take a probe for its one test; socat would fork for it).
    """
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[3] == "0A" and parts[1] in wanted:
                return True
    return False


def unix_listening(path: str) -> bool:
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            parts = line.split()
            # Num RefCount Protocol Flags Type St Inode Path; __SO_ACCEPTCON.
            # haproxy binds PATH.PID.tmp and renames it to PATH: the table
            # keeps the name it was bound to.
            if (len(parts) >= 8 and int(parts[3], 16) & 0x10000
                    and (parts[-1] == path or parts[-1].startswith(path + "."))
                    and os.path.exists(path)):
                return True
    return False


def wait_until(check: Callable[[], bool], popen: subprocess.Popen[bytes], procs: Processes,
               what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if popen.poll() is not None:
            raise BenchError(f"{what} exited with {popen.returncode} before listening:\n"
                             + procs.log_tail(popen))
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not listen within {timeout:.0f} s:\n"
                             + procs.log_tail(popen))
        time.sleep(0.002)


# -- memory


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise BenchError(f"no Pss line in /proc/{pid}/smaps_rollup")


def pss_tree_kib(pid: int) -> int:
    """Pss of C{pid} plus every process it forked (socat: one per connection)."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            total += pss_kib(p)
        except (OSError, BenchError):
            if p == pid:
                raise
    return total


class IdleSink:
    """
    The backend of the memory workload: a listener in this process that
    accepts and holds connections, reading nothing.
    """

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4096)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self.cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="idle-sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping:
                    return
                time.sleep(0.01)
                continue
            with self.cond:
                self.held.append(conn)
                self.cond.notify_all()

    @property
    def count(self) -> int:
        with self.cond:
            return len(self.held)

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.held) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(remaining)
            return True

    def drop_all(self) -> None:
        with self.cond:
            held, self.held = self.held, []
        for conn in held:
            conn.close()

    def close(self) -> None:
        self._stopping = True
        self._thread.join(2)
        self.listener.close()
        self.drop_all()


# -- the harness


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def run_tool(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{shlex.join(argv)} took longer than {timeout:.0f} s") from e


class Bench:
    def __init__(self, settings: Settings, candidates: list[str], tmp: Path,
                 procs: Processes, workloads: tuple[str, ...] | None = None) -> None:
        self.s = settings
        self.workloads = workloads or self.WORKLOADS
        self.candidates = candidates
        self.tmp = tmp
        self.procs = procs
        self.results: dict[str, dict[str, list[float]]] = {}
        #: the same samples by round: figure -> candidate -> round -> value
        self.by_round: dict[str, dict[str, dict[int, float]]] = {}
        self.references: dict[str, list[float]] = {}
        #: the host's CPU steal during each measurement: (round, workload,
        #: candidate, share of all CPU time, 0 to 1)
        self.steal: list[tuple[int, str, str, float]] = []
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.tools = {name: shutil.which(name) for name in
                      ("socat", "haproxy", "iperf3", "ab", "nginx")}
        self.epcat = self._find_epcat()
        self.nginx_port: int | None = None
        self.iperf_port = free_port()
        self.sink_port = free_port()
        self.idle_sink: IdleSink | None = None
        self._config_count = 0

    # setup

    @staticmethod
    def _find_epcat() -> str | None:
        # The console script next to this interpreter, not a pyenv/asdf shim
        # (a shim is a shell script that would add its own start-up time).
        beside = Path(sys.executable).parent / "epcat"
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
        return shutil.which("epcat")

    def available(self, candidate: str) -> str | None:
        """Why C{candidate} cannot run here, or None."""
        if candidate.startswith("epcat") and self.epcat is None:
            return "epcat is not installed"
        if candidate.startswith("socat") and self.tools["socat"] is None:
            return "socat is not installed"
        if candidate == "haproxy" and self.tools["haproxy"] is None:
            return "haproxy is not installed"
        return None

    def setup(self) -> None:
        for c in list(self.candidates):
            why = self.available(c)
            if why:
                self.notes.append(f"{LABELS[c]} left out: {why}")
                self.candidates.remove(c)
        if "epcat-workers" in self.candidates:
            assert self.epcat is not None
            helptext = run_tool([self.epcat, "listen", "--help"], 60).stdout
            if "--workers" not in helptext:
                self.notes.append("epcat --workers left out: epcat listen offers no --workers")
                self.candidates.remove("epcat-workers")
            else:
                self.notes.append(f"{LABELS['epcat-workers']}: the TCP workloads only (its "
                                  "UNIX listener, memory and start-up are one epcat's)")
        if "epcat-splice" in self.candidates:
            self.notes.append(f"{LABELS['epcat-splice']}: the bulk workloads only (the "
                              "variable changes only how the fast path moves bytes)")
        if "python-loop" in self.candidates:
            self.notes.append(f"{LABELS['python-loop']}: benchmarks/pyloop.py, an epoll loop "
                              "with os.readv/os.write and nothing else (no Twisted, no "
                              "counts or reports), what the interpreter alone costs; the "
                              "bulk and HTTP workloads only")
        if self.tools["nginx"] and self.tools["ab"]:
            self.nginx_port = self._start_nginx()
        if any(c in RELAYS for c in self.candidates):
            self.idle_sink = IdleSink()

    def _start_nginx(self) -> int:
        root = self.tmp / "nginx"
        (root / "www").mkdir(parents=True)
        (root / "tmp").mkdir()
        (root / "www" / "index.html").write_bytes(b"<html><body>epcat bench</body></html>\n")
        nginx = self.tools["nginx"]
        assert nginx is not None
        for _attempt in range(5):
            port = free_port()
            conf = root / "nginx.conf"
            conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    default_type text/html;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root}/www;
    }}
}}
""")
            popen = self.procs.spawn([nginx, "-p", str(root), "-c", str(conf),
                                      "-e", str(root / "error.log")], "nginx")
            try:
                wait_until(lambda port=port: tcp_listening(port), popen, self.procs, "nginx")
            except BenchError:
                self.procs.stop(popen)
                continue
            return port
        raise BenchError("nginx did not start")

    # relays

    def relay_argv(self, candidate: str, listen: tuple[str, Any], backend: int) -> list[str]:
        kind, where = listen
        if candidate in ("epcat", "epcat-workers", "epcat-splice"):
            assert self.epcat is not None
            server = (f"tcp:{where}:interface=127.0.0.1" if kind == "tcp" else f"unix:{where}")
            workers = (["--workers", str(os.cpu_count() or 1)]
                       if candidate == "epcat-workers" else [])
            # (env execs epcat: the PID, and its CPU time, are epcat's)
            prefix = ["env", "EPCAT_SPLICE=1"] if candidate == "epcat-splice" else []
            return [*prefix, self.epcat, "listen", *workers, server,
                    "connect", f"tcp:127.0.0.1:{backend}"]
        if candidate == "python-loop":
            return [sys.executable, str(PYLOOP), kind, str(where), str(backend)]
        if candidate in ("socat", "socat-b256k"):
            socat = self.tools["socat"]
            assert socat is not None
            extra = ["-b", "262144"] if candidate == "socat-b256k" else []
            server = (f"TCP-LISTEN:{where},bind=127.0.0.1,reuseaddr,fork" if kind == "tcp"
                      else f"UNIX-LISTEN:{where},fork,unlink-early")
            return [socat, *extra, server, f"TCP:127.0.0.1:{backend}"]
        if candidate == "haproxy":
            haproxy = self.tools["haproxy"]
            assert haproxy is not None
            self._config_count += 1
            conf = self.tmp / f"haproxy-{self._config_count}.cfg"
            bind = f"127.0.0.1:{where}" if kind == "tcp" else str(where)
            conf.write_text(f"""
global
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend relay
    bind {bind}
    default_backend backend
backend backend
    server backend 127.0.0.1:{backend}
""")
            return [haproxy, "-db", "-f", str(conf)]
        raise ValueError(candidate)

    @contextmanager
    def relay(self, candidate: str, backend: int,
              unix: bool = False) -> Iterator[tuple[subprocess.Popen[bytes] | None, Any]]:
        """
        Run C{candidate} relaying to 127.0.0.1:C{backend}; yield (process,
        where clients connect: a TCP port or a UNIX path).  For direct,
        (None, C{backend}).
        """
        if candidate == "direct":
            yield None, backend
            return
        if unix:
            path = str(self.tmp / f"{candidate}.sock")
            for leftover in (path, path + ".lock"):
                try:
                    os.unlink(leftover)
                except FileNotFoundError:
                    pass
            listen: tuple[str, Any] = ("unix", path)
            check: Callable[[], bool] = lambda: unix_listening(path)  # noqa: E731
        else:
            port = free_port()
            listen = ("tcp", port)
            check = lambda: tcp_listening(port)  # noqa: E731
        popen = self.procs.spawn(self.relay_argv(candidate, listen, backend), candidate)
        try:
            wait_until(check, popen, self.procs, candidate)
            yield popen, listen[1]
            if popen.poll() is not None:
                raise BenchError(f"{candidate} exited with {popen.returncode} during the "
                                 f"measurement:\n" + self.procs.log_tail(popen))
        finally:
            self.procs.stop(popen)

    # workloads

    def w_bulk(self, candidate: str) -> dict[str, float]:
        iperf3 = self.tools["iperf3"]
        if iperf3 is None:
            return {}
        out: dict[str, float] = {}
        with self.relay(candidate, self.iperf_port) as (popen, port):
            for key, extra in (("tcp_fwd", []), ("tcp_rev", ["-R"])):
                before = cpu_seconds(popen.pid) if popen is not None else None
                bps, received = self._iperf(iperf3, port, extra)
                out[key] = bps / 1e9
                if key == "tcp_fwd" and before is not None and received:
                    after = cpu_seconds(popen.pid)
                    if after is not None:
                        out["cpu_gb"] = (after - before) * 1000 / (received / 1e9)
        return out

    def _iperf(self, iperf3: str, port: int, extra: list[str]) -> tuple[float, int]:
        """
        One iperf3 run through C{port}: the receiver's bits per second and
        bytes received.
        """
        server = self.procs.spawn(
            [iperf3, "-s", "-1", "-B", "127.0.0.1", "-p", str(self.iperf_port)], "iperf3-server")
        try:
            wait_until(lambda: tcp_listening(self.iperf_port), server, self.procs, "iperf3 -s")
            argv = [iperf3, "-c", "127.0.0.1", "-p", str(port), "-t", str(self.s.iperf_seconds),
                    "--connect-timeout", "5000", "-J", *extra]
            done = run_tool(argv, self.s.iperf_seconds + 60)
            try:
                data = json.loads(done.stdout)
            except ValueError:
                raise BenchError(f"{shlex.join(argv)}: no JSON (exit {done.returncode}):\n"
                                 f"{done.stdout[-500:]}{done.stderr[-500:]}") from None
            if data.get("error"):
                raise BenchError(f"{shlex.join(argv)}: {data['error']}")
            received = data["end"]["sum_received"]
            return float(received["bits_per_second"]), int(received.get("bytes", 0))
        finally:
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                pass
            self.procs.stop(server)

    def w_unix(self, candidate: str) -> dict[str, float]:
        if candidate == "direct":
            target = ["--tcp", str(self.sink_port)]
            ctx = self.relay(candidate, self.sink_port)
        else:
            ctx = self.relay(candidate, self.sink_port, unix=True)
        result = self.tmp / "sink.json"
        result.unlink(missing_ok=True)
        sink = self.procs.spawn([sys.executable, str(STREAMTOOLS), "sink",
                                 "--port", str(self.sink_port), "--out", str(result)], "sink")
        try:
            wait_until(lambda: tcp_listening(self.sink_port), sink, self.procs, "sink")
            with ctx as (_, where):
                if candidate != "direct":
                    target = ["--unix", str(where)]
                argv = [sys.executable, str(STREAMTOOLS), "push", *target,
                        "--seconds", str(self.s.iperf_seconds)]
                done = run_tool(argv, self.s.iperf_seconds + 60)
                if done.returncode != 0:
                    raise BenchError(f"push failed ({done.returncode}): {done.stderr[-800:]}")
                try:
                    sink.wait(30)
                except subprocess.TimeoutExpired:
                    raise BenchError("the sink saw no end of stream") from None
            if sink.returncode != 0 or not result.exists():
                raise BenchError(f"sink failed ({sink.returncode}):\n"
                                 + self.procs.log_tail(sink))
            data = json.loads(result.read_text())
            if not data["seconds"]:
                raise BenchError("the sink received nothing")
            return {"unix_tcp": data["bytes"] * 8 / data["seconds"] / 1e9}
        finally:
            self.procs.stop(sink)

    def _ab(self, port: int, concurrency: int, keepalive: bool, seconds: int = 0,
            n: int = 0) -> dict[str, float]:
        """
        Run ab for C{seconds} (-t), or for C{n} requests; its requests per
        second, mean time per request (µs), and failed and completed requests.
        """
        ab = self.tools["ab"]
        assert ab is not None
        # (-t sets ab's request cap, so -n comes after it)
        limit = ["-t", str(seconds), "-n", str(AB_MAX_REQUESTS)] if seconds else ["-n", str(n)]
        argv = [ab, "-q", "-r", "-s", "30", *limit, "-c", str(concurrency),
                *(["-k"] if keepalive else []), f"http://127.0.0.1:{port}/index.html"]
        done = run_tool(argv, seconds + 300)
        text = done.stdout
        rps = re.search(r"^Requests per second:\s+([\d.]+)", text, re.M)
        tpr = re.search(r"^Time per request:\s+([\d.]+) \[ms\] \(mean\)", text, re.M)
        failed = re.search(r"^Failed requests:\s+(\d+)", text, re.M)
        non2xx = re.search(r"^Non-2xx responses:\s+(\d+)", text, re.M)
        if done.returncode != 0 or not rps or not tpr:
            raise BenchError(f"{shlex.join(argv)} failed ({done.returncode}):\n"
                             f"{(text + done.stderr)[-800:]}")
        complete = re.search(r"^Complete requests:\s+(\d+)", text, re.M)
        bad = int(failed.group(1)) if failed else 0
        bad += int(non2xx.group(1)) if non2xx else 0
        return {"rps": float(rps.group(1)), "us": float(tpr.group(1)) * 1000, "failed": bad,
                "complete": int(complete.group(1)) if complete else 0}

    def w_http(self, candidate: str) -> dict[str, float]:
        if self.nginx_port is None:
            return {}
        out: dict[str, float] = {}
        seconds = self.s.ab_seconds
        with self.relay(candidate, self.nginx_port) as (popen, port):
            self._ab(port, 1, False, n=50)  # warm-up: lazy imports, first-connection costs

            def cpu() -> float | None:
                return cpu_seconds(popen.pid) if popen is not None else None

            for key, conc in (("cps_c1", 1), ("cps_c32", 32)):
                before = cpu()
                r = self._ab(port, conc, False, seconds=seconds)
                after = cpu()
                out[key] = r["rps"]
                if conc == 32 and before is not None and after is not None and r["complete"]:
                    out["cpu_conn"] = (after - before) * 1e6 / r["complete"]
                if r["failed"]:
                    self.notes.append(f"{LABELS[candidate]}: ab -c {conc}: "
                                      f"{int(r['failed'])} of {int(r['complete'])} requests "
                                      "failed")
            before = cpu()
            r = self._ab(port, 1, True, seconds=seconds)
            after = cpu()
            out["lat_us"] = r["us"]
            if before is not None and after is not None and r["complete"]:
                out["cpu_req"] = (after - before) * 1e6 / r["complete"]
        return out

    def w_memory(self, candidate: str) -> dict[str, float]:
        sink = self.idle_sink
        if candidate == "direct" or sink is None:
            return {}
        n = self.s.idle_connections
        sink.drop_all()
        clients: list[socket.socket] = []
        try:
            with self.relay(candidate, sink.port) as (popen, port):
                assert popen is not None
                warm = socket.create_connection(("127.0.0.1", port), timeout=10)
                if not sink.wait_for(1, 20):
                    raise BenchError(f"{candidate} did not connect to the idle sink")
                warm.close()
                time.sleep(0.3)
                sink.drop_all()
                time.sleep(0.2)
                base = pss_tree_kib(popen.pid)
                for i in range(n):
                    # at most a few connections ahead of the relay: socat's
                    # listen backlog is 5, and a dropped SYN costs a second
                    if not sink.wait_for(i - 4, 30):
                        raise BenchError(f"{candidate}: only {sink.count} of {i} connections "
                                         "reached the sink")
                    clients.append(socket.create_connection(("127.0.0.1", port), timeout=30))
                if not sink.wait_for(n, 60):
                    raise BenchError(f"{candidate}: only {sink.count} of {n} connections "
                                     "reached the sink")
                time.sleep(0.5)
                total = pss_tree_kib(popen.pid)
                for c in clients:
                    c.close()
                clients.clear()
                sink.drop_all()
        finally:
            for c in clients:
                c.close()
            sink.drop_all()
        return {"pss_per_conn": (total - base) / n, "pss_base": base / 1024}

    def _wall_ms(self, argv: list[str]) -> float:
        samples = []
        for _ in range(self.s.startup_repeats):
            t0 = time.perf_counter()
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=60)
            samples.append((time.perf_counter() - t0) * 1000)
            if done.returncode != 0:
                raise BenchError(f"{shlex.join(argv)} exited with {done.returncode}")
        return statistics.median(samples)

    def w_startup(self, candidate: str) -> dict[str, float]:
        out: dict[str, float] = {}
        version = {
            "epcat": [self.epcat, "--version"],
            "socat": [self.tools["socat"], "-V"],
            "haproxy": [self.tools["haproxy"], "-v"],
        }.get(candidate)
        if version is not None:
            out["version_ms"] = self._wall_ms([str(a) for a in version])
        if candidate in RELAYS:
            out["listen_ms"] = self._spawn_to_listening(candidate)
        return out

    def _spawn_to_listening(self, candidate: str) -> float:
        port = free_port()
        dead = free_port()  # nothing listens there: the probe's relayed leg just fails
        argv = self.relay_argv(candidate, ("tcp", port), dead)
        t0 = time.perf_counter()
        popen = self.procs.spawn(argv, f"{candidate}-startup")
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2):
                        return (time.perf_counter() - t0) * 1000
                except OSError:
                    pass
                if popen.poll() is not None:
                    raise BenchError(f"{candidate} exited with {popen.returncode} at start-up:\n"
                                     + self.procs.log_tail(popen))
                if time.monotonic() > deadline:
                    raise BenchError(f"{candidate} did not accept within 30 s")
                time.sleep(0.001)
        finally:
            self.procs.stop(popen)

    def references_round(self) -> None:
        py = sys.executable
        rows = {
            "python_pass_ms": [py, "-c", "pass"],
            "import_reactor_ms": [py, "-c", "from twisted.internet import reactor"],
        }
        for key, argv in rows.items():
            try:
                self.references.setdefault(key, []).append(self._wall_ms(argv))
            except (BenchError, subprocess.TimeoutExpired) as e:
                self.errors.append(f"{REFERENCE_ROWS[key]}: {e}")

    # the run

    WORKLOADS = ("startup", "bulk", "unix", "http", "memory")

    def run(self, progress: Callable[[str], None]) -> None:
        self.setup()
        for r in range(self.s.rounds):
            shift = r % len(self.candidates)
            order = self.candidates[shift:] + self.candidates[:shift]
            progress(f"round {r + 1}/{self.s.rounds}: order {', '.join(order)}")
            self.references_round()
            for workload in self.workloads:
                measure = getattr(self, f"w_{workload}")
                for candidate in order:
                    if workload not in ONLY.get(candidate, (workload,)):
                        continue
                    t0 = time.monotonic()
                    before = cpu_times()
                    try:
                        values = measure(candidate)
                    except (BenchError, OSError, subprocess.SubprocessError) as e:
                        self.errors.append(f"round {r + 1}, {workload}, {candidate}: {e}")
                        progress(f"  {workload:8} {candidate:13} FAILED: "
                                 f"{str(e).splitlines()[0]}")
                        continue
                    stolen = steal_share(before, cpu_times())
                    if stolen is not None:
                        self.steal.append((r, workload, candidate, stolen))
                    for key, value in values.items():
                        self.results.setdefault(key, {}).setdefault(candidate, []).append(value)
                        self.by_round.setdefault(key, {}).setdefault(candidate, {})[r] = value
                    if values:
                        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
                        took = f"{time.monotonic() - t0:.1f} s"
                        if stolen is not None and stolen >= STEAL_NOTED:
                            took += f", steal {stolen:.0%}"
                        progress(f"  {workload:8} {candidate:13} {shown} ({took})")
            # added latency, round by round against the direct run of the same round
            lat = self.results.get("lat_us", {})
            direct = lat.get("direct", [])
            if len(direct) == r + 1:
                for candidate, values in lat.items():
                    if len(values) == r + 1:
                        self.results.setdefault("lat_added", {}).setdefault(
                            candidate, []).append(values[-1] - direct[-1])

    def rounds_of(self, key: str, candidate: str) -> dict[int, float]:
        """A candidate's figure in each round that measured it."""
        return self.by_round.get(key, {}).get(candidate, {})

    def medians(self) -> dict[str, dict[str, float]]:
        return {key: {c: m for c, v in per.items() if (m := median(v)) is not None}
                for key, per in self.results.items()}


# -- output


def fmt(value: float, unit: str) -> str:
    if unit == "req/s":
        return f"{value / 1000:.2f}k" if abs(value) >= 1000 else f"{value:.0f}"
    if unit in ("µs", "ms"):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"
    if unit == "Gbit/s":
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return f"{value:.1f}"


def ratio_text(value: float, ref: float | None) -> str:
    if ref is None or ref <= 0 or value < 0:
        return ""
    return f" ({value / ref:.2f}×)"


def table(bench: Bench, figs: list[Figure]) -> str:
    med = bench.medians()
    cands = bench.candidates
    head = ["figure", *(LABELS[c] for c in cands)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in figs:
        row = med.get(f.key, {})
        ref = row.get(REFERENCE)
        arrow = "↑" if f.higher_is_better else "↓"
        cells = [f"{f.label}, {f.unit} {arrow}"]
        for c in cands:
            if c not in row:
                cells.append("")
            elif c == "direct" and f.key == "lat_added":
                cells.append("0")
            else:
                cells.append(fmt(row[c], f.unit) + ratio_text(row[c], ref))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure_table(head: list[str], figs: list[Figure],
                 cells: Callable[[Figure], list[str]]) -> str:
    """
    A markdown table with a row per figure (the added latency left out):
    the figure's label, then C{cells(figure)} under C{head}.
    """
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in figs:
        if f.key != "lat_added":
            lines.append("| " + " | ".join([f.label, *cells(f)]) + " |")
    return "\n".join(lines)


def spread_table(bench: Bench, figs: list[Figure]) -> str:
    def cells(f: Figure) -> list[str]:
        per = bench.results.get(f.key, {})
        out = []
        for c in bench.candidates:
            v = per.get(c, [])
            m = median(v)
            out.append(f"{(max(v) - min(v)) / m * 100:.0f}%" if len(v) > 1 and m else "")
        return out

    return figure_table(["(max−min)/median", *(LABELS[c] for c in bench.candidates)],
                        figs, cells)


#: what epcat is set beside, round by round, in paired_table
PAIRED = ("socat", "socat-b256k", "haproxy", "python-loop")


def paired_table(bench: Bench, figs: list[Figure]) -> str:
    """
    epcat's figure over each reference's, taken within each round (the two
    measured minutes apart at most, so a slow spell of the host touches
    both), as median and range over the rounds.  Only rounds where both
    have a figure count.
    """
    refs = [c for c in PAIRED if c in bench.candidates]
    if "epcat" not in bench.candidates or not refs:
        return ""

    def cells(f: Figure) -> list[str]:
        ours = bench.rounds_of(f.key, "epcat")
        out = []
        for c in refs:
            theirs = bench.rounds_of(f.key, c)
            ratios = [ours[r] / theirs[r] for r in ours if r in theirs and theirs[r] > 0]
            m = median(ratios)
            out.append(f"{m:.2f}× ({min(ratios):.2f}–{max(ratios):.2f})" if m is not None else "")
        return out

    return figure_table(["epcat ÷ (per round: median, min–max)", *(LABELS[c] for c in refs)],
                        figs, cells)


def draw_chart(path: Path, bench: Bench, figs: list[Figure], title: str) -> None:
    """
    Grouped bars: for each figure, epcat (and epcat --workers), socat and
    haproxy as multiples of socat, oriented so that higher is better
    (lower-is-better figures are plotted as socat ÷ candidate).  Log scale, a label on every bar.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    med = bench.medians()
    shown = [c for c in ("epcat", "epcat-workers", "socat", "haproxy") if c in bench.candidates]
    if REFERENCE not in shown:
        raise BenchError("--chart needs socat among the candidates")
    rows = [f for f in figs if f.chart and med.get(f.key, {}).get(REFERENCE, 0) > 0]
    if not rows:
        raise BenchError("nothing to chart")
    colours = {"epcat": "#2a7ab9", "epcat-workers": "#8cbce0", "socat": "#9a9a9a",
               "haproxy": "#e08a2c"}
    width = 0.8 / len(shown)
    fig, ax = plt.subplots(figsize=(max(9.0, 1.25 * len(rows) + 2), 5.4))
    highest, lowest = 1.0, 1.0
    for i, c in enumerate(shown):
        xs, ys = [], []
        for x, f in enumerate(rows):
            v, ref = med[f.key].get(c), med[f.key][REFERENCE]
            if v is None or v <= 0:
                continue
            xs.append(x + (i - (len(shown) - 1) / 2) * width)
            ys.append(v / ref if f.higher_is_better else ref / v)
        if not xs:
            continue
        highest, lowest = max(highest, *ys), min(lowest, *ys)
        bars = ax.bar(xs, ys, width, label=LABELS[c], color=colours[c], zorder=2)
        for bar, y in zip(bars, ys, strict=True):
            ax.annotate(f"{y:.2g}×", (bar.get_x() + bar.get_width() / 2, y),
                        xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylim(min(0.5, lowest / 1.6), highest * 1.8)
    ax.axhline(1.0, color="#555555", linewidth=0.8, linestyle="--", zorder=1)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([_wrap(f"{f.label} ({f.unit})", 22) for f in rows], fontsize=7.5)
    ax.set_ylabel("× socat (socat = 1, higher is better)")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}×"))
    ax.grid(axis="y", which="major", alpha=0.3, zorder=0)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.text(0.01, 0.005, "Latency, memory and start-up are lower-is-better: plotted as "
             "socat's figure ÷ the candidate's.", fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    return "\n".join(lines)


def tool_versions(bench: Bench) -> list[str]:
    out = []

    def first_line(argv: list[str], pattern: str = "") -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return "?"
        text = (done.stdout + done.stderr).splitlines()
        for line in text:
            if re.search(pattern, line):
                return line.strip()
        return text[0].strip() if text else "?"

    if bench.epcat:
        out.append(first_line([bench.epcat, "--version"]))
    t = bench.tools
    if t["socat"]:
        out.append(first_line([t["socat"], "-V"], r"socat version"))
    if t["haproxy"]:
        out.append(first_line([t["haproxy"], "-v"], r"HA-?Proxy version").split(" - ")[0])
    if t["iperf3"]:
        out.append(first_line([t["iperf3"], "-v"]).split(" (")[0])
    if t["ab"]:
        out.append(first_line([t["ab"], "-V"], r"This is ApacheBench").replace(
            "This is ", "").split(",")[0])
    if t["nginx"]:
        out.append(first_line([t["nginx"], "-v"]).replace("nginx version: ", ""))
    out.append(f"Python {platform.python_version()}")
    return out


def raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, need)
    if hard != resource.RLIM_INFINITY and want > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            want = hard
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


#: a measurement during which the host took this share of the CPU time or
#: more (steal) is named in the output as disturbed
STEAL_NOTED = 0.02


def cpu_times() -> tuple[int, int] | None:
    """
    The host's CPU steal and all CPU time so far, in clock ticks summed over
    every CPU, from the first line of /proc/stat (proc(5): user, nice,
    system, idle, iowait, irq, softirq, steal; guest time is already in
    user and nice), or L{None} where there is no such file.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:9]]
    return ticks[7], sum(ticks)


def steal_share(before: tuple[int, int] | None,
                after: tuple[int, int] | None) -> float | None:
    """
    The share (0 to 1) of all CPU time between two L{cpu_times} readings
    that the hypervisor gave to something else: time a virtual machine's
    CPUs were ready to run and did not.  Steal slows every process of the
    run at once, whatever it is, which is why it is reported rather than
    corrected for.
    """
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def steal_summary(bench: Bench) -> str:
    """
    One line on the host's CPU steal during the measurements (L{cpu_times}):
    the median, and the measurements at or over L{STEAL_NOTED}, worst first;
    empty when no measurement was made.
    """
    if not bench.steal:
        # (no measurement was made, or there is no /proc/stat to read)
        return "" if cpu_times() is not None else "Host CPU steal: not known here."
    shares = [s for *_, s in bench.steal]
    disturbed = sorted((s for s in bench.steal if s[3] >= STEAL_NOTED), key=lambda s: -s[3])
    text = (f"Host CPU steal (/proc/stat: time the hypervisor ran something else while "
            f"this machine's CPUs waited) during a measurement: median {median(shares):.1%}, "
            f"{len(disturbed)} of {len(shares)} at {STEAL_NOTED:.0%} or more")
    if disturbed:
        worst = "; ".join(f"round {r + 1}, {w}, {LABELS[c]}: {s:.0%}"
                          for r, w, c, s in disturbed[:5])
        text += f" ({worst}{'; …' if len(disturbed) > 5 else ''})"
    return text + "."


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="epcat beside socat, haproxy and no relay, on loopback.",
        epilog="See the module docstring (benchmarks/bench.py) for what each workload does.")
    p.add_argument("--quick", action="store_true",
                   help="a tenth of the counts and one round (the test suite's mode)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds to take medians over (default 3; 1 with --quick)")
    p.add_argument("--chart", type=Path, metavar="FILE.png",
                   help="draw epcat, socat and haproxy normalised to socat (needs matplotlib)")
    p.add_argument("--candidates", default=",".join(ALL_CANDIDATES),
                   help=f"comma-separated, from {','.join(ALL_CANDIDATES)} (default: all)")
    p.add_argument("--workloads", default=",".join(Bench.WORKLOADS),
                   help=f"comma-separated, from {','.join(Bench.WORKLOADS)} (default: all)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write every sample to FILE")
    args = p.parse_args(argv)
    loads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = [w for w in loads if w not in Bench.WORKLOADS]
    if bad or not loads:
        p.error(f"unknown workload(s) {', '.join(bad) or '(none)'}; "
                f"choose from {', '.join(Bench.WORKLOADS)}")
    args.workloads = tuple(dict.fromkeys(loads))
    cands = [c.strip() for c in args.candidates.split(",") if c.strip()]
    unknown = [c for c in cands if c not in ALL_CANDIDATES]
    if unknown or not cands:
        p.error(f"unknown candidate(s) {', '.join(unknown) or '(none)'}; "
                f"choose from {', '.join(ALL_CANDIDATES)}")
    args.candidates = list(dict.fromkeys(cands))
    if args.rounds is not None and args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.chart is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--chart needs matplotlib: pip install -e '.[bench]'")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = QUICK if args.quick else FULL
    settings = Settings(**{**base.__dict__,
                           "rounds": args.rounds if args.rounds is not None else base.rounds})
    command = shlex.join(["python", "benchmarks/bench.py", *(sys.argv[1:] if argv is None
                                                             else argv)])
    started = datetime.datetime.now(datetime.timezone.utc)
    # An installed epcat runs from compiled bytecode (pip compiles it at
    # install); a checkout under PYTHONDONTWRITEBYTECODE=1 would compile every
    # module of epcat's at every start.  (As benchmarks/startup.py does.)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    limit = raise_fd_limit(2 * settings.idle_connections + 512)
    if limit < 2 * settings.idle_connections + 256:
        print(f"bench: RLIMIT_NOFILE is {limit}: too low for "
              f"{settings.idle_connections} idle connections", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: Any) -> None:
        raise Interrupted(signal.Signals(signum).name)

    # Explicitly: a shell starts background jobs with SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    tmp = Path(tempfile.mkdtemp(prefix="epcat-bench-"))
    procs = Processes(tmp)
    bench = Bench(settings, list(args.candidates), tmp, procs, args.workloads)
    interrupted = False
    load_before = loadavg()

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        bench.run(progress)
    except (KeyboardInterrupt, Interrupted) as e:
        interrupted = True
        print(f"\nbench: interrupted ({type(e).__name__ if not str(e) else e}); "
              "stopping every process", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        if bench.idle_sink is not None:
            bench.idle_sink.close()
        shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if interrupted:
        return 130

    elapsed = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    figs = figures(settings)
    cores = os.cpu_count()
    mode = "quick" if args.quick else "full"
    print(f"## epcat benchmark ({mode}), {started:%Y-%m-%d %H:%M} UTC\n")
    print(f"`{command}`\n")
    print(f"{platform.system()} {platform.release()}, {cores} cores, loopback; "
          f"medians of {settings.rounds} interleaved round(s); ratios are to socat (default) "
          f"in the same run; ↑ higher is better, ↓ lower is better.  Load average "
          f"{load_before} before, {loadavg()} after; {elapsed:.0f} s.\n")
    print("Versions: " + "; ".join(tool_versions(bench)) + "\n")
    print(table(bench, figs))
    print()
    refs = [f"{label} {fmt(m, 'ms')} ms" for key, label in REFERENCE_ROWS.items()
            if (m := median(bench.references.get(key, []))) is not None]
    if refs:
        print("Start-up references (no candidate): " + "; ".join(refs) + ".")
    print("bulk UNIX→TCP: a Python pusher into the relay's UNIX socket, a Python sink on TCP; "
          "direct = pusher to sink over TCP (the tools' own ceiling).")
    for note in dict.fromkeys(bench.notes):
        print(f"- {note}")
    steal = steal_summary(bench)
    if steal:
        print(steal)
    if settings.rounds > 1:
        print("\nRun-to-run spread:\n")
        print(spread_table(bench, figs))
        paired = paired_table(bench, figs)
        if paired:
            print("\nRound by round (epcat's figure over the other's, measured in the same "
                  "round; ↑/↓ as above):\n")
            print(paired)
    if bench.errors:
        print("\nFailed measurements:\n")
        for e in bench.errors:
            print("- " + e.replace("\n", "\n    "))
    if args.json:
        args.json.write_text(json.dumps({
            "date": started.isoformat(), "command": command, "settings": settings.__dict__,
            "candidates": bench.candidates, "samples": bench.results,
            "references": bench.references, "errors": bench.errors, "notes": bench.notes,
            "steal": [{"round": r + 1, "workload": w, "candidate": c, "share": s}
                      for r, w, c, s in bench.steal],
        }, indent=2))
    if args.chart:
        title = (f"epcat vs socat vs haproxy on loopback ({cores} cores), medians of "
                 f"{settings.rounds} round(s), {started:%Y-%m-%d}")
        try:
            draw_chart(args.chart, bench, figs, title)
            print(f"\nChart: {args.chart}")
        except BenchError as e:
            print(f"bench: no chart: {e}", file=sys.stderr)
            return 1
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
