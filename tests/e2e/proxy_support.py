"""
Helpers for the PROXY protocol end-to-end tests (test_proxy_e2e.py): haproxy
and nginx configured for the PROXY protocol in a test's directory, curl with a
known source port, and raw clients that send PROXY headers to epcat.

Every process is started through conftest's C{spawn} fixture, so it is
killed by its PID at teardown.  Readiness is an event: a port that accepts
(haproxy and nginx bind every listener before they serve any).
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
import pytest

from .conftest import WAIT, Proc, free_port, nginx_conf, require, wait_for_port

#: proxy-protocol.txt section 2.2
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def has_ipv6_loopback() -> bool:
    """
    Can this machine bind ::1?
    """
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def need_ipv6() -> None:
    if not has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1)")


# -- headers built by hand (independent of epcat's encoder)


def v1_header(source: str, source_port: int, dest: str = "127.0.0.1", dest_port: int = 80) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    return f"PROXY {family} {source} {dest} {source_port} {dest_port}\r\n".encode()


def v2_header_ipv4(
    source: str, source_port: int, dest: str = "127.0.0.1", dest_port: int = 80
) -> bytes:
    body = (
        socket.inet_aton(source)
        + socket.inet_aton(dest)
        + struct.pack("!HH", source_port, dest_port)
    )
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body


# -- haproxy


HAPROXY_GLOBAL = """
global
    maxconn 256
defaults
    timeout connect 5s
    timeout client 20s
    timeout server 20s
"""

HAPROXY_READY = """
# haproxy binds every listener before it serves any: once this one accepts,
# the others are bound too (probing them instead would open a connection
# through to epcat)
frontend ready
    mode http
    bind 127.0.0.1:{ready}
    http-request return status 200
