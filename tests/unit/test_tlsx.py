"""
Tests for L{epcat.tlsx}: the C{tlsx:} client and server endpoint types.

Parsing is checked on the settings and options the parsers build; behaviour
is checked by real TLS handshakes in memory: the endpoint's own TLS protocol
(from the factory a L{MemoryReactorClock} recorded, over a L{StringTransport})
against a pyOpenSSL peer on memory BIOs.  Nothing listens or connects.
Certificates come from trustme, made per test.
"""

from __future__ import annotations

import datetime
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from OpenSSL import SSL
from twisted.internet import _sslverify
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHandshakeListener,
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.plugin import IPlugin, getPlugins
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from epcat import tlsfix, tlsinfo, tlsx
from epcat.tlsx import (
    VERIFY_NO_WARNING,
    TLSXClientParser,
    TLSXServerParser,
    UnverifiedClientCreator,
    client_settings,
    server_options,
)

# Twisted hands pyOpenSSL X509/PKey objects to its contexts: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")


@pytest.fixture(autouse=True)
def restore_alpn(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The server parser installs L{epcat.tlsfix} process-wide; put Twisted
    back as it was after each test.
    """
    monkeypatch.setattr(_sslverify, "setupForALPN", _sslverify.setupForALPN)
    monkeypatch.setattr(tlsfix, "_installed", tlsfix._installed)


# -- certificates


@dataclass
class PKI:
    """
    A trustme CA, a server certificate for localhost and 127.0.0.1, a client
    certificate, and the same from an unrelated CA, as files and objects.
    """

    root: Path
    ca: trustme.CA = field(default_factory=trustme.CA)
    other_ca: trustme.CA = field(default_factory=trustme.CA)

    def __post_init__(self) -> None:
        self.server = self.ca.issue_cert("localhost", "127.0.0.1")
        self.client = self.ca.issue_cert("client.example")
        self.stranger = self.other_ca.issue_cert("client.example")
        self.expired = self.ca.issue_cert(
            "client.example",
            not_before=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
            not_after=datetime.datetime(2025, 1, 2, 12, 0, tzinfo=datetime.timezone.utc),
        )
        self.ca_pem = self.write("ca.pem", self.ca.cert_pem.bytes())
        self.ca_dir = self.root / "cadir"
        self.ca_dir.mkdir()
        (self.ca_dir / "ca.pem").write_bytes(self.ca.cert_pem.bytes())
        self.other_ca_pem = self.write("other-ca.pem", self.other_ca.cert_pem.bytes())
        self.server_key = self.write("server.key", self.server.private_key_pem.bytes())
        self.server_cert = self.write("server.pem", self.server.cert_chain_pems[0].bytes())
        self.server_both = self.write(
            "server-both.pem", self.server.private_key_and_cert_chain_pem.bytes()
        )
        self.client_key = self.write("client.key", self.client.private_key_pem.bytes())
        self.client_cert = self.write("client.pem", self.client.cert_chain_pems[0].bytes())
        self.client_both = self.write(
            "client-both.pem", self.client.private_key_and_cert_chain_pem.bytes()
        )

    def write(self, name: str, data: bytes) -> str:
        path = self.root / name
        path.write_bytes(data)
        return str(path)


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path)


# -- a TLS peer on memory BIOs, and the pump between it and Twisted


@implementer(IHandshakeListener)
class App(Protocol):
    """
    The application protocol over the endpoint's TLS: records the handshake
    and the reason the connection ended.
    """

    def __init__(self) -> None:
        self.handshake_done = False
        self.lost: Failure | None = None

    def handshakeCompleted(self) -> None:
        self.handshake_done = True

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.lost = reason


@dataclass
class Peer:
    """
    The far side of a handshake: a pyOpenSSL connection on memory BIOs.
    """

    connection: SSL.Connection
    server_names: list[bytes | None] = field(default_factory=list)
    offered_alpn: list[list[bytes]] = field(default_factory=list)
    error: SSL.Error | None = None
    done: bool = False


def peer_server(pki: PKI, alpn: list[bytes] | None = None, max_version: int | None = None,
                cert: trustme.LeafCert | None = None) -> Peer:
    """
    A TLS server (the far side for client tests) with C{cert} (default: the
    server certificate) that records SNI and the ALPN list it was offered.
    """
    cert = cert or pki.server
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    cert.configure_cert(context)
    if max_version is not None:
        context.set_max_proto_version(max_version)
    server_names: list[bytes | None] = []
    offered_alpn: list[list[bytes]] = []

    def on_server_name(connection: SSL.Connection) -> None:
        server_names.append(connection.get_servername())

    def on_alpn(connection: SSL.Connection, offered: list[bytes]) -> Any:
        offered_alpn.append(list(offered))
        for protocol in alpn or []:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    context.set_tlsext_servername_callback(on_server_name)
    context.set_alpn_select_callback(on_alpn)
    # (set up the context first: one that has made a connection is frozen)
    connection = SSL.Connection(context, None)
    connection.set_accept_state()
    return Peer(connection, server_names, offered_alpn)


def peer_client(cert: trustme.LeafCert | None = None, alpn: list[bytes] | None = None,
                max_version: int | None = None) -> Peer:
    """
    A TLS client (the far side for server tests), presenting C{cert} if given.
    It does not check the server: these tests are about the server's checks.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if cert is not None:
        cert.configure_cert(context)
    if alpn:
        context.set_alpn_protos(alpn)
    if max_version is not None:
        context.set_max_proto_version(max_version)
    peer = Peer(SSL.Connection(context, None))
    peer.connection.set_connect_state()
    return peer


def pump(tls: Protocol, transport: StringTransport, peer: Peer) -> None:
    """
    Move bytes between Twisted's TLS protocol and the peer until neither has
    anything to say.  When Twisted closes its transport (as after a failed
    handshake), deliver C{connectionLost} the way a real transport would.
    """
    for _ in range(100):
        moved = False
        outgoing = transport.value()
        if outgoing:
            transport.clear()
            peer.connection.bio_write(outgoing)
            moved = True
        if not peer.done and peer.error is None:
            try:
                peer.connection.do_handshake()
                peer.done = True
            except SSL.WantReadError:
                pass
            except SSL.Error as e:
                peer.error = e
        elif peer.done:
            try:
                peer.connection.recv(65536)  # (TLS 1.3 tickets, alerts)
            except SSL.WantReadError:
                pass
            except (SSL.Error, SSL.ZeroReturnError) as e:
                peer.error = e if isinstance(e, SSL.Error) else None
        try:
            incoming = peer.connection.bio_read(65536)
        except SSL.WantReadError:
            incoming = b""
        if incoming and not transport.disconnecting:
            tls.dataReceived(incoming)
            moved = True
        if transport.disconnecting or getattr(transport, "aborting", False):
            tls.connectionLost(Failure(ConnectionDone()))
            return
        if not moved:
            return
    raise AssertionError("the handshake did not settle")


@dataclass
class Run:
    app: App
    peer: Peer
    reactor: MemoryReactorClock


def dial(description: str, peer: Peer) -> Run:
    """
    Parse a client description and run its connection against C{peer}: the
    TCP connection is the one the reactor recorded, completed by hand.
    """
    reactor = MemoryReactorClock()
    endpoint = clientFromString(reactor, description)
    app = App()
    endpoint.connect(Factory.forProtocol(lambda: app))
    host, port, factory, _timeout, _bind = reactor.tcpClients[-1]
    tls = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport()
    tls.makeConnection(transport)
    pump(tls, transport, peer)
    return Run(app, peer, reactor)


def serve(description: str, peer: Peer, app: App | None = None) -> Run:
    """
    Parse a server description and run one accepted connection against the
    client C{peer}, with the context factory the reactor recorded, wrapped in
    TLS the way C{listenSSL} does.
    """
    reactor = MemoryReactorClock()
    endpoint = serverFromString(reactor, description)
    app = app or App()
    endpoint.listen(Factory.forProtocol(lambda: app))
    _port, _factory, options, _backlog, _interface = reactor.sslServers[-1]
    tls = TLSMemoryBIOFactory(options, False, Factory.forProtocol(lambda: app)).buildProtocol(
        IPv4Address("TCP", "127.0.0.1", 50000)
    )
    transport = StringTransport()
    tls.makeConnection(transport)
    pump(tls, transport, peer)
    return Run(app, peer, reactor)


def dns_names(certificate: Any) -> list[str]:
    """
    The DNS subjectAltNames of a pyOpenSSL or cryptography certificate.
    """
    if hasattr(certificate, "to_cryptography"):
        certificate = certificate.to_cryptography()
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return san.value.get_values_for_type(x509.DNSName)


def failed_verification(run: Run) -> bool:
    assert run.app.lost is not None
    text = repr(run.app.lost.value)
    return "certificate verify failed" in text or "VerificationError" in text


# -- the plugins


def test_get_plugins_finds_both_parsers() -> None:
    clients = [p for p in getPlugins(IStreamClientEndpointStringParserWithReactor)
               if p.prefix == "tlsx"]
    servers = [p for p in getPlugins(IStreamServerEndpointStringParser) if p.prefix == "tlsx"]
    assert len(clients) == 1 and isinstance(clients[0], TLSXClientParser)
    assert len(servers) == 1 and isinstance(servers[0], TLSXServerParser)
    assert IPlugin.providedBy(clients[0]) and IPlugin.providedBy(servers[0])


def test_docstrings_summarise_in_their_first_line() -> None:
    expected = {
        TLSXClientParser: ("sni=", "alpn=", "verify=no", "maxVersion=", "certificate="),
        TLSXServerParser: ("alpn=", "requireClientCert=", "clientCA=", "maxVersion="),
    }
    for parser, words in expected.items():
        first = (parser.__doc__ or "").strip().splitlines()[0]
        assert all(word in first for word in words), first


def test_parse_methods_have_explicit_signatures() -> None:
    import inspect

    client = inspect.signature(TLSXClientParser().parseStreamClient)
    server = inspect.signature(TLSXServerParser().parseStreamServer)
    assert list(client.parameters)[:3] == ["reactor", "host", "port"]
    assert {"sni", "alpn", "verify", "minVersion", "maxVersion", "trustRoots", "certificate",
            "privateKey", "timeout", "bindAddress", "endpoint"} <= set(client.parameters)
    assert client.parameters["verify"].default == "yes"
    assert list(server.parameters)[:2] == ["reactor", "port"]
    assert {"privateKey", "certKey", "extraCertChain", "sslmethod", "dhParameters", "interface",
            "backlog", "alpn", "requireClientCert", "clientCA", "minVersion"} <= set(
        server.parameters
    )
    for sig in (client, server):
        assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values())


