"""
The two ends of the UNIX->TCP bulk workload of bench.py, each run as its own
process so that neither shares a GIL with the other or with the harness:

    python streamtools.py sink --port PORT --out FILE
        listen on 127.0.0.1:PORT, accept one connection, read it to its end
        (into one reused buffer, nothing kept), then write
        {"bytes": N, "seconds": S} to FILE, S being first byte to last byte.

    python streamtools.py push (--unix PATH | --tcp PORT) --seconds T
        connect, send one reused 256 KiB buffer for T seconds, shut down the
        write side, and wait for the far side to close.

stdlib only.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

CHUNK = 256 * 1024


def sink(port: int, out: str) -> int:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(8)
    conn, _ = listener.accept()
    listener.close()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = 0
    first = last = None
    while True:
        n = conn.recv_into(view)
        if not n:
            break
        last = time.perf_counter()
        if first is None:
            first = last
        total += n
    conn.close()
    seconds = (last - first) if first is not None and last is not None else 0.0
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"bytes": total, "seconds": seconds}, f)
    os.replace(tmp, out)
    return 0


def push(unix: str | None, tcp: int | None, seconds: float) -> int:
    if unix is not None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(unix)
    else:
        assert tcp is not None
        s = socket.create_connection(("127.0.0.1", tcp))
    data = memoryview(os.urandom(CHUNK))
    deadline = time.perf_counter() + seconds
    sent = 0
    while time.perf_counter() < deadline:
        s.sendall(data)
        sent += CHUNK
    s.shutdown(socket.SHUT_WR)
    s.settimeout(30)
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass
    s.close()
    print(json.dumps({"sent": sent}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_sink = sub.add_parser("sink")
    p_sink.add_argument("--port", type=int, required=True)
    p_sink.add_argument("--out", required=True)
    p_push = sub.add_parser("push")
    target = p_push.add_mutually_exclusive_group(required=True)
    target.add_argument("--unix")
    target.add_argument("--tcp", type=int)
    p_push.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "sink":
        return sink(args.port, args.out)
    return push(args.unix, args.tcp, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
