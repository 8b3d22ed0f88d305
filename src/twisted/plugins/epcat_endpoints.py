"""
Twisted plugin dropin: epcat's endpoint types, for C{clientFromString} /
C{serverFromString} in any program: C{tlsx:} client and server
(L{epcat.tlsx}); C{stdio:}, C{exec:} and C{hostname:} clients
(L{epcat.plugins}).

This directory (and C{src/twisted}) must never hold an C{__init__.py}: Twisted
finds C{twisted/plugins} directories on C{sys.path} itself.
"""

from epcat.plugins import ExecClientParser, HostnameClientParser, StdioClientParser
from epcat.tlsx import TLSXClientParser, TLSXServerParser

tlsxClient = TLSXClientParser()
tlsxServer = TLSXServerParser()
stdioClient = StdioClientParser()
execClient = ExecClientParser()
hostnameClient = HostnameClientParser()
