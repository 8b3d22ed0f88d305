"""
Helpers for the end-to-end tests: the real C{epcat} in a subprocess, real
peers (nginx, openssl, curl, systemd-socket-activate) and small Python
servers, all on loopback or UNIX sockets.

Synchronisation is by events only: a line printed by a process (read in a
background thread), a port that accepts, a process that exits.  Every process
started here is killed by its PID and waited for at teardown.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

#: How the tests start epcat: the installed package, run by this interpreter.
EPCAT = [sys.executable, "-m", "epcat"]

#: Seconds to wait for one expected event (a line, a port, an exit).
WAIT = 20.0

#: epcat -v: "epcat: listening on 127.0.0.1:PORT (DESCRIPTION)"
LISTENING_TEXT = re.compile(r"^epcat: listening on (?P<address>.+?) \((?P<description>.*)\)$")


def require(tool: str) -> str:
    """
    The path of C{tool}; a missing tool skips the test, or fails it on CI.
    """
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """
    A port nothing listens on right now, for peers that cannot listen on
    port 0 (nginx, systemd-socket-activate).  Callers retry on EADDRINUSE.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _pause_unless_exited(proc: Proc, seconds: float, awaited: str) -> None:
    """
    Wait up to C{seconds} on C{proc}'s exit, between two looks for what a
    caller awaits; its exit (an event that ends the wait early) is a
    failure, with the process's output in the message.
    """
    try:
        proc.popen.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return
    raise AssertionError(
        f"{proc.name} exited with {proc.popen.returncode} before {awaited}:\n{proc.describe()}"
    )


def wait_for_port(port: int, proc: Proc, host: str = "127.0.0.1", timeout: float = WAIT) -> None:
    """
    Return once C{host:port} accepts a TCP connection.  A peer like nginx
    says nothing when it is ready, so this retries the connection; between
    attempts it waits (50 ms at most) on C{proc}'s exit, an event that also
    ends the wait early, with the process's output in the message.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError as e:
            last = e
        _pause_unless_exited(proc, 0.05, f"{host}:{port} accepted connections")
        if time.monotonic() > deadline:
            raise AssertionError(f"{host}:{port} did not accept connections: {last}")


def wait_listening(where: int | str | Path, proc: Proc, timeout: float = WAIT) -> None:
    """
    Return once something listens on 127.0.0.1:C{where} (a TCP port) or on
    the UNIX socket at path C{where}, seen in C{/proc/net/tcp} or
    C{/proc/net/unix} rather than by connecting: a probe connection to a
    relay would be relayed, and counted.  Between looks it waits (20 ms at
    most) on C{proc}'s exit, which ends the wait early.
    """
    if isinstance(where, int):
        table_path = "/proc/net/tcp"
        wanted = f"0100007F:{where:04X}"

        def found(fields: list[str]) -> bool:
            return fields[1] == wanted and fields[3] == "0A"  # TCP_LISTEN
    else:
        table_path = "/proc/net/unix"
        path = str(where)

        def found(fields: list[str]) -> bool:
            # (flags __SO_ACCEPTCON: a listening socket; the path is last)
            return len(fields) >= 8 and fields[-1] == path and int(fields[3], 16) & 0x10000 != 0
    deadline = time.monotonic() + timeout
    while True:
        with open(table_path) as table:
            next(table)
            if any(found(line.split()) for line in table):
                return
        _pause_unless_exited(proc, 0.02, f"it listened on {where}")
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on {where}:\n{proc.describe()}")


class LineReader:
    """
    Read a process's text stream line by line in a background thread; wait
    for a line matching a pattern (bounded by a timeout, woken by each new
    line and by the end of the stream).
    """

    def __init__(self, stream: Any, name: str) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), name=name, daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = WAIT,
                 start: int = 0) -> re.Match[str]:
        """
        The first line from index C{start} on that matches C{pattern}
        (C{re.search}).

        @raise AssertionError: no such line within C{timeout} seconds, or the
            stream ended without one.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    m = regex.search(self.lines[index])
                    if m:
                        return m
                    index += 1
                if self.closed:
                    raise AssertionError(
                        f"stream ended without a line matching {regex.pattern!r}:\n"
                        + self.text()
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no line matching {regex.pattern!r} within {timeout} s:\n" + self.text()
                    )
                self._cond.wait(remaining)

    def join(self, timeout: float = WAIT) -> None:
        self._thread.join(timeout)

    def text(self) -> str:
        return "\n".join(self.lines)