# -- client: what parses


def test_client_settings_defaults() -> None:
    settings = client_settings("example.com", "443")
    assert (settings.host, settings.port, settings.timeout) == ("example.com", 443, 30.0)
    assert settings.server_name == "example.com" and settings.sends_server_name
    assert settings.verify is True and settings.alpn == ()
    assert settings.min_version is None and settings.max_version is None
    assert settings.trust_root is None and settings.client_certificate is None


def test_client_settings_every_argument(pki: PKI) -> None:
    settings = client_settings(
        "127.0.0.1", "8443", timeout="2.5", bindAddress="127.0.0.2", sni="www.example",
        alpn="h2,http/1.1", minVersion="TLSv1.2", maxVersion="tlsv1.3", trustRoots=pki.ca_pem,
        certificate=pki.client_cert, privateKey=pki.client_key,
    )
    assert settings.server_name == "www.example"
    assert settings.alpn == (b"h2", b"http/1.1")
    assert settings.min_version is TLSVersion.TLSv1_2
    assert settings.max_version is TLSVersion.TLSv1_3
    assert settings.timeout == 2.5 and settings.bind_address == "127.0.0.2"
    assert settings.trust_root is not None
    assert dns_names(settings.client_certificate.original) == ["client.example"]


def test_client_certificate_and_key_in_one_file(pki: PKI) -> None:
    settings = client_settings("h", "1", certificate=pki.client_both)
    assert settings.client_certificate is not None


