"""
--progress: the live display's content, without a terminal.
"""

from __future__ import annotations

import io

from rich.console import Console
from twisted.internet.task import Clock

from epcat.progress import ProgressDisplay, human_bytes


def render(display: ProgressDisplay) -> str:
    console = Console(file=io.StringIO(), width=120, force_terminal=False, color_system=None)
    console.print(display._render())
    return console.file.getvalue()


def test_human_bytes() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 1024**3) == "3.0 GiB"


def test_not_wanted_without_a_terminal() -> None:
    assert not ProgressDisplay.wanted(io.StringIO())


def test_counts_rates_and_open_pairs() -> None:
    clock = Clock()
    counters = {"value": (2, 0, 0)}
    display = ProgressDisplay(clock, lambda: counters["value"])
    display._last = (clock.seconds(), 0, 0)
    clock.advance(1.0)
    counters["value"] = (2, 1024 * 1024, 2048)
    # what _refresh does, without a live console
    now = clock.seconds()
    then, sent0, received0 = display._last
    display._rates = ((1024 * 1024 - sent0) / (now - then), (2048 - received0) / (now - then))
    text = render(display)
    assert "2 open" in text
    assert "1.0 MiB (1.0 MiB/s)" in text
    assert "2.0 KiB (2.0 KiB/s)" in text


def test_bar_with_percentage_and_eta_for_a_file_on_stdin() -> None:
    clock = Clock()
    display = ProgressDisplay(clock, lambda: (1, 25 * 1024, 0), total=100 * 1024)
    display._rates = (25 * 1024.0, 0.0)
    text = render(display)
    assert "25.0% of 100.0 KiB" in text
    assert "ETA 3 s" in text
