# -*- test-case-name: tests.unit.test_dial -*-
"""
Outbound connection attempts: a timeout on each attempt (by cancelling the
Deferred that C{connect} returned, as the Twisted endpoints howto shows with
C{reactor.callLater(30, attempt.cancel)}), and retries spaced by Twisted's
C{backoffPolicy}.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectingCancelledError
from twisted.python.failure import Failure

from epcat.plan import ConnectOptions
from epcat.status import TimedOut


def policy_for(options: ConnectOptions) -> Callable[[int], float]:
    """
    The backoff policy of C{--backoff-initial/--backoff-max/--backoff-factor},
    with Twisted's default jitter (up to one extra second).

    @return: a callable from the number of failed attempts so far (0 for the
        first retry) to a delay in seconds.
    """
    # (imported here, when something is to be retried: twisted.application
    # brings automat and ClientService, some 30 ms of every start-up)
    from twisted.application.internet import backoffPolicy

    return backoffPolicy(
        initialDelay=options.backoff_initial,
        maxDelay=options.backoff_max,
        factor=options.backoff_factor,
    )


def reconnect_policy_for(
    options: ConnectOptions, other_failures: Callable[[], int] | None = None
) -> Callable[[int], float]:
    """
    L{policy_for} as C{ClientService} (C{--reconnect}) asks for it: with the
    number of failed attempts counted from 1, and a lost connection counted
    as one, so the policy is shifted by one: the first wait, after a failure
    or a lost connection, is C{--backoff-initial}, as with C{--retry}.

    @param other_failures: returns failures in a row that C{ClientService}
        cannot see (a tunnel's second leg, whose failures end a connection
        of the first leg that was made), which grow the wait too.
    @return: a callable from C{ClientService}'s count of failed attempts to
        a delay in seconds.
    """
    policy = policy_for(options)

    def retry_policy(failed_attempts: int) -> float:
        # (a failure C{ClientService} cannot see ends a connection it made,
        # which it counts already as one failed attempt)
        extra = max(0, other_failures() - 1) if other_failures is not None else 0
        return policy(max(0, failed_attempts - 1) + extra)

    return retry_policy


def connect_with_timeout(
    reactor: Any, endpoint: Any, factory: Any, timeout: float | None
) -> Deferred[Any]:
    """
    One connection attempt, cancelled after C{timeout} seconds.

    @param endpoint: an C{IStreamClientEndpoint} provider.
    @param timeout: seconds, or L{None} for the endpoint's own limit.
    @return: the attempt's L{Deferred}; when the timeout cancels it, it
        errbacks with L{TimedOut} instead of C{CancelledError}.
    """
    attempt = endpoint.connect(factory)
    if timeout is None:
        return attempt
    expired = []

    def expire() -> None:
        expired.append(True)
        attempt.cancel()

    timer = reactor.callLater(timeout, expire)

    def done(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        if expired and isinstance(result, Failure) and result.check(
            CancelledError, ConnectingCancelledError
        ):
            return Failure(TimedOut(timeout))
        return result

    return attempt.addBoth(done)


class Dial:
    """
    Connect to an endpoint, retrying after failures.

    @ivar result: a L{Deferred} that fires with the connected protocol, or
        errbacks with the last failure once C{options.retry} retries have
        failed.  Cancelling it stops the attempt in progress and any retry.
    """

    def __init__(
        self,
        reactor: Any,
        endpoint: Any,
        factory: Any,
        options: ConnectOptions,
        on_retry: Callable[[Failure, float, int], None] | None = None,
    ) -> None:
        """
        @param on_retry: called as C{on_retry(failure, delay, attempt)} before
            each retry is scheduled; C{attempt} counts from 2.
        """
        self._reactor = reactor
        self._endpoint = endpoint
        self._factory = factory
        self._options = options
        self._policy: Callable[[int], float] | None = None  # made at the first retry
        self._on_retry = on_retry
        self._failures = 0
        self._current: Deferred[Any] | None = None
        self._delayed: Any = None
        self._cancelled = False
        self.result: Deferred[Any] = Deferred(self._cancel)
        self._attempt()

    def _attempt(self) -> None:
        self._delayed = None
        #: when the current attempt began (reactor seconds)
        self.attempt_started = self._reactor.seconds()
        attempt = connect_with_timeout(
            self._reactor, self._endpoint, self._factory, self._options.connect_timeout
        )
        self._current = attempt
        attempt.addCallbacks(self._connected, self._failed)

    def _connected(self, protocol: Any) -> None:
        self._current = None
        if not self.result.called:
            self.result.callback(protocol)

    def _failed(self, failure: Failure) -> None:
        self._current = None
        if self._cancelled or self.result.called:
            return
        self._failures += 1
        if self._failures > self._options.retry:
            self.result.errback(failure)
            return
        if self._policy is None:
            self._policy = policy_for(self._options)
        delay = self._policy(self._failures - 1)
        if self._on_retry is not None:
            self._on_retry(failure, delay, self._failures + 1)
        self._delayed = self._reactor.callLater(delay, self._attempt)

    def _cancel(self, result: Deferred[Any]) -> None:
        self._cancelled = True
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self._delayed = None
        if self._current is not None:
            try:
                self._current.cancel()
            except Exception:
                # (Twisted's connector raises NotConnectingError when the
                # connection was made a moment ago; it is then closed by
                # whoever cancelled)
                pass
