"""
Load (issue 8): many concurrent relayed connections through one epcat
process, every byte checked, and no leak afterwards; running out of file
descriptors without dying, spinning or dropping the connections it holds.
"""

from __future__ import annotations

import errno
import os
import re
import selectors
import socket
import threading
import time

import pytest

from .conftest import (
    FD_LIMIT,
    WAIT,
    count,
    cpu_seconds,
    echo_once,
    epcat_with_nofile,
    fd_count,
    fd_kinds,
    figure,
    header,
    open_pairs,
    raise_nofile,
    rss_kib,
    settle,
    start_relay,
    wait_until,
)

pytestmark = pytest.mark.stress

#: bytes each load client sends and expects back
PAYLOAD = 4096

#: connects (and echoes) in flight at once from the load client
IN_FLIGHT = 256

#: slack allowed after the load: file descriptors, and RSS in KiB
FD_SLACK = 10
RSS_SLACK_KIB = 32 * 1024

#: the fast path (its default mover, copying) and the userspace path
SPLICE_IDS = ["fast", "userspace"]

#: descriptors epcat may hold besides its pairs' sockets
EPCAT_OWN_FDS = 128


class _Conn:
    __slots__ = ("sock", "index", "out", "got", "state")

    def __init__(self, sock: socket.socket, index: int, out: bytes) -> None:
        self.sock = sock
        self.index = index
        self.out = memoryview(out)
        self.got = bytearray()
        self.state = "connecting"


class LoadClient:
    """
    C{n} client connections driven by one selector in this thread: connect
    (at most L{IN_FLIGHT} unfinished at a time), send a header and a payload
    unique to the connection, read the echo back and keep the connection
    open; later half-close all and expect a clean EOF on each.
    """

    def __init__(self, port: int, n: int, size: int) -> None:
        self.port = port
        self.n = n
        self.size = size
        blob = os.urandom(n * size)
        self.payloads = [blob[i * size:(i + 1) * size] for i in range(n)]
        self.conns: list[_Conn] = []
        self.failures: list[str] = []
        self.sel = selectors.DefaultSelector()

    def _fail(self, c: _Conn, why: str) -> None:
        self.failures.append(f"#{c.index}: {why}")
        c.state = "failed"
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def open_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        started = 0
        busy = 0
        while started < self.n or busy:
            while started < self.n and busy < IN_FLIGHT:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                rc = s.connect_ex(("127.0.0.1", self.port))
                c = _Conn(s, started, header(b"E") + self.payloads[started])
                self.conns.append(c)
                started += 1
                busy += 1
                if rc not in (0, errno.EINPROGRESS):
                    self._fail(c, f"connect: {os.strerror(rc)}")
                    busy -= 1
                    continue
                self.sel.register(s, selectors.EVENT_WRITE, c)
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{busy} connections unfinished after {timeout} s "
                    f"({started} started, {len(self.failures)} failed)"
                )
            for key, _ in self.sel.select(0.5):
                c = key.data
                before = c.state
                self._step(c)
                if before != c.state and c.state in ("held", "failed"):
                    busy -= 1

    def _step(self, c: _Conn) -> None:
        try:
            if c.state == "connecting":
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._fail(c, f"connect: {os.strerror(err)}")
                    return
                c.state = "sending"
            if c.state == "sending":
                sent = c.sock.send(c.out)
                c.out = c.out[sent:]
                if not len(c.out):
                    c.state = "reading"
                    self.sel.modify(c.sock, selectors.EVENT_READ, c)
                return
            if c.state == "reading":
                data = c.sock.recv(1 << 16)
                if not data:
                    self._fail(c, f"EOF after {len(c.got)} of {self.size} bytes")
                    return
                c.got += data
                if len(c.got) >= self.size:
                    self.sel.unregister(c.sock)
                    c.state = "held"
                return
            if c.state == "closing":
                data = c.sock.recv(1 << 16)
                if data:
                    self._fail(c, f"{len(data)} unexpected bytes after the echo")
                    return
                self.sel.unregister(c.sock)
                c.sock.close()
                c.state = "closed"
        except BlockingIOError:
            pass
        except OSError as e:
            self._fail(c, f"{c.state}: {e}")

    def held(self) -> list[_Conn]:
        return [c for c in self.conns if c.state == "held"]

    def bytes_lost(self) -> int:
        """Bytes sent that did not come back exactly (a wrong byte loses the rest)."""
        lost = 0
        for c in self.conns:
            expected = self.payloads[c.index]
            got = bytes(c.got)
            good = len(os.path.commonprefix([expected, got]))
            lost += len(expected) - good
        return lost

    def close_all(self, timeout: float) -> int:
        """Half-close every held connection and expect EOF; return how many closed cleanly."""
        held = self.held()
        for c in held:
            try:
                c.sock.shutdown(socket.SHUT_WR)
            except OSError as e:
                self._fail(c, f"shutdown: {e}")
                continue
            c.state = "closing"
            self.sel.register(c.sock, selectors.EVENT_READ, c)
        deadline = time.monotonic() + timeout
        while any(c.state == "closing" for c in held) and time.monotonic() < deadline:
            for key, _ in self.sel.select(0.5):
                self._step(key.data)
        for c in held:
            if c.state == "closing":
                self._fail(c, "no EOF after half-close")
        return sum(1 for c in held if c.state == "closed")

    def abort(self) -> None:
        for c in self.conns:
            try:
                c.sock.close()
            except OSError:
                pass
        self.sel.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("splice", "fused"), [(True, False), (False, False), (True, True)],
                         ids=["splice", "userspace", "fused"])
