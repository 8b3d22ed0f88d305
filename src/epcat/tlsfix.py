# -*- test-case-name: tests.test_tlsfix -*-
"""
A narrow fix for Twisted's ALPN selection on TLS servers.

Twisted (seen in 24.x to 26.10) sets every server context up with
C{twisted.internet._sslverify.setupForALPN}, whose select callback returns
C{b""} when the client's ALPN list and the server's (usually empty) list do
not overlap.  pyOpenSSL expects C{OpenSSL.SSL.NO_OVERLAPPING_PROTOCOLS} there
(pyOpenSSL's C{Context.set_alpn_select_callback} documentation); C{b""} makes
OpenSSL abort the handshake with an internal_error alert, so every client that
offers ALPN (curl, browsers) fails against Twisted's C{ssl:} server endpoint:
C{curl: (35) ... tlsv1 alert internal error}.

L{install} replaces that one module-level function, in this process only, with
one that keeps Twisted's selection logic (via C{protosFromProtocol}) and
answers "no overlap" the way pyOpenSSL documents (RFC 7301 section 3.2 lets a
server that does not support any offered protocol simply not answer ALPN,
which is what pyOpenSSL does with that sentinel).
"""

from __future__ import annotations

from typing import Any
from collections.abc import Sequence

_installed = False


def select_protocol(
    offered: Sequence[bytes], acceptable: Sequence[bytes]
) -> bytes | Any:
    """
    Pick the server's most preferred protocol that the client offered.

    @param offered: the client's ALPN list.
    @param acceptable: the server's list, most preferred first.
    @return: the chosen protocol, or C{OpenSSL.SSL.NO_OVERLAPPING_PROTOCOLS}.
    """
    from OpenSSL.SSL import NO_OVERLAPPING_PROTOCOLS

    overlap = set(offered)
    for protocol in acceptable:
        if protocol in overlap:
            return protocol
    return NO_OVERLAPPING_PROTOCOLS


def _setup_for_alpn(context: Any, acceptable_protocols: Sequence[bytes]) -> None:
    from twisted.internet import _sslverify

    def alpn_select(connection: Any, offered: Sequence[bytes]) -> Any:
        tls_protocol = connection.get_app_data()
        acceptable = _sslverify.protosFromProtocol(tls_protocol, acceptable_protocols)
        return select_protocol(offered, acceptable)

    context.set_alpn_select_callback(alpn_select)


def install() -> bool:
    """
    Replace Twisted's C{setupForALPN} with L{_setup_for_alpn} for every TLS
    context created afterwards in this process.  Idempotent.

    @return: C{True} if the fix is in place, C{False} if this Twisted has no
        such function (nothing to fix).
    """
    global _installed
    if _installed:
        return True
    from twisted.internet import _sslverify

    if not hasattr(_sslverify, "setupForALPN") or not hasattr(_sslverify, "protosFromProtocol"):
        return False
    _sslverify.setupForALPN = _setup_for_alpn
    _installed = True
    return True