def test_trust_roots_takes_a_directory_like_tls(pki: PKI) -> None:
    assert client_settings("h", "1", trustRoots=str(pki.ca_dir)).trust_root is not None


def test_sni_with_an_ip_literal_sends_no_server_name() -> None:
    assert not client_settings("example.com", "1", sni="192.0.2.1").sends_server_name
    assert not client_settings("::1", "1").sends_server_name


def test_client_endpoint_connects_to_host_port_timeout_bind() -> None:
    reactor = MemoryReactorClock()
    endpoint = clientFromString(
        reactor, "tlsx:127.0.0.1:4433:sni=localhost:timeout=7:bindAddress=127.0.0.2"
    )
    assert IStreamClientEndpoint.providedBy(endpoint)
    assert reactor.tcpClients == []  # nothing connects at parse time
    endpoint.connect(Factory.forProtocol(Protocol))
    host, port, _factory, timeout, bind = reactor.tcpClients[0]
    assert (host, port, timeout, bind) == ("127.0.0.1", 4433, 7.0, ("127.0.0.2", 0))


def test_client_endpoint_over_another_endpoint() -> None:
    reactor = MemoryReactorClock()
    endpoint = clientFromString(reactor, "tlsx:example.com:443:endpoint=unix\\:/tmp/x.sock")
    endpoint.connect(Factory.forProtocol(Protocol))
    assert reactor.tcpClients == []
    assert reactor.unixClients[0][0] == "/tmp/x.sock"


