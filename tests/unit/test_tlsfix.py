"""
Tests for L{epcat.tlsfix}: ALPN selection on TLS servers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet import _sslverify
from twisted.internet.protocol import Factory

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
