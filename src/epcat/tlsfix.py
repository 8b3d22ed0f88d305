# -*- test-case-name: tests.unit.test_tlsfix -*-
"""
Three narrow fixes to Twisted's TLS, installed together by L{install}, in
this process only: ALPN selection on TLS servers, half-close on a peer's
close_notify, and failing closed on a certificate service-identity cannot
check.

B{ALPN.}  Twisted (seen in 24.x to 26.10) sets every server context up with
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

B{A peer's close_notify.}  Twisted's C{TLSMemoryBIOProtocol} takes the peer's
close_notify (pyOpenSSL's C{ZeroReturnError}) as the end of the whole
connection: it answers with its own close_notify and closes TCP, so nothing
can be sent back afterwards.  TLS 1.3 makes close_notify the end of the
sender's direction only: "Each party MUST send a close_notify alert before
closing its write side of the connection" (RFC 8446 section 6.1), and peers
that half-close over TLS (Go's C{tls.Conn.CloseWrite}, ghostunnel, epcat's
own C{connect tls:} when its input ends) go on reading the answer.  After
L{install}, a close_notify to a wrapped protocol that provides
C{IHalfCloseableProtocol} is its C{readConnectionLost}; the connection stays
open for writing, and closing it later (C{loseConnection}) sends epcat's own
close_notify as before.  A TCP FIN after the close_notify is then a half-close
too, on servers and on endpoint clients (through Twisted's
C{_WrappingProtocol}).  Protocols that do not half-close see what they saw before.

B{Certificates without subjectAltName.}  The verify callback of Twisted's
C{tls:} client (C{_sslverify._verifyCB}, Twisted 26.10) catches only
service-identity's C{VerificationError}.  A certificate from a trusted CA with
no subjectAltName makes service-identity raise C{CertificateError} instead,
which Twisted logs as a traceback ("while verifying certificate") while
OpenSSL's verdict on the chain stands: the certificate is accepted for any
name.  epcat's own L{epcat.tlsinfo.check_identity} catches that after the
handshake for names sent as SNI, but not for IP addresses (no SNI).  After
L{install}, Twisted's callback sees a C{CertificateError} as the
C{VerificationError} it handles: the handshake fails with the reason, exit 60,
and no traceback.  (epcat's C{tlsx:} has a fail-closed callback of its own,
L{epcat.tlsx.verify_callback}.)
"""

from __future__ import annotations

from typing import Any
from collections.abc import Sequence

_installed = False

#: Twisted's own C{TLSMemoryBIOProtocol._flushReceiveBIO}, once replaced
_twisted_flush_receive_bio: Any = None


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


def _read_closed_by_close_notify(tls: Any) -> bool:
    """
    The peer's close_notify has arrived on C{tls} (a C{TLSMemoryBIOProtocol}):
    tell a half-closeable wrapped protocol its input has ended, once.

    @return: C{True} if the protocol half-closes (the connection stays open
        for writing), C{False} if Twisted should end the connection as usual.
    """
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from zope.interface import alsoProvides

    if tls.__dict__.get("_epcat_read_closed"):
        return True  # (told already: more records after the close_notify)
    if tls.disconnecting:
        # The answer to epcat's own close_notify, sent by loseConnection:
        # the shutdown is complete, and Twisted closes TCP (without this the
        # connection waited for a TCP FIN it had stopped reading for).
        return False
    half = IHalfCloseableProtocol(tls.wrappedProtocol, None)
    if half is None:
        return False
    tls._epcat_read_closed = True
    # A TCP FIN after the close_notify ends nothing more: the TCP transport
    # asks its protocol (this one, or the endpoint's _WrappingProtocol around
    # it on a client, which copied this one's interfaces when it was made)
    # whether it half-closes when it reads EOF.
    alsoProvides(tls, IHalfCloseableProtocol)
    tls.readConnectionLost = _nothing_more_to_read
    outer = getattr(tls.transport, "protocol", None)
    if outer is not None and outer is not tls and getattr(outer, "_wrappedProtocol", None) is tls:
        alsoProvides(outer, IHalfCloseableProtocol)
    half.readConnectionLost()
    return True


def _nothing_more_to_read() -> None:
    """
    TCP EOF after a close_notify already passed on as C{readConnectionLost}.
    """