def test_verify_no_builds_an_unverified_creator_and_warns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = client_settings("localhost", "1", verify="no", alpn="h2")
    creator = tlsx.client_creator(settings)
    assert isinstance(creator, UnverifiedClientCreator)
    assert creator.server_name == b"localhost"
    assert isinstance(creator.options, CertificateOptions) and not creator.options.verify
    assert capsys.readouterr().err == ""  # only the parser warns
    parser = TLSXClientParser()
    parser.parseStreamClient(MemoryReactorClock(), "localhost", "1", verify="no")
    parser.parseStreamClient(MemoryReactorClock(), "localhost", "1", verify="No")
    assert capsys.readouterr().err == (VERIFY_NO_WARNING + "\n") * 2


def test_verify_yes_does_not_warn(capsys: pytest.CaptureFixture[str]) -> None:
    clientFromString(MemoryReactorClock(), "tlsx:localhost:1:verify=yes")
    assert capsys.readouterr().err == ""


def test_warning_text() -> None:
    assert VERIFY_NO_WARNING == (
        "epcat: warning: tlsx: verify=no: the server's certificate is NOT verified"
    )
    out = io.StringIO()
    tlsx.warn_unverified(out)
    assert out.getvalue() == VERIFY_NO_WARNING + "\n"


# -- client: bad values


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"verify": "maybe"}, "verify=maybe"),
        ({"minVersion": "TLSv9"}, "minVersion=TLSv9"),
        ({"maxVersion": "SSLv3"}, "maxVersion=SSLv3"),
        ({"minVersion": "TLSv1.0"}, "minVersion=TLSv1.0"),
        ({"minVersion": "TLSv1.3", "maxVersion": "TLSv1.2"}, "above maxVersion"),
        ({"alpn": ""}, "alpn="),
        ({"alpn": "h2,,http/1.1"}, "empty protocol name"),
        ({"alpn": "h2,h2"}, "twice"),
        ({"alpn": "x" * 256}, "255 bytes"),
        ({"alpn": "h\u00e9"}, "ASCII"),
        ({"sni": ""}, "sni="),
        ({"sni": "bad_name"}, "not a valid host name"),
        ({"timeout": "soon"}, "timeout=soon"),
        ({"timeout": "0"}, "positive"),
        ({"timeout": "nan"}, "positive"),
        ({"port": "https"}, "port=https"),
        ({"port": "0"}, "1-65535"),
        ({"port": "70000"}, "1-65535"),
        ({"verify": "no", "trustRoots": "/nonexistent"}, "verify=no"),
        ({"privateKey": "key.pem"}, "needs certificate="),
        ({"endpoint": ""}, "endpoint="),
        ({"bindAddress": ""}, "bindAddress="),
    ],
)
def test_client_bad_values_raise_value_error(kwargs: dict[str, str], words: str) -> None:
    args = {"host": "localhost", "port": "443", **kwargs}
    host, port = args.pop("host"), args.pop("port")
    with pytest.raises(ValueError, match=None) as raised:
        TLSXClientParser().parseStreamClient(MemoryReactorClock(), host, port, **args)
    assert words in str(raised.value)
    assert "\n" not in str(raised.value)


def test_client_bad_endpoint_description() -> None:
    with pytest.raises(ValueError, match="endpoint=nosuchtype"):
        clientFromString(MemoryReactorClock(), "tlsx:h:1:endpoint=nosuchtype\\:x")


