"""
Hostile input (issue 8): random and mutated endpoint descriptions at the
CLI and parser layers; generated and mutated PROXY headers against a real
C{haproxy:} listener; slowloris clients against C{--max-connections} and
C{--idle-timeout}; what C{-vv} logs around TLS; UNIX listeners and their
socket files.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import selectors
import signal
import socket
import ssl
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from .conftest import (
    EPCAT,
    WAIT,
    EchoThread,
    count,
    fd_count,
    figure,
    full_counts,
    header,
    open_pairs,
    raise_nofile,
    settle,
    start_relay,
    wait_until,
)

pytestmark = pytest.mark.stress

def hypothesis_settings(reduced: int, full: int) -> settings:
    """
    Bounded examples, no deadline, no example database; with the reduced
    (CI) counts the examples are the same on every run (derandomize), with
    the full counts they are new each time.
    """
    return settings(max_examples=count(reduced, full), deadline=None, database=None,
                    derandomize=not full_counts(),
                    suppress_health_check=list(HealthCheck))

# -- endpoint descriptions

TYPES = ["tcp", "tcp6", "unix", "ssl", "tls", "tlsx", "haproxy", "systemd", "stdio", "exec",
         "hostname", "TCP", "Unix", "tpc", "", "haproxy:tcp", "haproxy:ssl", "tlsx:tcp"]
KEYS = ["port", "interface", "backlog", "mode", "lockfile", "address", "host", "timeout",
        "bindAddress", "privateKey", "certKey", "extraCertChain", "sslmethod",
        "dhParameters", "trustRoots", "certificate", "caCertsDir", "sni", "alpn", "verify",
        "minVersion", "maxVersion", "requireClientCert", "clientCA", "domain", "index",
        "name", "endpoint", "getClientCertificate", "path"]
#: printable characters, the syntax of descriptions, and some unicode
ALPHABET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    ":=\\,./-_ %@[]()'\"\u00e9\u2603\u202e\U0001f600"
)
#: ... and control characters: line breaks, NUL, ESC (terminal escapes), DEL
CONTROL_ALPHABET = ALPHABET + "\n\r\t\x00\x1b\x7f\x0b\x0c"
WORDS = ["", "0", "1", "-1", "80", "65535", "65536", "99999999999999999999", "127.0.0.1",
         "\\:\\:1", "::1", "localhost", "yes", "no", "maybe", "TLSv1.2", "TLSv1.3",
         "h2,http/1.1", "INET", "INET6", "600", "0o777", "nan", "inf", "-0", "1e9", "\\",
         "\\\\", "\\=", "cat", "sh -c true", "SSLv23_METHOD", "x" * 300]


def _values(files: list[str], alphabet: str) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(WORDS + files),
        st.integers(-(2**70), 2**70).map(str),
        st.text(alphabet=alphabet, max_size=16),
    )


def descriptions(files: list[str], valid: list[str],
                 alphabet: str = ALPHABET) -> st.SearchStrategy[str]:
    """Random descriptions built from real types and keys, mutants of valid ones, and noise."""
    values = _values(files, alphabet)
    part = st.one_of(values, st.tuples(st.sampled_from(KEYS), values).map("=".join))
    built = st.tuples(
        st.one_of(st.sampled_from(TYPES), st.text(alphabet=alphabet, max_size=8)),
        st.lists(part, max_size=6),
    ).map(lambda t: ":".join([t[0], *t[1]]))

    @st.composite
    def mutant(draw: st.DrawFn) -> str:
        text = draw(st.sampled_from(valid))
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["insert", "delete", "dup", "swap", "escape", "case"]))
            i = draw(st.integers(0, len(text)))
            if op == "insert":
                noise = draw(st.text(alphabet=alphabet, min_size=1, max_size=4))
                text = text[:i] + noise + text[i:]
            elif op == "delete":
                text = text[:i] + text[i + draw(st.integers(1, 8)):]
            elif op == "dup":
                text = text[:i] + text[i:] + ":" + text[i:]
            elif op == "swap":
                text = text[i:] + text[:i]
            elif op == "escape":
                text = text.replace(":", "\\:", 1) if i % 2 else text.replace("=", "\\=", 1)
            else:
                text = text.swapcase()
        return text

    return st.one_of(built, mutant(), st.text(alphabet=alphabet, max_size=60))


def _valid_descriptions(tls_files) -> list[str]:
    key, cert, ca = tls_files.key, tls_files.cert, tls_files.ca_dir
    return [
        "tcp:8080", "tcp:8080:interface=127.0.0.1:backlog=10", "tcp6:8080:interface=\\:\\:1",
        "unix:/tmp/epcat-fuzz.sock:mode=600:lockfile=1", "tcp:127.0.0.1:80",
        "tcp:host=localhost:port=80:timeout=3", "unix:/tmp/epcat-fuzz.sock",
        f"ssl:8443:privateKey={key}:certKey={cert}", f"tls:localhost:443:trustRoots={ca}",
        f"tlsx:localhost:443:sni=a.example:alpn=h2,http/1.1:trustRoots={ca}",
        "tlsx:127.0.0.1:443:verify=no:minVersion=TLSv1.2",
        f"tlsx:8443:privateKey={key}:certKey={cert}:requireClientCert=yes:clientCA={ca}/ca.pem",
        "haproxy:tcp:8080:interface=127.0.0.1", "systemd:domain=INET:index=0", "stdio:",
        "exec:cat", "exec:sh -c \"tr a-z A-Z\"", "hostname:localhost:8080:timeout=5",
    ]


GLOBAL_OPTIONS = [["-v"], ["-vv"], ["-q"], ["--idle-timeout"], ["--half-close-timeout"],
                  ["--crlf"], ["--log-format"], ["-x"]]
LISTEN_OPTIONS = [["--once"], ["--max-connections"], ["--allow"], ["--deny"],
                  ["--drain-timeout"], ["--proxy-trusted"], ["--proxy-header-timeout"]]
CONNECT_OPTIONS = [["--connect-timeout"], ["--retry"], ["--reconnect"], ["--fail-after"],
                   ["--backoff-initial"], ["--backoff-max"], ["--backoff-factor"],
                   ["--proxy-header"]]
TAKES_VALUE = {"--idle-timeout", "--half-close-timeout", "--log-format", "--max-connections",
               "--allow", "--deny", "--drain-timeout", "--proxy-trusted",
               "--proxy-header-timeout", "--connect-timeout", "--retry", "--fail-after",
               "--backoff-initial", "--backoff-max", "--backoff-factor", "--proxy-header"}
OPTION_VALUES = st.one_of(
    st.sampled_from(["0", "1", "2.5", "-1", "nan", "inf", "1e999", "v1", "v2", "v3", "json",
                     "text", "127.0.0.0/8", "::1/128", "192.0.2.0/33", "garbage", ""]),
    st.text(alphabet=ALPHABET, max_size=10),
)


def argvs(description: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    """Command lines in every form, with options in and out of place."""

    def options(pool: list[list[str]]) -> st.SearchStrategy[list[str]]:
        def flatten(chosen: list[tuple[list[str], str]]) -> list[str]:
            out: list[str] = []
            for (name,), value in chosen:
                out.append(name)
                if name in TAKES_VALUE:
                    out.append(value)
            return out

        return st.lists(st.tuples(st.sampled_from(pool), OPTION_VALUES), max_size=3).map(flatten)

    form = st.sampled_from(["listen", "relay", "connect", "tunnel", "explain", "endpoints"])

    @st.composite
    def build(draw: st.DrawFn) -> list[str]:
        kind = draw(form)
        argv = draw(options(GLOBAL_OPTIONS))
        if kind in ("listen", "relay"):
            argv += ["listen", draw(description), *draw(options(LISTEN_OPTIONS))]
        if kind in ("relay", "connect", "tunnel"):
            argv += ["connect", draw(description), *draw(options(CONNECT_OPTIONS))]
        if kind == "tunnel":
            argv += ["connect", draw(description), *draw(options(CONNECT_OPTIONS))]
        if kind == "explain":
            argv += ["explain", draw(description)]
        if kind == "endpoints":
            argv += ["endpoints", *draw(st.lists(st.sampled_from(TYPES), max_size=1))]
        if draw(st.booleans()) and len(argv) > 1:  # an option in the wrong place
            i = draw(st.integers(0, len(argv)))
            argv.insert(i, draw(st.sampled_from(["--once", "--retry", "-v", "--bogus", "--"])))
        return argv

    return build()


def _json_record(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _is_error_line(line: str) -> bool:
    """'epcat: error: ...', or its --log-format json form."""
    if line.startswith("epcat: error: "):
        return True
    record = _json_record(line)
    return bool(record) and record.get("level") == "error" and bool(record.get("message"))


def _is_log_line(line: str) -> bool:
    return line.startswith("epcat: ") or _json_record(line) is not None


def _raw_controls(text: str) -> list[str]:
    """Control characters in C{text} (line breaks, ESC, NUL, DEL), but a final newline."""
    return [repr(c) for c in text.removesuffix("\n") if ord(c) < 0x20 or ord(c) == 0x7F]


ALPHABETS = [
    pytest.param(ALPHABET, id="printable"),
    pytest.param(CONTROL_ALPHABET, id="control-characters"),
]
#: a control character in an argument name: the known failure, tried first
CONTROL_EXAMPLE = "tcp:8080:\ninterface=127.0.0.1"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("alphabet", ALPHABETS)
def test_cli_never_tracebacks(monkeypatch, capsys, tls_files, tmp_path, alphabet):
    """
    epcat.cli.main(argv) with go() patched out (no reactor starts): every
    random or mutated command line ends in exit 0, or exit 2 with one line
    "epcat: error: ..." on stderr (a JSON object with --log-format json),
    with no raw control character in it; never a traceback, never a hang.
    """
    import epcat.cli

    plans = []
    monkeypatch.setattr(epcat.cli, "go", plans.append)
    monkeypatch.chdir(tmp_path)  # relative paths in descriptions name nothing
    files = [str(tls_files.key), str(tls_files.cert), str(tls_files.ca_dir),
             str(tmp_path / "missing.pem"), str(tmp_path)]
    tried = {"total": 0, "usage errors": 0, "accepted": 0}
    slowest = [0.0]
    control = alphabet == CONTROL_ALPHABET

    def check(argv: list[str]) -> None:
        capsys.readouterr()
        t = time.monotonic()
        with pytest.raises(SystemExit) as exited:
            epcat.cli.main(argv)
        slowest[0] = max(slowest[0], time.monotonic() - t)
        out, err = capsys.readouterr()
        code = exited.value.code or 0
        tried["total"] += 1
        assert "Traceback" not in err + out, (argv, err)
        assert code in (0, 2), (argv, code, err)
        assert not _raw_controls(err), (argv, err)
        if code == 2:
            tried["usage errors"] += 1
            assert err.endswith("\n") and err.count("\n") == 1, (argv, err)
            assert _is_error_line(err.rstrip("\n")), (argv, err)
        else:
            tried["accepted"] += 1
            assert all(_is_log_line(line) for line in err.splitlines()), (argv, err)
        assert time.monotonic() - t < 5, ("slow", argv)

    prop = given(argv=argvs(descriptions(files, _valid_descriptions(tls_files), alphabet)))(check)
    if control:
        prop = example(argv=["explain", CONTROL_EXAMPLE])(prop)
    hypothesis_settings(100 if control else 300, 1000 if control else 3000)(prop)()
    figure(f"cli-fuzz[{'control' if control else 'printable'}]",
           bad_inputs_tried=tried["total"],
           **{k.replace(" ", "_"): v for k, v in tried.items() if k != "total"},
           slowest=f"{slowest[0] * 1000:.0f} ms")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("alphabet", ALPHABETS)
def test_endpoint_parsers_never_crash(tls_files, tmp_path, monkeypatch, alphabet):
    """
    epcat.endpoints.parse_server / parse_client on a MemoryReactor: every
    random or mutated description gives an endpoint or a UsageError whose
    message is one line without raw control characters; nothing else.
    """
    from twisted.internet.testing import MemoryReactor

    from epcat.endpoints import endpoint_type, half_close_mode, parse_client, parse_server
    from epcat.status import UsageError

    monkeypatch.chdir(tmp_path)
    files = [str(tls_files.key), str(tls_files.cert), str(tls_files.ca_dir),
             str(tmp_path / "missing.pem"), str(tmp_path)]
    tried = {"total": 0, "refused": 0, "parsed": 0}
    control = alphabet == CONTROL_ALPHABET

    def check(description: str) -> None:
        endpoint_type(description)
        half_close_mode(description)
        for parse in (parse_server, parse_client):
            tried["total"] += 1
            t = time.monotonic()
            try:
                endpoint = parse(MemoryReactor(), description)
            except UsageError as e:
                tried["refused"] += 1
                message = str(e)
                assert message and "Traceback" not in message, message
                assert not _raw_controls(message), (description, message)
            else:
                tried["parsed"] += 1
                assert endpoint is not None
            assert time.monotonic() - t < 5, ("slow", description)

    prop = given(description=descriptions(files, _valid_descriptions(tls_files), alphabet))(check)
    if control:
        prop = example(description=CONTROL_EXAMPLE)(prop)
    hypothesis_settings(100 if control else 300, 1000 if control else 3000)(prop)()
    figure(f"parser-fuzz[{'control' if control else 'printable'}]",
           bad_inputs_tried=tried["total"], refused=tried["refused"], parsed=tried["parsed"])


# -- PROXY headers

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


@st.composite
def proxy_v1(draw: st.DrawFn) -> tuple[bytes, tuple[str, int] | None]:
    family = draw(st.sampled_from(["TCP4", "TCP6", "UNKNOWN"]))
    if family == "UNKNOWN":
        return b"PROXY UNKNOWN\r\n", None
    if family == "TCP4":
        src, dst = (str(ipaddress.IPv4Address(draw(st.integers(0, 2**32 - 1)))) for _ in "ab")
    else:
        src, dst = (str(ipaddress.IPv6Address(draw(st.integers(0, 2**128 - 1)))) for _ in "ab")
    sport, dport = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode(), (src, sport)


@st.composite
def proxy_v2(draw: st.DrawFn) -> tuple[bytes, tuple[str, int] | None]:
    command = draw(st.sampled_from(["PROXY4", "PROXY6", "LOCAL"]))
    tlvs = b"".join(
        struct.pack("!BH", t, len(v)) + v
        for t, v in draw(st.lists(st.tuples(st.integers(0xE0, 0xEF), st.binary(max_size=24)),
                                  max_size=3))
    )
    source = None
    if command == "LOCAL":
        ver_cmd, family, body = 0x20, 0x00, b""
    elif command == "PROXY4":
        src, dst = draw(st.binary(min_size=4, max_size=4)), draw(st.binary(min_size=4, max_size=4))
        sport, dport = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
        ver_cmd, family, body = 0x21, 0x11, src + dst + struct.pack("!HH", sport, dport)
        source = (str(ipaddress.IPv4Address(src)), sport)
    else:
        src, dst = (draw(st.binary(min_size=16, max_size=16)) for _ in "ab")
        sport, dport = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
        ver_cmd, family, body = 0x21, 0x21, src + dst + struct.pack("!HH", sport, dport)
        source = (str(ipaddress.IPv6Address(src)), sport)
    body += tlvs
    return V2_SIGNATURE + bytes([ver_cmd, family]) + struct.pack("!H", len(body)) + body, source


@st.composite
def mutated(draw: st.DrawFn, good: st.SearchStrategy) -> bytes:
    data = bytearray(draw(good)[0])
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "garbage",
                                   "oversize", "none", "split-crlf"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "truncate":
            data = data[:i]
        elif op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 8))]
        elif op == "garbage":
            data = bytearray(draw(st.binary(max_size=120)))
        elif op == "oversize":
            data = bytearray(b"PROXY TCP4 " + b"1" * draw(st.integers(97, 300)) + b"\r\n")
        elif op == "none":
            data = bytearray()
        else:
            data = data.replace(b"\r\n", b"\n")
    return bytes(data)


PROXY_CASES = st.one_of(
    proxy_v1().map(lambda v: ("valid-v1", v[0], v[1])),
    proxy_v2().map(lambda v: ("valid-v2", v[0], v[1])),
    mutated(st.one_of(proxy_v1(), proxy_v2())).map(lambda b: ("mutated", b, None)),
)


def _accepted_source(line: str) -> tuple[str, int]:
    m = re.search(r"\] accepted \[?([^\]\s]+?)\]?:(\d+) on ", line)
    assert m, line
    return str(ipaddress.ip_address(m.group(1))), int(m.group(2))


@pytest.mark.timeout(120)
def test_proxy_headers(epcat_proc):
    """
    Generated valid v1/v2 headers are relayed (the backend gets exactly the
    bytes after the header, and -v shows the address the header carried);
    mutated ones are either closed with a logged reason, or relayed with
    nothing but a prefix taken off what the client sent; epcat stays up and
    leaks no descriptor.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    EchoThread(listener)  # raw echo: what comes back is what epcat forwarded
    proc, port = start_relay(epcat_proc, "tcp:{}:{}".format(*listener.getsockname()),
                             listen="haproxy:tcp:0:interface=127.0.0.1",
                             listen_args=("--proxy-header-timeout", "3"))
    tally = {"valid relayed": 0, "mutated relayed": 0, "mutated rejected": 0}
    marker = b"proxy-marker-" + os.urandom(8).hex().encode()

    def attempt(head: bytes) -> tuple[bytes, str]:
        start = len(proc.stderr.lines)
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as c:
            cport = c.getsockname()[1]
            c.sendall(head + marker)
            c.shutdown(socket.SHUT_WR)
            got = b""
            try:
                while chunk := c.recv(1 << 16):
                    got += chunk
            except ConnectionResetError:
                pass
        m = proc.stderr.wait_for(
            rf"^epcat: warning: closed 127\.0\.0\.1:{cport}: "
            rf"|\(from a PROXY header sent by 127\.0\.0\.1:{cport}\)$",
            start=start,
        )
        return got, m.string

    assert attempt(b"PROXY UNKNOWN\r\n")[0] == marker  # warm-up
    assert wait_until(lambda: open_pairs(proc) == 0, timeout=WAIT, interval=0.2)
    fd_base = fd_count(proc.pid)

    @hypothesis_settings(60, 400)
    @given(case=PROXY_CASES)
    def check(case: tuple[str, bytes, tuple[str, int] | None]) -> None:
        kind, head, source = case
        got, line = attempt(head)
        rejected = line.startswith("epcat: warning: closed")
        if kind != "mutated":
            assert not rejected, (head, line)
            assert got == marker, (head, got)
            if source is not None:
                assert _accepted_source(line) == (
                    str(ipaddress.ip_address(source[0])), source[1]), (head, line)
            tally["valid relayed"] += 1
        elif rejected:
            assert got == b"", (head, got)
            tally["mutated rejected"] += 1
        else:
            # relayed: epcat took a header off the front and passed the rest on
            assert (head + marker).endswith(got), (head, got)
            tally["mutated relayed"] += 1

    try:
        check()
    finally:
        listener.close()
    pairs, fds = settle(proc, fd_base)
    figure("proxy-headers", headers_tried=sum(tally.values()),
           **{k.replace(" ", "_"): v for k, v in tally.items()},
           open_pairs_after=pairs, fds=f"{fd_base} -> {fds}")
    assert proc.popen.poll() is None
    assert pairs == 0 and fds <= fd_base
    assert "Traceback" not in proc.err
    assert tally["valid relayed"] and tally["mutated rejected"]


