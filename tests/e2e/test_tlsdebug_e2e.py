"""
End to end: TLS debugging and traffic dumps (issue 5) with the real epcat
command on loopback -- the handshake detail of -v (text and JSON), the
reasons given for verification failures, C{--keylog}, C{-x/--hexdump},
C{--dump} and C{--pcap} read back by tshark.

Certificates are made in each test (trustme, C{openssl req}); what epcat
says about them is checked against what openssl, curl and tshark say.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import ssl
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import WAIT, echo_handler, no_traceback, recv_all, require, run_epcat
from .tlsdebug_support import (
    UTC,
    curl,
    error_line,
    follow_raw,
    http_handler,
    issue,
    keylog_entries,
    openssl_facts,
    parse_dump,
    recv_exactly,
    s_server,
    self_signed,
    stream_of,
)

pytestmark = pytest.mark.e2e


def ssl_listen(tls_files, key: Path | None = None, cert: Path | None = None) -> str:
    return (f"ssl:0:interface=127.0.0.1:privateKey={key or tls_files.key}"
            f":certKey={cert or tls_files.cert}")


def short_lived(tls_files, root: Path, **options):
    """
    A certificate for localhost and 127.0.0.1 from the tls_files CA, valid
    from yesterday to 30 days and 12 hours from now (so "30 days left"
    whenever the test runs), and openssl's facts about it.
    """
    now = datetime.datetime.now(UTC).replace(microsecond=0)
    cert, key = issue(tls_files.ca, root, "short", "localhost", "127.0.0.1",
                      not_before=now - datetime.timedelta(days=1),
                      not_after=now + datetime.timedelta(days=30, hours=12), **options)
    return cert, key, openssl_facts(cert)


def openssl_fingerprint(cert: Path) -> str:
    """
    C{openssl x509 -noout -fingerprint -sha256 -in CERT}, the part after "=".
    """
    out = subprocess.run(
        [require("openssl"), "x509", "-noout", "-fingerprint", "-sha256", "-in", str(cert)],
        capture_output=True, check=True, timeout=WAIT, text=True,
    ).stdout.strip()
    label, _, value = out.partition("=")
    assert label == "sha256 Fingerprint", out
    return value


def s_server_negotiated(proc) -> tuple[str, str]:
    """
    The protocol version and cipher suite s_server reports (on stderr) for
    its connection.
    """
    version = proc.wait_stderr(r"^Protocol version: (\S+)$").group(1)
    cipher = proc.wait_stderr(r"^Ciphersuite: (\S+)$").group(1)
    return version, cipher


def curl_negotiated(stderr: bytes) -> tuple[str, str]:
    """
    The protocol version and cipher curl -v reports ("SSL connection using
    TLSv1.3 / TLS_AES_256_GCM_SHA384").
    """
    m = re.search(r"SSL connection using (\S+) / (\S+)", stderr.decode("utf-8", "replace"))
    assert m, stderr
    return m.group(1), m.group(2)


# -- 1. handshake detail at -v


@pytest.mark.timeout(60)
@pytest.mark.parametrize("server_args", [
    pytest.param((), id="default"),
    pytest.param(("-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"), id="tls1_2"),
])
def test_v_tls_detail_for_connect_tls_to_s_server(spawn, epcat_proc, tls_files, tmp_path,
                                                  server_args):
    """
    epcat -v connect tls:localhost:P:trustRoots=DIR to openssl s_server
    -rev with an RSA certificate valid for 30 more days: the TLS line has
    the version and cipher s_server reports, "ALPN none", "SNI sent
    localhost" and "verification ok"; certificate 0 has the subject,
    issuer, dates and SHA-256 fingerprint openssl x509 prints, the SAN,
    "30 days left" and "RSA 2048".
    """
    import trustme

    cert, key, facts = short_lived(tls_files, tmp_path / "certs", common_name="localhost",
                                   key_type=trustme.KeyType.RSA)
    proc, port = s_server(spawn, cert, key, "-rev", *server_args)
    ep = epcat_proc("-v", "connect", f"tls:localhost:{port}:trustRoots={tls_files.ca_dir}",
                    stdin=b"hello tls\n")
    assert ep.finish() == 0, ep.describe()
    assert ep.out == b"slt olleh\n"
    version, cipher = s_server_negotiated(proc)
    if server_args:
        assert (version, cipher) == ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256")

    lines = ep.err.splitlines()
    assert (f"epcat: [1] TLS with the outbound side: {version}, {cipher}, ALPN none, "
            "SNI sent localhost, verification ok") in lines, ep.err
    assert facts.subject.startswith("CN=localhost,"), facts.subject
    assert (f"epcat: [1]   certificate 0: subject {facts.subject}; issuer {facts.issuer}"
            in lines), ep.err
    fingerprint = openssl_fingerprint(cert)
    assert fingerprint == facts.sha256
    assert (f"epcat: [1]     SAN DNS:localhost, IP:127.0.0.1; "
            f"valid {facts.not_before.date()} to {facts.not_after.date()} (30 days left); "
            f"RSA {facts.public_key_bits}; SHA-256 {fingerprint}") in lines, ep.err
    assert facts.public_key_bits == 2048
    # s_server sends its certificate only
    assert not any("certificate 1:" in line for line in lines), ep.err
    no_traceback(ep.err)


@pytest.mark.timeout(60)
def test_v_json_tls_event_for_connect_tls(spawn, epcat_proc, tls_files, tmp_path):
    """
    -v --log-format json: every stderr line is a JSON object; exactly one
    has event "tls", with tls_version, cipher, sni, verification and a chain
    whose certificate 0 holds the same facts openssl x509 gives.
    """
    cert, key, facts = short_lived(tls_files, tmp_path / "certs")
    proc, port = s_server(spawn, cert, key, "-rev")
    ep = epcat_proc("-v", "--log-format", "json", "connect",
                    f"tls:localhost:{port}:trustRoots={tls_files.ca_dir}", stdin=b"abc\n")
    assert ep.finish() == 0, ep.describe()
    assert ep.out == b"cba\n"
    records = [json.loads(line) for line in ep.err.splitlines()]
    tls = [r for r in records if r.get("event") == "tls"]
    assert len(tls) == 1, ep.err
    record = tls[0]
    version, cipher = s_server_negotiated(proc)
    assert record["tls_version"] == version
    assert record["cipher"] == cipher
    assert record["sni"] == "localhost"
    assert record["alpn"] is None  # (always there: null when not negotiated)
    assert record["verification"] == "ok"
    assert record["conn"] == 1
    assert len(record["chain"]) == 1, record
    leaf = record["chain"][0]
    assert leaf["subject"] == facts.subject
    assert leaf["issuer"] == facts.issuer
    assert leaf["subject_alt_names"] == ["DNS:localhost", "IP:127.0.0.1"]
    assert datetime.datetime.fromisoformat(leaf["not_before"]) == facts.not_before
    assert datetime.datetime.fromisoformat(leaf["not_after"]) == facts.not_after
    assert leaf["days_left"] == 30
    assert leaf["key"] == f"EC secp256r1 {facts.public_key_bits}"
    assert leaf["sha256"] == openssl_fingerprint(cert)
    no_traceback(ep.err)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_v_tls_detail_for_own_ssl_listener(epcat_proc, server, tls_files, log_format):
    """
    epcat -v listen ssl:0:... connect tcp:BACKEND, then curl --cacert: the
    inbound side's TLS line has the version and cipher curl reports, "ALPN
    none" (curl offers h2 and http/1.1; ssl: names no protocols) and "SNI
    received localhost" (in JSON: sni "localhost", no client chain).
    """
    body = b"served through epcat's ssl: listener\n"
    srv = server(http_handler(body))
    ep = epcat_proc("-v", "--log-format", log_format, "listen", ssl_listen(tls_files),
                    "connect", f"tcp:{srv.address}")
    port = ep.port()
    result = curl(port, tls_files.ca_pem, "-v")
    assert result.returncode == 0, result.stderr + ep.err.encode()
    assert result.stdout == body
    version, cipher = curl_negotiated(result.stderr)
    if log_format == "text":
        m = ep.wait_stderr(r"^epcat: \[1\] TLS with the inbound side: ")
        assert m.string.startswith(
            f"epcat: [1] TLS with the inbound side: {version}, {cipher}, ALPN none, "
            "SNI received localhost, verification "
        ), ep.err
        # no client certificate, so no chain lines
        ep.wait_stderr(r"^epcat: \[1\] closed: ")
        assert "certificate 0:" not in ep.err, ep.err
    else:
        m = ep.wait_stderr(r'"event": "tls"')
        record = json.loads(m.string)
        assert record["side"] == "inbound"
        assert (record["tls_version"], record["cipher"]) == (version, cipher)
        assert record["sni"] == "localhost"
        assert isinstance(record["verification"], str) and record["verification"]
        assert record["chain"] == []
    no_traceback(ep.err)


# -- 2. verification failures, in words


def _expired(tls_files, root: Path):
    cert, key = issue(tls_files.ca, root, "expired", "localhost",
                      not_before=datetime.datetime(2020, 1, 1, tzinfo=UTC),
                      not_after=datetime.datetime(2021, 3, 4, 12, 0, tzinfo=UTC))
    facts = openssl_facts(cert)
    assert facts.not_after.date() == datetime.date(2021, 3, 4)
    return cert, key, tls_files.ca_dir, (
        f"TLS certificate verification failed: certificate has expired "
        f"(not after {facts.not_after.date().isoformat()})"
    )


def _wrong_host(tls_files, root: Path):
    cert, key = issue(tls_files.ca, root, "other", "other.example")
    return cert, key, tls_files.ca_dir, (
        "TLS certificate verification failed: hostname mismatch: asked for localhost, "
        "certificate is for other.example"
    )


def _unknown_ca(tls_files, root: Path):
    return tls_files.cert, tls_files.key, tls_files.wrong_ca_dir, (
        "TLS certificate verification failed: unable to get local issuer certificate "
        "(is trustRoots= set?)"
    )


def _self_signed(tls_files, root: Path):
    cert, key = self_signed(root)
    return cert, key, tls_files.ca_dir, (
        "TLS certificate verification failed: self-signed certificate"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("make", [_expired, _wrong_host, _unknown_ca, _self_signed],
                         ids=["expired", "wrong-host", "unknown-ca", "self-signed"])
def test_verification_failure_says_why_exit_60(spawn, tls_files, tmp_path, make):
    """
    connect tls:localhost:P:trustRoots=DIR to s_server with a certificate
    that fails verification: exit 60, nothing on stdout, one
    "epcat: error:" line naming the endpoint and saying why.
    """
    cert, key, roots, reason = make(tls_files, tmp_path / "certs")
    _, port = s_server(spawn, cert, key, "-rev")
    description = f"tls:localhost:{port}:trustRoots={roots}"
    result = run_epcat("connect", description, stdin=b"hello\n")
    err = result.stderr.decode()
    assert result.returncode == 60, err
    assert result.stdout == b""
    line = error_line(err)
    assert line.startswith(f"epcat: error: cannot connect to {description}: "), line
    assert reason in line, line
    if make is _self_signed:
        assert "in chain" not in line, line
    no_traceback(err)


@pytest.mark.timeout(60)
def test_tls_to_a_plain_server_exit_35(server, tls_files):
    """
    A plain TCP server that speaks first with an SSH banner: the handshake
    fails without any verification, exit 35, one error line.
    """
    def banner(conn: socket.socket) -> None:
        conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
        conn.recv(4096)

    srv = server(banner)
    description = f"tls:localhost:{srv.port}:trustRoots={tls_files.ca_dir}"
    result = run_epcat("connect", description, stdin=b"hello\n")
    err = result.stderr.decode()
    assert result.returncode == 35, err
    assert result.stdout == b""
    line = error_line(err)
    assert line.startswith(f"epcat: error: cannot connect to {description}: "
                           "TLS handshake failed"), line
    assert "verification" not in line, line
    no_traceback(err)


@pytest.mark.timeout(60)
def test_min_version_against_a_tls12_server_exit_35(spawn, tls_files):
    """
    tlsx:...:minVersion=TLSv1.3 against s_server -tls1_2: no common
    version, exit 35 (not 60), one error line.
    """
    _, port = s_server(spawn, tls_files.cert, tls_files.key, "-rev", "-tls1_2")
    description = f"tlsx:localhost:{port}:trustRoots={tls_files.ca_pem}:minVersion=TLSv1.3"
    result = run_epcat("connect", description, stdin=b"hello\n")
    err = result.stderr.decode()
    assert result.returncode == 35, err
    assert result.stdout == b""
    line = error_line(err)
    assert "TLS handshake failed" in line, line
    no_traceback(err)


# -- 3. --keylog


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _secrets_absent(entries, *texts: str | bytes) -> None:
    for entry in entries:
        for text in texts:
            haystack = text.decode("latin-1") if isinstance(text, bytes) else text
            assert entry["secret"] not in haystack.lower(), f"{entry['label']} leaked"


@pytest.mark.timeout(60)
def test_keylog_tls_client_writes_what_openssl_logs_0600_and_appends(spawn, epcat_proc,
                                                                      tls_files, tmp_path):
    """
    --keylog FILE with connect tls: (run with umask 0, so the mode is
    epcat's own choice): FILE gets the same NSS key log lines that s_server
    -keylogfile writes for the session (TLS 1.3: *_TRAFFIC_SECRET_0), mode
    0600; a second run (TLS 1.2: CLIENT_RANDOM) appends.  No secret shows
    in stderr at -vv.
    """
    keylog = tmp_path / "keys.log"
    runs = [((), "CLIENT_TRAFFIC_SECRET_0"), (("-tls1_2",), "CLIENT_RANDOM")]
    before = ""
    for number, (extra, label) in enumerate(runs):
        server_log = tmp_path / f"s_server-{number}.log"
        proc, port = s_server(spawn, tls_files.cert, tls_files.key, "-rev",
                              "-keylogfile", str(server_log), *extra)
        ep = epcat_proc("-vv", "--keylog", keylog, "connect",
                        f"tls:localhost:{port}:trustRoots={tls_files.ca_dir}",
                        stdin=b"secret session\n", umask=0)
        assert ep.finish() == 0, ep.describe()
        assert ep.out == b"noisses terces\n"
        assert proc.finish() == 0, proc.describe()
        assert _mode(keylog) == 0o600
        text = keylog.read_text()
        assert text.startswith(before), "the key log was not appended to"
        new = keylog_entries(text[len(before):])
        labels = {entry["label"] for entry in new}
        assert label in labels, labels
        if label == "CLIENT_TRAFFIC_SECRET_0":
            assert "SERVER_TRAFFIC_SECRET_0" in labels, labels
        assert {e.group(0) for e in new} == {
            e.group(0) for e in keylog_entries(server_log.read_text())
        }
        _secrets_absent(new, ep.err, ep.out)
        no_traceback(ep.err)
        before = text
    assert len(keylog_entries(before)) > len(runs)


@pytest.mark.timeout(60)
def test_keylog_ssl_server_writes_what_curl_logs(epcat_proc, server, tls_files, tmp_path):
    """
    --keylog FILE with listen ssl: and curl (SSLKEYLOGFILE): FILE, mode
    0600, holds the secrets curl logged for the same session; none of them
    appear in epcat's -vv stderr.
    """
    keylog = tmp_path / "keys.log"
    curl_log = tmp_path / "curl-keys.log"
    body = b"keylog through ssl:\n"
    srv = server(http_handler(body))
    ep = epcat_proc("-vv", "--keylog", keylog, "listen", ssl_listen(tls_files), "--once",
                    "connect", f"tcp:{srv.address}", umask=0)
    entries = _curl_logs_what_epcat_logs(ep, tls_files, keylog, curl_log, body)
    labels = {entry["label"] for entry in entries}
    assert labels & {"CLIENT_RANDOM", "CLIENT_TRAFFIC_SECRET_0"}, labels
    _secrets_absent(entries, ep.err)
    no_traceback(ep.err)


def _curl_logs_what_epcat_logs(ep: Any, tls_files: Any, keylog: Path, curl_log: Path,
                               body: bytes) -> list[re.Match[str]]:
    """
    curl (with SSLKEYLOGFILE=C{curl_log}) through C{ep}'s TLS listener, which
    relays to a backend answering C{body}: curl gets the body, epcat ends
    with 0, and C{keylog} (mode 0600) holds exactly the secrets curl logged.

    @return: the entries of C{keylog}.
    """
    result = curl(ep.port(), tls_files.ca_pem,
                  env={**os.environ, "SSLKEYLOGFILE": str(curl_log)})
    assert result.returncode == 0, result.stderr + ep.err.encode()
    assert result.stdout == body
    assert ep.finish() == 0, ep.describe()
    assert _mode(keylog) == 0o600
    entries = keylog_entries(keylog.read_text())
    assert entries, keylog.read_text()
    assert {e.group(0) for e in entries} == {
        e.group(0) for e in keylog_entries(curl_log.read_text())
    }
    return entries


@pytest.mark.timeout(60)
def test_keylog_tls_sni_server_writes_what_curl_logs(epcat_proc, server, tls_files, tmp_path):
    """
    --keylog FILE with Twisted's own tls: server (a directory of NAME.pem
    files, one per SNI name) and curl (SSLKEYLOGFILE): FILE holds the
    secrets curl logged for the same session.
    """
    keylog = tmp_path / "keys.log"
    curl_log = tmp_path / "curl-keys.log"
    certificates = tmp_path / "by-name"
    certificates.mkdir()
    (certificates / "localhost.pem").write_bytes(
        tls_files.key.read_bytes() + tls_files.cert.read_bytes()
    )
    body = b"keylog through tls:\n"
    srv = server(http_handler(body))
    ep = epcat_proc("-v", "--keylog", keylog, "listen",
                    f"tls:{certificates}:port=0:interface=127.0.0.1", "--once",
                    "connect", f"tcp:{srv.address}")
    _curl_logs_what_epcat_logs(ep, tls_files, keylog, curl_log, body)
    no_traceback(ep.err)


# -- 4. -x/--hexdump and --dump

HELLO_LINE = " 68 65 6c 6c 6f" + "   " * 11 + "  hello"


def _check_hello_dump(text: str) -> None:
    """
    The dump of 'hello' sent to an echo server and echoed back.
    """
    blocks = parse_dump(text)
    first = blocks[0]
    assert first.direction == ">"
    assert re.fullmatch(
        r"> \d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}\.\d{6}  length=5 from=0 to=4", first.header
    ), first.header
    assert first.lines == [HELLO_LINE]
    assert first.conn is None
    # local time, like socat's
    assert abs(first.when - datetime.datetime.now()) < datetime.timedelta(minutes=5)
    assert stream_of(blocks, ">") == b"hello"
    assert stream_of(blocks, "<") == b"hello"
    assert all(block.conn is None for block in blocks)


@pytest.mark.timeout(60)
def test_hexdump_of_a_known_string(epcat_proc, server):
    """
    printf hello | epcat -x connect tcp:ECHO: stderr holds the dump (the
    ">" block with header, hex and ASCII columns and "--", the "<" block of
    the echo) and nothing else; stdout is exactly the echo.
    """
    srv = server(echo_handler)
    ep = epcat_proc("-x", "connect", f"tcp:{srv.address}", stdin=b"hello")
    assert ep.finish() == 0, ep.describe()
    assert ep.out == b"hello"
    assert srv.wait_results(1) == [b"hello"]
    lines = ep.err.splitlines()
    assert "--" in lines and any(line.startswith("< ") for line in lines), ep.err
    assert not any(line.startswith("epcat:") for line in lines), ep.err
    _check_hello_dump(ep.err)


@pytest.mark.timeout(60)
def test_hexdump_matches_socat(epcat_proc, server):
    """
    The same bytes (a newline, control bytes, more than 16 bytes) relayed by
    socat -x -v and by epcat -x give the same dump once the timestamps are
    masked.
    """
    socat = require("socat")
    payload = b"hello\n\x00\x01\x7f\xff world, a longer line of text than sixteen bytes!"
    srv = server(echo_handler)
    socat_run = subprocess.run([socat, "-x", "-v", "-", f"TCP:{srv.address}"], input=payload,
                               capture_output=True, timeout=WAIT)
    assert socat_run.returncode == 0, socat_run.stderr
    ep = epcat_proc("-x", "connect", f"tcp:{srv.address}", stdin=payload)
    assert ep.finish() == 0, ep.describe()
    assert ep.out == socat_run.stdout == payload

    def masked(text: str) -> str:
        return re.sub(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d+", "TIME", text)

    expected = masked(socat_run.stderr.decode())
    assert expected.count("\n--\n") == 2, expected  # one chunk each way
    assert masked(ep.err + "\n") == expected


@pytest.mark.timeout(60)
def test_hexdump_shows_tls_plaintext(spawn, epcat_proc, tls_files):
    """
    -x with connect tls: to s_server -rev: the dump shows the plaintext
    both ways, not TLS records.
    """
    _, port = s_server(spawn, tls_files.cert, tls_files.key, "-rev")
    ep = epcat_proc("-x", "connect", f"tls:localhost:{port}:trustRoots={tls_files.ca_dir}",
                    stdin=b"hello tls dump\n")
    assert ep.finish() == 0, ep.describe()
    assert ep.out == b"pmud slt olleh\n"
    blocks = parse_dump(ep.err)
    assert stream_of(blocks, ">") == b"hello tls dump\n"
    assert stream_of(blocks, "<") == b"pmud slt olleh\n"
    assert " 68 65 6c 6c 6f 20 74 6c 73 20 64 75 6d 70 0a" + "   " + "  hello tls dump." in (
        ep.err.splitlines()
    ), ep.err


@pytest.mark.timeout(60)
def test_dump_file_gets_the_dump_and_stderr_nothing(epcat_proc, server, tmp_path):
    """
    --dump FILE: the same dump goes to FILE; stderr stays empty.
    """
    dump = tmp_path / "dump.txt"
    srv = server(echo_handler)
    ep = epcat_proc("--dump", dump, "connect", f"tcp:{srv.address}", stdin=b"hello")
    assert ep.finish() == 0, ep.describe()
    assert ep.out == b"hello"
    assert ep.err == ""
    _check_hello_dump(dump.read_text())


@pytest.mark.timeout(60)
def test_hexdump_names_the_connection_when_several_are_open(epcat_proc, server):
    """
    epcat -v -x listen tcp:0 connect tcp:ECHO with two client connections
    open at once: the dump headers carry conn=1 and conn=2, and each
    connection's blocks hold its own bytes.
    """
    srv = server(echo_handler)
    ep = epcat_proc("-v", "-x", "listen", "tcp:0:interface=127.0.0.1",
                    "connect", f"tcp:{srv.address}")
    port = ep.port()
    payloads = [b"first connection's bytes", b"second connection's bytes"]
    with (
        socket.create_connection(("127.0.0.1", port), timeout=WAIT) as one,
        socket.create_connection(("127.0.0.1", port), timeout=WAIT) as two,
    ):
        ep.wait_stderr(r"^epcat: \[1\] connected to ")
        ep.wait_stderr(r"^epcat: \[2\] connected to ")
        for sock, payload in zip((one, two), payloads, strict=True):
            sock.sendall(payload)
            assert recv_exactly(sock, len(payload)) == payload
        for sock, payload in zip((one, two), payloads, strict=True):
            sock.sendall(b"+" + payload)
            assert recv_exactly(sock, len(payload) + 1) == b"+" + payload
        for sock in (one, two):
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b""
    ep.wait_stderr(r"^epcat: \[1\] closed: ")
    ep.wait_stderr(r"^epcat: \[2\] closed: ")
    blocks = parse_dump(ep.err)
    assert {block.conn for block in blocks} == {1, 2}, ep.err
    carried = {}
    for conn in (1, 2):
        sent = stream_of(blocks, ">", conn)
        assert stream_of(blocks, "<", conn) == sent
        carried[conn] = sent
    assert sorted(carried.values()) == sorted(p + b"+" + p for p in payloads)
    no_traceback(ep.err)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("verbosity", ["-v", "-vv"])
def test_verbose_without_hexdump_shows_no_payload(epcat_proc, server, verbosity):
    """
    -v (and -vv) without -x: a distinctive marker relayed both ways never
    appears in stderr, as text or as hex.
    """
    marker = b"MARKER-" + os.urandom(8).hex().encode() + b"-END"
    srv = server(echo_handler)
    ep = epcat_proc(verbosity, "connect", f"tcp:{srv.address}", stdin=marker)
    assert ep.finish() == 0, ep.describe()
    assert ep.out == marker
    assert "connected to" in ep.err, ep.err
    err = ep.err
    assert marker.decode() not in err, err
    assert marker[7:23].decode() not in err, err
    assert marker.hex() not in err.replace(" ", ""), err
    no_traceback(err)


@pytest.mark.timeout(60)
def test_pcap_names_the_backend_of_bytes_sent_before_it_was_up(epcat_proc, tmp_path):
    """
    epcat --pcap F listen tcp:0 --once connect tcp:BACKEND --retry 5: the
    client's request arrives while the backend still refuses connections
    (epcat holds it); once the backend listens, the capture's stream runs
    between the client's and the backend's real addresses (not the
    placeholders of an end without one), with both directions intact.
    """
    capture = tmp_path / "relay.pcap"
    request = b"GET / HTTP/1.0\r\n\r\n"
    reply = b"HTTP/1.0 200 OK\r\n\r\nlate but here\n"
    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))  # bound, not listening: refused until listen()
    try:
        backend_port = backend.getsockname()[1]
        ep = epcat_proc("-v", "--pcap", capture, "listen", "tcp:0:interface=127.0.0.1", "--once",
                        "connect", f"tcp:127.0.0.1:{backend_port}", "--retry", "5",
                        "--backoff-initial", "0.2", "--backoff-max", "0.5")
        with socket.create_connection(("127.0.0.1", ep.port()), timeout=WAIT) as client:
            client_port = client.getsockname()[1]
            client.sendall(request)
            ep.wait_stderr(r"cannot connect to .*connection refused; attempt 2 in ")
            backend.listen(1)
            backend.settimeout(WAIT)
            conn, _ = backend.accept()
            with conn:
                conn.settimeout(WAIT)
                assert recv_exactly(conn, len(request)) == request
                conn.sendall(reply)
            assert recv_all(client) == reply
    finally:
        backend.close()
    assert ep.finish() == 0, ep.describe()
    nodes, from_client, from_server = follow_raw(capture, 0)
    assert nodes == [f"Node 0: 127.0.0.1:{client_port}", f"Node 1: 127.0.0.1:{backend_port}"]
    assert from_client == request
    assert from_server == reply
    no_traceback(ep.err)


# -- 5. --pcap with TLS termination


@pytest.mark.timeout(60)
def test_pcap_of_tls_termination_is_the_plaintext(epcat_proc, server, tls_files, tmp_path):
    """
    epcat --pcap F listen ssl:0 --once connect tcp:BACKEND, a Python TLS
    client sending a known request and a backend answering a known reply:
    tshark's follow,tcp,raw of F gives back both directions byte for byte
    (the plaintext, not TLS records), between the client's and the
    backend's real addresses.
    """
    capture = tmp_path / "relay.pcap"
    request = b"PUT /upload HTTP/1.1\r\nHost: localhost\r\n\r\n" + bytes(range(256)) * 64
    reply = b"HTTP/1.1 201 Created\r\n\r\n" + os.urandom(100_000)

    def backend(conn: socket.socket) -> bytes:
        got = recv_exactly(conn, len(request))
        conn.sendall(reply)
        return got

    srv = server(backend)
    ep = epcat_proc("-v", "--pcap", capture, "listen", ssl_listen(tls_files), "--once",
                    "connect", f"tcp:{srv.address}")
    port = ep.port()
    context = ssl.create_default_context(cafile=str(tls_files.ca_pem))
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        client_port = raw.getsockname()[1]
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(request)
            # to the end (epcat's close_notify), so that closing the socket
            # leaves nothing unread and sends no reset
            received = recv_all(tls)
    assert received == reply
    assert srv.wait_results(1) == [request]
    assert ep.finish() == 0, ep.describe()
    assert _mode(capture) == 0o600
    nodes, from_client, from_server = follow_raw(capture, 0)
    assert nodes == [f"Node 0: 127.0.0.1:{client_port}", f"Node 1: 127.0.0.1:{srv.port}"]
    assert from_client == request
    assert from_server == reply
    no_traceback(ep.err)

