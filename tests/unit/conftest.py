"""
Fixtures shared by the unit tests.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from epcat import fused, splice

@pytest.fixture(params=sorted(splice.MOVERS))
def mover(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """
    Run the test with each of the fast path's movers (L{splice.MOVER}):
    copying through a buffer, and splice(2) through a pipe, with an empty
    pool of the mover's own pipes.
    """
    name = request.param
    fill, drain, read_out, close, make = splice.MOVERS[name]
    pool: deque[Any] = deque()
    for module in (splice, fused):
        monkeypatch.setattr(module, "_fill", fill)
        monkeypatch.setattr(module, "_drain", drain)
        monkeypatch.setattr(module, "_close_pipe", close)
        monkeypatch.setattr(module, "_make_pipe", make)
        monkeypatch.setattr(module, "_pool", pool)
        # (the message path's own copy of the choice: see _Side.doRead)
        monkeypatch.setattr(module, "_COPY", name == "copy")
    monkeypatch.setattr(splice, "_read_out", read_out)
    monkeypatch.setattr(splice, "MOVER", name)
    return name
