"""
Tests for L{epcat.tlsfix}: ALPN selection on TLS servers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet import _sslverify
from twisted.internet.interfaces import IHalfCloseableProtocol, IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from epcat import tlsfix
from epcat.tlsfix import select_protocol


def twisted_setup_for_alpn(context: Any, acceptable: Any) -> None:
    """
    Stands in for Twisted's own C{setupForALPN} while a test runs.
    """


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Twisted as it is before L{tlsfix.install}; restored afterwards, so the
    rest of the session sees what it saw before.
    """
    monkeypatch.setattr(_sslverify, "setupForALPN", twisted_setup_for_alpn)
    monkeypatch.setattr(tlsfix, "_installed", False)
    # (Twisted's own, even if another test in this process installed the fixes)
    flush = TLSMemoryBIOProtocol._flushReceiveBIO
    if flush is tlsfix._flush_receive_bio:
        flush = tlsfix._twisted_flush_receive_bio
    monkeypatch.setattr(TLSMemoryBIOProtocol, "_flushReceiveBIO", flush)
    verify = _sslverify.verify_service_identity
    monkeypatch.setattr(
        _sslverify, "verify_service_identity", getattr(verify, "epcat_wrapped", verify)
    )


# -- select_protocol


def test_select_returns_the_first_server_preferred_overlap() -> None:
    offered = [b"http/1.1", b"h2"]
    assert select_protocol(offered, [b"h2", b"http/1.1"]) == b"h2"
    assert select_protocol(offered, [b"http/1.1", b"h2"]) == b"http/1.1"
    assert select_protocol([b"h2"], [b"spdy/3", b"h2"]) == b"h2"


@pytest.mark.parametrize(
    ("offered", "acceptable"),
    [([b"h2", b"http/1.1"], []), ([b"h2"], [b"http/1.1"]), ([], [b"h2"])],
)
def test_select_without_overlap_says_so_the_pyopenssl_way(
    offered: list[bytes], acceptable: list[bytes]
) -> None:
    assert select_protocol(offered, acceptable) is SSL.NO_OVERLAPPING_PROTOCOLS


# -- install


def test_install_replaces_setup_for_alpn(fresh: None) -> None:
    assert _sslverify.setupForALPN is twisted_setup_for_alpn
    assert tlsfix.install() is True
    assert _sslverify.setupForALPN is tlsfix._setup_for_alpn


def test_install_is_idempotent(fresh: None) -> None:
    assert tlsfix.install() is True
    installed = _sslverify.setupForALPN
    assert tlsfix.install() is True
    assert tlsfix.install() is True
    assert _sslverify.setupForALPN is installed is tlsfix._setup_for_alpn