def test_client_bad_files(pki: PKI, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="no \\*.pem file"):
        client_settings("h", "1", trustRoots=str(empty))
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        client_settings("h", "1", trustRoots=str(junk))
    with pytest.raises(ValueError, match="does not belong"):
        client_settings("h", "1", certificate=pki.client_cert, privateKey=pki.server_key)
    with pytest.raises(ValueError, match="privateKey=.*holds no PEM private key"):
        client_settings("h", "1", certificate=pki.client_cert, privateKey=str(junk))
    with pytest.raises(ValueError, match="certificate=.*no PEM private key; give privateKey="):
        client_settings("h", "1", certificate=pki.client_cert)  # no key in it
    with pytest.raises(ValueError, match="certificate=.*holds no PEM certificate"):
        client_settings("h", "1", certificate=pki.client_key, privateKey=pki.client_key)
    with pytest.raises(OSError):
        client_settings("h", "1", trustRoots=str(tmp_path / "missing.pem"))


# -- client: real handshakes in memory


def test_sni_is_sent_and_verified_instead_of_the_host(pki: PKI) -> None:
    peer = peer_server(pki)
    run = dial(f"tlsx:127.0.0.2:443:sni=localhost:trustRoots={pki.ca_pem}", peer)
    assert run.app.handshake_done, run.app.lost
    assert peer.server_names == [b"localhost"]


def test_sni_is_what_verification_checks(pki: PKI) -> None:
    other = pki.ca.issue_cert("www.example")
    run = dial(f"tlsx:127.0.0.1:443:sni=localhost:trustRoots={pki.ca_pem}",
               peer_server(pki, cert=other))
    assert not run.app.handshake_done and failed_verification(run)
    peer = peer_server(pki, cert=other)
    run = dial(f"tlsx:127.0.0.1:443:sni=www.example:trustRoots={pki.ca_pem}", peer)
    assert run.app.handshake_done, run.app.lost
    assert peer.server_names == [b"www.example"]


def test_without_sni_the_host_is_sent(pki: PKI) -> None:
    peer = peer_server(pki)
    run = dial(f"tlsx:localhost:443:trustRoots={pki.ca_dir}", peer)
    assert run.app.handshake_done, run.app.lost
    assert peer.server_names == [b"localhost"]


def test_alpn_is_offered_in_order_and_negotiated(pki: PKI) -> None:
    peer = peer_server(pki, alpn=[b"http/1.1"])
    run = dial(f"tlsx:localhost:443:alpn=h2,http/1.1:trustRoots={pki.ca_pem}", peer)
    assert run.app.handshake_done, run.app.lost
    assert peer.offered_alpn == [[b"h2", b"http/1.1"]]
    assert peer.connection.get_alpn_proto_negotiated() == b"http/1.1"


def test_no_alpn_is_offered_by_default(pki: PKI) -> None:
    peer = peer_server(pki, alpn=[b"h2"])
    run = dial(f"tlsx:localhost:443:trustRoots={pki.ca_pem}", peer)
    assert run.app.handshake_done and peer.offered_alpn == []


def test_an_unknown_ca_fails_verification(pki: PKI) -> None:
    run = dial(f"tlsx:localhost:443:trustRoots={pki.other_ca_pem}", peer_server(pki))
    assert not run.app.handshake_done and failed_verification(run)


class NoSubjectAltName:
    """
    A certificate signed by C{ca} that names its host only in the subject's
    commonName (no subjectAltName extension), with C{configure_cert} like
    trustme's.
    """

    def __init__(self, ca: trustme.CA, common_name: str) -> None:
        import datetime

        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        issuer_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
        issuer = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(issuer.subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256())
        )

    def configure_cert(self, context: SSL.Context) -> None:
        context.use_certificate(self.cert)
        context.use_privatekey(self.key)


@pytest.mark.parametrize("host", ["localhost", "evil.example"])
def test_a_certificate_without_subject_alt_name_fails_closed(pki: PKI, host: str) -> None:
    # Twisted's own verify callback lets this through for any host name
    # (service_identity raises CertificateError, which it only logs).
    peer = peer_server(pki, cert=NoSubjectAltName(pki.ca, host))  # type: ignore[arg-type]
    run = dial(f"tlsx:{host}:443:trustRoots={pki.ca_pem}", peer)
    assert not run.app.handshake_done
    assert run.app.lost is not None
    assert "subjectAltName" in str(run.app.lost.value), run.app.lost