# -- slowloris


@pytest.mark.timeout(120)
def test_slowloris(epcat_proc, backend):
    """
    Many clients that send a byte every 3 s against --max-connections 50
    --idle-timeout 2: the backend never sees more than 50 connections at
    once, and each relayed client is closed about 2 s after its last byte
    moved; the others wait their turn and are served.
    """
    raise_nofile()
    n = count(200, 2000)
    limit, idle, interval = 50, 2.0, 3.0
    budget = 60.0 if n <= 200 else 105.0
    be = backend()
    proc, port = start_relay(epcat_proc, f"tcp:{be.address}",
                             global_args=("-v", "--idle-timeout", str(idle)),
                             listen="tcp:0:interface=127.0.0.1:backlog=4096",
                             listen_args=("--max-connections", str(limit)))
    sel = selectors.DefaultSelector()
    clients: dict[socket.socket, dict] = {}
    started = time.monotonic()
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        clients[s] = {"next": None, "first": None, "last": None, "eof": None}
        sel.register(s, selectors.EVENT_WRITE)  # writable: connected
    peak_pairs = 0
    next_table = time.monotonic()
    while time.monotonic() - started < budget:
        now = time.monotonic()
        live = [s for s, c in clients.items() if c["eof"] is None]
        if not live:
            break
        for s in live:
            c = clients[s]
            if c["next"] is not None and now >= c["next"]:
                try:
                    s.send(b"z")  # a byte every few seconds
                except OSError:
                    pass  # closed by epcat: the EOF is read below
                c["next"] = now + interval
        if now >= next_table:
            peak_pairs = max(peak_pairs, open_pairs(proc))
            next_table = now + 1.0
        for key, mask in sel.select(0.05):
            s = key.fileobj
            c = clients[s]
            t = time.monotonic()
            if mask & selectors.EVENT_WRITE:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    c["eof"] = t
                    sel.unregister(s)
                    continue
                s.send(header(b"E") + b"z")  # the first byte (after the header), at once
                c["next"] = t + interval
                sel.modify(s, selectors.EVENT_READ)
                continue
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if data:
                c["first"] = c["first"] or t
                c["last"] = t
            else:
                c["eof"] = t
                sel.unregister(s)
                s.close()
    elapsed = time.monotonic() - started
    stats = be.stats()
    served = [c for c in clients.values() if c["first"] is not None and c["eof"] is not None]
    closed_unserved = sum(1 for c in clients.values() if c["first"] is None and c["eof"])
    idle_closes = sorted(c["eof"] - c["last"] for c in served)
    for s, c in clients.items():
        if c["eof"] is None:
            s.close()
    sel.close()
    assert wait_until(lambda: open_pairs(proc) == 0, timeout=WAIT, interval=0.2)
    figure(
        "slowloris",
        clients=n,
        served_and_idle_closed=len(served),
        closed_without_being_served=closed_unserved,
        backend_max_concurrent=stats["max"],
        epcat_open_pairs_peak_incl_queued=peak_pairs,
        idle_close_after_last_byte=(
            f"min {idle_closes[0]:.2f} s, median {idle_closes[len(idle_closes) // 2]:.2f} s, "
            f"max {idle_closes[-1]:.2f} s" if idle_closes else "-"
        ),
        seconds=f"{elapsed:.1f}",
    )
    assert stats["max"] <= limit, f"the backend saw {stats['max']} connections at once"
    assert stats["max"] >= limit * 0.8, "the limit was never reached"
    if n <= 200:
        assert len(served) == n, f"{len(served)} of {n} clients served in {budget} s"
    else:
        assert len(served) >= min(n, limit * int(elapsed / (idle + interval)))
    assert idle_closes and idle - 0.2 <= idle_closes[0] and idle_closes[-1] <= idle + 2.0
    assert proc.popen.poll() is None
    assert "Traceback" not in proc.err


