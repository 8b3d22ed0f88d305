"""
End to end: epcat's own C{tlsx:} endpoint types with the real C{epcat}
command, against C{openssl s_server} (client side) and C{curl} (server side),
on loopback, with trustme certificates made per test.
"""

from __future__ import annotations

import datetime
import re
import socket
import subprocess
from pathlib import Path

import pytest

from .conftest import no_subject_alt_name, no_traceback, require, run_epcat

pytestmark = pytest.mark.e2e

VERIFY_NO_WARNING = "epcat: warning: tlsx: verify=no: the server's certificate is NOT verified"


class PKI:
    """
    Files for the tests: a CA; server certificates for C{sni.example} only
    and for C{localhost}/127.0.0.1; a client certificate from the CA, an
    expired one from the CA (not after 2025-01-02) and one from an unrelated
    CA; a self-signed certificate (a CA's own).
    """

    def __init__(self, root: Path) -> None:
        import trustme

        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        ca = trustme.CA()
        other = trustme.CA()
        self.ca_pem = self._write("ca.pem", ca.cert_pem.bytes())
        sni = ca.issue_cert("sni.example")
        self.sni_cert = self._write("sni.pem", sni.cert_chain_pems[0].bytes())
        self.sni_key = self._write("sni.key", sni.private_key_pem.bytes())
        default = ca.issue_cert("default.example")
        self.default_cert = self._write("default.pem", default.cert_chain_pems[0].bytes())
        self.default_key = self._write("default.key", default.private_key_pem.bytes())
        local = ca.issue_cert("localhost", "127.0.0.1")
        self.local_cert = self._write("local.pem", local.cert_chain_pems[0].bytes())
        self.local_key = self._write("local.key", local.private_key_pem.bytes())
        client = ca.issue_cert("client.example")
        self.client_cert = self._write("client.pem", client.cert_chain_pems[0].bytes())
        self.client_key = self._write("client.key", client.private_key_pem.bytes())
        stranger = other.issue_cert("client.example")
        self.stranger_cert = self._write("stranger.pem", stranger.cert_chain_pems[0].bytes())
        self.stranger_key = self._write("stranger.key", stranger.private_key_pem.bytes())
        expired = ca.issue_cert(
            "client.example",
            not_before=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
            not_after=datetime.datetime(2025, 1, 2, 12, 0, tzinfo=datetime.timezone.utc),
        )
        self.expired_cert = self._write("expired.pem", expired.cert_chain_pems[0].bytes())
        self.expired_key = self._write("expired.key", expired.private_key_pem.bytes())
        self_signed = trustme.CA()  # a CA certificate signs itself
        self.self_signed_cert = self._write("self.pem", self_signed.cert_pem.bytes())
        self.self_signed_key = self._write("self.key", self_signed.private_key_pem.bytes())
        no_san_cert, no_san_key = no_subject_alt_name(ca, "localhost")
        self.no_san_cert = self._write("nosan.pem", no_san_cert)
        self.no_san_key = self._write("nosan.key", no_san_key)

    def _write(self, name: str, data: bytes) -> str:
        path = self.root / name
        path.write_bytes(data)
        return str(path)


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path / "pki")


def s_server(spawn, *args: str):
    """
    C{openssl s_server -rev} on 127.0.0.1 (port 0: it prints the port it
    bound as "ACCEPT 127.0.0.1:PORT", the event waited on), one connection.

    @return: (process, port); its stdout lines are in C{proc.stdout_lines},
        its connection report (protocol, client certificate) on stderr.
    """
    openssl = require("openssl")
    proc = spawn([openssl, "s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-rev", *args],
                 name="openssl-s_server", stdout="lines")
    m = proc.stdout_lines.wait_for(r"^ACCEPT 127\.0\.0\.1:(\d+)$")
    return proc, int(m.group(1))


LINES = [b"hello tlsx", b"second line"]


def reversed_lines() -> bytes:
    return b"".join(line[::-1] + b"\n" for line in LINES)


def stdin_lines() -> bytes:
    return b"".join(line + b"\n" for line in LINES)