def test_an_untrusted_chain_is_reported_before_the_name(pki: PKI) -> None:
    stranger = pki.other_ca.issue_cert("elsewhere.example")
    run = dial(f"tlsx:localhost:443:trustRoots={pki.ca_pem}", peer_server(pki, cert=stranger))
    assert not run.app.handshake_done and run.app.lost is not None
    assert isinstance(run.app.lost.value, SSL.Error), run.app.lost
    assert "certificate verify failed" in repr(run.app.lost.value)


def test_verified_creator_wraps_twisted_options(pki: PKI) -> None:
    creator = tlsx.client_creator(client_settings("h.example", "1", trustRoots=pki.ca_pem))
    assert isinstance(creator, tlsx.VerifyingClientCreator)
    assert creator.server_name == "h.example"


def test_verify_no_accepts_an_unknown_ca_and_a_wrong_name(pki: PKI) -> None:
    stranger = pki.other_ca.issue_cert("elsewhere.example")
    peer = peer_server(pki, cert=stranger, alpn=[b"h2"])
    run = dial("tlsx:127.0.0.1:443:sni=localhost:verify=no:alpn=h2", peer)
    assert run.app.handshake_done, run.app.lost
    assert peer.server_names == [b"localhost"]
    assert peer.connection.get_alpn_proto_negotiated() == b"h2"


def test_verify_no_sends_no_sni_for_an_ip(pki: PKI) -> None:
    peer = peer_server(pki)
    run = dial("tlsx:127.0.0.1:443:verify=no", peer)
    assert run.app.handshake_done and peer.server_names in ([], [None])


@pytest.mark.parametrize("verify", ["yes", "no"])
def test_max_version_is_kept(pki: PKI, verify: str) -> None:
    trust = f":trustRoots={pki.ca_pem}" if verify == "yes" else ""
    peer = peer_server(pki)
    run = dial(f"tlsx:localhost:443:maxVersion=TLSv1.2:verify={verify}{trust}", peer)
    assert run.app.handshake_done, run.app.lost
    assert peer.connection.get_protocol_version_name() == "TLSv1.2"


@pytest.mark.parametrize("verify", ["yes", "no"])
def test_min_version_is_kept(pki: PKI, verify: str) -> None:
    trust = f":trustRoots={pki.ca_pem}" if verify == "yes" else ""
    run = dial(f"tlsx:localhost:443:minVersion=TLSv1.3:verify={verify}{trust}",
               peer_server(pki, max_version=SSL.TLS1_2_VERSION))
    assert not run.app.handshake_done
    assert run.peer.error is not None or run.app.lost is not None


@pytest.mark.parametrize("verify", ["yes", "no"])
def test_client_certificate_is_presented(pki: PKI, verify: str) -> None:
    trust = f":trustRoots={pki.ca_pem}" if verify == "yes" else ""
    peer = peer_server(pki)
    peer.connection.set_verify(SSL.VERIFY_PEER, lambda *args: True)
    run = dial(f"tlsx:localhost:443:verify={verify}{trust}"
               f":certificate={pki.client_cert}:privateKey={pki.client_key}", peer)
    assert run.app.handshake_done, run.app.lost
    presented = peer.connection.get_peer_certificate(as_cryptography=True)
    assert presented is not None and dns_names(presented) == ["client.example"]


# -- server: what parses


def test_server_endpoint_listens_as_asked(pki: PKI) -> None:
    reactor = MemoryReactorClock()
    endpoint = serverFromString(
        reactor,
        f"tlsx:8443:privateKey={pki.server_key}:certKey={pki.server_cert}"
        ":interface=127.0.0.1:backlog=7",
    )
    assert IStreamServerEndpoint.providedBy(endpoint)
    assert reactor.sslServers == []
    endpoint.listen(Factory.forProtocol(Protocol))
    port, _factory, options, backlog, interface = reactor.sslServers[0]
    assert (port, backlog, interface) == (8443, 7, "127.0.0.1")
    assert isinstance(options, CertificateOptions) and not options.verify


def test_server_key_and_certificate_in_one_file_like_ssl(pki: PKI) -> None:
    options = server_options(privateKey=pki.server_both)
    assert options.certificate is not None and options.privateKey is not None


def test_server_options_mutual_tls(pki: PKI) -> None:
    options = server_options(privateKey=pki.server_key, certKey=pki.server_cert,
                             requireClientCert="yes", clientCA=pki.ca_pem)
    assert options.verify and options.requireCertificate
    assert server_options(privateKey=pki.server_both, clientCA=pki.ca_pem).requireCertificate
    optional = server_options(privateKey=pki.server_both, clientCA=pki.ca_pem,
                              requireClientCert="no")
    assert optional.verify and not optional.requireCertificate


