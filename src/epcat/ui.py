# -*- test-case-name: tests.unit.test_ui -*-
"""
Everything epcat says to people goes through L{UI}, on stderr.

stdout is never for humans: in the stdin/stdout modes it is the data channel.
Text lines start with C{epcat:}; with C{--log-format json} every line is one
JSON object.  rich is imported only when stderr is a terminal, so pipelines
and tests pay nothing for it.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import IO, Any

#: verbosity levels: -q, default, -v, -vv
QUIET, DEFAULT, VERBOSE, DEBUG = -1, 0, 1, 2

_LEVELS = {"error": QUIET, "warning": DEFAULT, "info": VERBOSE, "debug": DEBUG}
_STYLES = {"error": "bold red", "warning": "yellow", "info": "", "debug": "dim"}


class UI:
    """
    Log events to stderr, as text (rich in a terminal) or as JSON lines.

    @ivar verbosity: one of L{QUIET}, L{DEFAULT}, L{VERBOSE}, L{DEBUG}.
    @ivar log_format: C{"text"} or C{"json"}.
    """

    def __init__(
        self,
        verbosity: int = DEFAULT,
        log_format: str = "text",
        stream: IO[str] | None = None,
    ) -> None:
        self.verbosity = verbosity
        self.log_format = log_format
        self._stream = stream
        self._console: Any = None

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stderr

    def enabled(self, level: str) -> bool:
        """
        Would an event at C{level} be shown?  Errors always are.
        """
        return level == "error" or self.verbosity >= _LEVELS[level]

    def emit(self, level: str, event: str, message: str, **fields: Any) -> None:
        """
        Show one event, if the verbosity lets it through.

        @param level: C{"error"}, C{"warning"}, C{"info"} or C{"debug"}.
        @param event: a short machine name (C{listening}, C{accepted},
            C{connecting}, C{connected}, C{closed}, C{failed}, ...).
        @param message: the text form, without the C{epcat:} prefix.
        @param fields: structured detail for JSON (addresses, byte counts).
        """
        if not self.enabled(level):
            return
        if self.log_format == "json":
            record = {
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="microseconds"
                ),
                "level": level,
                "event": event,
                "message": message,
            }
            record.update({k: v for k, v in fields.items() if v is not None})
            self._write(json.dumps(record, default=str) + "\n")
            return
        prefix = {"error": "error: ", "warning": "warning: "}.get(level, "")
        line = f"epcat: {prefix}{_printable(message)}"
        if self._is_terminal():
            self._rich(line, _STYLES[level])
        else:
            self._write(line + "\n")

    def _is_terminal(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (AttributeError, OSError, ValueError):
            return False

    def raw(self, text: str) -> None:
        """
        Write C{text} to stderr as it is, whatever the verbosity (tables that
        were asked for).
        """
        self._write(text)

    def error(self, message: str, event: str = "error", **fields: Any) -> None:
        self.emit("error", event, message, **fields)

    def warning(self, message: str, event: str = "warning", **fields: Any) -> None:
        self.emit("warning", event, message, **fields)

    def info(self, event: str, message: str, **fields: Any) -> None:
        self.emit("info", event, message, **fields)

    def debug(self, event: str, message: str, **fields: Any) -> None:
        self.emit("debug", event, message, **fields)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            # stderr closed or gone: nothing left to tell anyone.
            pass

    def _rich(self, line: str, style: str) -> None:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stream, highlight=False, soft_wrap=True)
        try:
            self._console.print(line, style=style or None, markup=False)
        except (OSError, ValueError):
            pass


def _printable(text: str) -> str:
    """
    Escape control characters (text from the command line or the network
    must not move the cursor or clear the screen); newlines too, except
    those that separate lines epcat wrote itself (a traceback at -vv).
    """
    if text.isprintable() or all(c.isprintable() or c == "\n" for c in text):
        return text
    return "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in text)


def format_address(address: object) -> str:
    """
    Render a Twisted address for people: C{127.0.0.1:8080}, C{[::1]:8080},
    a UNIX socket path, or C{stdio}.

    @param address: an C{IAddress} provider (C{IPv4Address}, C{IPv6Address},
        C{UNIXAddress}, C{PipeAddress}, ...), or L{None}.
    """
    if address is None:
        return "?"
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        if ":" in host:
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    if hasattr(address, "name"):
        name = address.name
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return name or "unix:(unnamed)"
    if type(address).__name__ == "PipeAddress":
        return "stdio"
    return str(address)


def address_fields(address: object) -> dict[str, Any]:
    """
    Structured form of an address for JSON logs: host and port, or path.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return {"host": host, "port": port}
    name = getattr(address, "name", None)
    if name is not None:
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return {"path": name}
    return {}