class ByteCollector:
    """
    Read a binary stream to its end in a background thread.
    """

    def __init__(self, stream: Any, name: str) -> None:
        self._chunks: list[bytes] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), name=name, daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        try:
            while True:
                chunk = stream.read1(1 << 20) if hasattr(stream, "read1") else stream.read(1 << 20)
                if not chunk:
                    break
                self._chunks.append(chunk)
        except (OSError, ValueError):
            pass

    def join(self, timeout: float = WAIT) -> bytes:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "stdout did not reach its end"
        return b"".join(self._chunks)


class Proc:
    """
    A started process: stderr (and, unless told otherwise, stdout) read in
    background threads.

    @ivar stderr: a L{LineReader} on the process's stderr.
    @ivar stdout_lines: a L{LineReader} on stdout, when C{stdout="lines"}.
    """

    def __init__(self, argv: list[str], name: str, stdin: Any = None, stdout: str = "bytes",
                 **popen: Any) -> None:
        self.argv = argv
        self.name = name
        self._stdin_data: bytes | None = None
        if isinstance(stdin, (bytes, bytearray)):
            self._stdin_data = bytes(stdin)
            stdin = subprocess.PIPE
        elif stdin is None:
            stdin = subprocess.DEVNULL
        # stdout: "bytes" (collected), "lines" (a LineReader), "pipe" (left
        # to the caller as popen.stdout) or "null"
        out = subprocess.DEVNULL if stdout == "null" else subprocess.PIPE
        self.popen = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=subprocess.PIPE,
                                      **popen)
        self.pid = self.popen.pid
        self.stderr = LineReader(self.popen.stderr, f"{name}-stderr")
        self.stdout_lines: LineReader | None = None
        self._stdout: ByteCollector | None = None
        if stdout == "lines":
            self.stdout_lines = LineReader(self.popen.stdout, f"{name}-stdout")
        elif stdout == "bytes":
            self._stdout = ByteCollector(self.popen.stdout, f"{name}-stdout")
        self._stdin_thread: threading.Thread | None = None
        if self._stdin_data is not None:
            self._stdin_thread = threading.Thread(target=self._feed, daemon=True,
                                                  name=f"{name}-stdin")
            self._stdin_thread.start()

    def _feed(self) -> None:
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write(self._stdin_data)
        except (BrokenPipeError, OSError, ValueError):
            pass
        finally:
            try:
                self.popen.stdin.close()
            except (BrokenPipeError, OSError):
                pass

    # -- events

    def wait_stderr(self, pattern: str | re.Pattern[str], timeout: float = WAIT) -> re.Match[str]:
        """
        Wait for a stderr line matching C{pattern}.
        """
        return self.stderr.wait_for(pattern, timeout)

    def listening(self, timeout: float = WAIT) -> str:
        """
        Wait for epcat's C{-v} "listening on ADDRESS (DESCRIPTION)" line (or
        its JSON form); return ADDRESS (C{host:port} or a UNIX path).
        """
        m = self.wait_stderr(r'^epcat: listening on |"event": "listening"', timeout)
        line = m.string
        if line.startswith("{"):
            record = json.loads(line)
            if "port" in record:
                return f"{record['host']}:{record['port']}"
            return record["path"]
        m2 = LISTENING_TEXT.match(line)
        assert m2, line
        return m2.group("address")

    def port(self, timeout: float = WAIT) -> int:
        """
        Wait for epcat's listening line; return the bound TCP port.
        """
        address = self.listening(timeout)
        return int(address.rsplit(":", 1)[1])

    def finish(self, timeout: float = WAIT) -> int:
        """
        Wait for the process to exit by itself; return its status.

        @raise AssertionError: it did not exit within C{timeout} seconds.
        """
        try:
            status = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} did not exit within {timeout} s:\n{self.describe()}"
            ) from None
        self.stderr.join()
        if self.stdout_lines is not None:
            self.stdout_lines.join()
        return status

    @property
    def out(self) -> bytes:
        """
        All of stdout; only after L{finish} (or L{stdout_eof}).
        """
        assert self._stdout is not None, "stdout was not collected"
        return self._stdout.join()

    def stdout_eof(self, timeout: float = WAIT) -> bytes:
        """
        Wait until the process closes its stdout (it may go on running);
        return everything it wrote there.
        """
        assert self._stdout is not None, "stdout was not collected"
        try:
            return self._stdout.join(timeout)
        except AssertionError:
            raise AssertionError(
                f"{self.name} did not close stdout within {timeout} s:\n{self.describe()}"
            ) from None

    @property
    def err(self) -> str:
        return self.stderr.text()

    def describe(self) -> str:
        return f"$ {' '.join(self.argv)}\n--- stderr:\n{self.err}"

    # -- control

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


