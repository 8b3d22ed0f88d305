# -*- test-case-name: tests.test_cli -*-
"""
What one run of epcat is to do, checked, with no Twisted in sight.

The CLI turns arguments into a L{Plan}; L{epcat.run} carries it out.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from epcat.status import UsageError

#: the modes, by the subcommands given
RELAY = "relay"  # listen SERVER connect CLIENT
CONNECT = "connect"  # connect CLIENT, with stdin/stdout
LISTEN = "listen"  # listen SERVER, first connection with stdin/stdout
TUNNEL = "tunnel"  # connect A connect B


@dataclasses.dataclass(frozen=True)
class Plan:
    """
    A checked description of one run.

    @ivar mode: L{RELAY}, L{CONNECT}, L{LISTEN} or L{TUNNEL}.
    @ivar listen: the server endpoint description, if any.
    @ivar connect: the client endpoint descriptions, in order (none, one or
        two).
    @ivar verbosity: -1 (-q) to 2 (-vv).
    @ivar log_format: C{"text"} or C{"json"}.
    """

    mode: str
    listen: str | None = None
    connect: tuple[str, ...] = ()
    verbosity: int = 0
    log_format: str = "text"


def make_plan(
    steps: Sequence[tuple[str, str]], verbosity: int = 0, log_format: str = "text"
) -> Plan:
    """
    Check the order of C{listen}/C{connect} subcommands and build a L{Plan}.

    @param steps: (subcommand, endpoint description) in command-line order.
    @raise UsageError: for any order other than C{listen}, C{connect},
        C{listen ... connect ...} and C{connect ... connect ...}.
    """
    names = [name for name, _ in steps]
    descriptions = [description for _, description in steps]
    common = dict(verbosity=verbosity, log_format=log_format)
    if names == ["listen"]:
        return Plan(LISTEN, listen=descriptions[0], **common)
    if names == ["connect"]:
        return Plan(CONNECT, connect=(descriptions[0],), **common)
    if names == ["listen", "connect"]:
        return Plan(RELAY, listen=descriptions[0], connect=(descriptions[1],), **common)
    if names == ["connect", "connect"]:
        return Plan(TUNNEL, connect=tuple(descriptions), **common)
    if not names:
        raise UsageError("nothing to do: give 'listen SERVER' and/or 'connect CLIENT' (see epcat --help)")
    raise UsageError(
        f"cannot run {' '.join(names)}: use 'listen SERVER [connect CLIENT]', "
        "'connect CLIENT' or 'connect CLIENT_A connect CLIENT_B'"
    )
