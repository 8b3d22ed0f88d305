#!/usr/bin/env python3
"""
How long epcat takes to start: C{--help}, C{--version}, shell completion
requests, and the first byte of a one-shot C{epcat connect}, next to
C{python -c pass}, C{python -c 'import click'} and C{socat -V}.

    python benchmarks/startup.py [--runs N] [--warmup N] [--epcat PATH] [--no-site]

Each command runs N times, in rounds that run every command once (after a
few unmeasured warm-up rounds, so the file cache is warm), so that a change
in the machine's load touches every row alike.  The table gives the median
and the fastest run in milliseconds, the median's excess over
C{python -c pass}, and the median CPU time (user + system) of the process.

With C{--no-site} every Python command runs as C{python -S} with C{sys.path}
passed in C{PYTHONPATH}: the figures then leave out what the C{.pth} files in
site-packages cost at every start (where a C{.pth} file imports something,
C{python -c pass} alone can take several times its usual ~20 ms).

The commands run with C{PYTHONDONTWRITEBYTECODE} removed from their
environment, so that the warm-up rounds leave compiled bytecode behind, as
an installed epcat has.  Not a test: the figures depend on the machine and on
what else it is doing.  Standard library only.  To see what a start imports::

    python -X importtime -c 'import epcat.cli' 2>&1 | sort -t'|' -k2 -n | tail
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def _epcat_command(explicit: str | None) -> list[str]:
    """
    The epcat to time: C{--epcat}, else the console script installed beside
    this interpreter (not a pyenv shim on PATH, which adds its own ~100 ms),
    else C{python -m epcat}.
    """
    if explicit:
        return [explicit]
    script = Path(sys.executable).with_name("epcat")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "epcat"]


def _completion_env(words: str, cword: int, shell: str = "bash") -> dict[str, str]:
    return dict(
        os.environ,
        COMP_WORDS=words,
        COMP_CWORD=str(cword),
        _EPCAT_COMPLETE=f"{shell}_complete",
    )


def run_once(argv: Sequence[str], env: dict[str, str] | None) -> tuple[float, float]:
    """
    Run C{argv} to completion once.

    @return: the wall-clock time and the CPU time (user plus system) the
        process used, in milliseconds.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    elapsed = (time.perf_counter() - start) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return elapsed, used


def first_byte_once(argv: Sequence[str]) -> tuple[float, float] | None:
    """
    Start C{argv} (C{{port}} in it replaced by a loopback listener's port)
    with C{hi} on its stdin.

    @return: milliseconds until the listener received the first byte (and
        L{math.nan} for the CPU time, not measured), or L{None} if no byte
        came within 10 seconds.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(10)
    port = server.getsockname()[1]
    stamp: list[float] = []

    def accept() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            try:
                if conn.recv(1):
                    stamp.append(time.perf_counter())
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    start = time.perf_counter()
    child = subprocess.Popen(
        [a.replace("{port}", str(port)) for a in argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        child.stdin.write(b"hi\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
    except OSError:
        pass
    thread.join(10)
    child.kill()
    child.wait()
    server.close()
    return ((stamp[0] - start) * 1000, math.nan) if stamp else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time epcat's start-up.")
    parser.add_argument("--runs", type=int, default=20, help="measured runs per command")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured rounds first")
    parser.add_argument("--epcat", help="the epcat executable to time")
    parser.add_argument(
        "--no-site",
        action="store_true",
        help="run Python as 'python -S' with sys.path in PYTHONPATH (no .pth files)",
    )
    parser.add_argument(
        "--no-connect", action="store_true", help="skip the first-byte measurements"
    )
    args = parser.parse_args(argv)

    # An installed epcat runs from compiled bytecode: let the warm-up rounds
    # write it, even where the environment says not to (then every start
    # would compile every changed module again).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    py = [sys.executable]
    epcat = _epcat_command(args.epcat)
    if args.no_site:
        py = [sys.executable, "-S"]
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        if not args.epcat:
            epcat = [*py, "-m", "epcat"]

    rows: list[tuple[str, Callable[[], tuple[float, float] | None]]] = []

    def command(label: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        rows.append((label, lambda: run_once(argv, env)))

    command("python -c pass", [*py, "-c", "pass"])
    command("python -c 'import click'", [*py, "-c", "import click"])
    if shutil.which("socat"):
        command("socat -V", ["socat", "-V"])
    command("epcat --help", [*epcat, "--help"])
    command("epcat --version", [*epcat, "--version"])
    command("complete: epcat listen t", epcat, _completion_env("epcat listen t", 2))
    command("complete: epcat listen tcp:8080:", epcat, _completion_env("epcat listen tcp:8080:", 2))
    command(
        "complete: epcat connect unix:/tmp/",
        epcat,
        _completion_env("epcat connect unix:/tmp/", 2),
    )
    command("complete: epcat -- (zsh)", epcat, _completion_env("epcat --", 1, "zsh"))
    if not args.no_connect:
        connect = [*epcat, "connect", "tcp:127.0.0.1:{port}"]
        rows.append(("first byte: epcat connect tcp:", lambda: first_byte_once(connect)))
        if shutil.which("socat"):
            socat = ["socat", "-", "TCP:127.0.0.1:{port}"]
            rows.append(("first byte: socat - TCP:", lambda: first_byte_once(socat)))

    # Rounds, each running every command once, so that a change in the
    # machine's load touches every row alike.
    results: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in rows}
    for round_number in range(args.warmup + args.runs):
        for label, measure in rows:
            result = measure()
            if result is not None and round_number >= args.warmup:
                results[label].append(result)

    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')}  {' '.join(epcat)}  "
        f"Python {sys.version.split()[0]}  runs={args.runs} warmup={args.warmup}  "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'command':<38} {'median ms':>10} {'min ms':>8} {'over python':>12} {'cpu ms':>7}")
    baseline = None
    for label, _ in rows:
        measured = results[label]
        if not measured:
            print(f"{label:<38} {'failed':>10}")
            continue
        wall = [w for w, _ in measured]
        cpu = [c for _, c in measured if not math.isnan(c)]
        median = statistics.median(wall)
        if baseline is None:
            baseline = median
        cpu_text = f"{statistics.median(cpu):>7.1f}" if cpu else f"{'-':>7}"
        print(
            f"{label:<38} {median:>10.1f} {min(wall):>8.1f} {median - baseline:>+12.1f} {cpu_text}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
