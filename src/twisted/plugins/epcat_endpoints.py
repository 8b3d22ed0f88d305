"""
Twisted plugin dropin: epcat's C{tlsx:} client and server endpoint types
(L{epcat.tlsx}), for C{clientFromString} / C{serverFromString} in any program.

This directory (and C{src/twisted}) must never hold an C{__init__.py}: Twisted
finds C{twisted/plugins} directories on C{sys.path} itself.
"""

from epcat.tlsx import TLSXClientParser, TLSXServerParser

tlsxClient = TLSXClientParser()
tlsxServer = TLSXServerParser()