@pytest.fixture
def spawn() -> Iterator[Callable[..., Proc]]:
    """
    Start any process; every one is killed (by PID) and waited for at teardown.
    """
    procs: list[Proc] = []

    def start(argv: list[str], name: str | None = None, **kwargs: Any) -> Proc:
        proc = Proc([str(a) for a in argv], name or Path(str(argv[0])).name, **kwargs)
        procs.append(proc)
        return proc

    yield start
    for proc in reversed(procs):
        proc.kill()


@pytest.fixture
def epcat_proc(spawn: Callable[..., Proc]) -> Callable[..., Proc]:
    """
    C{epcat_proc(*args, stdin=b"..." | None | subprocess.PIPE, stdout="bytes")}
    starts the real epcat with C{args}.
    """

    def start(*args: str, **kwargs: Any) -> Proc:
        return spawn(EPCAT + [str(a) for a in args], name="epcat", **kwargs)

    return start


def one_error_line(text: str) -> str:
    """
    C{text} (stderr) is one C{epcat: error:} line and no traceback; return it.
    """
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("epcat: error:"), text
    no_traceback(text)
    return lines[0]


def run_epcat(*args: str, stdin: bytes = b"",
              timeout: float = WAIT) -> subprocess.CompletedProcess[bytes]:
    """
    Run epcat to completion (for commands that end by themselves).
    """
    return subprocess.run(EPCAT + [str(a) for a in args], input=stdin, capture_output=True,
                          timeout=timeout)


# -- TLS material


class TLSFiles:
    """
    A trustme CA and a server certificate for C{localhost} and C{127.0.0.1}.

    @ivar ca_dir: a directory holding only the CA's PEM (for Twisted's
        C{trustRoots=}).
    @ivar ca_pem: the CA certificate file (for curl's C{--cacert}).
    @ivar key: the server's private key file.
    @ivar cert: the server's certificate file.
    @ivar wrong_ca_dir: a directory holding an unrelated CA's PEM.
    """

    def __init__(self, root: Path) -> None:
        import trustme

        ca = trustme.CA()
        server = ca.issue_cert("localhost", "127.0.0.1")
        self.ca_dir = root / "ca"
        self.ca_dir.mkdir(parents=True)
        self.ca_pem = self.ca_dir / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_pem))
        self.key = root / "server.key"
        self.cert = root / "server.pem"
        server.private_key_pem.write_to_path(str(self.key))
        server.cert_chain_pems[0].write_to_path(str(self.cert))
        for blob in server.cert_chain_pems[1:]:
            blob.write_to_path(str(self.cert), append=True)
        self.wrong_ca_dir = root / "wrong-ca"
        self.wrong_ca_dir.mkdir()
        trustme.CA().cert_pem.write_to_path(str(self.wrong_ca_dir / "ca.pem"))
        self.ca = ca

    def ssl_listen(self, prefix: str = "") -> str:
        """
        A C{ssl:} server description on 127.0.0.1, any free port, with this
        certificate (C{prefix}: a wrapper such as C{"haproxy:"}).
        """
        return f"{prefix}ssl:0:interface=127.0.0.1:privateKey={self.key}:certKey={self.cert}"


def no_subject_alt_name(ca: Any, common_name: str) -> tuple[bytes, bytes]:
    """
    A certificate signed by C{ca} naming C{common_name} in its subject only
    (no subjectAltName), and its key, as PEM.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    issuer_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    issuer = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    )


@pytest.fixture
def tls_files(tmp_path: Path) -> TLSFiles:
    return TLSFiles(tmp_path / "tls")


# -- UNIX socket paths


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """
    A short directory for UNIX socket paths (sun_path holds 108 bytes; a
    pytest tmp_path can be longer than that).
    """
    path = Path(tempfile.mkdtemp(prefix="epcat-e2e-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- nginx


class Nginx:
    """
    A running nginx serving C{body} at C{/} (index.html), C{/mid.bin} and
    C{/big.bin}.

    @ivar port: the port it listens on, on 127.0.0.1.
    @ivar body: the bytes of C{/index.html}.
    @ivar mid: the bytes of C{/mid.bin} (1 MiB).
    @ivar big: the bytes of C{/big.bin} (8 MiB).
    """

    def __init__(self, proc: Proc, port: int, root: Path, body: bytes, mid: bytes,
                 big: bytes) -> None:
        self.proc = proc
        self.port = port
        self.root = root
        self.body = body
        self.mid = mid
        self.big = big


def nginx_conf(root: Path, servers: str, default_type: str) -> str:
    """
    An nginx configuration for a foreground, single-process nginx (no user
    switch needed) with every path inside C{root}, around C{servers} (the
    C{server} blocks of its C{http} block).
    """
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log notice;
events {{ worker_connections 512; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    default_type {default_type};
{servers}
}}
"""