def test_install_without_setup_for_alpn_does_nothing(
    fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(_sslverify, "setupForALPN")
    assert tlsfix.install() is False
    assert not hasattr(_sslverify, "setupForALPN")
    assert tlsfix._installed is False


# -- the replacement's select callback


class FakeContext:
    def __init__(self) -> None:
        self.callback: Callable[..., Any] | None = None

    def set_alpn_select_callback(self, callback: Callable[..., Any]) -> None:
        self.callback = callback


class FakeTLSProtocol:
    """
    What C{connection.get_app_data()} is in Twisted: the TLS protocol, whose
    factory wraps the application's factory.
    """

    def __init__(self, wrapped: Any) -> None:
        self.factory = type("TLSFactory", (), {"wrappedFactory": wrapped})()


class FakeConnection:
    def __init__(self, app_data: Any) -> None:
        self.app_data = app_data

    def get_app_data(self) -> Any:
        return self.app_data


def select_with(acceptable: list[bytes], offered: list[bytes]) -> Any:
    context = FakeContext()
    tlsfix._setup_for_alpn(context, acceptable)
    assert context.callback is not None
    return context.callback(FakeConnection(FakeTLSProtocol(Factory())), offered)


def test_setup_for_alpn_selects_like_twisted() -> None:
    assert select_with([b"h2", b"http/1.1"], [b"http/1.1", b"h2"]) == b"h2"


def test_setup_for_alpn_answers_no_overlap() -> None:
    assert select_with([], [b"h2", b"http/1.1"]) is SSL.NO_OVERLAPPING_PROTOCOLS


# -- a real handshake, in memory


def handshake(server: SSL.Connection, client: SSL.Connection) -> None:
    """
    Drive a TLS handshake between two memory-BIO connections.
    """
    pending = {server: False, client: False}
    for _ in range(20):
        for conn in (client, server):
            if not pending[conn]:
                try:
                    conn.do_handshake()
                    pending[conn] = True
                except SSL.WantReadError:
                    pass
        for source, sink in ((client, server), (server, client)):
            try:
                sink.bio_write(source.bio_read(65536))
            except SSL.WantReadError:
                pass
        if all(pending.values()):
            return
    raise AssertionError("handshake did not finish")


# Twisted hands pyOpenSSL X509/PKey objects to the context: not ours to fix.
@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
def test_alpn_client_completes_a_handshake_with_a_twisted_server_context(fresh: None) -> None:
    import trustme  # (a test dependency)

    from OpenSSL import crypto
    from twisted.internet.ssl import CertificateOptions

    assert tlsfix.install()
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    options = CertificateOptions(
        privateKey=crypto.load_privatekey(crypto.FILETYPE_PEM, cert.private_key_pem.bytes()),
        certificate=crypto.load_certificate(crypto.FILETYPE_PEM, cert.cert_chain_pems[0].bytes()),
    )
    server = SSL.Connection(options.getContext(), None)
    server.set_app_data(FakeTLSProtocol(Factory()))
    server.set_accept_state()
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_context.set_alpn_protos([b"h2", b"http/1.1"])  # what curl offers
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    handshake(server, client)
    assert client.get_alpn_proto_negotiated() == b""
    assert server.get_alpn_proto_negotiated() == b""


# -- a peer's close_notify: half-close for half-closeable protocols


class Recorder(Protocol):
    """
    Records what a TLS server hands its protocol.
    """

    def __init__(self) -> None:
        self.data = b""
        self.read_lost = 0
        self.lost: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason


@implementer(IHalfCloseableProtocol)
class HalfCloser(Recorder):
    def readConnectionLost(self) -> None:
        self.read_lost += 1

    def writeConnectionLost(self) -> None:
        pass


@implementer(IOpenSSLServerConnectionCreator)
class ServerContext:
    """
    Connections for Twisted's TLS server, with a trustme certificate.
    """

    def __init__(self) -> None:
        import trustme  # (a test dependency)

        cert = trustme.CA().issue_cert("localhost")
        self.context = SSL.Context(SSL.TLS_SERVER_METHOD)
        cert.configure_cert(self.context)

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        return SSL.Connection(self.context, None)


class Session:
    """
    Twisted's TLS server (a C{TLSMemoryBIOProtocol} over a
    C{StringTransport}) and a pyOpenSSL client on memory BIOs, handshaken.
    """

    def __init__(self, protocol: Recorder) -> None:
        self.protocol = protocol
        #: Twisted's TLS transport holds small writes until the next round
        self.clock = Clock()
        factory = TLSMemoryBIOFactory(
            ServerContext(), False, Factory.forProtocol(lambda: protocol), clock=self.clock
        )
        self.server = factory.buildProtocol(None)
        self.wire = StringTransport()
        self.server.makeConnection(self.wire)
        self.client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
        self.client.set_connect_state()
        for _ in range(10):
            try:
                self.client.do_handshake()
            except SSL.WantReadError:
                pass
            self.to_server()
            self.to_client()
        assert self.server._handshakeDone

    def to_server(self) -> None:
        try:
            data = self.client.bio_read(1 << 20)
        except SSL.WantReadError:
            return
        self.server.dataReceived(data)

    def to_client(self) -> None:
        self.clock.advance(0)
        data = self.wire.value()
        self.wire.clear()
        if data:
            self.client.bio_write(data)

    def client_reads(self) -> bytes:
        self.to_client()
        got = b""
        while True:
            try:
                got += self.client.recv(1 << 16)
            except (SSL.WantReadError, SSL.ZeroReturnError):
                return got

    def client_half_closes(self, request: bytes) -> None:
        self.client.sendall(request)
        self.client.shutdown()  # close_notify, and go on reading
        self.to_server()


def test_close_notify_is_a_half_close_for_a_half_closeable_protocol(fresh: None) -> None:
    """
    After install, the peer's close_notify is C{readConnectionLost}; the
    connection stays up, a reply written afterwards reaches the peer, and
    closing then sends epcat's own close_notify.
    """
    tlsfix.install()
    session = Session(HalfCloser())
    session.client_half_closes(b"request")
    protocol = session.protocol
    assert protocol.data == b"request"
    assert protocol.read_lost == 1
    assert protocol.lost is None
    assert not session.wire.disconnecting
    session.server.write(b"the reply")
    assert session.client_reads() == b"the reply"
    session.server.loseConnection()
    assert session.wire.disconnecting
    session.client_reads()
    assert session.client.get_shutdown() & SSL.RECEIVED_SHUTDOWN


def test_close_notify_is_told_once(fresh: None) -> None:
    """
    Records after the close_notify (or TCP EOF, which the TLS protocol now
    takes as a half-close too) do not repeat C{readConnectionLost}.
    """
    tlsfix.install()
    session = Session(HalfCloser())
    session.client_half_closes(b"x")
    session.server._flushReceiveBIO()  # (as for a later record)
    assert IHalfCloseableProtocol.providedBy(session.server)
    session.server.readConnectionLost()  # (the TCP transport's call on FIN)
    assert session.protocol.read_lost == 1
    assert not session.wire.disconnecting


def test_close_notify_answering_epcats_own_closes_tcp(fresh: None) -> None:
    """
    epcat closes first (loseConnection: its close_notify, as on an idle
    timeout); the peer's close_notify that answers it completes the
    shutdown, and TCP is closed at once, as Twisted does, not taken as a
    half-close that leaves the connection waiting for a FIN it no longer
    reads.
    """
    tlsfix.install()
    session = Session(HalfCloser())
    session.server.loseConnection()
    session.client_reads()
    assert session.client.get_shutdown() & SSL.RECEIVED_SHUTDOWN
    assert not session.wire.disconnecting  # (waiting for the answer)
    session.client.shutdown()  # the peer's close_notify
    session.to_server()
    assert session.wire.disconnecting
    assert session.protocol.read_lost == 0


def test_close_notify_still_ends_a_protocol_that_does_not_half_close(fresh: None) -> None:
    """
    Protocols without C{IHalfCloseableProtocol} see what Twisted gives them:
    the connection ends (close_notify back, TCP closed).
    """
    tlsfix.install()
    session = Session(Recorder())
    session.client_half_closes(b"request")
    assert session.protocol.data == b"request"
    assert session.wire.disconnecting
    assert not IHalfCloseableProtocol.providedBy(session.server)


def test_without_install_twisted_ends_the_connection(fresh: None) -> None:
    """
    What the fix is for: Twisted alone closes a half-closeable protocol's
    connection on close_notify, so no reply can follow.
    """
    session = Session(HalfCloser())
    session.client_half_closes(b"request")
    assert session.protocol.read_lost == 0
    assert session.wire.disconnecting


def test_tls_shutdown_write_sends_buffered_data_before_close_notify(fresh: None) -> None:
    """
    epcat's own TLS half-close (L{epcat.relay.tls_shutdown_write}) right
    after a write in the same reactor round: the data Twisted's TLS
    transport held for the round goes out before the close_notify, and the
    connection stays up for reading.
    """
    from epcat.relay import tls_shutdown_write

    session = Session(HalfCloser())
    session.server.write(b"the last bytes")
    assert tls_shutdown_write(session.server)
    assert session.client_reads() == b"the last bytes"
    assert session.client.get_shutdown() & SSL.RECEIVED_SHUTDOWN
    session.client.sendall(b"still reading")
    session.to_server()
    assert session.protocol.data == b"still reading"
    assert not session.wire.disconnecting


# -- certificates service-identity cannot check fail verification


def test_certificate_error_becomes_a_verification_error(fresh: None) -> None:
    """
    Twisted's C{tls:} verify callback handles only C{VerificationError}:
    after install, service-identity's C{CertificateError} (no subjectAltName)
    reaches it as one, keeping its message, and epcat classifies it as a
    verification failure (exit 60).
    """
    from service_identity import CertificateError, VerificationError

    from epcat.status import ExitStatus, classify

    def no_san(*args: Any) -> None:
        raise CertificateError("Certificate does not contain any `subjectAltName`s.")

    _sslverify.verify_service_identity = no_san
    tlsfix.install()
    with pytest.raises(VerificationError) as caught:
        _sslverify.verify_service_identity([], [], [])
    assert str(caught.value) == "Certificate does not contain any `subjectAltName`s."
    assert classify(caught.value) == (
        ExitStatus.TLS_VERIFY,
        "TLS certificate verification failed: Certificate does not contain any "
        "`subjectAltName`s.",
    )
    tlsfix.install()  # (idempotent: wrapped once)
    assert _sslverify.verify_service_identity.epcat_wrapped is no_san


def test_close_notify_makes_an_endpoint_wrapper_half_close_too(fresh: None) -> None:
    """
    On a client made by a Twisted endpoint, the TCP transport's protocol is
    a C{_WrappingProtocol} around the TLS one, which copied its interfaces
    when it was made: it half-closes too once the close_notify has come, so
    a FIN after it reaches the no-op C{readConnectionLost}.
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import _WrappingProtocol

    tlsfix.install()
    session = Session(HalfCloser())
    outer = _WrappingProtocol(Deferred(), session.server)
    session.wire.protocol = outer
    assert not IHalfCloseableProtocol.providedBy(outer)
    session.client_half_closes(b"x")
    assert IHalfCloseableProtocol.providedBy(outer)
    outer.readConnectionLost()  # (the TCP transport's call on FIN)
    assert session.protocol.read_lost == 1
    assert not session.wire.disconnecting