def test_server_parser_installs_the_alpn_fix(pki: PKI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tlsfix, "_installed", False)
    monkeypatch.setattr(_sslverify, "setupForALPN", lambda context, protocols: None)
    serverFromString(MemoryReactorClock(), f"tlsx:0:privateKey={pki.server_both}")
    assert _sslverify.setupForALPN is tlsfix._setup_for_alpn


def test_server_extra_cert_chain(pki: PKI) -> None:
    intermediate = pki.ca.create_child_ca()
    leaf = intermediate.issue_cert("localhost")
    key = pki.write("leaf.key", leaf.private_key_pem.bytes())
    cert = pki.write("leaf.pem", leaf.cert_chain_pems[0].bytes())
    chain = pki.write("chain.pem", b"".join(p.bytes() for p in leaf.cert_chain_pems[1:]))
    options = server_options(privateKey=key, certKey=cert, extraCertChain=chain)
    assert len(options.extraCertChain) == 1


# -- server: bad values


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (":requireClientCert=yes", "needs clientCA="),
        (":requireClientCert=maybe:clientCA={ca}", "requireClientCert=maybe"),
        (":minVersion=TLSv9", "minVersion=TLSv9"),
        (":maxVersion=1.1", "maxVersion=1.1"),
        (":minVersion=TLSv1.3:maxVersion=TLSv1.2", "above maxVersion"),
        (":sslmethod=NOPE_METHOD", "sslmethod=NOPE_METHOD"),
        (":sslmethod=DTLS_METHOD", "sslmethod=DTLS_METHOD"),
        (":sslmethod=TLS_METHOD:minVersion=TLSv1.3", "cannot be combined"),
        (":alpn=,", "alpn="),
        (":backlog=many", "backlog=many"),
        (":backlog=0", "backlog=0"),
        (":clientCA={key}", "holds no PEM certificate"),
        (":extraCertChain={key}", "holds no PEM certificate"),
        (":certKey={other}", "does not belong"),
    ],
)
def test_server_bad_values_raise_value_error(pki: PKI, extra: str, words: str) -> None:
    other = pki.write("other.pem", pki.client.cert_chain_pems[0].bytes())
    description = f"tlsx:0:privateKey={pki.server_key}:certKey={pki.server_cert}" + extra.format(
        ca=pki.ca_pem, key=pki.server_key, other=other
    )
    description = description.replace(f":certKey={pki.server_cert}:certKey", ":certKey")
    with pytest.raises(ValueError) as raised:
        serverFromString(MemoryReactorClock(), description)
    assert words in str(raised.value)
    assert "\n" not in str(raised.value)


def test_server_bad_port() -> None:
    with pytest.raises(ValueError, match="port=-1"):
        TLSXServerParser().parseStreamServer(MemoryReactorClock(), "-1")


# -- server: real handshakes in memory


def mtls(pki: PKI, extra: str = "") -> str:
    return (f"tlsx:0:privateKey={pki.server_key}:certKey={pki.server_cert}"
            f":requireClientCert=yes:clientCA={pki.ca_pem}{extra}")


def test_mutual_tls_rejects_a_client_without_a_certificate(pki: PKI) -> None:
    run = serve(mtls(pki), peer_client())
    assert not run.app.handshake_done
    assert run.app.lost is not None and "peer did not return a certificate" in repr(
        run.app.lost.value
    )


def test_mutual_tls_rejects_a_certificate_from_another_ca(pki: PKI) -> None:
    run = serve(mtls(pki), peer_client(cert=pki.stranger))
    assert not run.app.handshake_done and failed_verification(run)


def test_mutual_tls_accepts_a_certificate_signed_by_client_ca(pki: PKI) -> None:
    run = serve(mtls(pki), peer_client(cert=pki.client))
    assert run.app.handshake_done, run.app.lost


class Reporting(App):
    """
    An application that, when its connection ends, works out why the peer
    failed verification as epcat's relay does (L{tlsinfo.VerifyRecord}).
    """

    def __init__(self) -> None:
        super().__init__()
        self.record = tlsinfo.VerifyRecord()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.record.remember_peer(self.transport)
        super().connectionLost(reason)

    def why(self) -> str | None:
        assert self.lost is not None
        return tlsinfo.verification_failure(self.lost.value, self.record, None)


