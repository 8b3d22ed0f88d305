"""
Tests for L{epcat.dial}: the connect timeout (a cancelled Deferred) and
retries spaced by Twisted's C{backoffPolicy}, on a L{MemoryReactorClock}
with an endpoint whose every attempt the test decides.  (End to end, with
real refused and silent peers: tests/e2e/test_lifecycle_e2e.py.)
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectingCancelledError, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from epcat.dial import Dial, connect_with_timeout, policy_for, reconnect_policy_for
from epcat.plan import ConnectOptions
from epcat.status import TimedOut


class ScriptedEndpoint:
    """
    A client endpoint whose attempts stay pending until the test fires them.

    @ivar attempts: the Deferred of every C{connect} call, in order.
    @ivar cancelled: how many attempts were cancelled.
    """

    def __init__(self) -> None:
        self.attempts: list[defer.Deferred[Any]] = []
        self.cancelled = 0

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        def cancel(d: defer.Deferred[Any]) -> None:
            self.cancelled += 1
            d.errback(ConnectingCancelledError(None))

        attempt: defer.Deferred[Any] = defer.Deferred(cancel)
        self.attempts.append(attempt)
        return attempt


def _outcome(d: defer.Deferred[Any]) -> list[Any]:
    """
    What C{d} has given so far: [] while pending, else [result or Failure].
    """
    seen: list[Any] = []
    d.addBoth(seen.append)
    return seen


def test_backoff_policy_grows_by_the_factor_up_to_the_maximum() -> None:
    """
    --backoff-initial, --backoff-factor and --backoff-max become Twisted's
    backoffPolicy, with its jitter of up to one extra second.
    """
    policy = policy_for(ConnectOptions(backoff_initial=1.0, backoff_max=5.0, backoff_factor=2.0))
    for failures, base in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 5.0), (10, 5.0)]:
        delay = policy(failures)
        assert base <= delay <= base + 1.0, (failures, delay)


def test_reconnect_policy_counts_as_client_service_does() -> None:
    """
    ClientService asks for the wait after its first failed attempt (or a
    lost connection) with 1: that wait is --backoff-initial, as for --retry,
    and failures it cannot see (a tunnel's second leg) grow it too.
    """
    options = ConnectOptions(backoff_initial=1.0, backoff_max=50.0, backoff_factor=3.0)
    policy = reconnect_policy_for(options)
    for failed_attempts, base in [(1, 1.0), (2, 3.0), (3, 9.0)]:
        delay = policy(failed_attempts)
        assert base <= delay <= base + 1.0, (failed_attempts, delay)
    # a tunnel's leg B failed: leg A's connection was lost (ClientService's
    # attempt 1); the first such failure waits --backoff-initial, the next
    # ones grow
    unseen = [1]
    policy = reconnect_policy_for(options, lambda: unseen[0])
    assert 1.0 <= policy(1) <= 2.0
    unseen[0] = 3
    assert 9.0 <= policy(1) <= 10.0
    unseen[0] = 0
    assert 1.0 <= policy(1) <= 2.0


def test_an_attempt_past_its_timeout_fails_with_timed_out() -> None:
    reactor = MemoryReactorClock()
    endpoint = ScriptedEndpoint()
    seen = _outcome(connect_with_timeout(reactor, endpoint, None, 5.0))
    reactor.advance(4.9)
    assert seen == []
    reactor.advance(0.2)
    assert endpoint.cancelled == 1
    assert isinstance(seen[0], Failure) and seen[0].check(TimedOut)
    assert seen[0].value.seconds == 5.0


def test_an_attempt_that_ends_in_time_leaves_no_timer() -> None:
    reactor = MemoryReactorClock()
    endpoint = ScriptedEndpoint()
    seen = _outcome(connect_with_timeout(reactor, endpoint, None, 5.0))
    endpoint.attempts[0].errback(ConnectionRefusedError())
    assert seen[0].check(ConnectionRefusedError)  # (its own failure, not TimedOut)
    assert reactor.getDelayedCalls() == []


def test_retries_after_the_backoff_then_gives_up_with_the_last_failure() -> None:
    reactor = MemoryReactorClock()
    endpoint = ScriptedEndpoint()
    retries: list[tuple[float, int]] = []
    dial = Dial(
        reactor, endpoint, None, ConnectOptions(retry=2, backoff_initial=1.0),
        on_retry=lambda failure, delay, attempt: retries.append((delay, attempt)),
    )
    seen = _outcome(dial.result)
    endpoint.attempts[0].errback(ConnectionRefusedError())
    assert len(retries) == 1 and retries[0][1] == 2
    assert 1.0 <= retries[0][0] <= 2.0
    reactor.advance(retries[0][0] - 0.01)
    assert len(endpoint.attempts) == 1  # (still waiting out the backoff)
    reactor.advance(0.02)
    assert len(endpoint.attempts) == 2
    endpoint.attempts[1].errback(ConnectionRefusedError())
    reactor.advance(retries[1][0])
    assert [attempt for _, attempt in retries] == [2, 3]
    assert seen == []
    endpoint.attempts[2].errback(ConnectionRefusedError("the last one"))
    assert len(endpoint.attempts) == 3
    assert seen[0].check(ConnectionRefusedError)
    assert "the last one" in str(seen[0].value)


def test_a_retry_that_connects_fires_with_its_protocol() -> None:
    reactor = MemoryReactorClock()
    endpoint = ScriptedEndpoint()
    dial = Dial(reactor, endpoint, None, ConnectOptions(retry=3, backoff_initial=1.0))
    seen = _outcome(dial.result)
    endpoint.attempts[0].errback(ConnectionRefusedError())
    reactor.advance(2.0)
    protocol = object()
    endpoint.attempts[1].callback(protocol)
    assert seen == [protocol]
    assert reactor.getDelayedCalls() == []


def test_without_retries_the_first_failure_is_the_result() -> None:
    reactor = MemoryReactorClock()
    endpoint = ScriptedEndpoint()
    seen = _outcome(Dial(reactor, endpoint, None, ConnectOptions()).result)
    endpoint.attempts[0].errback(ConnectionRefusedError())
    assert seen[0].check(ConnectionRefusedError)
    assert reactor.getDelayedCalls() == []


@pytest.mark.parametrize("during", ["attempt", "backoff"])
def test_cancelling_stops_the_attempt_and_every_retry(during: str) -> None:
    reactor = MemoryReactorClock()
    endpoint = ScriptedEndpoint()
    dial = Dial(reactor, endpoint, None, ConnectOptions(retry=5, backoff_initial=1.0))
    seen = _outcome(dial.result)
    if during == "backoff":
        endpoint.attempts[0].errback(ConnectionRefusedError())
    dial.result.cancel()
    assert endpoint.cancelled == (1 if during == "attempt" else 0)
    assert seen[0].check(defer.CancelledError)
    assert reactor.getDelayedCalls() == []
    reactor.advance(120)
    assert len(endpoint.attempts) == 1