# -- client


@pytest.mark.timeout(60)
def test_client_sni_picks_the_certificate_and_is_verified(spawn, epcat_proc, pki):
    """
    s_server with a default certificate and a second one for sni.example
    (-servername/-cert2): connecting to 127.0.0.1 with sni=sni.example sends
    that name (s_server logs it and switches certificate) and verifies the
    certificate against it; the bytes go both ways.
    """
    proc, port = s_server(spawn, "-cert", pki.default_cert, "-key", pki.default_key,
                          "-servername", "sni.example", "-cert2", pki.sni_cert,
                          "-key2", pki.sni_key)
    ep = epcat_proc("-v", "connect",
                    f"tlsx:127.0.0.1:{port}:sni=sni.example:trustRoots={pki.ca_pem}",
                    stdin=stdin_lines())
    assert ep.finish() == 0, ep.describe()
    assert ep.out == reversed_lines()
    proc.stdout_lines.wait_for(r'^Hostname in TLS extension: "sni\.example"$')
    proc.stdout_lines.wait_for(r"^Switching server context\.$")
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_client_sni_is_what_is_verified(spawn, pki):
    """
    The server's certificate names only sni.example: without sni= the
    connection to 127.0.0.1 fails verification (exit 60).
    """
    _, port = s_server(spawn, "-cert", pki.sni_cert, "-key", pki.sni_key)
    result = run_epcat("connect", f"tlsx:127.0.0.1:{port}:trustRoots={pki.ca_pem}",
                       stdin=b"hello\n")
    err = result.stderr.decode()
    assert result.returncode == 60, err
    assert result.stdout == b""
    assert re.search(r"certificate verif", err, re.I), err
    no_traceback(err)


@pytest.mark.timeout(60)
def test_client_sni_fatal_mismatch(spawn, pki):
    """
    s_server -servername sni.example -servername_fatal aborts a handshake that
    names another server: tlsx sends what sni= says, not the host.
    """
    _, port = s_server(spawn, "-cert", pki.default_cert, "-key", pki.default_key,
                       "-servername", "sni.example", "-cert2", pki.sni_cert, "-key2", pki.sni_key,
                       "-servername_fatal")
    result = run_epcat("connect",
                       f"tlsx:localhost:{port}:sni=other.example:trustRoots={pki.ca_pem}",
                       stdin=b"hello\n")
    assert result.returncode == 35, result.stderr.decode()
    assert result.stdout == b""
    no_traceback(result.stderr.decode())


@pytest.mark.timeout(60)
def test_client_alpn(spawn, epcat_proc, pki):
    """
    alpn=http/1.1,h2 is offered in that order; s_server -alpn h2,http/1.1
    picks its own first choice, h2.
    """
    proc, port = s_server(spawn, "-cert", pki.sni_cert, "-key", pki.sni_key,
                          "-alpn", "h2,http/1.1")
    ep = epcat_proc("-v", "connect",
                    f"tlsx:127.0.0.1:{port}:sni=sni.example:trustRoots={pki.ca_pem}"
                    ":alpn=http/1.1,h2",
                    stdin=stdin_lines())
    assert ep.finish() == 0, ep.describe()
    assert ep.out == reversed_lines()
    proc.stdout_lines.wait_for(r"^ALPN protocols advertised by the client: http/1\.1, h2$")
    proc.stdout_lines.wait_for(r"^ALPN protocols selected: h2$")
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_client_verify_no_against_a_self_signed_server(spawn, epcat_proc, pki):
    """
    verify=no connects to a self-signed server under any name and warns on
    stderr (-v: "verification skipped (verify=no)"); the same description
    without verify=no fails with exit 60.
    """
    _, port = s_server(spawn, "-cert", pki.self_signed_cert, "-key", pki.self_signed_key)
    ep = epcat_proc("-v", "connect", f"tlsx:localhost:{port}:verify=no", stdin=stdin_lines())
    assert ep.finish() == 0, ep.describe()
    assert ep.out == reversed_lines()
    assert ep.err.splitlines().count(VERIFY_NO_WARNING) == 1, ep.err
    assert re.search(r"^epcat: \[1\] TLS with the outbound side: .*, ALPN none, "
                     r"SNI sent localhost, verification skipped \(verify=no\)$",
                     ep.err, re.M), ep.err
    no_traceback(ep.err)

    _, port = s_server(spawn, "-cert", pki.self_signed_cert, "-key", pki.self_signed_key)
    result = run_epcat("connect", f"tlsx:localhost:{port}", stdin=b"hello\n")
    err = result.stderr.decode()
    assert result.returncode == 60, err
    assert VERIFY_NO_WARNING not in err
    assert result.stdout == b""
    no_traceback(err)


