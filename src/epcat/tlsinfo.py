# -*- test-case-name: tests.unit.test_tlsinfo -*-
"""
What a TLS connection negotiated and why verification failed, in words a
person can act on.

Everything goes through pyOpenSSL's public API on the connection that
Twisted's TLS transport exposes with C{getHandle()}.  When a handshake fails
verification, the peer's chain is verified again against the connection's
own trust store with C{X509StoreContext}, which gives OpenSSL's reason
(C{X509_V_ERR_*}, see openssl-verify(1) "DIAGNOSTICS") without touching the
verify callback Twisted installed (that callback also checks the host name).
A server sees no chain after a failed verification (OpenSSL keeps none in
the session), so a C{tlsx:} server's verify callback notes OpenSSL's error
as it happens (L{note_verify_error}).
"""

from __future__ import annotations

import datetime
import weakref
from typing import Any
from collections.abc import Callable

#: OpenSSL X509_V_ERR_* codes (include/openssl/x509_vfy.h) and what to say.
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    22: "certificate chain too long",
    23: "certificate revoked",
    24: "invalid CA certificate",
    25: "path length constraint exceeded",
    26: "unsupported certificate purpose",
    27: "certificate not trusted",
    28: "certificate rejected",
    62: "hostname mismatch",
}

#: X509_V_ERR_* codes that mean the issuer is not among the trusted CAs.
_UNKNOWN_ISSUER = frozenset({20, 21})

#: The first verification error OpenSSL reported on a connection, as
#: (C{X509_V_ERR_*} number, the pyOpenSSL certificate it concerned), noted
#: by a verify callback (L{note_verify_error}); read by
#: L{VerifyRecord.remember_peer}.
_noted_errors: weakref.WeakKeyDictionary[Any, tuple[int, Any]] = weakref.WeakKeyDictionary()


def note_verify_error(connection: Any, certificate: Any, errno: int) -> None:
    """
    Note the verification error OpenSSL reported on a server's C{connection}
    about the client's certificate, from the server's verify callback (see
    L{epcat.tlsx.server_verify_callback}).  Only the first is kept: it is
    the one that failed the handshake.

    @param connection: the C{OpenSSL.SSL.Connection}.
    @param certificate: the C{OpenSSL.crypto.X509} the error concerns.
    @param errno: the C{X509_V_ERR_*} number.
    """
    _noted_errors.setdefault(connection, (errno, certificate))


class VerifyRecord:
    """
    Why verification of one connection's peer failed, worked out when the
    connection ended (L{remember_peer}).

    @ivar errno: the C{X509_V_ERR_*} number, or L{None}.
    @ivar reason: OpenSSL's words for it.
    @ivar certificate: the C{cryptography} certificate it concerned.
    @ivar peer_certificate: the peer's own certificate, if it sent one.
    @ivar client_certificate: the failure was epcat's check, as a server, of
        a client's certificate (C{clientCA=}) rather than of a server's.
    """

    def __init__(self) -> None:
        self.errno: int | None = None
        self.reason: str | None = None
        self.certificate: Any = None
        self.peer_certificate: Any = None
        self.client_certificate = False
        #: why the TCP connection under the TLS one ended (a Failure)
        self.tcp_reason: Any = None
        #: the error pending on the TCP socket when it was reported closed
        #: cleanly (C{errno}, 0 for none): a reset seen as a FIN
        self.tcp_error = 0

    @property
    def reset(self) -> bool:
        """
        Did the TCP connection underneath end with an error (a reset) rather
        than a FIN?
        """
        from twisted.internet.error import ConnectionDone

        if self.tcp_error:
            return True
        return self.tcp_reason is not None and not self.tcp_reason.check(ConnectionDone)

    def remember_peer(self, transport: Any) -> None:
        """
        Keep the peer's certificate, and verify its chain again against the
        connection's trust store to learn why it failed, while the connection
        still has them (call from C{connectionLost}, before Twisted drops the
        TLS connection).
        """
        try:
            connection = transport.getHandle()
            noted = _noted_errors.pop(connection, None)
        except Exception:
            return
        if noted is not None:
            # (a server: what its verify callback saw; no chain is left)
            self.errno, certificate = noted
            self.reason = _VERIFY_ERRORS.get(self.errno)
            self.client_certificate = True
            try:
                self.certificate = certificate.to_cryptography()
            except Exception:
                self.certificate = None
            return
        try:
            chain = connection.get_peer_cert_chain() or []
            # (after a failed verification OpenSSL keeps the chain the peer
            # sent, leaf first, but no longer a "peer certificate")
            leaf = connection.get_peer_certificate() or (chain[0] if chain else None)
            store = connection.get_context().get_cert_store()
        except Exception:
            return
        if leaf is None:
            return
        self.peer_certificate = leaf.to_cryptography()
        if store is None:
            return
        from OpenSSL.crypto import X509StoreContext, X509StoreContextError

        intermediates = [c for c in chain if c.digest("sha256") != leaf.digest("sha256")]
        try:
            X509StoreContext(store, leaf, intermediates).verify_certificate()
        except X509StoreContextError as e:
            errors = e.errors if hasattr(e, "errors") else e.args[0]
            self.errno, self.reason = errors[0], errors[2]
            try:
                self.certificate = e.certificate.to_cryptography()
            except Exception:
                self.certificate = None
        except Exception:
            pass


