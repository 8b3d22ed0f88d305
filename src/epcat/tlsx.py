# -*- test-case-name: tests.unit.test_tlsx -*-
"""
epcat's own TLS endpoint types, C{tlsx:}, for every Twisted program.

Twisted's C{tls:} client cannot choose the server name it sends (SNI), offer
ALPN protocols, skip verification or pin TLS versions, and its C{ssl:} server
cannot ask for client certificates or offer ALPN.  The C{tlsx:} client
accepts everything C{tls:} accepts and the C{tlsx:} server everything
C{ssl:} accepts, plus those choices.  Both are built on Twisted's public TLS
API (L{twisted.internet.ssl.optionsForClientTLS},
L{twisted.internet.ssl.CertificateOptions}, L{wrapClientTLS},
L{SSL4ServerEndpoint}) and pyOpenSSL; no handshake is built by hand.

The parsers are registered as Twisted plugins by the dropin module
C{twisted/plugins/epcat_endpoints.py}, so C{clientFromString} and
C{serverFromString} find them in any program once epcat is installed::

    tlsx:example.com:443:alpn=h2,http/1.1
    tlsx:127.0.0.1:8443:sni=www.example.com:trustRoots=ca.pem
    tlsx:localhost:8443:verify=no
    tlsx:8443:privateKey=key.pem:certKey=cert.pem:requireClientCert=yes:clientCA=ca.pem

Every bad value raises L{ValueError} with a message naming the argument; a
file that cannot be read raises L{OSError} (what Twisted's own parsers do).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import attr
from twisted.plugin import IPlugin
from zope.interface import implementer

from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)

#: The prefix of both endpoint types.
PREFIX = "tlsx"

#: C{callback(connection, line)} given every NSS key log line of every
#: context built here afterwards (epcat's C{--keylog}); L{None}: none.
_keylog: Any = None


def set_keylog(callback: Any) -> None:
    """
    Log the session secrets of every C{tlsx:} endpoint parsed from now on
    with C{callback(connection, line)} (pyOpenSSL's
    C{Context.set_keylog_callback}; NSS key log format).  The callback is set
    on each context before it makes its first connection: pyOpenSSL forbids
    changing a context after that.
    """
    global _keylog
    _keylog = callback


def _with_keylog(options: Any) -> Any:
    """
    Set the key log callback, if any, on C{options}' context (created now,
    before any connection uses it).
    """
    if _keylog is not None:
        options.getContext().set_keylog_callback(_keylog)
    return options

def sni_server_with_keylog(reactor: Any, description: str) -> Any:
    """
    Twisted's own C{tls:} server type (C{tls:DIRECTORY[:port=N]...}: a
    certificate per SNI name, from a directory of PEM files reloaded as it
    changes), built as Twisted's parser builds it, except that each context
    its SNI lookup hands out gets C{--keylog}'s callback (L{set_keylog})
    before its first connection.  Twisted's parser keeps the lookup to
    itself, and pyOpenSSL refuses a callback on a context once a connection
    has used it, so only a lookup of our own can set one.

    The description is first parsed by Twisted itself, so a bad one fails
    with Twisted's own error; its arguments are then read with
    L{twisted.internet.endpoints._parse} (the tokenizer of every endpoint
    description, private but unchanged since Twisted 10.1), and passed to
    the same public pieces Twisted's C{_TLSServerEndpointParser} uses.

    @param description: a C{tls:} server endpoint description.
    @return: an C{IStreamServerEndpoint} provider.
    @raise UsageError: the description is bad (L{epcat.endpoints.parse_server}).
    """
    from twisted.internet import endpoints
    from twisted.python.filepath import FilePath

    from epcat.endpoints import parse_server

    parse_server(reactor, description)  # Twisted's own checks and messages
    args, kwargs = endpoints._parse(description)
    return _sni_server(endpoints, FilePath, reactor, *args[1:], **kwargs)


def _sni_server(
    endpoints: Any,
    file_path: Any,
    reactor: Any,
    path: str,
    port: str = "443",
    backlog: str = "50",
    interface: str = "::",
) -> Any:
    # (the arguments and defaults of Twisted 26.10's
    # _TLSServerEndpointParser._actualParseStreamServer)
    lookup = endpoints.autoReloadingDirectoryOfPEMs(file_path(path))

    def logged(name: bytes | None) -> Any:
        context = lookup(name)
        if context is not None and _keylog is not None:
            try:
                context.set_keylog_callback(_keylog)
            except ValueError:
                pass  # (used already: set when it was first looked up)
        return context

    return endpoints.wrapServerTLS(
        endpoints.SNIConnectionCreator(logged),
        endpoints.TCP6ServerEndpoint(reactor, int(port), int(backlog), interface),
    )


#: Written to stderr each time a C{verify=no} client description is parsed.
VERIFY_NO_WARNING = "epcat: warning: tlsx: verify=no: the server's certificate is NOT verified"

#: minVersion=/maxVersion= spellings -> names of L{twisted.internet.ssl.TLSVersion}
#: constants.  Only TLS 1.2 and 1.3: OpenSSL 3 refuses 1.0 and 1.1 at its
#: default security level, and Twisted's own minimum is 1.2.
_TLS_VERSIONS = {
    "tlsv1.2": "TLSv1_2",
    "tlsv1_2": "TLSv1_2",
    "tls1.2": "TLSv1_2",
    "1.2": "TLSv1_2",
    "tlsv1.3": "TLSv1_3",
    "tlsv1_3": "TLSv1_3",
    "tls1.3": "TLSv1_3",
    "1.3": "TLSv1_3",
}

_YES = frozenset({"yes", "true", "on", "1"})
_NO = frozenset({"no", "false", "off", "0"})

#: A PEM certificate block (the pattern Twisted's C{_parseSSL} uses for
#: extraCertChain=).
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


# -- values


def parse_yes_no(name: str, value: str | bool) -> bool:
    """
    A yes/no argument: C{yes}, C{true}, C{on}, C{1} or C{no}, C{false},
    C{off}, C{0}, in any case.

    @param name: the argument's name, for the message.
    @raise ValueError: any other value.
    """
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _YES:
        return True
    if word in _NO:
        return False
    raise ValueError(f"tlsx: {name}={value}: expected yes or no")


def parse_tls_version(name: str, value: str | None) -> Any:
    """
    A TLS protocol version: C{TLSv1.2} or C{TLSv1.3} (also C{1.2}, C{1.3}).

    @param name: the argument's name, for the message.
    @return: a L{twisted.internet.ssl.TLSVersion} constant, or L{None} for
        L{None} or an empty value.
    @raise ValueError: an unknown or unsupported version.
    """
    from twisted.internet.ssl import TLSVersion

    if value is None or not str(value).strip():
        return None
    constant = _TLS_VERSIONS.get(str(value).strip().lower())
    if constant is None:
        raise ValueError(f"tlsx: {name}={value}: expected TLSv1.2 or TLSv1.3")
    return TLSVersion.lookupByName(constant)


def check_version_range(min_version: Any, max_version: Any) -> None:
    """
    @raise ValueError: C{min_version} is above C{max_version}.
    """
    if min_version is not None and max_version is not None and min_version > max_version:
        raise ValueError(
            f"tlsx: minVersion={_version_text(min_version)} is above "
            f"maxVersion={_version_text(max_version)}"
        )


def _version_text(version: Any) -> str:
    return version.name.replace("_", ".")


def parse_alpn(value: str | None) -> tuple[bytes, ...]:
    """
    An ALPN protocol list, most preferred first: C{h2,http/1.1}.

    The wire format (RFC 7301, section 3.1) holds each protocol name in
    1 to 255 bytes; this takes printable ASCII names.

    @return: the protocol names as bytes; C{()} for L{None}.
    @raise ValueError: an empty list, an empty name, a name that is not
        printable ASCII or is longer than 255 bytes, or a name given twice.
    """
    if value is None:
        return ()
    names = [n.strip() for n in str(value).split(",")]
    if not any(names):
        raise ValueError("tlsx: alpn=: expected protocol names, e.g. alpn=h2,http/1.1")
    protocols: list[bytes] = []
    for n in names:
        if not n:
            raise ValueError(f"tlsx: alpn={value}: empty protocol name")
        if not (n.isascii() and n.isprintable()):
            raise ValueError(f"tlsx: alpn={value}: {n!r} is not printable ASCII")
        encoded = n.encode("ascii")
        if len(encoded) > 255:
            raise ValueError(f"tlsx: alpn={value}: a protocol name has at most 255 bytes")
        if encoded in protocols:
            raise ValueError(f"tlsx: alpn={value}: {n} is listed twice")
        protocols.append(encoded)
    return tuple(protocols)


def _is_ip_address(name: str) -> bool:
    from twisted.internet.abstract import isIPAddress, isIPv6Address

    return isIPAddress(name) or isIPv6Address(name)


def server_name_bytes(name: str) -> bytes:
    """
    A host name as the ASCII bytes TLS puts in SNI (IDNA, as Twisted's
    C{_idnaBytes} does with the C{idna} package); an IP literal as is.

    @raise ValueError: not a valid host name.
    """
    if _is_ip_address(name):
        return name.encode("ascii")
    import idna

    try:
        return idna.encode(name)
    except (idna.IDNAError, UnicodeError) as e:
        raise ValueError(f"tlsx: {name!r} is not a valid host name for TLS: {e}") from None


def _port(name: str, value: str | int, allow_zero: bool) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"tlsx: {name}={value}: expected a port number") from None
    low = 0 if allow_zero else 1
    if not low <= number <= 65535:
        raise ValueError(f"tlsx: {name}={value}: expected a port number {low}-65535")
    return number


def _positive_number(name: str, value: str | float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"tlsx: {name}={value}: expected a number of seconds") from None
    if not number > 0 or number != number or number == float("inf"):
        raise ValueError(f"tlsx: {name}={value}: expected a positive number of seconds")
    return number


# -- files


def load_certificates(path: str, name: str) -> list[Any]:
    """
    Every certificate in a PEM file, or in the C{*.pem} files of a directory
    (the layout Twisted's C{tls:} reads for C{trustRoots=}).

    @param path: a file or directory.
    @param name: the argument's name, for the message.
    @return: L{twisted.internet.ssl.Certificate}s, duplicates removed.
    @raise ValueError: no certificate found, or a PEM block that does not
        parse.
    @raise OSError: the file or directory cannot be read.
    """
    from twisted.internet.ssl import Certificate

    if os.path.isdir(path):
        # (Twisted's _loadCAsFromDir, private, reads *.pem the same way and
        # skips unreadable files.)
        blobs = []
        for entry in sorted(os.listdir(path)):
            if entry.lower().endswith(".pem"):
                try:
                    with open(os.path.join(path, entry), "rb") as f:
                        blobs.append(f.read())
                except OSError:
                    continue
    else:
        with open(path, "rb") as f:
            blobs = [f.read()]
    found: dict[bytes, Any] = {}
    for blob in blobs:
        for block in _PEM_CERTIFICATE.findall(blob):
            try:
                certificate = Certificate.loadPEM(block)
            except Exception as e:
                raise ValueError(
                    f"tlsx: {name}={path}: a certificate does not parse: {e}"
                ) from None
            found.setdefault(certificate.digest(), certificate)
    if not found:
        where = "no *.pem file in that directory holds" if os.path.isdir(path) else "holds no"
        raise ValueError(f"tlsx: {name}={path}: {where} PEM certificate")
    return list(found.values())


def load_trust_root(path: str | None, name: str = "trustRoots") -> Any:
    """
    A trust root from a PEM file of CA certificates or a directory of them.

    @return: an L{IOpenSSLTrustRoot}, or L{None} for L{None} (the platform's
        trust store, Twisted's default).
    @raise ValueError: as for L{load_certificates}.
    @raise OSError: as for L{load_certificates}.
    """
    from twisted.internet.ssl import trustRootFromCertificates

    if path is None:
        return None
    return trustRootFromCertificates(load_certificates(path, name))


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def load_private_certificate(
    certificate: str | None, private_key: str | None, cert_name: str, key_name: str
) -> Any:
    """
    A certificate and its private key, from one PEM file holding both or
    from two (Twisted's C{tls:} C{certificate=}/C{privateKey=} rule).

    @param certificate: the certificate PEM file (may hold the key too).
    @param private_key: the private key PEM file, or L{None}.
    @param cert_name: the certificate argument's name, for messages.
    @param key_name: the key argument's name, for messages.
    @return: a L{twisted.internet.ssl.PrivateCertificate}, or L{None} when
        C{certificate} is L{None}.
    @raise ValueError: a key without a certificate, a file that does not
        parse, or a key that does not belong to the certificate.
    @raise OSError: a file cannot be read.
    """
    from twisted.internet.ssl import Certificate, KeyPair, PrivateCertificate

    if certificate is None:
        if private_key is not None:
            raise ValueError(f"tlsx: {key_name}= needs {cert_name}= (the certificate file)")
        return None
    cert_pem = _read(certificate)
    key_pem = cert_pem if private_key is None else _read(private_key)
    key_file = certificate if private_key is None else private_key
    try:
        cert = Certificate.loadPEM(cert_pem)
    except Exception:
        raise ValueError(f"tlsx: {cert_name}={certificate}: holds no PEM certificate") from None
    try:
        key = KeyPair.load(key_pem, 1)  # (1: crypto.FILETYPE_PEM, as Twisted's tls: does)
    except Exception:
        if private_key is None:
            raise ValueError(
                f"tlsx: {cert_name}={certificate}: holds no PEM private key; "
                f"give {key_name}=KEYFILE"
            ) from None
        raise ValueError(f"tlsx: {key_name}={key_file}: holds no PEM private key") from None
    try:
        # (this checks that the key belongs to the certificate)
        return PrivateCertificate.fromCertificateAndKeyPair(cert, key)
    except Exception:
        raise ValueError(
            f"tlsx: the private key in {key_file} does not belong to the certificate "
            f"in {certificate}"
        ) from None


# -- client


@attr.frozen
class ClientSettings:
    """
    What a C{tlsx:} client description asks for, parsed and checked.

    @ivar host: where to connect (unless C{endpoint} is given).
    @ivar port: the TCP port.
    @ivar timeout: seconds for each connection attempt.
    @ivar bind_address: local address to connect from, or L{None}.
    @ivar server_name: the name sent in SNI and verified against the
        certificate: C{sni=}, else C{host}.
    @ivar alpn: ALPN protocols to offer, most preferred first.
    @ivar verify: verify the server's certificate and name.
    @ivar min_version: a L{TLSVersion} or L{None} (Twisted's default, 1.2).
    @ivar max_version: a L{TLSVersion} or L{None} (the newest OpenSSL has).
    @ivar trust_root: an L{IOpenSSLTrustRoot}, or L{None} for the platform's.
    @ivar client_certificate: a L{PrivateCertificate} to present, or L{None}.
    @ivar endpoint: a client description to run TLS over instead of TCP to
        C{host}, or L{None}.
    """

    host: str
    port: int
    timeout: float = 30.0
    bind_address: str | None = None
    server_name: str = ""
    alpn: tuple[bytes, ...] = ()
    verify: bool = True
    min_version: Any = None
    max_version: Any = None
    trust_root: Any = None
    client_certificate: Any = None
    endpoint: str | None = None

    @property
    def sends_server_name(self) -> bool:
        """
        Whether SNI is sent: only for a DNS name (RFC 6066, section 3: an IP
        literal is not a permitted HostName), as Twisted does.
        """
        return not _is_ip_address(self.server_name)


def client_settings(
    host: str,
    port: str | int,
    timeout: str | float = "30",
    bindAddress: str | None = None,
    certificate: str | None = None,
    privateKey: str | None = None,
    trustRoots: str | None = None,
    endpoint: str | None = None,
    sni: str | None = None,
    alpn: str | None = None,
    verify: str | bool = "yes",
    minVersion: str | None = None,
    maxVersion: str | None = None,
) -> ClientSettings:
    """
    Check the arguments of a C{tlsx:} client description.

    @param host: host name or IP to connect to (and, without C{sni}, the name
        to send and verify).
    @param port: TCP port.
    @param timeout: seconds for each connection attempt (default 30).
    @param bindAddress: local IP address to connect from.
    @param certificate: client certificate PEM file (may hold the key too).
    @param privateKey: the client certificate's key PEM file.
    @param trustRoots: CA certificates to trust: a PEM file or a directory of
        C{*.pem} files; default the platform's trust store.
    @param endpoint: a client endpoint description to run TLS over; C{host}
        then only names the server.
    @param sni: server name to send and verify instead of C{host}.
    @param alpn: comma-separated ALPN protocols, most preferred first.
    @param verify: C{no} skips every certificate check (like curl's
        C{--insecure}).
    @param minVersion: lowest TLS version: C{TLSv1.2} or C{TLSv1.3}.
    @param maxVersion: highest TLS version: C{TLSv1.2} or C{TLSv1.3}.
    @raise ValueError: a bad value; the message names the argument.
    @raise OSError: a file cannot be read.
    """
    if not host:
        raise ValueError("tlsx: a host to connect to is missing, e.g. tlsx:example.com:443")
    if sni is not None and not sni.strip():
        raise ValueError("tlsx: sni=: expected a server name")
    server_name = sni.strip() if sni is not None else host
    server_name_bytes(server_name)  # (raises ValueError)
    check = parse_yes_no("verify", verify)
    if not check and trustRoots is not None:
        raise ValueError("tlsx: trustRoots= has no effect with verify=no; give one or the other")
    min_version = parse_tls_version("minVersion", minVersion)
    max_version = parse_tls_version("maxVersion", maxVersion)
    check_version_range(min_version, max_version)
    if endpoint is not None and not endpoint.strip():
        raise ValueError("tlsx: endpoint=: expected a client endpoint description")
    if bindAddress is not None and not bindAddress.strip():
        raise ValueError("tlsx: bindAddress=: expected an IP address")
    return ClientSettings(
        host=host,
        port=_port("port", port, allow_zero=False),
        timeout=_positive_number("timeout", timeout),
        bind_address=bindAddress,
        server_name=server_name,
        alpn=parse_alpn(alpn),
        verify=check,
        min_version=min_version,
        max_version=max_version,
        trust_root=load_trust_root(trustRoots),
        client_certificate=load_private_certificate(
            certificate, privateKey, "certificate", "privateKey"
        ),
        endpoint=endpoint,
    )


def _version_options(min_version: Any, max_version: Any) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if min_version is not None:
        options["raiseMinimumTo"] = min_version
    if max_version is not None:
        options["lowerMaximumSecurityTo"] = max_version
    return options


@implementer(IOpenSSLClientConnectionCreator)
class UnverifiedClientCreator:
    """
    Client connections that verify nothing (C{verify=no}): no chain check,
    no host name check, any certificate or none.

    The context comes from Twisted's L{CertificateOptions} with C{verify}
    off, so ciphers, TLS versions, ALPN and the client certificate are set up
    exactly as on the verified path; this only adds SNI, which Twisted's
    C{optionsForClientTLS} would otherwise add along with verification.

    @ivar options: the L{CertificateOptions} the connections come from.
    @ivar server_name: the SNI bytes to send, or L{None} to send none.
    """

    def __init__(self, options: Any, server_name: bytes | None) -> None:
        self.options = options
        self.server_name = server_name

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        """
        A connection for one TLS client protocol.

        @param tlsProtocol: the L{TLSMemoryBIOProtocol} that will drive it.
        @return: an L{OpenSSL.SSL.Connection}.
        """
        from OpenSSL import SSL

        # (CertificateOptions.clientConnectionForTLS is its public
        # IOpenSSLClientConnectionCreator method; it sets the ALPN list.)
        connection = self.options.clientConnectionForTLS(tlsProtocol)
        if self.server_name is not None:
            connection.set_tlsext_host_name(self.server_name)
        connection.set_verify(SSL.VERIFY_NONE)
        return connection


def verify_callback(tls_protocol: Any, server_name: str) -> Any:
    """
    An OpenSSL verify callback that checks the chain (OpenSSL's verdict) and
    then the leaf certificate against C{server_name} with service_identity,
    failing closed.

    This is Twisted's private C{_sslverify._verifyCB} with two changes.
    Twisted catches only C{service_identity.VerificationError}; any other
    exception is logged as a traceback and OpenSSL's verdict on the chain
    stands, so a certificate from a trusted CA that service_identity rejects
    with C{CertificateError} (one with no subjectAltName: service_identity
    26.1 raises that) is accepted for any host name (seen with Twisted 26.10).
    Here every exception fails verification.  And a leaf whose chain OpenSSL
    already rejected is not checked for its name, so the reason reported is
    the chain's ("self-signed certificate"), not a name mismatch.

    @param tls_protocol: the L{TLSMemoryBIOProtocol}; its C{failVerification}
        receives the name check's failure.  Dropped after the leaf has been
        checked (no reference cycle through the connection).
    @param server_name: the name the certificate must be for (DNS name or IP).
    @return: a callable for L{OpenSSL.SSL.Connection.set_verify}.
    """
    from service_identity.hazmat import DNS_ID, IPAddress_ID, verify_service_identity
    from service_identity.pyopenssl import extract_patterns
    from twisted.python.failure import Failure

    if _is_ip_address(server_name):
        identity: Any = IPAddress_ID(server_name)
    else:
        identity = DNS_ID(server_name_bytes(server_name).decode("ascii"))
    state: dict[str, Any] = {"protocol": tls_protocol}

    def callback(connection: Any, certificate: Any, error: int, depth: int, ok: int) -> bool:
        if depth != 0 or not ok:
            return bool(ok)
        if "verdict" in state:
            return bool(state["verdict"])
        protocol = state.pop("protocol")
        try:
            verify_service_identity(extract_patterns(certificate), [identity], [])
        except Exception:
            state["verdict"] = False
            protocol.failVerification(Failure())
            return False
        state["verdict"] = True
        return True

    return callback


@implementer(IOpenSSLClientConnectionCreator)
class VerifyingClientCreator:
    """
    Client connections built as Twisted's L{optionsForClientTLS} builds them
    (a L{CertificateOptions} context with the trust root, ALPN, TLS versions
    and client certificate; SNI for DNS names), with L{verify_callback} in
    place of Twisted's own (which does not fail closed: see there).

    @ivar inner: the L{CertificateOptions}; its C{clientConnectionForTLS}
        makes the connection.
    @ivar server_name: the name verified (and sent in SNI unless an IP).
    """

    def __init__(self, inner: Any, server_name: str, sni: bytes | None = None) -> None:
        self.inner = inner
        self.server_name = server_name
        self.sni = sni

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        """
        A connection for one TLS client protocol.

        @param tlsProtocol: the L{TLSMemoryBIOProtocol} that will drive it.
        @return: an L{OpenSSL.SSL.Connection}.
        """
        from OpenSSL import SSL

        connection = self.inner.clientConnectionForTLS(tlsProtocol)
        if self.sni is not None:
            connection.set_tlsext_host_name(self.sni)
        connection.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
            verify_callback(tlsProtocol, self.server_name),
        )
        return connection


def client_creator(settings: ClientSettings) -> Any:
    """
    The connection creator for a C{tlsx:} client.

    With verification on, a L{VerifyingClientCreator} over
    L{optionsForClientTLS} for C{settings.server_name} (chain checked by
    OpenSSL against C{trust_root}, the name by service_identity, the name
    sent in SNI); with C{verify=no}, an L{UnverifiedClientCreator}.

    @return: an L{IOpenSSLClientConnectionCreator}.
    """
    from twisted.internet.ssl import CertificateOptions, platformTrust

    extra = _version_options(settings.min_version, settings.max_version)
    alpn = list(settings.alpn) or None
    if settings.client_certificate is not None:
        extra["privateKey"] = settings.client_certificate.privateKey.original
        extra["certificate"] = settings.client_certificate.original
    sni = server_name_bytes(settings.server_name) if settings.sends_server_name else None
    if settings.verify:
        # What optionsForClientTLS builds, with a context epcat owns (for
        # --keylog) and a verify callback that fails closed.
        trust_root = settings.trust_root if settings.trust_root is not None else platformTrust()
        options = CertificateOptions(trustRoot=trust_root, acceptableProtocols=alpn, **extra)
        return VerifyingClientCreator(_with_keylog(options), settings.server_name, sni)
    options = CertificateOptions(verify=False, acceptableProtocols=alpn, **extra)
    return UnverifiedClientCreator(_with_keylog(options), sni)


def client_endpoint(reactor: Any, settings: ClientSettings) -> Any:
    """
    The C{tlsx:} client endpoint: TLS (L{client_creator}) over a
    L{HostnameEndpoint} to C{host:port} (both address families), or over the
    C{endpoint=} description.

    @return: an L{IStreamClientEndpoint}.
    @raise ValueError: C{endpoint=} does not parse.
    """
    from twisted.internet.endpoints import HostnameEndpoint, clientFromString, wrapClientTLS

    if settings.endpoint is not None:
        try:
            inner = clientFromString(reactor, settings.endpoint)
        except Exception as e:
            raise ValueError(f"tlsx: endpoint={settings.endpoint}: {e}") from None
    else:
        bind = None if settings.bind_address is None else (settings.bind_address, 0)
        inner = HostnameEndpoint(reactor, settings.host, settings.port, settings.timeout, bind)
    return wrapClientTLS(client_creator(settings), inner)


def warn_unverified(stream: Any = None) -> None:
    """
    Write L{VERIFY_NO_WARNING} to C{stream} (default: stderr).
    """
    stream = sys.stderr if stream is None else stream
    try:
        stream.write(VERIFY_NO_WARNING + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class TLSXClientParser:
    """
    TLS client: tls: plus sni=, alpn=, verify=no, min/maxVersion=, certificate=/privateKey=

    C{tlsx:HOST:PORT[:sni=NAME][:alpn=h2,http/1.1][:verify=yes|no]
    [:minVersion=TLSv1.2|TLSv1.3][:maxVersion=...][:trustRoots=PEM|DIR]
    [:certificate=PEM][:privateKey=PEM][:timeout=S][:bindAddress=IP]
    [:endpoint=DESCRIPTION]}.  See L{client_settings} for each argument.
    C{verify=no} writes L{VERIFY_NO_WARNING} to stderr each time it is
    parsed.
    """

    prefix = PREFIX

    def parseStreamClient(
        self,
        reactor: Any,
        host: str,
        port: str,
        sni: str | None = None,
        alpn: str | None = None,
        verify: str = "yes",
        minVersion: str | None = None,
        maxVersion: str | None = None,
        trustRoots: str | None = None,
        certificate: str | None = None,
        privateKey: str | None = None,
        timeout: str = "30",
        bindAddress: str | None = None,
        endpoint: str | None = None,
    ) -> IStreamClientEndpoint:
        """
        Build a C{tlsx:} client endpoint; the arguments are those of
        L{client_settings}.

        @raise ValueError: a bad value; the message names the argument.
        @raise OSError: a file cannot be read.
        """
        settings = client_settings(
            host,
            port,
            timeout=timeout,
            bindAddress=bindAddress,
            certificate=certificate,
            privateKey=privateKey,
            trustRoots=trustRoots,
            endpoint=endpoint,
            sni=sni,
            alpn=alpn,
            verify=verify,
            minVersion=minVersion,
            maxVersion=maxVersion,
        )
        result = client_endpoint(reactor, settings)
        if not settings.verify:
            warn_unverified()
        return result


# -- server


def load_extra_chain(path: str | None) -> list[Any] | None:
    """
    The intermediate certificates of C{extraCertChain=}.

    @return: pyOpenSSL C{X509}s, or L{None} for L{None}.
    @raise ValueError: the file holds no PEM certificate.
    @raise OSError: the file cannot be read.
    """
    from twisted.internet.ssl import Certificate

    if path is None:
        return None
    # (the same extraction as Twisted's private _parseSSL)
    blocks = _PEM_CERTIFICATE.findall(_read(path))
    if not blocks:
        raise ValueError(f"tlsx: extraCertChain={path}: holds no PEM certificate")
    try:
        return [Certificate.loadPEM(block).original for block in blocks]
    except Exception as e:
        raise ValueError(
            f"tlsx: extraCertChain={path}: a certificate does not parse: {e}"
        ) from None


def _ssl_method(name: str | None) -> int | None:
    from OpenSSL import SSL

    if name is None:
        return None
    # (Twisted's _parseSSL takes any attribute of OpenSSL.SSL; DTLS methods
    # make no sense over TCP.)
    known = sorted(
        n for n in dir(SSL)
        if n.endswith("_METHOD") and not n.startswith("DTLS") and isinstance(getattr(SSL, n), int)
    )
    if name in known:
        return getattr(SSL, name)
    raise ValueError(f"tlsx: sslmethod={name}: expected one of {', '.join(known)}")


def server_options(
    privateKey: str = "server.pem",
    certKey: str | None = None,
    extraCertChain: str | None = None,
    sslmethod: str | None = None,
    dhParameters: str | None = None,
    alpn: str | None = None,
    requireClientCert: str | bool | None = None,
    clientCA: str | None = None,
    minVersion: str | None = None,
    maxVersion: str | None = None,
) -> Any:
    """
    The L{CertificateOptions} of a C{tlsx:} server.

    @param privateKey: the server's private key PEM file (Twisted's C{ssl:}
        default: C{server.pem}).
    @param certKey: the server's certificate PEM file; default C{privateKey}.
    @param extraCertChain: intermediate CA certificates to send (PEM).
    @param sslmethod: an C{OpenSSL.SSL} method constant name (deprecated in
        Twisted; prefer minVersion=/maxVersion=).
    @param dhParameters: a Diffie-Hellman parameters PEM file (enables DHE).
    @param alpn: ALPN protocols the server accepts, most preferred first; a
        client offering none of them gets no ALPN answer (the handshake goes
        on).
    @param requireClientCert: C{yes}: the handshake fails unless the client
        presents a certificate signed by C{clientCA}; C{no} with C{clientCA}:
        a certificate is asked for and checked if sent, but not required.
        Default: C{yes} when C{clientCA} is given.
    @param clientCA: PEM file (or directory of C{*.pem}) of the CA
        certificates that sign client certificates.
    @param minVersion: lowest TLS version: C{TLSv1.2} or C{TLSv1.3}.
    @param maxVersion: highest TLS version: C{TLSv1.2} or C{TLSv1.3}.
    @return: a L{twisted.internet.ssl.CertificateOptions}.
    @raise ValueError: a bad value; the message names the argument.
    @raise OSError: a file cannot be read.
    """
    from twisted.internet.ssl import CertificateOptions, DiffieHellmanParameters
    from twisted.python.filepath import FilePath

    require = None if requireClientCert is None else parse_yes_no(
        "requireClientCert", requireClientCert
    )
    if require and clientCA is None:
        raise ValueError(
            "tlsx: requireClientCert=yes needs clientCA=PEM "
            "(the CA that signs the client certificates)"
        )
    min_version = parse_tls_version("minVersion", minVersion)
    max_version = parse_tls_version("maxVersion", maxVersion)
    check_version_range(min_version, max_version)
    method = _ssl_method(sslmethod)
    if method is not None and (min_version is not None or max_version is not None):
        raise ValueError("tlsx: sslmethod= cannot be combined with minVersion=/maxVersion=")
    protocols = parse_alpn(alpn)
    identity = load_private_certificate(
        certKey if certKey is not None else privateKey, privateKey, "certKey", "privateKey"
    )
    kwargs: dict[str, Any] = dict(
        privateKey=identity.privateKey.original,
        certificate=identity.original,
        extraCertChain=load_extra_chain(extraCertChain),
        acceptableProtocols=list(protocols) or None,
        **_version_options(min_version, max_version),
    )
    if method is not None:
        kwargs["method"] = method
    if dhParameters is not None:
        kwargs["dhParameters"] = DiffieHellmanParameters.fromFile(FilePath(dhParameters))
    if clientCA is not None:
        authorities = load_certificates(clientCA, "clientCA")
        if require is None or require:
            # trustRoot= turns on VERIFY_PEER | VERIFY_FAIL_IF_NO_PEER_CERT.
            from twisted.internet.ssl import trustRootFromCertificates

            kwargs["trustRoot"] = trustRootFromCertificates(authorities)
        else:
            kwargs.update(
                verify=True,
                requireCertificate=False,
                caCerts=[c.original for c in authorities],
            )
    options = _with_keylog(CertificateOptions(**kwargs))
    if clientCA is not None:
        # (the context is made now, before any connection uses it)
        context = options.getContext()
        context.set_verify(context.get_verify_mode(), server_verify_callback)
    return options


def server_verify_callback(
    connection: Any, certificate: Any, error: int, depth: int, ok: int
) -> bool:
    """
    The verify callback of a C{tlsx:} server that checks client
    certificates: OpenSSL's verdict stands (as on the context
    L{CertificateOptions} builds, which sets no callback), and the first
    error is noted for L{epcat.tlsinfo.VerifyRecord} (a server keeps no
    client chain after a failed verification, so the reason cannot be
    worked out later).

    @param connection: the C{OpenSSL.SSL.Connection}.
    @param certificate: the C{OpenSSL.crypto.X509} being checked.
    @param error: OpenSSL's C{X509_V_ERR_*} number for it (0: none).
    @param depth: its place in the chain (0: the client's own).
    @param ok: OpenSSL's verdict.
    @return: C{ok}.
    """
    if not ok:
        from epcat.tlsinfo import note_verify_error

        note_verify_error(connection, certificate, error)
    return bool(ok)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class TLSXServerParser:
    """
    TLS server: ssl: plus alpn=, requireClientCert= and clientCA= (mutual TLS), min/maxVersion=

    C{tlsx:PORT[:privateKey=PEM][:certKey=PEM][:extraCertChain=PEM]
    [:alpn=h2,http/1.1][:requireClientCert=yes|no][:clientCA=PEM|DIR]
    [:minVersion=TLSv1.2|TLSv1.3][:maxVersion=...][:sslmethod=NAME]
    [:dhParameters=PEM][:interface=IP][:backlog=N]}.  See L{server_options}
    for the TLS arguments.  Installs L{epcat.tlsfix} so that clients offering
    ALPN (curl, browsers) can connect.
    """

    prefix = PREFIX

    def parseStreamServer(
        self,
        reactor: Any,
        port: str,
        privateKey: str = "server.pem",
        certKey: str | None = None,
        extraCertChain: str | None = None,
        alpn: str | None = None,
        requireClientCert: str | None = None,
        clientCA: str | None = None,
        minVersion: str | None = None,
        maxVersion: str | None = None,
        sslmethod: str | None = None,
        dhParameters: str | None = None,
        interface: str = "",
        backlog: str = "50",
    ) -> IStreamServerEndpoint:
        """
        Build a C{tlsx:} server endpoint: L{SSL4ServerEndpoint} with
        L{server_options}.

        @raise ValueError: a bad value; the message names the argument.
        @raise OSError: a file cannot be read.
        """
        from twisted.internet.endpoints import SSL4ServerEndpoint

        from epcat import tlsfix

        tlsfix.install()
        number = _port("port", port, allow_zero=True)
        try:
            queue = int(backlog)
        except (TypeError, ValueError):
            raise ValueError(f"tlsx: backlog={backlog}: expected a number") from None
        if queue < 1:
            raise ValueError(f"tlsx: backlog={backlog}: expected a positive number")
        options = server_options(
            privateKey=privateKey,
            certKey=certKey,
            extraCertChain=extraCertChain,
            sslmethod=sslmethod,
            dhParameters=dhParameters,
            alpn=alpn,
            requireClientCert=requireClientCert,
            clientCA=clientCA,
            minVersion=minVersion,
            maxVersion=maxVersion,
        )
        return SSL4ServerEndpoint(reactor, number, options, backlog=queue, interface=interface)


__all__ = [
    "PREFIX",
    "VERIFY_NO_WARNING",
    "ClientSettings",
    "TLSXClientParser",
    "TLSXServerParser",
    "UnverifiedClientCreator",
    "VerifyingClientCreator",
    "client_creator",
    "client_endpoint",
    "client_settings",
    "server_options",
    "server_verify_callback",
]
