"""
The C{epcat} console script and C{python -m epcat}.

C{epcat --version} (or C{-V}) alone is answered here, before click or
anything else is imported: it is what scripts and package managers run to
probe for the tool, so it should cost no more than starting Python.  Every
other command line goes to L{epcat.cli.main}, which prints the same line for
C{--version} among other options.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run epcat with C{argv} (default: C{sys.argv[1:]}); exits with its status.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    fill_closed_standard_descriptors()
    if args in (["--version"], ["-V"]):
        from epcat import __version__

        sys.stdout.write(f"epcat {__version__}\n")
        sys.stdout.flush()
        sys.exit(0)
    from epcat.cli import main as cli_main

    cli_main(argv)


def fill_closed_standard_descriptors() -> list[int]:
    """
    Open C{/dev/null} on any of descriptors 0, 1 and 2 that the caller
    closed (C{epcat ... <&-} or C{>&-}), as daemons do: otherwise the first
    socket epcat opens takes that number, and stdin/stdout would be a
    connection (Twisted's C{StandardIO} on a closed descriptor fails with
    C{EBADF} in a loop instead).  A closed stdin then reads as empty, a
    closed stdout discards what comes back, as C{</dev/null} and
    C{>/dev/null} would.

    @return: the descriptors that were closed.
    """
    import os

    filled = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # (the lowest free number: fd itself, normally)
                os.dup2(null, fd)
                os.close(null)
            filled.append(fd)
    if filled:
        # (sys.stdin/stdout/stderr were made None for a closed descriptor)
        for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
            if fd in filled and getattr(sys, name) is None:
                setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115
    return filled