@pytest.mark.timeout(60)
def test_client_rejects_a_certificate_without_subject_alt_name(spawn, pki):
    """
    A certificate from the trusted CA that names localhost only in its
    commonName fails verification (exit 60).  Twisted's own tls: client
    accepts it for any host name: its verify callback only logs the
    service_identity CertificateError.
    """
    _, port = s_server(spawn, "-cert", pki.no_san_cert, "-key", pki.no_san_key)
    result = run_epcat("connect", f"tlsx:localhost:{port}:trustRoots={pki.ca_pem}",
                       stdin=b"hello\n")
    err = result.stderr.decode()
    assert result.returncode == 60, err
    assert "subjectAltName" in err, err
    assert result.stdout == b""
    no_traceback(err)


@pytest.mark.timeout(60)
def test_client_bad_verify_value_is_a_usage_error():
    result = run_epcat("connect", "tlsx:localhost:1:verify=maybe")
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert len(err.splitlines()) == 1 and "verify=maybe" in err, err
    no_traceback(err)


@pytest.mark.timeout(60)
def test_client_certificate(spawn, epcat_proc, pki):
    """
    certificate=/privateKey= present a client certificate to s_server
    -Verify 1 -CAfile CA, which requires and checks one.
    """
    proc, port = s_server(spawn, "-cert", pki.sni_cert, "-key", pki.sni_key,
                          "-Verify", "1", "-CAfile", pki.ca_pem, "-verify_return_error")
    ep = epcat_proc("connect",
                    f"tlsx:127.0.0.1:{port}:sni=sni.example:trustRoots={pki.ca_pem}"
                    f":certificate={pki.client_cert}:privateKey={pki.client_key}",
                    stdin=stdin_lines())
    assert ep.finish() == 0, ep.describe()
    assert ep.out == reversed_lines()
    proc.stderr.wait_for(r"^Peer certificate: ")
    proc.stderr.wait_for(r"^Verification: OK$")
    assert "No peer certificate" not in proc.err
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_client_tls_versions(spawn, epcat_proc, pki):
    """
    maxVersion=TLSv1.2 negotiates TLS 1.2; minVersion=TLSv1.3 refuses a
    server that stops at 1.2 (exit 35).
    """
    proc, port = s_server(spawn, "-cert", pki.sni_cert, "-key", pki.sni_key)
    ep = epcat_proc("connect",
                    f"tlsx:127.0.0.1:{port}:sni=sni.example:trustRoots={pki.ca_pem}"
                    ":maxVersion=TLSv1.2",
                    stdin=stdin_lines())
    assert ep.finish() == 0, ep.describe()
    assert ep.out == reversed_lines()
    proc.stderr.wait_for(r"^Protocol version: TLSv1\.2$")

    _, port = s_server(spawn, "-cert", pki.sni_cert, "-key", pki.sni_key, "-tls1_2")
    result = run_epcat("connect",
                       f"tlsx:127.0.0.1:{port}:sni=sni.example:trustRoots={pki.ca_pem}"
                       ":minVersion=TLSv1.3",
                       stdin=b"hello\n")
    assert result.returncode == 35, result.stderr.decode()
    no_traceback(result.stderr.decode())


# -- server


BODY = b"tlsx e2e body\n"


