"""
Tests for L{epcat.tlsinfo}: telling a reset under a TLS connection from a
FIN; what a handshake negotiated and why verification failed, in words.
"""

from __future__ import annotations

import datetime
import ipaddress
import select
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from epcat import tlsinfo

WAIT = 10.0


class FakeTCP:
    """
    The parts of Twisted's C{tcp.Connection} L{tlsinfo.watch} uses: the
    socket, the protocol (the TLS layer) and C{connectionLost}, which closes
    the socket before it tells the protocol, as Twisted's does.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.protocol = FakeTLSLayer()
        self.lost: list[Failure] = []

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)
        self.socket.close()
        self.protocol.connectionLost(reason)


class FakeTLSLayer:
    def __init__(self) -> None:
        self.lost: list[Failure] = []

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


class FakeTLSTransport:
    """
    What the wrapped protocol sees: a transport with C{getHandle()} over the
    TCP transport.
    """

    def __init__(self, tcp: Any) -> None:
        self.transport = tcp

    def getHandle(self) -> Any:
        raise NotImplementedError


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """
    Both ends of a TCP connection on loopback: (ours, the peer's).
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        ours = socket.create_connection(listener.getsockname(), timeout=WAIT)
        peer, _ = listener.accept()
    try:
        yield ours, peer
    finally:
        ours.close()
        peer.close()


def _wait_hangup(sock: socket.socket) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    assert poller.poll(WAIT * 1000), "the peer's close never arrived"


def _told_of_a_clean_close(tcp: Any) -> tlsinfo.VerifyRecord:
    """
    Watch a TLS transport over C{tcp}, then tell C{tcp} its connection ended
    cleanly (C{ConnectionDone}), as Twisted's reactor does.
    """
    record = tlsinfo.watch(FakeTLSTransport(tcp))
    assert record is not None
    tcp.connectionLost(Failure(ConnectionDone()))
    return record


def test_reset_reported_as_a_clean_close_is_a_reset(connection) -> None:
    """
    When the TCP transport under a TLS connection is told its connection
    ended cleanly (C{ConnectionDone}) while a reset is pending on its socket
    -- Twisted's reading of an epoll wake-up for a reset before the receive
    side is marked shut -- the record says the connection was reset.
    """
    ours, peer = connection
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    _wait_hangup(ours)
    tcp = FakeTCP(ours)
    record = _told_of_a_clean_close(tcp)
    assert record.reset
    assert tcp.protocol.lost[0].check(ConnectionDone)
    assert "connectionLost" not in vars(tcp)


def test_fin_is_not_a_reset(connection) -> None:
    """
    A clean close (FIN) with nothing pending is not a reset.
    """
    ours, peer = connection
    peer.close()
    _wait_hangup(ours)
    tcp = FakeTCP(ours)
    record = _told_of_a_clean_close(tcp)
    assert not record.reset


def test_a_transport_with_slots_is_left_alone(connection) -> None:
    """
    A TCP transport that cannot take the hook (no instance dictionary) is
    left as it is, and the record still works from its protocol's reason.
    """

    class SlottedTCP:
        __slots__ = ("socket", "protocol")

        def __init__(self, sock: socket.socket) -> None:
            self.socket = sock
            self.protocol = FakeTLSLayer()

        def connectionLost(self, reason: Failure) -> None:
            self.protocol.connectionLost(reason)

    ours, _ = connection
    record = _told_of_a_clean_close(SlottedTCP(ours))
    assert not record.reset
    assert record.tcp_reason.check(ConnectionDone)


# -- what a handshake negotiated, every field named


class Handle:
    """
    A TLS transport as L{tlsinfo} sees it: C{getHandle()} gives the
    pyOpenSSL connection.
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def getHandle(self) -> Any:
        return self.connection


def _pump(source: SSL.Connection, sink: SSL.Connection) -> bool:
    try:
        data = source.bio_read(65536)
    except SSL.WantReadError:
        return False
    sink.bio_write(data)
    return True


def handshake(
    sni: bytes | None = None, offer: list[bytes] | None = None, select: bytes | None = None
) -> tuple[SSL.Connection, SSL.Connection]:
    """
    A TLS handshake on memory BIOs between a client that verifies nothing
    (what C{tlsx:...:verify=no} builds), sending C{sni} and offering the
    ALPN protocols C{offer}, and a server with a trustme certificate that
    picks C{select} if offered.

    @return: (client connection, server connection), both done.
    """
    server_context = SSL.Context(SSL.TLS_SERVER_METHOD)
    trustme.CA().issue_cert("localhost").configure_cert(server_context)

    def choose(connection: SSL.Connection, offered: list[bytes]) -> Any:
        return select if select in offered else SSL.NO_OVERLAPPING_PROTOCOLS

    server_context.set_alpn_select_callback(choose)
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_context.set_verify(SSL.VERIFY_NONE)
    if offer:
        client_context.set_alpn_protos(offer)
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    if sni is not None:
        client.set_tlsext_host_name(sni)
    server = SSL.Connection(server_context, None)
    server.set_accept_state()
    done = {client: False, server: False}
    for _ in range(20):
        for connection in (client, server):
            if not done[connection]:
                try:
                    connection.do_handshake()
                    done[connection] = True
                except SSL.WantReadError:
                    pass
        moved = _pump(client, server) | _pump(server, client)
        if all(done.values()) and not moved:
            return client, server
    raise AssertionError("the handshake did not finish")


SESSION_KEYS = {"version", "cipher", "alpn", "sni", "verification", "chain"}


def test_no_alpn_and_no_sni_are_named_not_left_out() -> None:
    """
    A connection without ALPN or SNI still has C{alpn} and C{sni} (None), and
    the text line says "ALPN none" and "no SNI sent" / "no SNI received".
    """
    client, server = handshake()
    ours = tlsinfo.describe_session(Handle(client), None, "client")
    assert set(ours) == SESSION_KEYS
    assert ours["alpn"] is None and ours["sni"] is None
    head = f"{ours['version']}, {ours['cipher']}"
    assert tlsinfo.session_summary(ours, "client") == (
        f"{head}, ALPN none, no SNI sent, verification skipped (verify=no)"
    )
    theirs = tlsinfo.describe_session(Handle(server), None, "server")
    assert set(theirs) == SESSION_KEYS
    assert theirs["alpn"] is None and theirs["sni"] is None
    assert tlsinfo.session_summary(theirs, "server") == (
        f"{head}, ALPN none, no SNI received, verification no client certificate"
    )


def test_alpn_and_sni_are_named() -> None:
    client, server = handshake(sni=b"localhost", offer=[b"h2", b"http/1.1"], select=b"h2")
    ours = tlsinfo.describe_session(Handle(client), None, "client")
    assert (ours["alpn"], ours["sni"]) == ("h2", "localhost")
    assert ", ALPN h2, SNI sent localhost, " in tlsinfo.session_summary(ours, "client")
    theirs = tlsinfo.describe_session(Handle(server), None, "server")
    assert (theirs["alpn"], theirs["sni"]) == ("h2", "localhost")
    assert ", ALPN h2, SNI received localhost, " in tlsinfo.session_summary(theirs, "server")


def test_a_client_that_verifies_nothing_says_verification_skipped() -> None:
    """
    C{verify=no} (a client connection with C{VERIFY_NONE}): "skipped
    (verify=no)", not "not verified".
    """
    client, _ = handshake(sni=b"localhost")
    info = tlsinfo.describe_session(Handle(client), None, "client")
    assert info["verification"] == "skipped (verify=no)"
    assert info["chain"], "the server's certificate is still described"


# -- validity: days left, or how long ago it expired

NOW = datetime.datetime(2026, 11, 21, 12, 0, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize(
    ("not_after", "words"),
    [
        (NOW + datetime.timedelta(days=30, hours=12), "30 days left"),
        (NOW + datetime.timedelta(days=2), "2 days left"),
        (NOW + datetime.timedelta(days=1, seconds=1), "1 day left"),
        (NOW + datetime.timedelta(days=1), "1 day left"),
        (NOW + datetime.timedelta(hours=23, minutes=59), "less than a day left"),
        (NOW, "less than a day left"),
        (NOW - datetime.timedelta(seconds=1), "expired less than a day ago"),
        (NOW - datetime.timedelta(hours=23, minutes=59), "expired less than a day ago"),
        (NOW - datetime.timedelta(days=1), "expired 1 day ago"),
        (NOW - datetime.timedelta(days=1, hours=23), "expired 1 day ago"),
        (NOW - datetime.timedelta(days=327, hours=3), "expired 327 days ago"),
    ],
)
def test_time_left(not_after: datetime.datetime, words: str) -> None:
    assert tlsinfo.time_left({"not_after": not_after.isoformat()}, now=NOW) == words


def test_time_left_of_a_described_certificate() -> None:
    """
    From L{tlsinfo.describe_certificate}'s own fields: an expired
    certificate says how long ago (its C{days_left} stays negative).
    """
    certificate = _certificate(
        not_before=NOW - datetime.timedelta(days=400),
        not_after=NOW - datetime.timedelta(days=327, hours=1),
    )
    info = tlsinfo.describe_certificate(certificate, now=NOW)
    assert info["days_left"] == -328
    assert tlsinfo.time_left(info, now=NOW) == "expired 327 days ago"


# -- subjectAltNames, prefixed as openssl x509 -text prints them


def _certificate(
    names: list[x509.GeneralName] | None = None,
    not_before: datetime.datetime = NOW - datetime.timedelta(days=1),
    not_after: datetime.datetime = NOW + datetime.timedelta(days=30),
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test.example")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256())


def test_subject_alt_names_have_their_kind() -> None:
    certificate = _certificate([
        x509.DNSName("a.example"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.RFC822Name("someone@example.org"),
        x509.UniformResourceIdentifier("spiffe://example.org/service"),
        x509.DirectoryName(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "directory")])
        ),
        x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4")),
    ])
    assert tlsinfo.describe_certificate(certificate, now=NOW)["subject_alt_names"] == [
        "DNS:a.example",
        "IP:127.0.0.1",
        "email:someone@example.org",
        "URI:spiffe://example.org/service",
        "DirName:CN=directory",
        "Registered ID:1.2.3.4",
    ]


def test_a_mismatch_names_an_email_without_its_prefix() -> None:
    """
    "certificate is for ..." lists the names themselves, whatever their kind.
    """
    from service_identity import VerificationError
    from service_identity.hazmat import DNSMismatch

    certificate = _certificate([x509.DNSName("b.example"), x509.RFC822Name("me@b.example")])
    error = VerificationError(errors=[DNSMismatch(mismatched_id="a.example")])
    record = tlsinfo.VerifyRecord()
    record.peer_certificate = certificate
    assert tlsinfo.verification_failure(error, record, "a.example") == (
        "hostname mismatch: asked for a.example, certificate is for b.example, me@b.example"
    )


# -- why a client's certificate failed, as a server saw it


class Connection:
    """
    Stands in for an C{OpenSSL.SSL.Connection} after a failed handshake on
    the server side: no peer certificate, no chain.
    """

    def get_peer_cert_chain(self) -> None:
        return None

    def get_peer_certificate(self) -> None:
        return None


def _x509(certificate: x509.Certificate) -> X509:
    return X509.from_cryptography(certificate)


def test_a_noted_client_certificate_error_says_why() -> None:
    """
    What a server's verify callback noted (L{tlsinfo.note_verify_error}) is
    the reason: OpenSSL's words, the certificate's subject, and the server's
    argument to check (clientCA=, not trustRoots=).
    """
    certificate = _certificate()
    connection = Connection()
    tlsinfo.note_verify_error(connection, _x509(certificate), 20)
    tlsinfo.note_verify_error(connection, _x509(_certificate()), 10)  # (a later one)
    record = tlsinfo.VerifyRecord()
    record.remember_peer(Handle(connection))
    assert (record.errno, record.client_certificate) == (20, True)
    assert record.certificate == certificate
    assert tlsinfo.verification_failure(Exception(), record, None) == (
        "unable to get local issuer certificate (is it signed by a CA in clientCA=?); "
        "certificate subject CN=test.example"
    )
    assert connection not in tlsinfo._noted_errors


def test_a_noted_expired_client_certificate() -> None:
    certificate = _certificate(
        not_before=NOW - datetime.timedelta(days=400),
        not_after=datetime.datetime(2025, 12, 31, 23, 0, tzinfo=datetime.timezone.utc),
    )
    connection = Connection()
    tlsinfo.note_verify_error(connection, _x509(certificate), 10)
    record = tlsinfo.VerifyRecord()
    record.remember_peer(Handle(connection))
    assert tlsinfo.verification_failure(Exception(), record, None) == (
        "certificate has expired (not after 2025-12-31)"
    )


def test_a_server_certificate_error_still_asks_for_trust_roots() -> None:
    """
    A client's own check of a server (nothing noted) keeps its hint.
    """
    record = tlsinfo.VerifyRecord()
    record.errno, record.certificate = 20, _certificate()
    assert tlsinfo.verification_failure(Exception(), record, None) == (
        "unable to get local issuer certificate (is trustRoots= set?); "
        "certificate subject CN=test.example"
    )
