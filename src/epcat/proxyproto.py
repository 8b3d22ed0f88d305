# -*- test-case-name: tests.unit.test_proxyproto -*-
"""
The PROXY protocol, both ways (haproxy's proxy-protocol.txt, versions 1 and
2).

Receiving: L{ProxyHeaderEndpoint} is what epcat puts behind a C{haproxy:}
description.  It reads the header with Twisted's own parsers
(C{twisted.protocols.haproxy}), and does what Twisted's wrapper does not:
the wrapped protocol is connected only once the header has been parsed (so
nothing sees the proxy's address as the peer), a header split across reads is
buffered until complete (Twisted's wrapper drops a first read shorter than 8
(v1) or 16 (v2) bytes), half-close passes through, the header must arrive
within a time limit, and only trusted senders may send one.

Sending: L{encode_header} builds the header for an outbound connection from
the inbound transport, with the C{proxy-protocol} package's encoders.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from epcat.endpoints import ip_network_of, ip_of

#: proxy-protocol.txt section 2.2: the 12-byte v2 signature.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: section 2.1: a v1 header starts with "PROXY" and a space.
V1_START = b"PROXY "
#: section 2.1: a v1 line is at most 107 bytes, CRLF included.
V1_MAX = 107


class ProxyHeaderRejected(Exception):
    """
    A connection to a C{haproxy:} listener was closed before it was relayed.
    """


def _header_kind(buffer: bytes) -> str | None:
    """
    Which PROXY version C{buffer} starts with: C{"v1"}, C{"v2"}, L{None} when
    more bytes are needed to tell.

    @raise InvalidProxyHeader: the bytes can start no PROXY header.
    """
    if buffer[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(buffer)]:
        if len(buffer) < 13:
            return None
        if buffer[12] & 0xF0 != 0x20:
            raise InvalidProxyHeader("unknown PROXY protocol v2 version")
        return "v2"
    if buffer[: len(V1_START)] == V1_START[: len(buffer)]:
        return "v1" if len(buffer) >= len(V1_START) else None
    raise InvalidProxyHeader("no PROXY header")


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class ProxyHeaderWrapper(ProtocolWrapper):
    """
    Reads a PROXY header, then builds the wrapped protocol (with the address
    the header carried, so the wrapped factory's C{buildProtocol} can refuse
    it) and connects it; its C{getPeer}/C{getHost} return the addresses the
    header carried.

    Under TLS (C{haproxy:ssl:...}, where the header comes inside the TLS
    session) the handshake is done before the header arrives, so before the
    wrapped protocol exists: an C{IHandshakeListener} wrapped protocol is
    told at once after its C{connectionMade}.

    @ivar proxy_info: the parsed header (C{ProxyInfo}), once it has arrived.
    @ivar proxied_by: the address of the sender of the header (the proxy).
    """

    factory: ProxyHeaderFactory

    def __init__(self, factory: ProxyHeaderFactory, wrappedProtocol: Any = None) -> None:
        super().__init__(factory, wrappedProtocol)
        self.proxy_info: Any = None
        self.proxied_by: Any = None
        self._buffer = b""
        self._parser: V1Parser | V2Parser | None = None
        self._timer: Any = None
        self._rejected = False
        self._waiting = False
        self._handshake_done = False

    # -- connection

    def makeConnection(self, transport: Any) -> None:
        # ProtocolWrapper.makeConnection, but the wrapped protocol is
        # connected only once the header has arrived.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)

    def connectionMade(self) -> None:
        self.proxied_by = self.transport.getPeer()
        if not self.factory.trusts(self.proxied_by):
            self._reject("PROXY header sender is not in any --proxy-trusted network")
            return
        self._waiting = True
        self.factory.waiting += 1
        timeout = self.factory.timeout
        if timeout is not None:
            self._timer = self.factory.reactor.callLater(timeout, self._expired)

    def _stop_waiting(self) -> None:
        if self._waiting:
            self._waiting = False
            self.factory.waiting -= 1

    def _expired(self) -> None:
        self._timer = None
        self._reject(f"no complete PROXY header within {self.factory.timeout:g} s", abort=True)

    def dataReceived(self, data: bytes) -> None:
        if self.proxy_info is not None:
            if self.wrappedProtocol is not None:
                self.wrappedProtocol.dataReceived(data)
            return
        if self._rejected:
            return
        try:
            info, rest = self._feed(data)
        except (InvalidProxyHeader, ValueError, UnicodeError, IndexError, TypeError) as e:
            # (Twisted's parsers raise bare ValueError and UnicodeDecodeError
            # for some malformed fields)
            name = type(e).__name__
            self._reject(f"malformed PROXY header ({str(e) or _REASONS.get(name, name)})")
            return
        if info is None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.proxy_info = _compressed(info)
        self._stop_waiting()
        protocol = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if protocol is None:
            # refused by the wrapped factory (e.g. --deny); it has said why
            self._rejected = True
            self.transport.loseConnection()
            return
        self.wrappedProtocol = protocol
        protocol.makeConnection(self)
        if self._handshake_done:
            listener = IHandshakeListener(protocol, None)
            if listener is not None:
                listener.handshakeCompleted()
        if rest and self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(rest)

    def _feed(self, data: bytes) -> tuple[Any, bytes]:
        if self._parser is not None:
            return self._parser.feed(data)
        self._buffer += data
        kind = _header_kind(self._buffer)
        if kind is None:
            return None, b""
        if kind == "v1":
            return self._feed_v1()
        if len(self._buffer) < 16:
            # Twisted's V2Parser rejects a first feed shorter than 16 bytes.
            return None, b""
        self._parser = V2Parser()
        buffered, self._buffer = self._buffer, b""
        return self._parser.feed(buffered)

    def _feed_v1(self) -> tuple[Any, bytes]:
        """
        A v1 header is one line (proxy-protocol.txt section 2.1): buffer it
        whole, check its length, then parse it.
        """
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > V1_MAX - 2:
                raise InvalidProxyHeader(f"v1 line longer than {V1_MAX} bytes")
            return None, b""
        if end + 2 > V1_MAX:
            raise InvalidProxyHeader(f"v1 line longer than {V1_MAX} bytes")
        line, rest = self._buffer[:end], self._buffer[end + 2 :]
        self._buffer = b""
        return parse_v1(line), rest

    def _reject(self, reason: str, abort: bool = False) -> None:
        if self._rejected:
            return
        self._rejected = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._stop_waiting()
        self.factory.rejected(self, reason)
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    # -- IHandshakeListener (TLS underneath)

    def handshakeCompleted(self) -> None:
        self._handshake_done = True
        listener = IHandshakeListener(self.wrappedProtocol, None)
        if listener is not None:
            listener.handshakeCompleted()

    # -- half-close and loss

    def readConnectionLost(self) -> None:
        if self.wrappedProtocol is None:
            self._reject("connection closed before a complete PROXY header")
            return
        half = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if half is not None:
            half.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        half = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if half is not None:
            half.writeConnectionLost()

    def connectionLost(self, reason: Failure) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.wrappedProtocol is None:
            if not self._rejected:
                self._rejected = True
                self._stop_waiting()
                self.factory.rejected(self, "connection closed before a complete PROXY header")
            self.factory.unregisterProtocol(self)
            return
        super().connectionLost(reason)

    # -- addresses

    def getPeer(self) -> Any:
        if self.proxy_info is not None and self.proxy_info.source is not None:
            return self.proxy_info.source
        return self.transport.getPeer()

    def getHost(self) -> Any:
        if self.proxy_info is not None and self.proxy_info.destination is not None:
            return self.proxy_info.destination
        return self.transport.getHost()


class ProxyHeaderFactory(WrappingFactory):
    """
    Wraps every connection in a L{ProxyHeaderWrapper}.

    @ivar timeout: seconds a connection may take to send its header, or
        L{None}.
    @ivar trusted: networks allowed to send headers; empty: everyone.
    @ivar on_reject: called as C{on_reject(wrapper, reason)} for every
        connection closed without being relayed.
    @ivar waiting: how many connections are waiting for their header now
        (each counts against C{--max-connections} like a relayed one).
    """

    protocol = ProxyHeaderWrapper

    def __init__(
        self,
        wrappedFactory: Any,
        reactor: Any,
        timeout: float | None = 5.0,
        trusted: Sequence[str] = (),
        on_reject: Callable[[ProxyHeaderWrapper, str], None] | None = None,
    ) -> None:
        super().__init__(wrappedFactory)
        self.reactor = reactor
        self.timeout = timeout
        self.trusted = [ip_network_of(n) for n in trusted]
        self.on_reject = on_reject
        self.waiting = 0

    def trusts(self, address: Any) -> bool:
        """
        May the peer at C{address} send a PROXY header?
        """
        if not self.trusted:
            return True
        ip = ip_of(address)
        return ip is not None and any(ip.version == n.version and ip in n for n in self.trusted)

    def rejected(self, wrapper: ProxyHeaderWrapper, reason: str) -> None:
        if self.on_reject is not None:
            self.on_reject(wrapper, reason)

    def buildProtocol(self, addr: Any) -> Any:
        # The wrapped protocol is built once the header says who the peer is.
        return self.protocol(self)


class ProxyHeaderEndpoint:
    """
    A server endpoint that expects a PROXY header on every connection of the
    endpoint it wraps.  Takes the place of Twisted's C{proxyEndpoint} for
    epcat's C{haproxy:} listeners.
    """

    def __init__(self, wrapped: Any, make_factory: Callable[[Any], ProxyHeaderFactory]) -> None:
        """
        @param wrapped: the inner C{IStreamServerEndpoint}.
        @param make_factory: builds the L{ProxyHeaderFactory} around the
            factory C{listen} is given.
        """
        self._wrapped = wrapped
        self._make_factory = make_factory

    def listen(self, factory: Any) -> Any:
        return self._wrapped.listen(self._make_factory(factory))


def parse_v1(line: bytes) -> Any:
    """
    Parse and check one PROXY protocol v1 line (without its CRLF), per
    proxy-protocol.txt section 2.1: C{PROXY UNKNOWN ...}, or C{PROXY TCP4|TCP6
    SRC DST SPORT DPORT} with addresses of that family and ports 0-65535.

    Twisted's C{V1Parser.parse} reads the fields; it rejects the bare
    C{PROXY UNKNOWN} that haproxy sends for non-TCP clients, and checks
    neither addresses nor ports, so that is done here.

    @return: a C{twisted.protocols.haproxy} C{ProxyInfo}.
    @raise InvalidProxyHeader: the line is not a valid v1 header.
    """
    from twisted.protocols.haproxy._info import ProxyInfo

    fields = line.split(b" ")
    if fields[:2] == [b"PROXY", b"UNKNOWN"]:
        # "the receiver must ignore anything presented before the CRLF"
        return ProxyInfo(line + b"\r\n", None, None)
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise InvalidProxyHeader("v1 line does not have the six fields of TCP4/TCP6")
    version = 4 if fields[1] == b"TCP4" else 6
    for field in fields[2:4]:
        try:
            ip = ipaddress.ip_address(field.decode("ascii"))
        except (UnicodeError, ValueError):
            raise InvalidProxyHeader(f"v1 address {field!r} is not an IP address") from None
        if ip.version != version:
            raise InvalidProxyHeader(f"v1 address {field!r} is not IPv{version}")
    for field in fields[4:6]:
        if not field.isdigit() or int(field) > 65535 or (len(field) > 1 and field[:1] == b"0"):
            raise InvalidProxyHeader(f"v1 port {field!r} is not 0-65535")
    return V1Parser.parse(line + b"\r\n")


# -- sending


def tls_details(transport: Any) -> dict[str, Any] | None:
    """
    What a TLS transport negotiated, for the v2 TLVs: C{version}, C{cipher},
    C{certificate} (whether the client presented one), C{cn} (its common
    name), C{sni}, C{alpn}, C{verified}.

    @return: L{None} when C{transport} is not TLS.
    """
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    try:
        connection = get_handle()
        version = connection.get_protocol_version_name()
    except Exception:  # not an OpenSSL connection
        return None
    if not hasattr(connection, "get_cipher_name"):
        return None
    from OpenSSL.SSL import VERIFY_PEER

    cn = None
    # a client certificate is verified when the server asked for one (the
    # handshake fails otherwise)
    verified = bool(connection.get_verify_mode() & VERIFY_PEER)
    certificate = connection.get_peer_certificate()
    if certificate is not None:
        for key, value in certificate.get_subject().get_components():
            if key == b"CN":
                cn = value.decode("utf-8", "replace")
    servername = connection.get_servername()
    return {
        "version": version,
        "cipher": connection.get_cipher_name(),
        "certificate": certificate is not None,
        "cn": cn,
        # (as the client sent it: PP2_TYPE_AUTHORITY is the host name "passed
        # by the client", section 2.2.1; an A-label that is not valid IDNA,
        # such as xn--a, is passed on as it is)
        "sni": servername.decode("utf-8", "replace") if servername else None,
        "alpn": connection.get_alpn_proto_negotiated() or None,
        "verified": verified and certificate is not None,
    }


def encode_header(version: str, transport: Any, conn_id: int | None = None) -> bytes:
    """
    The PROXY header that tells the next hop where C{transport}'s connection
    came from (haproxy proxy-protocol.txt: version 1 is section 2.1, version 2
    section 2.2, its TLVs section 2.2.1, 2.2.5 for PP2_TYPE_UNIQUE_ID and
    2.2.6 for PP2_TYPE_SSL).

    TCP over IPv4 or IPv6 carries the source and destination addresses.
    Anything else (UNIX sockets without names, stdin/stdout) is C{PROXY
    UNKNOWN} in v1 and the LOCAL command in v2 (AF_UNIX addresses where both
    are known).  v2 also carries PP2_TYPE_UNIQUE_ID (epcat's connection id)
    and, for a TLS inbound connection, PP2_TYPE_SSL (version, cipher, client
    certificate CN), PP2_TYPE_AUTHORITY (the SNI) and PP2_TYPE_ALPN.

    @param version: C{"v1"} or C{"v2"}.
    @param transport: the inbound transport (or L{None} for stdin/stdout);
        its C{getPeer()} is the source, its C{getHost()} the destination.
    @param conn_id: epcat's connection id, for PP2_TYPE_UNIQUE_ID.
    @return: the header bytes.
    """
    from proxyprotocol.result import (
        ProxyResultIPv4,
        ProxyResultIPv6,
        ProxyResultLocal,
        ProxyResultUnix,
    )
    from proxyprotocol.tlv import ProxyProtocolSSLTLV, ProxyProtocolTLV
    from proxyprotocol.v2 import ProxyProtocolV2

    source = transport.getPeer() if transport is not None else None
    destination = transport.getHost() if transport is not None else None
    source_ip, destination_ip = ip_of(source), ip_of(destination)
    same_family = (
        source_ip is not None
        and destination_ip is not None
        and source_ip.version == destination_ip.version
    )
    if version == "v1":
        if not same_family:
            return b"PROXY UNKNOWN\r\n"
        family = "TCP4" if source_ip.version == 4 else "TCP6"
        return (
            f"PROXY {family} {source_ip} {destination_ip} "
            f"{source.port} {destination.port}\r\n"
        ).encode("ascii")
    if version != "v2":
        raise ValueError(f"unknown PROXY protocol version {version!r}")
    tlv_fields: dict[str, Any] = {}
    if conn_id is not None:
        tlv_fields["unique_id"] = str(conn_id).encode("ascii")
    tls = tls_details(transport) if transport is not None else None
    if tls is not None:
        tlv_fields["ssl"] = ProxyProtocolSSLTLV(
            has_ssl=True,
            # PP2_CLIENT_CERT_CONN and PP2_CLIENT_CERT_SESS (section 2.2.6):
            # a certificate was presented on this connection, so on its session
            has_cert_conn=tls["certificate"],
            has_cert_sess=tls["certificate"],
            verified=tls["verified"],
            version=tls["version"],
            cipher=tls["cipher"],
            cn=tls["cn"],
        )
        if tls["sni"]:
            tlv_fields["authority"] = tls["sni"]
        if tls["alpn"]:
            tlv_fields["alpn"] = tls["alpn"]
    tlv = ProxyProtocolTLV(**tlv_fields)
    stream = socket.SOCK_STREAM
    if same_family and source_ip.version == 4:
        result: Any = ProxyResultIPv4(
            (source_ip, source.port), (destination_ip, destination.port), protocol=stream, tlv=tlv
        )
    elif same_family:
        result = ProxyResultIPv6(
            (source_ip, source.port), (destination_ip, destination.port), protocol=stream, tlv=tlv
        )
    elif _unix_name(source) and _unix_name(destination):
        result = ProxyResultUnix(
            _unix_name(source), _unix_name(destination), protocol=stream, tlv=tlv
        )
    else:
        result = ProxyResultLocal(tlv=tlv)
    return ProxyProtocolV2().pack(result)


#: Twisted's PROXY header exceptions carry no message: what each means
#: (their docstrings, twisted.protocols.haproxy._exceptions)
_REASONS = {
    "InvalidProxyHeader": "not a valid PROXY header",
    "InvalidNetworkProtocol": "an address family or protocol other than TCP4, TCP6 or UNKNOWN",
    "MissingAddressData": "the address data is missing or incomplete",
}


def _compressed(info: Any) -> Any:
    """
    C{info} with its IPv6 addresses written as the kernel writes a peer's
    (C{inet_ntop}: C{::1}, C{::ffff:127.0.0.1}), as epcat shows a direct
    client's: Twisted's v2 parser writes all eight groups
    (C{0:0:0:0:0:0:0:1}).
    """
    import attr
    from twisted.internet.address import IPv6Address

    def short(address: Any) -> Any:
        if not isinstance(address, IPv6Address):
            return address
        try:
            packed = ipaddress.IPv6Address(address.host).packed
        except ValueError:
            return address
        return attr.evolve(address, host=socket.inet_ntop(socket.AF_INET6, packed))

    source, destination = short(info.source), short(info.destination)
    if source is info.source and destination is info.destination:
        return info
    return attr.evolve(info, source=source, destination=destination)


def _unix_name(address: Any) -> str | None:
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return name or None
