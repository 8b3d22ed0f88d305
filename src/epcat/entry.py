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
    if args in (["--version"], ["-V"]):
        from epcat import __version__

        sys.stdout.write(f"epcat {__version__}\n")
        sys.stdout.flush()
        sys.exit(0)
    from epcat.cli import main as cli_main

    cli_main(argv)