def watch(transport: Any) -> VerifyRecord | None:
    """
    A L{VerifyRecord} for a TLS transport.  (Session secrets for
    C{--keylog} are logged by the contexts epcat builds itself,
    L{epcat.tlsx}: pyOpenSSL forbids changing a context once it has made a
    connection.)

    @param transport: a C{TLSMemoryBIOProtocol} (anything with C{getHandle()}
        returning an C{OpenSSL.SSL.Connection}).
    @return: the L{VerifyRecord}, or L{None} if C{transport} is not TLS.
    """
    if getattr(transport, "getHandle", None) is None:
        return None
    record = VerifyRecord()
    # Twisted's TLS layer reports a reset and a close without close_notify
    # alike (ConnectionLost); the TCP connection underneath still tells them
    # apart (ConnectionLost for a reset, ConnectionDone for a FIN), so note
    # the reason it gives to the protocol above it.
    tcp = getattr(transport, "transport", None)
    protocol = getattr(tcp, "protocol", None)
    original = getattr(protocol, "connectionLost", None)
    if original is not None:

        def connectionLost(reason: Any) -> Any:
            record.tcp_reason = reason
            return original(reason)

        protocol.connectionLost = connectionLost
    # Twisted reads a reset that epoll reports before the receive side is
    # marked shut as a FIN (see epcat.relay.pending_socket_error); the reset
    # is still pending on the socket when the TCP transport is told, and the
    # socket is closed before its protocol is.
    tcp_lost = getattr(tcp, "connectionLost", None)
    if tcp_lost is not None and getattr(tcp, "socket", None) is not None:
        from twisted.internet.error import ConnectionDone

        from epcat.relay import pending_socket_error

        def tcpConnectionLost(reason: Any) -> Any:
            if reason.check(ConnectionDone):
                record.tcp_error = pending_socket_error(tcp)
            del tcp.connectionLost  # (no cycle left through this closure)
            return tcp_lost(reason)

        try:
            tcp.connectionLost = tcpConnectionLost
        except AttributeError:
            pass  # (a transport with slots: nothing more to learn from it)
    return record


def _decode_name(name: bytes) -> str:
    try:
        return name.decode("idna")
    except UnicodeError:
        return name.decode("ascii", "replace")


def check_identity(transport: Any) -> BaseException | None:
    """
    After a verified client handshake, check the server's certificate against
    the name epcat sent (SNI), with service-identity.

    Twisted's C{tls:} client already does this, but treats a certificate with
    no subjectAltName (service-identity's C{CertificateError}) as a pass: it
    only logs the error (seen in Twisted 26.10).  This closes that hole.

    @return: the exception to fail the connection with, or L{None}.
    """
    from OpenSSL.SSL import VERIFY_PEER

    try:
        connection = transport.getHandle()
        if not connection.get_verify_mode() & VERIFY_PEER:
            return None
        servername = connection.get_servername()
    except Exception:
        return None
    if not servername:
        return None
    from service_identity import CertificateError, VerificationError
    from service_identity.pyopenssl import verify_hostname

    try:
        verify_hostname(connection, _decode_name(servername))
    except (CertificateError, VerificationError) as e:
        return e
    return None


