# -*- test-case-name: tests.unit.test_reactor -*-
"""
epcat's reactor: Twisted's epoll reactor, dispatching each readiness event
without a logging context of its own.

C{EPollReactor.doPoll} wraps every event in C{log.callWithLogger}, which
asks the descriptor for its C{logPrefix()}, pushes a context dictionary for
Twisted's legacy logging (C{twisted.python.context}) and pops it again:
about 2 us of Python per event, a tenth of what a kept-alive request costs
epcat.  The plain events (readable, or writable, with no error flag; a
hang-up only along with readable, when Twisted too just reads) also go
straight to C{doRead}/C{doWrite}, with the same handling of what they return
or raise as C{_PollLikeMixin._doReadOrWrite}, which still handles every
other event.  epcat shows Twisted's log messages only at C{-vv}, where a
message logged from inside a handler now has the system C{"-"} rather than
the descriptor's prefix; an exception escaping a handler is still logged
(C{log.err}) and the descriptor is disconnected, as Twisted does.  The main
loop skips the timed-call bookkeeping in rounds that have none to do, and
in those rounds waits and hands readable events to C{doRead} itself.
Everything else (registration, timers, signals, threads) is Twisted's.
"""

from __future__ import annotations

import select
import sys
from typing import Any

from twisted.internet import epollreactor
from twisted.logger import Logger
from twisted.python import log

_log = Logger()


_IN = getattr(select, "EPOLLIN", 1)
_OUT = getattr(select, "EPOLLOUT", 4)
#: readable and hung up: the last event of most connections (the peer's
#: FIN after ours); _doReadOrWrite only reads then, as for plain EPOLLIN
_IN_HUP = _IN | getattr(select, "EPOLLHUP", 16)
#: the events doPoll hands straight to doRead/doWrite
_PLAIN = frozenset((_IN, _OUT, _IN_HUP))


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
        except InterruptedError:
            return
        selectables = self._selectables
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                self._dispatch(selectable, fd, event)

    def _dispatch(self, selectable: Any, fd: int, event: int) -> None:
        """
        Hand one event to its descriptor.
        """
        try:
            if event in _PLAIN:
                # The common events, readable or writable and nothing else
                # (no error; a hang-up only with data or EOF to read),
                # handled as _doReadOrWrite handles them, without its checks
                # for the rest.
                in_read = event != _OUT
                try:
                    why = selectable.doRead() if in_read else selectable.doWrite()
                except BaseException:
                    why = sys.exc_info()[1]
                    log.err()
                if why:
                    self._disconnectSelectable(selectable, why, in_read)
            else:
                self._doReadOrWrite(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException:
            # (what callWithLogger does; a descriptor whose handler raised
            # has already been disconnected)
            log.err(None, "Unhandled error in a reactor event handler")

    doIteration = doPoll

    def forget(self, selectable: Any) -> None:
        """
        Stop watching C{selectable}, whose descriptor the caller is about to
        close, without an C{epoll_ctl(EPOLL_CTL_DEL)}: closing the last
        descriptor of an open file removes it from every epoll set
        (epoll(7), "Will closing a file descriptor cause it to be removed
        from all epoll interest lists?").  Only for descriptors never
        duplicated (epcat's sockets are close-on-exec and not dup()ed), and
        the descriptor must be closed before the next poll.

        @param selectable: a reader and/or writer added with C{addReader} or
            C{addWriter}.
        """
        fd = selectable.fileno()
        if self._selectables.get(fd) is selectable:
            del self._selectables[fd]
            self._reads.discard(fd)
            self._writes.discard(fd)

    def swap(self, old: Any, new: Any) -> bool:
        """
        Give the readiness of C{old}'s descriptor to C{new} from now on,
        keeping its interest (read, write) as it is, without a system call:
        epoll watches the descriptor, not the object.  Later C{addReader},
        C{removeWriter} etc. are to be made with C{new}.

        @param old: a reader and/or writer added with C{addReader} or
            C{addWriter}.
        @param new: an C{IReadWriteDescriptor} for the same descriptor.
        @return: whether C{old} was registered (else nothing changed).
        """
        fd = old.fileno()
        if self._selectables.get(fd) is not old:
            return False
        self._selectables[fd] = new
        return True

    def mainLoop(self) -> None:
        """
        Twisted's main loop, with the rounds that have no timed-call
        bookkeeping to do (no timed call pending or new, no call from a
        thread, no stop just requested) written out in the loop itself:
        C{epoll_wait}, and each plain readable event straight to its
        descriptor's C{doRead}, with no C{runUntilCurrent}, C{timeout},
        C{doIteration} or dispatch frame in between.  (A kept-alive request
        is two such rounds: this is a quarter of the Python instructions
        epcat spends on one, counted with callgrind.)  Other rounds and
        other events go through C{doIteration} and L{_dispatch}, as before.
        An exception escaping a round is logged and the loop goes on, as in
        Twisted's.
        """
        selectables = self._selectables
        # (Twisted's EPollReactor makes its poller once, in __init__)
        poll = self._poller.poll
        plain_in = _IN
        while self._started:
            try:
                while self._started:
                    if (
                        self._pendingTimedCalls
                        or self._newTimedCalls
                        or self.threadCallQueue
                        or self._justStopped
                        or not self.running
                    ):
                        self.runUntilCurrent()
                        t2 = self.timeout()
                        t = self.running and t2
                        self.doIteration(t)
                        continue
                    # (what doIteration(None) does: wait with no limit)
                    try:
                        events = poll(None, len(selectables))
                    except InterruptedError:
                        continue
                    for fd, event in events:
                        try:
                            selectable = selectables[fd]
                        except KeyError:
                            continue  # (an earlier handler of this round removed it)
                        if event != plain_in:
                            self._dispatch(selectable, fd, event)
                            continue
                        try:
                            try:
                                why = selectable.doRead()
                            except BaseException:
                                why = sys.exc_info()[1]
                                log.err()
                            if why:
                                self._disconnectSelectable(selectable, why, True)
                        except KeyboardInterrupt:
                            raise
                        except BaseException:
                            log.err(None, "Unhandled error in a reactor event handler")
            except BaseException:
                _log.failure("Unexpected error in main loop")
        _log.info("Main loop terminated.")


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
