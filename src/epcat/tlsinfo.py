# -*- test-case-name: tests.unit.test_tlsinfo -*-
"""
What a TLS connection negotiated and why verification failed, in words a
person can act on.

Everything goes through pyOpenSSL's public API on the connection that
Twisted's TLS transport exposes with C{getHandle()}: the per-connection
C{Connection.set_verify} records OpenSSL's verification errors (the verify
callback receives them; OpenSSL's own C{X509_V_ERR_*} numbers, see
openssl-verify(1) "DIAGNOSTICS"), and the keylog callback is set on the
connection's context before the handshake starts.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

#: OpenSSL X509_V_ERR_* codes (include/openssl/x509_vfy.h) and what to say.
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in chain",
    20: "unable to get local issuer certificate (is trustRoots= set?)",
    21: "unable to verify the first certificate (is trustRoots= set?)",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
    62: "hostname mismatch",
}


class VerifyRecord:
    """
    The first verification error OpenSSL reported on one connection.

    @ivar errno: the C{X509_V_ERR_*} number, or L{None}.
    @ivar depth: the chain depth it was reported at (0: the peer's own).
    @ivar certificate: the C{cryptography} certificate it concerned.
    """

    def __init__(self) -> None:
        self.errno: int | None = None
        self.depth: int | None = None
        self.certificate: Any = None
        #: the peer's certificate as last seen (kept for failure messages)
        self.peer_certificate: Any = None

    def remember_peer(self, transport: Any) -> None:
        """
        Keep the peer's certificate while the connection still has it (call
        from C{connectionLost}, before Twisted drops the TLS connection).
        """
        try:
            self.peer_certificate = transport.getHandle().get_peer_certificate(
                as_cryptography=True
            )
        except Exception:
            pass

    def callback(self, connection: Any, certificate: Any, errno: int, depth: int, ok: int) -> bool:
        # Same decision as Twisted's own verify callback (return OpenSSL's),
        # recording why it failed.
        if not ok and self.errno is None:
            self.errno = errno
            self.depth = depth
            try:
                self.certificate = certificate.to_cryptography()
            except Exception:
                self.certificate = None
        return bool(ok)


def watch(
    transport: Any, keylog: Callable[[Any, bytes], None] | None = None
) -> VerifyRecord | None:
    """
    Prepare a TLS transport, before its handshake: record verification errors
    and, if asked, log session secrets.

    @param transport: a C{TLSMemoryBIOProtocol} (anything with C{getHandle()}
        returning an C{OpenSSL.SSL.Connection}).
    @param keylog: C{keylog(connection, line)} for each NSS key log line.
    @return: the L{VerifyRecord}, or L{None} if C{transport} is not TLS.
    """
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    try:
        connection = get_handle()
        mode = connection.get_verify_mode()
    except Exception:
        return None
    if keylog is not None:
        connection.get_context().set_keylog_callback(keylog)
    record = VerifyRecord()
    from OpenSSL.SSL import VERIFY_PEER

    if mode & VERIFY_PEER:
        connection.set_verify(mode, record.callback)
    return record


def _name(name: Any) -> str:
    try:
        return name.rfc4514_string()
    except Exception:
        return str(name)


def _subject_alt_names(certificate: Any) -> list[str]:
    from cryptography import x509

    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    names = []
    for general_name in extension.value:
        if isinstance(general_name, x509.DNSName):
            names.append(f"DNS:{general_name.value}")
        elif isinstance(general_name, x509.IPAddress):
            names.append(f"IP:{general_name.value}")
        elif isinstance(general_name, x509.UniformResourceIdentifier):
            names.append(f"URI:{general_name.value}")
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
        C{chain} (the peer's certificates, as L{describe_certificate}).
    """
    connection = transport.getHandle()
    alpn = connection.get_alpn_proto_negotiated() or b""
    servername = connection.get_servername()
    chain = connection.get_peer_cert_chain(as_cryptography=True) or []
    if not chain:
        peer = connection.get_peer_certificate(as_cryptography=True)
        chain = [peer] if peer is not None else []
    from OpenSSL.SSL import VERIFY_PEER

    if record is not None and record.errno is not None:
        verification = "failed: " + _VERIFY_ERRORS.get(record.errno, f"error {record.errno}")
    elif connection.get_verify_mode() & VERIFY_PEER and chain:
        verification = "ok"
    elif role == "server" and not chain:
        verification = "no client certificate"
    else:
        verification = "not verified"
    return {
        "version": connection.get_protocol_version_name(),
        "cipher": connection.get_cipher_name(),
        "alpn": alpn.decode("ascii", "replace") or None,
        "sni": servername.decode("idna", "replace") if servername else None,
        "verification": verification,
        "chain": [describe_certificate(c) for c in chain],
    }


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
    if type(error).__module__.startswith("service_identity"):
        return _mismatch(error, host, record.peer_certificate if record else None)
    if record is None or record.errno is None:
        return None
    text = _VERIFY_ERRORS.get(
        record.errno, f"certificate verify failed (OpenSSL error {record.errno})"
    )
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