def _name(name: Any) -> str:
    try:
        return name.rfc4514_string()
    except Exception:
        return str(name)


def _subject_alt_names(certificate: Any) -> list[str]:
    """
    The subjectAltNames, each with the prefix C{openssl x509 -text} gives
    it (C{DNS:}, C{IP Address:} shortened to C{IP:}, C{email:}, C{URI:},
    C{DirName:}, C{Registered ID:}, C{othername:}).
    """
    from cryptography import x509

    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    # (each kind of name: its prefix as openssl prints it, and its text)
    kinds: tuple[tuple[type, str, Callable[[Any], str]], ...] = (
        (x509.DNSName, "DNS:", lambda name: name.value),
        (x509.IPAddress, "IP:", lambda name: str(name.value)),
        (x509.RFC822Name, "email:", lambda name: name.value),
        (x509.UniformResourceIdentifier, "URI:", lambda name: name.value),
        (x509.DirectoryName, "DirName:", lambda name: _name(name.value)),
        (x509.RegisteredID, "Registered ID:", lambda name: name.value.dotted_string),
        (x509.OtherName, "othername:", lambda name: name.type_id.dotted_string),
    )
    names = []
    for general_name in extension.value:
        for kind, prefix, text in kinds:
            if isinstance(general_name, kind):
                names.append(prefix + text(general_name))
                break
        else:
            names.append(str(general_name.value))
    return names