def _nginx_conf(root: Path, port: int, tls: TLSFiles | None) -> str:
    ssl = ""
    listen = f"listen 127.0.0.1:{port}"
    if tls is not None:
        listen += " ssl"
        ssl = f"""
        ssl_certificate {tls.cert};
        ssl_certificate_key {tls.key};"""
    server = f"""    server {{
        {listen};{ssl}
        root {root}/www;
        index index.html;
    }}"""
    return nginx_conf(root, server, "application/octet-stream")


def start_nginx(spawn: Callable[..., Proc], root: Path, tls: TLSFiles | None = None) -> Nginx:
    """
    Start nginx on a free port of 127.0.0.1 in the foreground (single
    process, so no user switch is needed), with every path inside C{root}.
    """
    nginx = require("nginx")
    (root / "www").mkdir(parents=True)
    (root / "tmp").mkdir()
    body = b"<html><body>epcat e2e " + os.urandom(16).hex().encode() + b"</body></html>\n"
    mid = os.urandom(1024 * 1024 + 3)
    big = os.urandom(8 * 1024 * 1024 + 17)
    (root / "www" / "index.html").write_bytes(body)
    (root / "www" / "mid.bin").write_bytes(mid)
    (root / "www" / "big.bin").write_bytes(big)
    conf = root / "nginx.conf"
    for attempt in range(5):
        port = free_port()
        conf.write_text(_nginx_conf(root, port, tls))
        proc = spawn([nginx, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")],
                     name="nginx", stdout="null")
        try:
            wait_for_port(port, proc)
        except AssertionError:
            log = (root / "error.log").read_text() if (root / "error.log").exists() else ""
            proc.kill()
            if "Address already in use" in log and attempt < 4:
                continue  # someone took the port between free_port() and nginx's bind()
            raise AssertionError(f"nginx did not start:\n{log}\n{proc.err}") from None
        return Nginx(proc, port, root, body, mid, big)
    raise AssertionError("unreachable")


@pytest.fixture
def nginx(spawn: Callable[..., Proc], tmp_path: Path) -> Nginx:
    """
    A plain-HTTP nginx on 127.0.0.1.
    """
    return start_nginx(spawn, tmp_path / "nginx")


@pytest.fixture
def nginx_tls(spawn: Callable[..., Proc], tmp_path: Path, tls_files: TLSFiles) -> Nginx:
    """
    An HTTPS nginx on 127.0.0.1 with the trustme server certificate.
    """
    return start_nginx(spawn, tmp_path / "nginx-tls", tls=tls_files)


def split_http(response: bytes) -> tuple[bytes, bytes]:
    """
    (head, body) of a raw HTTP response.
    """
    head, sep, body = response.partition(b"\r\n\r\n")
    assert sep, f"no end of headers in {response[:200]!r}"
    return head, body


# -- Python socket servers


def recv_all(sock: socket.socket, chunk: int = 1 << 18) -> bytes:
    """
    Read C{sock} to EOF.
    """
    parts = []
    while True:
        data = sock.recv(chunk)
        if not data:
            return b"".join(parts)
        parts.append(data)


def exchange(sock: socket.socket, upload: bytes) -> bytes:
    """
    Send C{upload} and half-close (from a thread) while reading everything
    that comes back on C{sock}.
    """
    sender = threading.Thread(
        target=lambda: (sock.sendall(upload), sock.shutdown(socket.SHUT_WR)), daemon=True
    )
    sender.start()
    received = recv_all(sock)
    sender.join(WAIT)
    return received


class Server:
    """
    A listening socket (TCP on 127.0.0.1:0, or UNIX) whose accepted
    connections are each handled by C{handler(conn)} in a thread.

    @ivar results: what each handler returned, in completion order.
    @ivar errors: exceptions raised by handlers.
    @ivar accepted: how many connections were accepted.
    """

    def __init__(self, handler: Callable[[socket.socket], Any], unix_path: Path | None = None,
                 timeout: float = WAIT) -> None:
        self.handler = handler
        self.timeout = timeout
        if unix_path is None:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.bind(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
            self.address = f"127.0.0.1:{self.port}"
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(str(unix_path))
            self.port = 0
            self.address = str(unix_path)
        self.sock.listen(128)
        self.results: list[Any] = []
        self.errors: list[BaseException] = []
        self.accepted = 0
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._closed = False
        self._accept_thread = threading.Thread(target=self._accept, daemon=True, name="server")
        self._accept_thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(self.timeout)
            with self._cond:
                if self._closed:
                    conn.close()
                    return
                self.accepted += 1
                self._conns.append(conn)
                t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
                self._threads.append(t)
                self._cond.notify_all()
            t.start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            result = self.handler(conn)
        except BaseException as e:  # reported by wait_results
            with self._cond:
                self.errors.append(e)
                self._cond.notify_all()
        else:
            with self._cond:
                self.results.append(result)
                self._cond.notify_all()
        finally:
            conn.close()

    def wait_results(self, count: int = 1, timeout: float = WAIT) -> list[Any]:
        """
        Wait until C{count} handlers have finished; return their results.

        @raise AssertionError: a handler raised, or too few finished in time.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.results) + len(self.errors) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self.errors:
                error = self.errors[0]
                raise AssertionError(f"server handler failed: {error!r}") from error
            assert len(self.results) >= count, (
                f"{len(self.results)} of {count} server connections finished in {timeout} s"
            )
            return list(self.results)

    def wait_accepted(self, count: int = 1, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.accepted < count:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"{self.accepted} of {count} connections accepted"
                self._cond.wait(remaining)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            conns = list(self._conns)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for conn in conns:
            try:
                conn.close()
            except OSError:
                pass


@pytest.fixture
def server() -> Iterator[Callable[..., Server]]:
    """
    C{server(handler, unix_path=None)} starts a L{Server}; all are closed at
    teardown.
    """
    servers: list[Server] = []

    def start(handler: Callable[[socket.socket], Any], unix_path: Path | None = None) -> Server:
        s = Server(handler, unix_path)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def echo_handler(conn: socket.socket) -> bytes:
    """
    Echo everything until EOF, then half-close; return what was received.
    """
    received = []
    while True:
        data = conn.recv(1 << 16)
        if not data:
            break
        received.append(data)
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
    return b"".join(received)


def rss_kib(pid: int) -> int:
    """Resident set size of C{pid} in KiB (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def room_for(pid: int, descriptors: int) -> int:
    """
    The RLIMIT_NOFILE that leaves process C{pid} room for exactly
    C{descriptors} more open files: new descriptors take the lowest free
    numbers, and each must be below the limit.
    """
    taken = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    limit, free = 0, 0
    while free < descriptors:
        if limit not in taken:
            free += 1
        limit += 1
    return limit


def answer_after_eof(download: bytes) -> Callable[[socket.socket], str]:
    """
    A L{Server} handler that reads to the client's half-close, then sends
    C{download}; it returns the SHA-256 of what it read, in hex.
    """

    def backend(conn: socket.socket) -> str:
        got = recv_all(conn)  # returns at the client's half-close
        conn.sendall(download)  # answered only after EOF
        return hashlib.sha256(got).hexdigest()

    return backend


def check_backpressure(pid: int, client: socket.socket, go: threading.Event,
                       total: int = 256 * 1024 * 1024) -> None:
    """
    Send up to C{total} bytes on C{client}, a connection through relay
    C{pid} to a backend that reads nothing until C{go} is set: the sends
    must stall (backpressure) before C{total}, with the relay's RSS grown
    by under 16 MiB; then C{go} is set and the rest sent, and C{client}
    half-closed.
    """
    chunk = b"x" * (1 << 20)
    before = rss_kib(pid)
    sent = 0
    client.settimeout(0.5)
    try:
        while sent < total:
            sent += client.send(chunk)
    except TimeoutError:
        pass  # the relay stopped taking bytes: backpressure
    assert sent < total, "the relay took everything: no backpressure"
    grown = rss_kib(pid) - before
    assert grown < 16 * 1024, f"the relay grew by {grown} KiB while the reader was stalled"
    go.set()
    client.settimeout(WAIT)
    while sent < total:
        sent += client.send(chunk)
    client.shutdown(socket.SHUT_WR)


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text