def test_mutual_tls_says_why_a_certificate_from_another_ca_failed(pki: PKI) -> None:
    """
    The server's verify callback notes OpenSSL's reason, which a server
    cannot learn afterwards (no client chain is left once verification
    failed): the words the client side gives, with clientCA= to check.
    """
    app = Reporting()
    run = serve(mtls(pki), peer_client(cert=pki.stranger), app)
    assert not run.app.handshake_done and failed_verification(run)
    subject = pki.stranger.cert_chain_pems[0]
    assert app.record.errno == 20 and app.record.client_certificate
    assert app.why() == (
        "unable to get local issuer certificate (is it signed by a CA in clientCA=?); "
        "certificate subject "
        + x509.load_pem_x509_certificate(subject.bytes()).subject.rfc4514_string()
    )


def test_mutual_tls_says_a_client_certificate_has_expired(pki: PKI) -> None:
    app = Reporting()
    run = serve(mtls(pki), peer_client(cert=pki.expired), app)
    assert not run.app.handshake_done and failed_verification(run)
    assert app.why() == "certificate has expired (not after 2025-01-02)"


def test_optional_client_certificate_says_why_it_failed(pki: PKI) -> None:
    app = Reporting()
    run = serve(f"tlsx:0:privateKey={pki.server_both}:clientCA={pki.ca_pem}"
                ":requireClientCert=no", peer_client(cert=pki.expired), app)
    assert not run.app.handshake_done
    assert app.why() == "certificate has expired (not after 2025-01-02)"


def test_mutual_tls_success_notes_nothing(pki: PKI) -> None:
    app = Reporting()
    run = serve(mtls(pki), peer_client(cert=pki.client), app)
    assert run.app.handshake_done, run.app.lost
    assert app.transport.getHandle() not in tlsinfo._noted_errors
    assert app.record.errno is None


def test_server_verify_callback_keeps_openssl_verdict() -> None:
    """
    The callback only notes: OpenSSL's verdict is what it returns.
    """

    class Connection:
        pass

    connection, certificate = Connection(), object()
    assert tlsx.server_verify_callback(connection, certificate, 0, 0, 1) is True
    assert connection not in tlsinfo._noted_errors
    assert tlsx.server_verify_callback(connection, certificate, 10, 0, 0) is False
    assert tlsinfo._noted_errors[connection] == (10, certificate)


def test_optional_client_certificate(pki: PKI) -> None:
    base = (f"tlsx:0:privateKey={pki.server_both}:clientCA={pki.ca_dir}"
            ":requireClientCert=no")
    assert serve(base, peer_client()).app.handshake_done
    assert serve(base, peer_client(cert=pki.client)).app.handshake_done
    run = serve(base, peer_client(cert=pki.stranger))
    assert not run.app.handshake_done and failed_verification(run)


def test_server_alpn_preference(pki: PKI) -> None:
    description = f"tlsx:0:privateKey={pki.server_both}:alpn=h2,http/1.1"
    run = serve(description, peer_client(alpn=[b"http/1.1", b"h2"]))
    assert run.app.handshake_done
    assert run.peer.connection.get_alpn_proto_negotiated() == b"h2"


@pytest.mark.parametrize("alpn", ["", ":alpn=h2"])
def test_server_answers_an_unknown_alpn_offer_with_none(pki: PKI, alpn: str) -> None:
    # what curl and browsers do against a server that speaks neither: the
    # handshake goes on without ALPN (Twisted alone aborts it: epcat.tlsfix).
    run = serve(f"tlsx:0:privateKey={pki.server_both}{alpn}",
                peer_client(alpn=[b"spdy/1", b"http/1.1"]))
    assert run.app.handshake_done, run.app.lost
    assert run.peer.connection.get_alpn_proto_negotiated() == b""


def test_server_min_version(pki: PKI) -> None:
    run = serve(f"tlsx:0:privateKey={pki.server_both}:minVersion=TLSv1.3",
                peer_client(max_version=SSL.TLS1_2_VERSION))
    assert not run.app.handshake_done
    run = serve(f"tlsx:0:privateKey={pki.server_both}:maxVersion=TLSv1.2", peer_client())
    assert run.app.handshake_done
    assert run.peer.connection.get_protocol_version_name() == "TLSv1.2"