def _key(certificate: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name} {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA {key.key_size}"
    return type(key).__name__


def _not_after(certificate: Any) -> datetime.datetime:
    return certificate.not_valid_after_utc


def describe_certificate(certificate: Any, now: datetime.datetime | None = None) -> dict[str, Any]:
    """
    The fields of one certificate that people check: subject, issuer,
    subjectAltNames, validity (with days left), key type and size, SHA-256
    fingerprint.

    @param certificate: a C{cryptography.x509.Certificate}.
    @param now: the time to count days left from (default: now, UTC).
    """
    from cryptography.hazmat.primitives import hashes

    now = now or datetime.datetime.now(datetime.timezone.utc)
    not_after = _not_after(certificate)
    fingerprint = certificate.fingerprint(hashes.SHA256()).hex().upper()
    return {
        "subject": _name(certificate.subject),
        "issuer": _name(certificate.issuer),
        "subject_alt_names": _subject_alt_names(certificate),
        "not_before": certificate.not_valid_before_utc.isoformat(),
        "not_after": not_after.isoformat(),
        "days_left": (not_after - now).days,
        "key": _key(certificate),
        "sha256": ":".join(fingerprint[i : i + 2] for i in range(0, len(fingerprint), 2)),
    }


def describe_session(transport: Any, record: VerifyRecord | None, role: str) -> dict[str, Any]:
    """
    What a TLS connection negotiated, after its handshake.

    @param transport: the TLS transport.
    @param record: the connection's L{VerifyRecord}, from L{watch}.
    @param role: C{"client"} (epcat connected out) or C{"server"}.
    @return: C{version}, C{cipher}, C{alpn}, C{sni}, C{verification} and
        C{chain} (the peer's certificates, as L{describe_certificate});
        every key is always there, C{alpn} and C{sni} L{None} when none was
        negotiated or sent.
    """
    connection = transport.getHandle()
    alpn = connection.get_alpn_proto_negotiated() or b""
    servername = connection.get_servername()
    chain = connection.get_peer_cert_chain(as_cryptography=True) or []
    peer = connection.get_peer_certificate(as_cryptography=True)
    if peer is not None and (not chain or chain[0] != peer):
        # a server's view of the client's chain leaves out the client's own
        # certificate (SSL_get_peer_cert_chain(3))
        chain = [peer, *chain]
    from OpenSSL.SSL import VERIFY_PEER

    if connection.get_verify_mode() & VERIFY_PEER and chain:
        verification = "ok"
    elif role == "server" and not chain:
        verification = "no client certificate"
    elif role == "client":
        verification = "skipped (verify=no)"
    else:
        verification = "not verified"
    return {
        "version": connection.get_protocol_version_name(),
        "cipher": connection.get_cipher_name(),
        "alpn": alpn.decode("ascii", "replace") or None,
        "sni": _decode_name(servername) if servername else None,
        "verification": verification,
        "chain": [describe_certificate(c) for c in chain],
    }


def session_summary(info: dict[str, Any], role: str) -> str:
    """
    One line of what L{describe_session} found, every item always named:
    C{"TLSv1.3, TLS_AES_256_GCM_SHA384, ALPN none, SNI sent localhost,
    verification ok"}; C{"ALPN h2"} when a protocol was agreed, C{"no SNI
    sent"} (C{"no SNI received"} for a server) when there was no name.

    @param info: what L{describe_session} returned.
    @param role: C{"client"} (epcat connected out) or C{"server"}.
    """
    direction = "sent" if role == "client" else "received"
    alpn = f"ALPN {info['alpn']}" if info["alpn"] else "ALPN none"
    sni = f"SNI {direction} {info['sni']}" if info["sni"] else f"no SNI {direction}"
    return ", ".join(
        [info["version"], info["cipher"], alpn, sni, f"verification {info['verification']}"]
    )


def time_left(certificate: dict[str, Any], now: datetime.datetime | None = None) -> str:
    """
    How long a certificate has left, in days: C{"30 days left"}, C{"1 day
    left"}, C{"less than a day left"}; or how long ago it expired:
    C{"expired 327 days ago"}, C{"expired less than a day ago"}.

    @param certificate: what L{describe_certificate} returned.
    @param now: the time to count from (default: now, UTC).
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    not_after = datetime.datetime.fromisoformat(certificate["not_after"])
    if not_after >= now:
        return _days((not_after - now).days, "less than a day left", "{} left")
    return _days((now - not_after).days, "expired less than a day ago", "expired {} ago")


def _days(days: int, none: str, some: str) -> str:
    if days == 0:
        return none
    return some.format("1 day" if days == 1 else f"{days} days")


def verification_failure(
    error: BaseException, record: VerifyRecord | None, host: str | None
) -> str | None:
    """
    Say why peer verification failed, from OpenSSL's recorded error or a
    service-identity mismatch.

    @param error: the exception the handshake failed with.
    @param record: the connection's L{VerifyRecord}.
    @param host: the name epcat asked for, if known.
    @return: e.g. C{"certificate has expired (not after 2026-01-01)"}, or
        L{None} when there is nothing more specific to say.
    """
    if record is None or record.errno is None:
        if type(error).__module__.startswith("service_identity"):
            return _mismatch(error, host, record.peer_certificate if record else None)
        return None
    # A chain OpenSSL rejects is the more basic failure; Twisted's verify
    # callback may have reported the name first.
    text = _VERIFY_ERRORS.get(record.errno) or record.reason or f"OpenSSL error {record.errno}"
    if record.errno in _UNKNOWN_ISSUER:
        if record.client_certificate:
            text += " (is it signed by a CA in clientCA=?)"
        else:
            text += " (is trustRoots= set?)"
    certificate = record.certificate
    if certificate is not None:
        if record.errno == 10:
            text += f" (not after {_not_after(certificate).date().isoformat()})"
        elif record.errno == 9:
            text += f" (not before {certificate.not_valid_before_utc.date().isoformat()})"
        elif record.errno in (18, 19, 20, 21, 2):
            text += f"; certificate subject {_name(certificate.subject)}"
    return text


def _mismatch(error: BaseException, host: str | None, certificate: Any) -> str:
    if not getattr(error, "errors", None):
        # service_identity.CertificateError: the certificate cannot be
        # checked at all (e.g. it has no subjectAltName)
        return f"{error}".rstrip(".") or type(error).__name__
    asked = host
    names: list[str] = []
    for mismatch in getattr(error, "errors", []) or []:
        identifier = getattr(mismatch, "mismatched_id", None)
        if identifier is not None and asked is None:
            value = getattr(identifier, "hostname", None) or getattr(identifier, "ip", identifier)
            asked = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    if certificate is not None:
        names = _subject_alt_names(certificate)
    text = f"hostname mismatch: asked for {asked or '?'}"
    if names:
        text += ", certificate is for " + ", ".join(n.split(":", 1)[-1] for n in names)
    return text
