# -*- test-case-name: tests.unit.test_progress -*-
"""
C{--progress}: a live display on stderr, refreshed four times a second, only
when stderr is a terminal.  Bytes and rate each way and the open pairs; with
a regular file on stdin in the stdin/stdout modes, a bar with percentage and
ETA, as pv(1) gives.  It never writes to stdout and is removed at exit.
"""

from __future__ import annotations

import os
import stat
import sys
from typing import Any
from collections.abc import Callable

#: seconds between refreshes
INTERVAL = 0.25


def stdin_file_size() -> int | None:
    """
    The size in bytes of stdin when it is a regular file, else L{None}.
    """
    try:
        st = os.fstat(sys.stdin.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def human_bytes(count: float) -> str:
    """
    C{1536} -> C{"1.5 KiB"}.
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


class ProgressDisplay:
    """
    The live display.

    @param counters: returns (open pairs, bytes inbound->outbound, bytes
        outbound->inbound) so far.
    @param total: bytes expected inbound->outbound (stdin's size), or
        L{None}.
    """

    def __init__(
        self,
        reactor: Any,
        counters: Callable[[], tuple[int, int, int]],
        total: int | None = None,
        stream: Any = None,
    ) -> None:
        self.reactor = reactor
        self.counters = counters
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self._live: Any = None
        self._loop: Any = None
        self._last: tuple[float, int, int] | None = None
        self._rates = (0.0, 0.0)
        self._started = reactor.seconds()

    @staticmethod
    def wanted(stream: Any = None) -> bool:
        """
        Is there a terminal on stderr to draw on?
        """
        stream = stream if stream is not None else sys.stderr
        try:
            return stream.isatty()
        except (AttributeError, ValueError):
            return False

    def start(self) -> None:
        from rich.console import Console
        from rich.live import Live
        from twisted.internet.task import LoopingCall

        console = Console(file=self.stream, highlight=False)
        self._live = Live(self._render(), console=console, auto_refresh=False, transient=True)
        self._live.start()
        self._loop = LoopingCall(self._refresh)
        self._loop.clock = self.reactor
        self._loop.start(INTERVAL, now=False)

    def stop(self) -> None:
        """
        Remove the display (it leaves nothing behind on the terminal).
        """
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _refresh(self) -> None:
        if self._live is None:
            return
        now = self.reactor.seconds()
        _, sent, received = self.counters()
        if self._last is not None:
            then, last_sent, last_received = self._last
            elapsed = max(now - then, 1e-6)
            self._rates = ((sent - last_sent) / elapsed, (received - last_received) / elapsed)
        self._last = (now, sent, received)
        self._live.update(self._render(), refresh=True)

    def _render(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        open_pairs, sent, received = self.counters()
        rate_out, rate_in = self._rates
        table = Table.grid(padding=(0, 2))
        table.add_row(
            f"epcat: {open_pairs} open",
            f"-> {human_bytes(sent)} ({human_bytes(rate_out)}/s)",
            f"<- {human_bytes(received)} ({human_bytes(rate_in)}/s)",
        )
        if self.total:
            done = min(sent, self.total)
            percent = 100.0 * done / self.total
            eta = "--"
            if rate_out > 0 and done < self.total:
                eta = f"{(self.total - done) / rate_out:.0f} s"
            elif done >= self.total:
                eta = "0 s"
            table.add_row(
                ProgressBar(total=self.total, completed=done, width=30),
                f"{percent:5.1f}% of {human_bytes(self.total)}",
                f"ETA {eta}",
            )
        return table