# -- TLS: what -vv logs


@pytest.mark.timeout(60)
def test_tls_debug_log_leaks_nothing(epcat_proc, tls_files, tmp_path):
    """
    A TLS-terminating, TLS-originating relay at -vv with --keylog: its log
    has the handshake details but never the private key, a key log line or
    secret, or a payload byte (a marker, as text or hex).
    """
    keylog = tmp_path / "keys.log"
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(str(tls_files.cert), str(tls_files.key))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    EchoThread(listener, server_ctx)
    bport = listener.getsockname()[1]
    proc = epcat_proc(
        "-vv", "--keylog", keylog,
        "listen", f"ssl:0:interface=127.0.0.1:privateKey={tls_files.key}:certKey={tls_files.cert}",
        "connect", f"tls:127.0.0.1:{bport}:trustRoots={tls_files.ca_dir}",
    )
    port = proc.port()
    marker = ("MARKER-" + os.urandom(12).hex()).encode()
    client_ctx = ssl.create_default_context(cafile=str(tls_files.ca_pem))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw, \
                client_ctx.wrap_socket(raw, server_hostname="localhost") as c:
            c.sendall(marker)
            got = b""
            while len(got) < len(marker):
                got += c.recv(1 << 16)
        assert got == marker
        proc.wait_stderr(r"^epcat: \[1\] closed: ")
        proc.wait_stderr(r"TLS with the outbound side")
    finally:
        listener.close()
    proc.signal(signal.SIGTERM)
    proc.finish()
    log = proc.err
    secrets = [line for line in keylog.read_text().splitlines() if line.strip()]
    key_lines = [line for line in tls_files.key.read_text().splitlines()
                 if line and not line.startswith("-----")]
    figure("tls-log", log_lines=len(log.splitlines()), keylog_lines_checked=len(secrets),
           key_lines_checked=len(key_lines), marker=marker.decode())
    assert secrets and stat.S_IMODE(keylog.stat().st_mode) == 0o600
    assert "TLS with the inbound side" in log  # -vv did log the handshakes
    assert "PRIVATE KEY" not in log
    for line in key_lines:
        assert line not in log, "a line of the private key is in the log"
    for line in secrets:
        label, _random, secret = line.split()
        assert secret not in log and secret.upper() not in log, f"a {label} secret is in the log"
    assert not re.search(r"CLIENT_RANDOM|TRAFFIC_SECRET|EXPORTER_SECRET|EARLY_EXPORTER", log)
    hexed = marker.hex()
    spaced = " ".join(f"{b:02x}" for b in marker[:8])
    for needle in (marker.decode(), hexed, hexed.upper(), spaced, marker[7:].decode()):
        assert needle not in log, f"payload bytes in the log: {needle}"


