# -*- test-case-name: tests.unit.test_reactor -*-
"""
epcat's reactor: Twisted's epoll reactor, dispatching each readiness event
without a logging context of its own.

C{EPollReactor.doPoll} wraps every event in C{log.callWithLogger}, which
asks the descriptor for its C{logPrefix()}, pushes a context dictionary for
Twisted's legacy logging (C{twisted.python.context}) and pops it again:
about 2 us of Python per event, a tenth of what a kept-alive request costs
epcat.  epcat shows Twisted's log messages only at C{-vv}, where a message
logged from inside a handler now has the system C{"-"} rather than the
descriptor's prefix; an exception escaping a handler is still logged
(C{log.err}) and the descriptor is disconnected, as Twisted does.  Everything
else (registration, the main loop, timers, signals, threads) is Twisted's.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import epollreactor
from twisted.python import log


class EPollReactor(epollreactor.EPollReactor):
    """
    Twisted's C{EPollReactor} with a leaner C{doPoll}.
    """

    def doPoll(self, timeout: float | None) -> None:
        """
        Wait for events (at most C{timeout} seconds; L{None}: until one
        comes) and dispatch each to its descriptor's C{doRead}/C{doWrite}.
        """
        if timeout is None:
            timeout = -1
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                dispatch(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                # (what callWithLogger does; _doReadOrWrite has already
                # disconnected a descriptor whose handler raised)
                log.err(None, "Unhandled error in a reactor event handler")

    doIteration = doPoll


def install() -> Any:
    """
    Install epcat's reactor, unless a reactor is installed already (then
    that one is used, as it is).

    @return: the installed reactor.
    """
    import sys

    if "twisted.internet.reactor" in sys.modules:
        from twisted.internet import reactor

        return reactor
    from twisted.internet.main import installReactor

    reactor = EPollReactor()
    installReactor(reactor)
    return reactor