def _flush_receive_bio(self: Any) -> None:
    """
    Twisted's C{TLSMemoryBIOProtocol._flushReceiveBIO} (Twisted 26.10), with
    one change: a close_notify (C{ZeroReturnError}) goes to
    L{_read_closed_by_close_notify} first, and only a protocol that does not
    half-close gets Twisted's answer (close_notify back, then TCP closed).
    """
    from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
    from twisted.protocols.policies import ProtocolWrapper
    from twisted.python.failure import Failure

    while not self._lostTLSConnection:
        try:
            data = self._tlsConnection.recv(2**15)
        except WantReadError:
            break
        except ZeroReturnError:
            if _read_closed_by_close_notify(self):
                break
            self._shutdownTLS()
            self._tlsShutdownFinished(None)
        except Error:
            self._tlsShutdownFinished(Failure())
        else:
            if not self._aborted:
                ProtocolWrapper.dataReceived(self, data)
    self._flushSendBIO()


def _certificate_error_as_verification_error(verify: Any) -> Any:
    """
    Wrap service-identity's C{verify_service_identity} so that a
    C{CertificateError} is raised as L{UncheckableCertificate}.
    """
    from service_identity import CertificateError

    def verify_service_identity(*args: Any, **kwargs: Any) -> Any:
        try:
            return verify(*args, **kwargs)
        except CertificateError as e:
            raise UncheckableCertificate(e) from e

    verify_service_identity.epcat_wrapped = verify  # type: ignore[attr-defined]
    return verify_service_identity


def _uncheckable_certificate_class() -> Any:
    from service_identity import VerificationError

    class UncheckableCertificate(VerificationError):
        """
        service-identity's C{CertificateError} (e.g. no subjectAltName) as a
        C{VerificationError}, which Twisted's verify callback handles by
        failing the handshake; C{str()} is the original message.
        """

        #: (L{epcat.status.classify}: a certificate verification failure)
        tls_verification = True

        def __init__(self, cause: Exception) -> None:
            super().__init__(errors=[])
            self.cause = cause

        def __str__(self) -> str:
            return str(self.cause)

    return UncheckableCertificate


def install_fail_closed() -> None:
    """
    Make Twisted's C{tls:} verify callback fail on a certificate that
    service-identity cannot check (see the module docstring).  Idempotent.
    """
    global UncheckableCertificate
    from twisted.internet import _sslverify

    verify = getattr(_sslverify, "verify_service_identity", None)
    if verify is None or hasattr(verify, "epcat_wrapped"):
        return
    if UncheckableCertificate is None:
        UncheckableCertificate = _uncheckable_certificate_class()
    _sslverify.verify_service_identity = _certificate_error_as_verification_error(verify)


#: the exception L{install_fail_closed} raises for a C{CertificateError}
#: (a C{service_identity.VerificationError}; made on first use, so that
#: importing this module does not import service-identity)
UncheckableCertificate: Any = None


def install() -> bool:
    """
    Replace Twisted's C{setupForALPN} with L{_setup_for_alpn} for every TLS
    context created afterwards in this process, make a peer's close_notify
    a half-close for half-closeable protocols (L{install_half_close}), and
    make Twisted's C{tls:} client fail closed (L{install_fail_closed}).
    Idempotent.

    @return: C{True} if the ALPN fix is in place, C{False} if this Twisted
        has no C{setupForALPN} (nothing to fix there).
    """
    global _installed
    install_half_close()
    install_fail_closed()
    if _installed:
        return True
    from twisted.internet import _sslverify

    if not hasattr(_sslverify, "setupForALPN") or not hasattr(_sslverify, "protosFromProtocol"):
        return False
    _sslverify.setupForALPN = _setup_for_alpn
    _installed = True
    return True


def install_half_close() -> None:
    """
    Make a peer's close_notify a half-close (L{_flush_receive_bio}) for every
    C{TLSMemoryBIOProtocol} in this process.  Idempotent.
    """
    global _twisted_flush_receive_bio
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    if TLSMemoryBIOProtocol._flushReceiveBIO is _flush_receive_bio:
        return
    _twisted_flush_receive_bio = TLSMemoryBIOProtocol._flushReceiveBIO
    TLSMemoryBIOProtocol._flushReceiveBIO = _flush_receive_bio
