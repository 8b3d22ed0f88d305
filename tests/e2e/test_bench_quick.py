"""
The benchmark script cannot rot: run C{benchmarks/bench.py --quick} against
epcat, socat and the direct baseline and check that its table comes out with
every row and a figure in every cell that applies.  No timing assertions: the
figures themselves are whatever this machine gives.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from .conftest import WAIT, free_port, recv_all, require, wait_for_port

pytestmark = pytest.mark.e2e

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench.py"
SKETCH = BENCH.with_name("fused_sketch.py")
PYLOOP = BENCH.with_name("pyloop.py")

#: Row label prefixes, and whether the direct baseline has a figure there.
ROWS = {
    "bulk TCP→TCP, iperf3 -t 1, forward": True,
    "bulk TCP→TCP, iperf3 -t 1, reverse (-R)": True,
    "bulk UNIX→TCP": True,
    "new connections/s, ab HTTP/1.0 -c 1,": True,
    "new connections/s, ab HTTP/1.0 -c 32,": True,
    "kept-alive request, ab -k -c 1": True,
    "… added vs direct": True,
    "relay CPU per new connection, ab -c 32": False,
    "relay CPU per kept-alive request, ab -k -c 1": False,
    "relay CPU per GB, iperf3 forward": False,
    "Pss per idle relayed connection (200 open)": False,
    "relay Pss before those connections": False,
    "start-up: --version / -V / -v": False,
    "start-up: spawn to listening": False,
}

NUMBER = re.compile(r"^-?[\d.]+k?( \(\d+\.\d\d×\))?$")


def run_bench(args: list[str], timeout: float, tmpdir: Path) -> tuple[int, str, str]:
    """
    Run the script with its temporary files under C{tmpdir}; on a timeout,
    SIGINT it first so that it stops the relays, iperf3 and nginx it started,
    and only then kill it.
    """
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "TMPDIR": str(tmpdir)}
    popen = subprocess.Popen([sys.executable, str(BENCH), *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    try:
        out, err = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        popen.send_signal(signal.SIGINT)
        try:
            out, err = popen.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            popen.kill()
            out, err = popen.communicate()
        pytest.fail(f"bench.py --quick took over {timeout:.0f} s:\n"
                    f"{err.decode('utf-8', 'replace')}")
    return popen.returncode, out.decode("utf-8"), err.decode("utf-8", "replace")


@pytest.mark.timeout(180)
def test_quick_run_prints_the_table(tmp_path: Path) -> None:
    for tool in ("iperf3", "ab", "socat", "nginx"):
        require(tool)
    args = ["--quick", "--candidates", "epcat,socat,direct"]
    chart = None
    if importlib.util.find_spec("matplotlib") is not None:  # the [bench] extra
        chart = tmp_path / "bench.png"
        args += ["--chart", str(chart)]
    # a short directory: UNIX socket paths in it must stay under 108 bytes
    tmpdir = Path(tempfile.mkdtemp(prefix="eb-"))
    try:
        code, out, err = run_bench(args, timeout=165, tmpdir=tmpdir)
        leftovers = processes_mentioning(str(tmpdir))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    assert code == 0, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"

    columns, body = markdown_table(out, "| figure |")
    assert columns == ["figure", "epcat", "socat (default)", "direct (no relay)"], columns

    for prefix, has_direct in ROWS.items():
        row = next((r for r in body if r[0].startswith(prefix)), None)
        assert row is not None, f"no row {prefix!r} in:\n{out}"
        epcat, socat, direct = row[1:]
        assert NUMBER.match(epcat), (prefix, row)
        assert NUMBER.match(socat), (prefix, row)
        if prefix != "… added vs direct":
            assert socat.endswith("(1.00×)"), (prefix, row)
        if has_direct:
            assert NUMBER.match(direct), (prefix, row)
        else:
            assert direct == "", (prefix, row)
    assert "python -c pass" in out
    assert "Failed measurements" not in out

    if chart is not None:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # every process it started is gone (nginx, the sink and haproxy name
    # files in its temporary directory on their command lines)
    assert "bench: could not stop" not in err
    assert not leftovers, leftovers


@pytest.mark.timeout(120)
def test_workloads_option(tmp_path: Path) -> None:
    """
    --workloads runs only the named workloads (the rest of the table stays
    empty); an unknown name is a usage error.
    """
    code, out, err = run_bench(["--workloads", "bulk,nosuch"], timeout=60, tmpdir=tmp_path)
    assert code == 2, (code, out, err)
    assert "unknown workload(s) nosuch" in err

    tmpdir = Path(tempfile.mkdtemp(prefix="eb-"))
    try:
        code, out, err = run_bench(["--quick", "--candidates", "epcat", "--workloads", "startup"],
                                   timeout=100, tmpdir=tmpdir)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    assert code == 0, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in out.splitlines() if line.startswith("| ") and "|" in line[2:]}
    startup = [label for label in rows if label.startswith("start-up:")]
    assert startup and all(NUMBER.match(rows[label]) for label in startup), rows
    assert rows[next(label for label in rows if label.startswith("bulk TCP"))] == "", rows


@pytest.mark.timeout(120)
def test_round_by_round_ratios(tmp_path: Path) -> None:
    """
    With more than one round, a second table sets epcat beside each
    reference round by round: the median ratio and its range, for the
    figures measured.  A line gives the host's CPU steal over the
    measurements.
    """
    require("socat")
    tmpdir = Path(tempfile.mkdtemp(prefix="eb-"))
    try:
        code, out, err = run_bench(["--quick", "--rounds", "2", "--candidates", "epcat,socat",
                                    "--workloads", "startup"], timeout=100, tmpdir=tmpdir)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    assert code == 0, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    columns, body = markdown_table(out, "| epcat ÷")
    assert columns[1:] == ["socat (default)"], columns
    rows = dict(body)
    ratio = re.compile(r"^\d+\.\d\d× \(\d+\.\d\d–\d+\.\d\d\)$")
    startup = [label for label in rows if label.startswith("start-up:")]
    assert len(startup) == 2 and all(ratio.match(rows[label]) for label in startup), rows
    assert rows[next(label for label in rows if label.startswith("bulk TCP"))] == "", rows
    # the host's CPU steal over the measurements (here: 2 rounds x 2 candidates)
    assert re.search(r"^Host CPU steal \(/proc/stat: .*\) during a measurement: "
                     r"median \d+\.\d%, \d+ of 4 at 2% or more", out, re.MULTILINE), out


@pytest.mark.timeout(60)
def test_fused_sketch_relays(spawn, server) -> None:
    """
    benchmarks/fused_sketch.py (the README's measurement of a fused
    per-connection path) still runs: a request and its half-close reach an
    echo backend through it, and the answer and EOF come back.
    """

    def echo(conn: socket.socket) -> None:
        conn.sendall(recv_all(conn))

    srv = server(echo)
    backend = int(srv.address.rsplit(":", 1)[1])
    port = free_port()
    proc = spawn([sys.executable, SKETCH, port, backend], name="fused_sketch")
    wait_for_port(port, proc)
    for n in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
            client.sendall(b"request %d" % n)
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"request %d" % n


@pytest.mark.timeout(60)
def test_pyloop_relays(spawn, server, tmp_path: Path) -> None:
    """
    benchmarks/pyloop.py (the benchmark's bare Python loop, the reference
    for what the interpreter alone costs) relays correctly, or its figures
    would mean nothing: from TCP and from a UNIX socket, a request and its
    half-close reach an echo backend and the answer and EOF come back; and
    8 MiB of random bytes echoed to a client with a small receive window
    (so the loop's writes to it take less, and the loop waits on it) come
    back whole.
    """

    def echo(conn: socket.socket) -> None:
        while True:
            data = conn.recv(1 << 16)
            if not data:
                break
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)

    srv = server(echo)
    backend = srv.address.rsplit(":", 1)[1]
    port = free_port()
    path = tmp_path / "pyloop.sock"
    for argv in (["tcp", port], ["unix", path]):
        proc = spawn([sys.executable, PYLOOP, *argv, backend], name="pyloop")
        proc.wait_stderr(r"^pyloop: listening on ")

    def dial(unix: bool, rcvbuf: int = 0) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX if unix else socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(WAIT)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(str(path) if unix else ("127.0.0.1", port))
        return sock

    for unix in (False, True):
        with dial(unix) as client:
            client.sendall(b"request")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"request"
    payload = os.urandom(8 << 20)
    # (a small receive window: the loop's writes to the client take less)
    with dial(False, rcvbuf=4096) as client:

        def send() -> None:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        assert recv_all(client) == payload
        sender.join(WAIT)


def markdown_table(out: str, header_prefix: str) -> tuple[list[str], list[list[str]]]:
    """The column names and rows of the table in C{out} whose header starts so."""
    lines = out.splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith(header_prefix)), None)
    assert header is not None, out
    columns = [c.strip() for c in lines[header].strip("|").split("|")]
    body = []
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        body.append([c.strip() for c in line.strip("|").split("|")])
    return columns, body


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry}: {cmdline}")
    return found