@pytest.fixture
def tls_echo(tls_files):
    """A TLS echo server on 127.0.0.1 with the trustme certificate; its port."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(tls_files.cert), str(tls_files.key))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    EchoThread(listener, ctx)
    yield listener.getsockname()[1]
    listener.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", [
    "tls",
    "tlsx",
    "ssl",
])
def test_tls_client_verifies_by_default(tls_echo, kind):
    """
    A TLS client description without trust settings, against a certificate
    from an unknown CA: the connection fails verification (exit 60), or at
    the very least epcat warns that it is not verifying.
    """
    result = subprocess.run(EPCAT + ["connect", f"{kind}:127.0.0.1:{tls_echo}"],
                            input=b"secret", capture_output=True, timeout=WAIT)
    stderr = result.stderr.decode()
    figure(f"tls-verify-default[{kind}]", exit=result.returncode, stderr=stderr.strip())
    assert result.returncode == 60 or "NOT verified" in stderr, (result.returncode, stderr)
    assert "Traceback" not in stderr


@pytest.mark.timeout(60)
def test_tls_verify_no_warns(tls_echo):
    """tlsx:...:verify=no relays, and says on stderr that nothing is verified."""
    result = subprocess.run(
        EPCAT + ["connect", f"tlsx:127.0.0.1:{tls_echo}:verify=no"],
        input=b"unverified", capture_output=True, timeout=WAIT,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 0 and result.stdout == b"unverified", stderr
    assert re.search(r"^epcat: warning: .*verify=no.*NOT verified", stderr, re.M), stderr


# -- UNIX listeners


def _listen_unix(epcat_proc, backend_address: str, description: str):
    proc = epcat_proc("-v", "listen", description, "connect", f"tcp:{backend_address}")
    proc.listening()
    return proc


def _unix_echo(path: Path, payload: bytes = b"over unix") -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(WAIT)
        s.connect(str(path))
        s.sendall(header(b"E") + payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(1 << 16):
            got += chunk
        return got


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(EPCAT + [str(a) for a in args], capture_output=True, text=True,
                          timeout=WAIT)


@pytest.mark.timeout(60)
def test_unix_mode(epcat_proc, backend, short_dir):
    """listen unix:PATH:mode=600 creates a socket of mode 0600 that relays."""
    be = backend()
    path = short_dir / "s600"
    _listen_unix(epcat_proc, be.address, f"unix:{path}:mode=600")
    st_ = path.stat()
    assert stat.S_ISSOCK(st_.st_mode)
    assert stat.S_IMODE(st_.st_mode) == 0o600, oct(st_.st_mode)
    assert _unix_echo(path) == b"over unix"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stale_lock", [False, True], ids=["no-lock", "stale-lock"])
def test_unix_refuses_to_replace_a_regular_file(short_dir, stale_lock):
    """
    listen unix:PATH where PATH is a regular file: exit 1, one error line
    naming the path, and the file untouched (also with a stale PATH.lock of
    a dead process, which makes Twisted clean up: it removes only sockets).
    """
    path = short_dir / "precious"
    path.write_bytes(b"do not delete me\n")
    if stale_lock:
        dead = subprocess.Popen(["true"])
        dead.wait()
        os.symlink(str(dead.pid), f"{path}.lock")
    result = _run("listen", f"unix:{path}", "connect", "tcp:127.0.0.1:9")
    figure(f"unix-regular-file[{'stale-lock' if stale_lock else 'no-lock'}]",
           exit=result.returncode, stderr=result.stderr.strip())
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1].startswith(f"epcat: error: cannot listen on unix:{path}: "), result.stderr
    assert "Traceback" not in result.stderr
    assert path.read_bytes() == b"do not delete me\n"
    assert stat.S_ISREG(path.stat().st_mode)


@pytest.mark.timeout(60)
def test_unix_regular_file_error_is_clear_and_clean(short_dir):
    """The error for a regular file says it is not a socket, and nothing is left behind."""
    path = short_dir / "precious"
    path.write_bytes(b"data\n")
    result = _run("listen", f"unix:{path}", "connect", "tcp:127.0.0.1:9")
    assert result.returncode == 1
    assert "not a socket" in result.stderr, result.stderr
    assert not os.path.lexists(f"{path}.lock"), "a stale lock file was left behind"


@pytest.mark.timeout(60)
def test_unix_stale_socket_and_lockfile(epcat_proc, backend, short_dir):
    """
    Twisted's lockfile (unix: server descriptions lock by default; lockfile=1
    says so): a socket file left by an epcat killed with SIGKILL is replaced
    by the next epcat; a live epcat's socket is not ("Cannot acquire lock").
    With lockfile=0 nothing proves the old server dead, so the stale socket
    makes the next listen fail with "address already in use".
    """
    be = backend()
    results = {}
    for variant, suffix in (("lockfile=1", ":lockfile=1"), ("default", ""),
                            ("lockfile=0", ":lockfile=0")):
        path = short_dir / variant.replace("=", "")
        first = _listen_unix(epcat_proc, be.address, f"unix:{path}{suffix}")
        assert _unix_echo(path) == b"over unix"
        first.kill()  # SIGKILL by PID: no cleanup
        assert stat.S_ISSOCK(path.stat().st_mode)
        with pytest.raises(ConnectionRefusedError), socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(path))  # stale: nobody listens
        if variant == "lockfile=0":
            result = _run("listen", f"unix:{path}{suffix}", "connect", f"tcp:{be.address}")
            results[variant] = result.stderr.strip()
            assert result.returncode == 1
            assert "address already in use" in result.stderr
            assert stat.S_ISSOCK(path.stat().st_mode)
            continue
        assert os.path.islink(f"{path}.lock")
        second = _listen_unix(epcat_proc, be.address, f"unix:{path}{suffix}")
        assert _unix_echo(path, b"second") == b"second"
        # a live server's socket is not taken over
        result = _run("listen", f"unix:{path}{suffix}", "connect", f"tcp:{be.address}")
        results[variant] = f"replaced; live: {result.stderr.strip()}"
        assert result.returncode == 1
        assert "Cannot acquire lock" in result.stderr
        assert _unix_echo(path, b"still") == b"still"
        assert second.popen.poll() is None
    figure("unix-stale-socket", **{k.replace("=", ""): v for k, v in results.items()})


@pytest.mark.timeout(60)
def test_unix_graceful_stop_removes_the_socket(epcat_proc, backend, short_dir):
    """After SIGTERM the socket file and its lock are gone, as a clean stop should leave it."""
    be = backend()
    path = short_dir / "clean"
    proc = _listen_unix(epcat_proc, be.address, f"unix:{path}:lockfile=1")
    assert _unix_echo(path) == b"over unix"
    proc.signal(signal.SIGTERM)
    assert proc.finish() == 0
    leftovers = [p for p in (str(path), f"{path}.lock") if os.path.lexists(p)]
    assert not leftovers, leftovers



@pytest.mark.timeout(60)
def test_max_connections_leaves_the_rest_in_the_backlog(epcat_proc, backend):
    """
    With --max-connections 50 and 200 clients arriving at once, epcat holds
    50 client connections; the others wait in the kernel's backlog.
    """
    limit, n = 50, 200
    be = backend()
    proc, port = start_relay(epcat_proc, f"tcp:{be.address}",
                             listen="tcp:0:interface=127.0.0.1:backlog=4096",
                             listen_args=("--max-connections", str(limit)))
    assert open_pairs(proc) == 0
    base = fd_count(proc.pid)
    proc.signal(signal.SIGSTOP)  # all of them in the backlog before epcat looks
    try:
        clients = [socket.create_connection(("127.0.0.1", port), timeout=WAIT)
                   for _ in range(n)]
    finally:
        proc.signal(signal.SIGCONT)
    try:
        assert wait_until(lambda: be.stats()["open"] == limit, timeout=WAIT)
        time.sleep(0.5)
        held, fds = open_pairs(proc), fd_count(proc.pid)
    finally:
        for c in clients:
            c.close()
    figure("max-connections-burst", limit=limit, clients=n, backend_open=be.stats()["max"],
           epcat_pairs_incl_queued=held, epcat_fds=f"{base} -> {fds}")
    assert held <= limit, f"epcat holds {held} client connections with --max-connections {limit}"
