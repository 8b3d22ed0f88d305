"""
epcat: pipe bytes between any two Twisted endpoints.

Only the version lives here, so that C{epcat --version} and C{--help} stay
fast: nothing in this package imports Twisted at import time except the modules
that run the relay.
"""

__version__ = "0.1.0"