"""


def start_haproxy(
    spawn: Callable[..., Proc],
    root: Path,
    body: Callable[[dict[str, int]], str],
    names: Sequence[str] = (),
) -> dict[str, int]:
    """
    Start haproxy in the foreground (C{-db}) with C{body(ports)} after a
    common global/defaults section; C{ports} maps each of C{names} (and
    C{"ready"}) to a free port of 127.0.0.1.  Retries with new ports if one
    was taken meanwhile.

    @return: the ports.
    """
    haproxy = require("haproxy")
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "haproxy.cfg"
    for attempt in range(5):
        ports = {name: free_port() for name in names}
        ports["ready"] = free_port()
        conf.write_text(HAPROXY_GLOBAL + body(ports) + HAPROXY_READY.format(ready=ports["ready"]))
        check = subprocess.run(
            [haproxy, "-c", "-f", str(conf)], capture_output=True, text=True, timeout=WAIT
        )
        assert check.returncode == 0, f"bad haproxy config:\n{conf.read_text()}\n{check.stderr}"
        proc = spawn([haproxy, "-f", str(conf), "-db"], name="haproxy", stdout="null")
        try:
            wait_for_port(ports["ready"], proc=proc)
        except AssertionError:
            proc.kill()
            if "bind" in proc.err.lower() and attempt < 4:
                continue  # a port was taken between free_port() and haproxy's bind()
            raise
        return ports
    raise AssertionError("unreachable")


# -- nginx


class ProxyNginx:
    """
    One nginx with three servers:

      - C{plain}: no PROXY protocol; answers C{TOKEN $request}, so a PROXY
        header leaked in front of the request would make it answer 400 instead;
      - C{pp}: C{listen 127.0.0.1:PORT proxy_protocol}, answers
        C{$proxy_protocol_addr $proxy_protocol_port};
      - C{pp6}: the same on C{[::1]} (only when asked for).
    """

    def __init__(self, proc: Proc, root: Path, token: str, ports: dict[str, int]) -> None:
        self.proc = proc
        self.root = root
        self.token = token
        self.plain = ports["plain"]
        self.pp = ports["pp"]
        self.pp6 = ports.get("pp6")

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text() if path.exists() else ""


def _nginx_conf(root: Path, token: str, ports: dict[str, int]) -> str:
    servers = f"""    server {{
        listen 127.0.0.1:{ports["plain"]};
        location / {{ return 200 "{token} $request"; }}
    }}
    server {{
        listen 127.0.0.1:{ports["pp"]} proxy_protocol;
        location / {{ return 200 "$proxy_protocol_addr $proxy_protocol_port"; }}
    }}"""
    if "pp6" in ports:
        servers += f"""
    server {{
        listen [::1]:{ports["pp6"]} proxy_protocol;
        location / {{ return 200 "$proxy_protocol_addr $proxy_protocol_port"; }}
    }}"""
    return nginx_conf(root, servers, "text/plain")


def start_proxy_nginx(spawn: Callable[..., Proc], root: Path, ipv6: bool = False) -> ProxyNginx:
    """
    Start a L{ProxyNginx} in the foreground, every path inside C{root}.
    """
    nginx = require("nginx")
    (root / "tmp").mkdir(parents=True)
    token = "epcat-" + os.urandom(8).hex()
    conf = root / "nginx.conf"
    for attempt in range(5):
        ports = {"plain": free_port(), "pp": free_port()}
        if ipv6:
            ports["pp6"] = free_port("::1")
        conf.write_text(_nginx_conf(root, token, ports))
        proc = spawn(
            [nginx, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")],
            name="nginx",
            stdout="null",
        )
        try:
            # nginx binds all its listeners before it accepts on any
            wait_for_port(ports["plain"], proc=proc)
        except AssertionError:
            log = (root / "error.log").read_text() if (root / "error.log").exists() else ""
            proc.kill()
            if "Address already in use" in log and attempt < 4:
                continue
            raise AssertionError(f"nginx did not start:\n{log}\n{proc.err}") from None
        return ProxyNginx(proc, root, token, ports)
    raise AssertionError("unreachable")


# -- curl


def curl(url: str, *extra: str, local_port: bool = True) -> tuple[str, int | None]:
    """
    Run curl on C{url} from a known source port (C{--local-port} with a small
    range: curl takes the first it can bind, and reports it).

    @return: (body, the source port curl used).
    """
    curl_path = require("curl")
    argv = [curl_path, "-sS", "--max-time", str(int(WAIT)), "-w", "\n%{local_port}"]
    if local_port:
        start = free_port()
        argv += ["--local-port", f"{start}-{min(start + 40, 65535)}"]
    argv += [*extra, url]
    result = subprocess.run(argv, capture_output=True, timeout=WAIT + 5)
    assert result.returncode == 0, (
        f"$ {' '.join(argv)}\nexit {result.returncode}\n{result.stderr.decode()}"
    )
    body, _, port = result.stdout.decode().rpartition("\n")
    return body.strip(), int(port) if port.strip() else None


# -- raw clients


def connect(port: int, host: str = "127.0.0.1") -> tuple[socket.socket, int]:
    """
    A TCP connection to C{host:port}; returns it and its source port.
    """
    sock = socket.create_connection((host, port), timeout=WAIT)
    return sock, sock.getsockname()[1]


def read_to_end(sock: socket.socket, timeout: float = WAIT) -> tuple[bytes, bool]:
    """
    Read until EOF or a reset.

    @return: (the bytes read, whether the connection was reset).
    """
    sock.settimeout(timeout)
    parts = []
    try:
        while True:
            data = sock.recv(1 << 16)
            if not data:
                return b"".join(parts), False
            parts.append(data)
    except ConnectionResetError:
        return b"".join(parts), True


def exchange(port: int, data: bytes, host: str = "127.0.0.1") -> tuple[bytes, int]:
    """
    Send C{data}, half-close, read to the end; returns (reply, source port).
    """
    sock, source_port = connect(port, host)
    with sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        reply, _ = read_to_end(sock)
    return reply, source_port


def send_quietly(sock: socket.socket, data: bytes | None, half_close: bool = False) -> None:
    """
    Send C{data} (and half-close) to a peer that may already have closed the
    connection: a client that epcat rejects can see EPIPE or a reset here.
    """
    try:
        if data:
            sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def rejected_exchange(port: int, data: bytes, host: str = "127.0.0.1") -> tuple[bytes, int]:
    """
    Like L{exchange}, for a client epcat is expected to close: errors while
    sending are ignored.  Returns (reply, source port).
    """
    sock, source_port = connect(port, host)
    with sock:
        send_quietly(sock, data, half_close=True)
        reply, _ = read_to_end(sock)
    return reply, source_port