def test_concurrent_relayed_connections(epcat_proc, backend, splice, fused):
    """
    N connections held open at once through one epcat, each echoing a
    payload of its own; then all half-closed: every byte back, every
    connection ends with EOF, and epcat's descriptors return to the baseline
    (within +10).  Done twice: memory is not leaked (a second round peaks no
    higher than the first: what the first freed is reused) and returns to
    within 32 MiB of the baseline after the reduced count.
    """
    target = count(1000, 10_000)
    limit = raise_nofile()
    # this process holds n sockets, epcat 2n (two per pair) and its own
    # (listener, epoll, stdio, pooled pipes), the backend n: where the hard
    # limit is below what the target needs, as many as it allows
    n = min(target, (limit - EPCAT_OWN_FDS) // 2)
    if n < min(target, 1000):
        pytest.skip(f"{target} pairs need RLIMIT_NOFILE >= {2 * target + EPCAT_OWN_FDS} for "
                    f"epcat; the hard limit here is {limit}")
    be = backend()
    proc, port = start_relay(epcat_proc, f"tcp:{be.address}", splice=splice, fused=fused,
                             listen="tcp:0:interface=127.0.0.1:backlog=1024")
    if not fused:  # (the fused path runs without -v: no such line)
        m = proc.wait_stderr(FD_LIMIT)
        assert int(m.group(1)) == limit, proc.err  # raised to the hard limit, and said so
    assert echo_once(port) == b"ping"  # warm-up: everything imported, one pair done
    settle(proc, fd_count(proc.pid), timeout=WAIT)
    fd_base, rss_base = fd_count(proc.pid), rss_kib(proc.pid)

    rounds = []
    for _ in range(2):
        client = LoadClient(port, n, PAYLOAD)
        started = time.monotonic()
        try:
            client.open_all(timeout=90 if n > 1000 else 60)
            assert not client.failures, client.failures[:10]
            held = len(client.held())
            pairs = open_pairs(proc)
            fd_peak, rss_peak = fd_count(proc.pid), rss_kib(proc.pid)
            kinds = fd_kinds(proc.pid)
            backend_open = be.stats()["open"]
            closed = client.close_all(timeout=60)
            assert not client.failures, client.failures[:10]
        finally:
            client.abort()
        elapsed = time.monotonic() - started
        lost = client.bytes_lost()
        left_pairs, fd_after = settle(proc, fd_base, FD_SLACK)
        rss_after = rss_kib(proc.pid)
        rounds.append((rss_peak, rss_after))
        figure(
            f"load[{'fused' if fused else 'fast' if splice else 'userspace'}] "
            f"round {len(rounds)}",
            connections_held=held if n == target else f"{held} (of {target}: the hard fd "
            f"limit here allows no more)",
            epcat_open_pairs_at_peak=pairs,
            bytes_checked=2 * n * PAYLOAD,
            bytes_lost=lost,
            fd_limit=limit,
            epcat_fds=f"{fd_base} -> {fd_peak} at peak ({kinds}) -> {fd_after}",
            epcat_rss_kib=f"{rss_base} -> {rss_peak} at peak -> {rss_after}",
            seconds=f"{elapsed:.1f}",
        )
        assert held == n
        assert pairs == n, "epcat did not hold every connection at once"
        assert backend_open == n
        assert lost == 0
        assert closed == n
        assert left_pairs == 0
        assert fd_after <= fd_base + FD_SLACK, f"{fd_after} descriptors, baseline {fd_base}"
    (peak1, after1), (peak2, after2) = rounds
    # (CPython's allocator keeps part of what the closed pairs freed and
    # reuses it: a leak would show as a second round needing more)
    first = max(peak1, after1)
    slack = max((first - rss_base) // 5, RSS_SLACK_KIB // 4)
    assert peak2 <= first + slack, (
        f"second round peaked at {peak2} KiB, the first at {peak1} KiB and {after1} KiB "
        f"after: memory not reused"
    )
    assert after2 <= first + slack, f"RSS after: {after1}, then {after2} KiB"
    if n <= 1000:
        assert after2 <= rss_base + RSS_SLACK_KIB, f"RSS {after2} KiB, baseline {rss_base}"
    assert proc.popen.poll() is None
    assert "Traceback" not in proc.err


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "splice",
    [
        pytest.param(True),
        False,
    ],
    ids=SPLICE_IDS,
)
def test_idle_pair_costs_two_descriptors(epcat_proc, backend, splice):
    """
    A joined pair that has moved no data holds its two sockets and nothing
    else (splice.py: no pipe, and no engine, until a direction moves data).
    """
    n = 50
    be = backend()
    proc, port = start_relay(epcat_proc, f"tcp:{be.address}", splice=splice)
    assert echo_once(port) == b"ping"
    settle(proc, fd_count(proc.pid))
    base = fd_count(proc.pid)
    socks = [socket.create_connection(("127.0.0.1", port), timeout=WAIT) for _ in range(n)]
    try:
        assert wait_until(lambda: be.stats()["open"] == n, timeout=WAIT)
        # every pair joined: a "connected" line each (and one for the warm-up)
        assert wait_until(lambda: proc.err.count("] connected to ") == n + 1, timeout=WAIT)
        per_pair = (fd_count(proc.pid) - base) / n
        kinds = fd_kinds(proc.pid)
    finally:
        for s in socks:
            s.close()
    figure(f"idle-pair-fds[{'fast' if splice else 'userspace'}]",
           idle_pairs=n, descriptors_per_pair=per_pair, kinds=kinds)
    assert per_pair <= 2.0, f"{per_pair} descriptors per idle pair: {kinds}"


#: epcat's pause after EMFILE (epcat.run.EMFILE_PAUSE)
EMFILE_PAUSE = 0.5

EMFILE_LINE = re.compile(r"^epcat: warning: out of file descriptors \(EMFILE\)")
CONNECT_EMFILE_LINE = re.compile(
    r"^epcat: warning: \[\d+\] cannot connect to .*too many open files"
)
KILLED_LINE = re.compile(r"^epcat: warning: \[\d+\] connection on .* failed")


def _probe_all(socks: list[socket.socket], first: bytes, timeout: float = 3.0) -> list[str]:
    """
    L{_probe} on many sockets at once: C{first} and a line of its own on each,
    then up to C{timeout} seconds for the echoes.
    """
    sel = selectors.DefaultSelector()
    states = ["silent"] * len(socks)
    expected = [f"probe {i};".encode() for i in range(len(socks))]
    got = [b""] * len(socks)
    for i, s in enumerate(socks):
        s.setblocking(False)
        try:
            s.send(first + expected[i])  # small: the socket buffer takes it whole
        except OSError:
            states[i] = "closed"
            continue
        sel.register(s, selectors.EVENT_READ, i)
    deadline = time.monotonic() + timeout
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(max(deadline - time.monotonic(), 0)):
            i = key.data
            try:
                chunk = key.fileobj.recv(1 << 12)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                states[i] = "closed"
            else:
                got[i] += chunk
                if len(got[i]) < len(expected[i]):
                    continue
                states[i] = "held" if got[i] == expected[i] else "corrupt"
            sel.unregister(key.fileobj)
    sel.close()
    for s in socks:
        s.setblocking(True)
    return states


def _probe(sock: socket.socket, data: bytes, timeout: float = 3.0) -> str:
    """
    Echo C{data} once: "held" if it comes back, "closed" if epcat closed us,
    else "silent".
    """
    sock.settimeout(timeout)
    try:
        sock.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = sock.recv(len(data) - len(got))
            if not chunk:
                return "closed"
            got += chunk
        return "held" if got == data else "corrupt"
    except TimeoutError:
        return "silent"
    except OSError:
        return "closed"


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "splice",
    [
        pytest.param(True),
        False,
    ],
    ids=SPLICE_IDS,
)
def test_fd_exhaustion(spawn, backend, splice):
    """
    epcat with RLIMIT_NOFILE 64 and more clients than it can hold: it says
    "out of file descriptors (EMFILE)" once per burst (not once per
    connection), keeps relaying every pair it has, does not exit, and does
    not spin (CPU over a 2 s window of clients hammering it < 60 % of the
    window).
    """
    limit = 64
    burst = count(60, 200)
    be = backend()
    proc, port = start_relay(epcat_with_nofile(spawn, limit), f"tcp:{be.address}",
                             splice=splice)
    assert int(proc.wait_stderr(FD_LIMIT).group(1)) == limit
    started = time.monotonic()

    # a burst of clients, more than 64 descriptors can hold (non-blocking
    # connects: those whose SYN is dropped while epcat's backlog is full
    # must not hold the test up)
    socks: list[socket.socket] = []
    for _ in range(burst):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    time.sleep(4 * EMFILE_PAUSE)  # every burst handled, every pause over
    connected = []
    turned_away = 0
    for s in socks:
        try:
            s.getpeername()
            connected.append(s)
        except OSError:  # never connected, or already closed by epcat
            turned_away += 1
            s.close()
    states = _probe_all(connected, first=header(b"E"))
    held = [s for s, state in zip(connected, states, strict=True) if state == "held"]
    # (connected but unanswered: waiting in epcat's backlog, by design)
    waiting = states.count("silent")
    turned_away += states.count("closed")
    corrupt = states.count("corrupt")
    for s, state in zip(connected, states, strict=True):
        if state != "held":
            s.close()
    # top up until every descriptor is in use, so that the clients below
    # hammer a process that has none left
    for _ in range(10):
        if fd_count(proc.pid) >= limit:
            break
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(header(b"E"))
        except OSError:
            continue
        if _probe(s, b"top-up;") == "held":
            held.append(s)
        else:
            s.close()
        time.sleep(0.1)
    saturated = fd_count(proc.pid) >= limit
    after_burst = be.stats()

    # 2 s of clients hammering while the held ones keep echoing
    stop = threading.Event()
    attempts = [0]
    refused = [0]
    served = [0]

    def hammer() -> None:
        while not stop.is_set():
            attempts[0] += 1
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as h:
                    h.sendall(header(b"E") + b"h")
                    h.settimeout(0.5)
                    if h.recv(1) == b"h":
                        served[0] += 1
                    else:
                        refused[0] += 1
            except OSError:
                refused[0] += 1

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
    cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
    for t in threads:
        t.start()
    echoes = failures = 0
    while time.monotonic() - t0 < 2.0:
        for s in held:
            if _probe(s, b"tick") == "held":
                echoes += 1
            else:
                failures += 1
        time.sleep(0.1)
    cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
    stop.set()
    for t in threads:
        t.join(WAIT)
    alive = proc.popen.poll() is None
    pressure = time.monotonic() - started
    cpu_ratio = (cpu1 - cpu0) / (t1 - t0)
    emfile_lines = [line for line in proc.stderr.lines if EMFILE_LINE.search(line)]
    connect_lines = [line for line in proc.stderr.lines if CONNECT_EMFILE_LINE.search(line)]
    killed = [line for line in proc.stderr.lines if KILLED_LINE.search(line)]
    bursts_possible = int(pressure / EMFILE_PAUSE) + 2
    figure(
        f"fd-exhaustion[{'fast' if splice else 'userspace'}]",
        fd_limit=limit,
        connections_held=len(held),
        clients_turned_away=turned_away + refused[0],
        clients_waiting_in_backlog=waiting,
        hammer_attempts=attempts[0],
        hammer_served=served[0],
        emfile_warnings=len(emfile_lines),
        connect_emfile_warnings=len(connect_lines),
        pairs_killed=len(killed),
        held_echoes_during_hammer=f"{echoes} ok, {failures} failed",
        epcat_cpu=f"{cpu_ratio:.0%} of the 2 s window",
        backend=after_burst,
    )
    assert alive, proc.describe()
    assert held, "epcat holds no connection at all"
    assert saturated and served[0] == 0, "epcat was not out of descriptors while hammered"
    assert turned_away + refused[0] > 0, "the descriptor limit was never reached"
    # every connection that reached the backend is still relayed
    assert not killed, killed[:5]
    assert after_burst["accepted"] == after_burst["open"] == len(held), after_burst
    assert corrupt == 0
    assert failures == 0 and echoes > 0
    # once per burst, not once per connection
    assert 1 <= len(emfile_lines) <= bursts_possible, emfile_lines
    assert len(connect_lines) <= bursts_possible, connect_lines[:5]
    assert len(emfile_lines) + len(connect_lines) < turned_away + refused[0]
    assert cpu_ratio < 0.6, f"epcat used {cpu_ratio:.0%} of a CPU while clients hammered it"

    # let go of everything: back to its baseline, and serving again
    for s in held:
        s.close()
    assert wait_until(lambda: open_pairs(proc) == 0, timeout=WAIT, interval=0.2)
    assert echo_once(port) == b"ping"
    assert "Traceback" not in proc.err
