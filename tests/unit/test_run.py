"""
Tests for L{epcat.run.Runner}'s bookkeeping of finished pairs, on a
L{MemoryReactorClock} (nothing listens or connects).
"""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

import epcat.cli
from epcat import run
from epcat.cli import cli
from epcat.ui import UI

from .test_relay import HalfCloseTransport


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> run.Runner:
    """A relay's Runner, as `epcat listen tcp:0 connect tcp:127.0.0.1:9` makes it."""
    plans: list[Any] = []
    monkeypatch.setattr(epcat.cli, "go", plans.append)
    result = CliRunner().invoke(cli, ["listen", "tcp:0", "connect", "tcp:127.0.0.1:9"])
    assert result.exit_code == 0, result.output
    return run.Runner(MemoryReactorClock(), plans[0], UI(0, "text"))


def _finished_pair(runner: run.Runner) -> Any:
    pair = runner._new_pair("shutdown", "shutdown")
    pair.fast_path = False  # (a StringTransport cannot be spliced)
    for side in (pair.inbound, pair.outbound):
        side.makeConnection(HalfCloseTransport())
    for side in (pair.inbound, pair.outbound):
        side.connectionLost(Failure(ConnectionDone()))
    assert pair not in runner.pairs  # (forgotten at its "closed" event)
    return pair


def test_finished_pairs_are_let_go_at_the_next_accept(runner: run.Runner) -> None:
    pair = _finished_pair(runner)
    assert pair.inbound.pair is pair  # (not while its handlers may run)
    runner._accept(IPv4Address("TCP", "127.0.0.1", 5000), None, None)
    assert pair.inbound.pair is None and pair.outbound.peer is None
    assert not runner._finished_pairs


def test_finished_pairs_are_let_go_a_round_later_without_accepts(runner: run.Runner) -> None:
    pairs = [_finished_pair(runner) for _ in range(run.LET_GO_BATCH)]
    assert all(p.inbound.pair is p for p in pairs)
    runner.reactor.advance(0)
    assert all(p.inbound.pair is None for p in pairs)
    assert not runner._finished_pairs