def http_handler(conn: socket.socket) -> bytes:
    """
    A one-shot HTTP origin: read the request head, answer with L{BODY},
    close.  A connection that ends before a request (epcat may dial before
    the client's handshake fails) returns what it got.
    """
    head = b""
    while b"\r\n\r\n" not in head:
        data = conn.recv(65536)
        if not data:
            return head
        head += data
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                 % (len(BODY), BODY))
    conn.shutdown(socket.SHUT_WR)
    return head


def curl(port: int, ca_pem: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    """
    curl https://localhost:PORT/ with C{--cacert}, resolved to 127.0.0.1.
    """
    return subprocess.run(
        [require("curl"), "--noproxy", "*", "-sS", "--max-time", "20",
         "--resolve", f"localhost:{port}:127.0.0.1", "--cacert", ca_pem, *extra,
         f"https://localhost:{port}/"],
        capture_output=True, timeout=30,
    )


def tlsx_server(epcat_proc, server, pki, extra: str = "", *options: str):
    """
    epcat -v listen [OPTIONS] tlsx:0:interface=127.0.0.1:...EXTRA connect
    tcp:ORIGIN; returns (epcat process, its port).
    """
    origin = server(http_handler)
    ep = epcat_proc("-v", "listen", *options,
                    f"tlsx:0:interface=127.0.0.1:privateKey={pki.local_key}"
                    f":certKey={pki.local_cert}{extra}",
                    "connect", f"tcp:{origin.address}")
    return ep, ep.port()


@pytest.mark.timeout(60)
def test_server_with_plain_curl(epcat_proc, server, pki):
    """
    curl --cacert, which offers ALPN h2 and http/1.1, gets the page from a
    tlsx server that names no protocols (Twisted alone fails this handshake:
    see epcat.tlsfix).
    """
    ep, port = tlsx_server(epcat_proc, server, pki)
    result = curl(port, pki.ca_pem)
    assert result.returncode == 0, result.stderr + ep.err.encode()
    assert result.stdout == BODY
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_server_alpn(epcat_proc, server, pki):
    """
    alpn=http/1.1: curl -v reports the server's choice.
    """
    ep, port = tlsx_server(epcat_proc, server, pki, ":alpn=http/1.1")
    result = curl(port, pki.ca_pem, "-v")
    assert result.returncode == 0, result.stderr + ep.err.encode()
    assert result.stdout == BODY
    assert re.search(rb"ALPN.*server accepted.*http/1\.1", result.stderr), result.stderr
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_server_mutual_tls(epcat_proc, server, pki):
    """
    requireClientCert=yes:clientCA=CA: curl without a client certificate
    fails, and so does curl with a certificate from another CA; curl --cert
    with a certificate the CA signed gets the page.
    """
    ep, port = tlsx_server(epcat_proc, server, pki,
                           f":requireClientCert=yes:clientCA={pki.ca_pem}")
    result = curl(port, pki.ca_pem)
    assert result.returncode != 0, result
    assert result.stdout == b""
    result = curl(port, pki.ca_pem, "--cert", pki.stranger_cert, "--key", pki.stranger_key)
    assert result.returncode != 0, result
    assert result.stdout == b""
    result = curl(port, pki.ca_pem, "--cert", pki.client_cert, "--key", pki.client_key)
    assert result.returncode == 0, result.stderr + ep.err.encode()
    assert result.stdout == BODY
    no_traceback(ep.err)


def subject_of(cert_pem: str) -> str:
    from cryptography import x509

    return x509.load_pem_x509_certificate(Path(cert_pem).read_bytes()).subject.rfc4514_string()


def unknown_ca_reason(pki: PKI) -> str:
    """
    Why the certificate from another CA fails, as epcat says it.
    """
    return ("unable to get local issuer certificate (is it signed by a CA in clientCA=?); "
            f"certificate subject {subject_of(pki.stranger_cert)}")


EXPIRED_REASON = "certificate has expired (not after 2025-01-02)"


def client_failed(prefix: str) -> str:
    """
    epcat's line about a client certificate a tlsx: listener rejected,
    after C{prefix} (C{"warning: [N] "} or C{"error: "}); group 1 is why.
    """
    return (rf"^epcat: {re.escape(prefix)}TLS handshake with a client on tlsx:\S+ failed: "
            r"TLS certificate verification failed: (.*)$")


@pytest.mark.timeout(60)
def test_server_mutual_tls_says_why_a_client_certificate_failed(epcat_proc, server, pki):
    """
    A relay with requireClientCert=yes:clientCA=CA: curl --cert with a
    certificate from another CA, then with an expired one from the CA: each
    failure is one warning saying why, in the words the client side uses
    ("unable to get local issuer certificate", "certificate has expired
    (not after ...)"); the relay goes on and serves a good certificate.
    """
    ep, port = tlsx_server(epcat_proc, server, pki,
                           f":requireClientCert=yes:clientCA={pki.ca_pem}")
    result = curl(port, pki.ca_pem, "--cert", pki.stranger_cert, "--key", pki.stranger_key)
    assert result.returncode != 0, result
    assert ep.wait_stderr(client_failed("warning: [1] ")).group(1) == unknown_ca_reason(pki)
    result = curl(port, pki.ca_pem, "--cert", pki.expired_cert, "--key", pki.expired_key)
    assert result.returncode != 0, result
    assert ep.wait_stderr(client_failed("warning: [2] ")).group(1) == EXPIRED_REASON
    result = curl(port, pki.ca_pem, "--cert", pki.client_cert, "--key", pki.client_key)
    assert result.returncode == 0, result.stderr + ep.err.encode()
    assert result.stdout == BODY
    assert ep.popen.poll() is None, ep.describe()
    assert "certificate verify failed" not in ep.err, ep.err
    no_traceback(ep.err)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("client", ["stranger", "expired"])
def test_server_once_mutual_tls_failure_exit_60_says_why(epcat_proc, server, pki, client):
    """
    listen --once: a client certificate that fails verification ends epcat
    with exit 60 and one error line saying why.
    """
    ep, port = tlsx_server(epcat_proc, server, pki,
                           f":requireClientCert=yes:clientCA={pki.ca_pem}", "--once")
    cert, key = getattr(pki, f"{client}_cert"), getattr(pki, f"{client}_key")
    result = curl(port, pki.ca_pem, "--cert", cert, "--key", key)
    assert result.returncode != 0, result
    assert ep.finish() == 60, ep.describe()
    errors = [line for line in ep.err.splitlines() if line.startswith("epcat: error:")]
    assert len(errors) == 1, ep.err
    m = re.match(client_failed("error: "), errors[0])
    assert m, ep.err
    assert m.group(1) == (unknown_ca_reason(pki) if client == "stranger" else EXPIRED_REASON)
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_server_min_version(epcat_proc, server, pki):
    """
    minVersion=TLSv1.3: curl --tls-max 1.2 cannot connect; curl can.
    """
    ep, port = tlsx_server(epcat_proc, server, pki, ":minVersion=TLSv1.3")
    result = curl(port, pki.ca_pem, "--tls-max", "1.2")
    assert result.returncode == 35, result
    result = curl(port, pki.ca_pem)
    assert result.returncode == 0, result.stderr + ep.err.encode()
    assert result.stdout == BODY
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_server_require_client_cert_without_ca_is_a_usage_error(pki):
    result = run_epcat("listen", f"tlsx:0:privateKey={pki.local_key}:certKey={pki.local_cert}"
                       ":requireClientCert=yes", "connect", "tcp:127.0.0.1:1")
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert len(err.splitlines()) == 1 and "clientCA" in err, err
    no_traceback(err)


@pytest.mark.timeout(60)
def test_endpoints_lists_tlsx():
    """
    epcat endpoints shows both tlsx types with their arguments (from the
    installed plugin).
    """
    result = run_epcat("endpoints")
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    lines = [line for line in out.splitlines() if line.strip().startswith("tlsx:")]
    assert len(lines) == 2, out
    assert any("requireClientCert" in line and "clientCA" in line for line in lines), out
    assert any("sni" in line and "verify" in line and "alpn" in line for line in lines), out
