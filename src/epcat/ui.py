# -*- test-case-name: tests.unit.test_ui -*-
"""
Everything epcat says to people goes through L{UI}, on stderr.

stdout is never for humans: in the stdin/stdout modes it is the data channel.
Text lines start with C{epcat:}; with C{--log-format json} every line is one
JSON object.  rich is imported only when stderr is a terminal, so pipelines
and tests pay nothing for it.

Messages carry text from peers (a TLS client's SNI, a certificate's names, a
UNIX socket's path): in text lines every character that is not printable
(line breaks, ESC, DEL, C1 controls, U+2028...) is shown escaped
(L{printable}), so that a peer can neither forge a log line nor drive the
terminal.  Only the events in L{MULTILINE_EVENTS} keep their line breaks,
and their later lines start with L{CONTINUATION}.
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


class _Null:
    """
    The type of L{NULL}.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "NULL"


#: A field value that JSON shows as C{null}.  Fields whose value is L{None}
#: are left out of the JSON object; a field that is always there (a TLS
#: event's C{alpn} and C{sni}) gives this instead when it has no value.
NULL = _Null()

#: Events whose message is several lines on purpose: a traceback at -vv, and
#: Twisted's own log events (which may end with one).  In text logs their
#: line breaks are kept; every other event is one line.
MULTILINE_EVENTS = frozenset({"traceback", "twisted"})

#: What starts the second and later lines of a multi-line event in text logs:
#: still C{epcat:}, and never mistaken for the start of an event, whatever
#: the lines hold.
CONTINUATION = "epcat: | "


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
        @param fields: structured detail for JSON (addresses, byte counts);
            L{None} values are left out, L{NULL} ones shown as C{null}.
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
            record.update(
                {k: None if v is NULL else v for k, v in fields.items() if v is not None}
            )
            self._write(json.dumps(record, default=str) + "\n")
            return
        prefix = {"error": "error: ", "warning": "warning: "}.get(level, "")
        text = f"epcat: {prefix}{_text_of(event, message)}"
        if self._is_terminal():
            self._rich(text, _STYLES[level])
        else:
            self._write(text + "\n")

    def _is_terminal(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (AttributeError, OSError, ValueError):
            return False

    def raw(self, text: str) -> None:
        """
        Write C{text} to stderr whatever the verbosity (tables that were
        asked for): its line breaks as they are, any other character that
        is not printable escaped (see L{printable}).

        @param text: whole lines, each ending with C{"\\n"}.  A line break
            inside a value (a peer's address) cannot be told from the ones
            between lines here: pass each value through L{printable} first.
        """
        self._write("\n".join(printable(line) for line in text.split("\n")))

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

    def _rich(self, text: str, style: str) -> None:
        """
        Print C{text} (already escaped) through rich, in C{style}.  It goes
        in as a C{rich.text.Text}, so rich reads no markup (C{[bold]},
        C{[/]}) and no emoji codes (C{:smile:}) in it: what peers sent is
        shown as they sent it.
        """
        try:
            if self._console is None:
                from rich.console import Console

                self._console = Console(
                    file=self.stream,
                    highlight=False,
                    markup=False,
                    emoji=False,
                    soft_wrap=True,
                )
            from rich.text import Text

            self._console.print(Text(text, style=style))
        except (OSError, ValueError):
            pass


def printable(text: str) -> str:
    """
    Escape every character of C{text} that is not printable, as Python
    writes it in a string literal: C{\\n}, C{\\r}, C{\\t}, C{\\x1b}, C{\\x7f},
    C{\\x85}, C{\\u2028}, C{\\u202e}...  Text from the command line or the
    network must neither break a log line (and forge the next one) nor
    move the cursor, clear the screen or reorder what follows.

    Backslashes are left as they are: a peer can make a log line show
    C{\\n}, never contain a line break.

    @param text: anything, from anyone.
    @return: C{text} if every character in it is printable (C{str.isprintable}:
        no C0 or C1 controls, DEL, line or paragraph separators, format
        characters, unassigned code points or lone surrogates), else a copy
        with those characters escaped.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _text_of(event: str, message: str) -> str:
    """
    The text-log form of C{message}: one line (see L{printable}), or, for
    an event in L{MULTILINE_EVENTS}, its lines escaped one by one, joined
    by line breaks each followed by L{CONTINUATION}.

    @param event: the event's machine name.
    @param message: the message, as the caller gave it.
    @return: the text to put after C{epcat: } and the level, without a final
        line break.
    """
    if event not in MULTILINE_EVENTS:
        return printable(message)
    lines = message.rstrip("\n").split("\n")
    return ("\n" + CONTINUATION).join(printable(line) for line in lines)


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
