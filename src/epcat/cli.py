# -*- test-case-name: tests.unit.test_cli -*-
"""
The command line: a click chain group (C{listen} / C{connect} / C{endpoints})
that builds a L{Plan}, and the one place where exceptions become messages and
exit statuses.

Twisted, pyOpenSSL and rich are imported only inside commands, so C{--help},
C{--version} and shell completion stay fast.
"""

from __future__ import annotations

import math
import sys
from typing import Any
from collections.abc import Sequence

import click

from epcat import __version__
from epcat.completion import (
    complete_client,
    complete_description,
    complete_server,
    complete_type_name,
)
from epcat.status import EpcatError, ExitStatus, UsageError

EPILOG = """\b
Examples:
  epcat listen tcp:8080 connect tcp:127.0.0.1:80      forward a port
  epcat connect tls:example.com:443                    stdin/stdout <-> TLS
  epcat listen unix:/tmp/app.sock                      first client <-> stdin/stdout
  epcat listen ssl:8443:privateKey=key.pem:certKey=cert.pem connect tcp:127.0.0.1:80
  epcat connect tcp:relay.example:9000 connect tcp:127.0.0.1:22   reverse tunnel
  epcat connect tcp:relay.example:9000 connect tcp:127.0.0.1:22 --reconnect
                                 the same, re-established whenever a leg drops
  epcat listen tcp:8080 --max-connections 100 --allow 192.0.2.0/24 connect tcp:127.0.0.1:80
                                 a guarded forwarder: 100 clients at most, one network

\b
Endpoint descriptions are Twisted's (serverFromString / clientFromString):
escape a colon inside a value as '\\:'.  'epcat endpoints' lists every type
this installation knows, including installed plugins.

\b
Exit status: 0 done, 1 runtime failure (cannot listen, I/O error),
2 usage error, 6 cannot resolve host, 7 cannot connect, 28 timed out,
35 TLS handshake failed, 60 peer certificate verification failed.
"""


class Settings:
    """
    The global options, kept on the click context for the subcommands.
    """

    def __init__(self, verbosity: int, log_format: str, **options: Any) -> None:
        self.verbosity = verbosity
        self.log_format = log_format
        self.options = options


class FiniteFloatRange(click.FloatRange):
    """
    click's L{click.FloatRange} without C{nan} and C{inf}, which Python's
    C{float()} accepts and no range check catches (C{nan} compares false
    with every bound): a timeout or backoff is a finite number of seconds.
    """

    name = "float range"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        converted = super().convert(value, param, ctx)
        if not math.isfinite(converted):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return converted


SECONDS = FiniteFloatRange(min=0, min_open=True)


def _file_name(option: str) -> Any:
    """
    A click callback refusing an empty file name for C{option} (which would
    otherwise read as the option not given).
    """

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise click.BadParameter("give a file name, not an empty one", ctx=ctx, param=param)
        return value

    return check

SUBCOMMANDS = ("listen", "connect", "endpoints", "explain")


class Step(click.Command):
    """
    A subcommand of the chain whose options may follow its argument:
    C{listen SERVER --once connect CLIENT --retry 3}.

    click's chain mode stops a subcommand's parsing at its first argument;
    this one takes everything up to the next subcommand name instead.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        cut = next(
            (i for i, arg in enumerate(args) if i > 0 and arg in SUBCOMMANDS),
            len(args),
        )
        head, tail = args[:cut], args[cut:]
        ctx.allow_interspersed_args = True
        rest = super().parse_args(ctx, head)
        ctx.args = [*rest, *tail]
        return ctx.args


@click.group(
    chain=True,
    invoke_without_command=False,
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log connection events (-v); add debug detail and tracebacks (-vv).",
)
@click.option("-q", "--quiet", is_flag=True, help="Log errors only.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines on stderr as text or as one JSON object per line.",
)
@click.option(
    "--idle-timeout",
    type=SECONDS,
    metavar="SECONDS",
    help="Close a relayed pair when no byte has moved either way for this long (socat -T).",
)
@click.option(
    "--half-close-timeout",
    type=SECONDS,
    metavar="SECONDS",
    help="After one direction has ended, close the pair if the other has not ended "
    "within this long (socat -t).  Default: no limit.",
)
@click.option(
    "--progress",
    is_flag=True,
    help="Live bytes, rates and open pairs on stderr (only when stderr is a terminal).",
)
@click.option("--stats", is_flag=True, help="Print connection and byte totals to stderr at exit.")
@click.option(
    "--crlf", is_flag=True, help="Translate LF to CRLF in data read from stdin (ncat -C)."
)
@click.option(
    "--keylog",
    type=click.Path(dir_okay=False, writable=True),
    callback=_file_name("--keylog"),
    metavar="FILE",
    help="Append every TLS session's secrets to FILE in the NSS key log format "
    "(as SSLKEYLOGFILE), so Wireshark can decrypt a capture.  A secret: created mode 0600.",
)
@click.option(
    "-x",
    "--hexdump",
    is_flag=True,
    help="Dump every relayed chunk to stderr in socat's -x layout (plaintext for TLS).",
)
@click.option(
    "--dump",
    type=click.Path(dir_okay=False, writable=True),
    callback=_file_name("--dump"),
    metavar="FILE",
    help="The same dump as -x, to FILE instead of stderr.",
)
@click.option(
    "--pcap",
    type=click.Path(dir_okay=False, writable=True),
    callback=_file_name("--pcap"),
    metavar="FILE",
    help="Write the relayed plaintext of every connection to FILE as a pcap capture "
    "(one synthesized TCP stream per connection, real addresses).",
)
@click.version_option(
    __version__, "-V", "--version", prog_name="epcat", message="%(prog)s %(version)s"
)
@click.pass_context
def cli(
    ctx: click.Context,
    verbose: int,
    quiet: bool,
    log_format: str,
    **options: Any,
) -> None:
    """Pipe bytes between two Twisted endpoints.

    \b
    epcat [GLOBAL] listen SERVER connect CLIENT   relay every accepted connection to CLIENT
    epcat [GLOBAL] connect CLIENT                 stdin/stdout <-> one connection (nc host port)
    epcat [GLOBAL] listen SERVER                  first accepted connection <-> stdin/stdout (nc -l)
    epcat [GLOBAL] connect CLIENT_A connect CLIENT_B   join two outbound connections
    epcat endpoints [TYPE]                        list the endpoint types available here
    epcat explain DESCRIPTION                     what a description means (nothing is opened)

    Global options go before the first subcommand; the options of listen
    and connect go after their own description.
    """
    verbosity = -1 if quiet else min(verbose, 2)
    ctx.obj = Settings(verbosity, log_format, **options)


def _networks(option: str) -> Any:
    def check(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> tuple:
        if not values:
            return ()
        from epcat.plan import check_network

        try:
            return tuple(check_network(v, option) for v in values)
        except UsageError as e:
            raise click.BadParameter(str(e).split(": ", 1)[1], ctx=ctx, param=param) from None

    return check


@cli.command(cls=Step)
@click.argument("server", metavar="SERVER", shell_complete=complete_server)
@click.option(
    "--once",
    is_flag=True,
    help="Serve one connection and exit when it ends; later clients are refused.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    metavar="N",
    help="At most N client connections at once (on a haproxy: listener, those still "
    "sending their PROXY header count too); further clients wait in the kernel backlog "
    "and are served in turn.",
)
@click.option(
    "--allow",
    multiple=True,
    metavar="CIDR",
    callback=_networks("--allow"),
    help="Serve only peers in this network (repeatable; IPv4 and IPv6).",
)
@click.option(
    "--deny",
    multiple=True,
    metavar="CIDR",
    callback=_networks("--deny"),
    help="Refuse peers in this network (repeatable).",
)
@click.option(
    "--drain-timeout",
    type=FiniteFloatRange(min=0),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="On SIGTERM/SIGINT, let active pairs finish for up to this long, then close them.",
)
@click.option(
    "--proxy-trusted",
    multiple=True,
    metavar="CIDR",
    callback=_networks("--proxy-trusted"),
    help="haproxy: listeners: accept PROXY headers only from senders in this network "
    "(repeatable).  Without it any client can claim any address.  UNIX-socket senders "
    "never match.",
)
@click.option(
    "--proxy-header-timeout",
    type=SECONDS,
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="haproxy: listeners: close a connection whose PROXY header has not arrived "
    "within this long.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="Run N processes sharing the listening port (SO_REUSEPORT), to use every core "
    "(tcp:/tcp6: listeners).",
)
def listen(
    server: str,
    once: bool,
    max_connections: int | None,
    allow: tuple[str, ...],
    deny: tuple[str, ...],
    drain_timeout: float,
    proxy_trusted: tuple[str, ...],
    proxy_header_timeout: float,
    workers: int,
) -> tuple[str, Any]:
    """Listen on the server endpoint SERVER.

    SERVER is a Twisted server endpoint description, e.g. tcp:8080,
    tcp:8080:interface=127.0.0.1, tcp6:8080, unix:/run/app.sock,
    ssl:8443:privateKey=key.pem:certKey=cert.pem, haproxy:tcp:8080 or
    systemd:domain=INET:index=0.  Followed by 'connect CLIENT', every accepted
    connection gets its own connection to CLIENT; alone, the first accepted
    connection is joined to stdin/stdout and epcat exits when it ends.
    """
    from epcat.plan import ListenOptions

    options = ListenOptions(
        once,
        max_connections,
        allow,
        deny,
        drain_timeout,
        proxy_trusted,
        proxy_header_timeout,
        workers,
    )
    return ("listen", (server, options))


@cli.command(cls=Step)
@click.argument("client", metavar="CLIENT", shell_complete=complete_client)
@click.option(
    "--connect-timeout",
    type=SECONDS,
    metavar="SECONDS",
    help="Give up a connection attempt after this long (exit 28).",
)
@click.option(
    "--retry",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="After a failed attempt, up to N further attempts, spaced by exponential backoff.",
)
@click.option(
    "--reconnect",
    is_flag=True,
    help="Keep the connection up for the life of the process, reconnecting with backoff.",
)
@click.option(
    "--fail-after",
    type=click.IntRange(min=1),
    metavar="N",
    help="With --reconnect: exit with the failure's status after N failed attempts in a row.",
)
@click.option(
    "--backoff-initial",
    type=SECONDS,
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Wait before the first retry.",
)
@click.option(
    "--backoff-max",
    type=SECONDS,
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest wait between attempts.",
)
@click.option(
    "--backoff-factor",
    type=FiniteFloatRange(min=1.0),
    default=1.5,
    show_default=True,
    metavar="F",
    help="Growth of the wait after each failure.",
)
@click.option(
    "--proxy-header",
    type=click.Choice(["v1", "v2"]),
    help="Send a PROXY protocol header (haproxy proxy-protocol.txt) first on every "
    "connection, carrying the inbound connection's addresses; v2 adds TLS details.",
)
def connect(
    client: str,
    connect_timeout: float | None,
    retry: int,
    reconnect: bool,
    fail_after: int | None,
    backoff_initial: float,
    backoff_max: float,
    backoff_factor: float,
    proxy_header: str | None,
) -> tuple[str, Any]:
    """Connect to the client endpoint CLIENT.

    CLIENT is a Twisted client endpoint description, e.g.
    tcp:example.com:80, tcp:\\:\\:1:80 (IPv6), unix:/run/app.sock,
    tls:example.com:443, tls:localhost:8443:trustRoots=/path/to/ca-dir.
    Alone, the connection is joined to stdin/stdout (like 'nc host port');
    after 'listen SERVER', each accepted connection gets one; after another
    'connect', the two connections are joined.
    """
    from epcat.plan import ConnectOptions

    options = ConnectOptions(
        connect_timeout,
        retry,
        reconnect,
        fail_after,
        backoff_initial,
        backoff_max,
        backoff_factor,
        proxy_header,
    )
    return ("connect", (client, options))


@cli.command()
@click.argument("type_name", metavar="[TYPE]", required=False, shell_complete=complete_type_name)
def endpoints(type_name: str | None) -> tuple[str, str | None]:
    """List the endpoint types this installation knows.

    Server and client types, Twisted's own and every installed endpoint
    plugin, with the module that provides each and its arguments.  With TYPE,
    show just that type.
    """
    return ("endpoints", type_name)


@cli.command()
@click.argument("description", metavar="DESCRIPTION", shell_complete=complete_description)
def explain(description: str) -> tuple[str, str]:
    """Explain an endpoint description without listening or connecting.

    Prints, for a server and for a client, the endpoint class, every
    argument with its value or default, what it wraps and whether it
    half-closes; exits 2 with the parse error if it parses as neither.
    """
    return ("explain", description)


@cli.result_callback()
@click.pass_context
def dispatch(ctx: click.Context, steps: Sequence[tuple[str, Any]], **_: Any) -> None:
    settings: Settings = ctx.obj
    names = [name for name, _ in steps]
    for alone in ("endpoints", "explain"):
        if alone in names and names != [alone]:
            raise UsageError(f"'{alone}' cannot be combined with other subcommands")
    if names == ["endpoints"]:
        from epcat.catalog import show_endpoints

        show_endpoints(steps[0][1], sys.stdout)
        return
    if names == ["explain"]:
        from epcat.explain import explain as explain_description

        explain_description(steps[0][1], sys.stdout)
        return
    from epcat.plan import make_plan

    plan = make_plan(steps, settings.verbosity, settings.log_format, **settings.options)
    go(plan)


def go(plan: Any) -> None:
    """
    Run C{plan} under C{react()}; never returns (C{react} exits the process).
    The seam CLI tests patch, so that they never start a reactor.
    """
    import gc
    import os
    import select

    from epcat.workers import PORT_VARIABLE, supervise

    if plan.listen_options.workers > 1 and not os.environ.get(PORT_VARIABLE):
        sys.exit(supervise(plan.listen, plan.listen_options.workers, lambda: go(plan)))

    from twisted.internet.task import react

    from epcat.ui import UI

    if hasattr(select, "epoll"):
        from epcat.reactor import install

        install()  # (Twisted's epoll reactor, a leaner dispatch: epcat.reactor)
    ui = UI(plan.verbosity, plan.log_format)
    # Everything imported and built so far lives as long as the process:
    # out of the collector's sight, a full collection no longer walks
    # Twisted's tens of thousands of objects (gc.freeze's documented use).
    # A relay makes cyclic garbage with every connection, so full
    # collections come every few thousand connections: ab -c 1 against
    # nginx, 10 % more connections/s.
    gc.freeze()
    react(_react_main, (plan, ui))


def _react_main(reactor: Any, plan: Any, ui: Any) -> Any:
    from twisted.python.failure import Failure

    from epcat.run import run

    if plan.verbosity >= 2:
        _observe_twisted_logs(ui)

    def finished(status: int) -> None:
        raise SystemExit(int(status))

    def failed(failure: Failure) -> None:
        raise SystemExit(report(failure.value, ui, failure))

    return run(reactor, plan, ui).addCallbacks(finished, failed)


def report(error: BaseException, ui: Any, failure: Any = None) -> int:
    """
    The one place where an exception becomes a message and an exit status.

    @param error: what ended the run.
    @param ui: the L{epcat.ui.UI} to report through.
    @param failure: the L{Failure} carrying C{error}, for its traceback at -vv.
    @return: the exit status.
    """
    if isinstance(error, SystemExit):
        return int(error.code or 0)
    if isinstance(error, UsageError):
        ui.error(str(error), event="usage")
        return ExitStatus.USAGE
    if isinstance(error, EpcatError):
        if error.message:
            ui.error(error.message)
        return error.status
    ui.error(f"unexpected {type(error).__name__}: {error}")
    if ui.verbosity >= 2 and failure is not None:
        ui.debug("traceback", failure.getTraceback())
    return ExitStatus.FAILURE


def _observe_twisted_logs(ui: Any) -> None:
    """
    At -vv, show Twisted's own log events (including tracebacks) as debug.
    """
    from twisted.logger import formatEvent, globalLogBeginner

    def observer(event: dict[str, Any]) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback()}"
        ui.debug("twisted", text)

    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def _usage_message(error: click.UsageError) -> str:
    message = error.format_message()
    message = message[:1].lower() + message[1:]
    path = error.ctx.command_path if error.ctx is not None else "epcat"
    where = path.replace("epcat", "", 1).strip()
    prefix = f"{where}: " if where else ""
    hint = f"see 'epcat {where} --help'" if where else "see 'epcat --help'"
    if isinstance(error, click.NoSuchOption):
        misplaced = _misplaced(error.option_name, where)
        if misplaced is not None:
            message, owner = misplaced
            hint = f"see 'epcat {owner} --help'" if owner else "see 'epcat --help'"
    return f"{prefix}{message.rstrip('.')} ({hint})"


#: where each part's options go, as an example command line
_PLACES = {
    "": (
        "a global option: give it before the first subcommand",
        "epcat {opt} listen SERVER connect CLIENT",
    ),
    "listen": (
        "an option of listen: give it after listen's SERVER",
        "epcat listen SERVER {opt} connect CLIENT",
    ),
    "connect": (
        "an option of connect: give it after connect's CLIENT",
        "epcat connect CLIENT {opt}",
    ),
}

#: connect's example when the option was given in listen's place (a relay)
_RELAY_CONNECT = "epcat listen SERVER connect CLIENT {opt}"


def _misplaced(name: str, where: str) -> tuple[str, str] | None:
    """
    An option that the part of the command line it was given in does not
    have, but another part does (global options go before the first
    subcommand, those of C{listen} and C{connect} after their own
    description): say where it goes.

    @param name: the option as given, e.g. C{--workers} or C{-v}.
    @param where: the part it was given in: C{""} (global), C{"listen"}, ...
    @return: (the message, the part it belongs to), or L{None} when no
        other part has it either.
    """
    for owner, (what, example) in _PLACES.items():
        if owner == where:
            continue
        command = cli.commands[owner] if owner else cli
        for param in command.params:
            if not isinstance(param, click.Option) or name not in (
                *param.opts, *param.secondary_opts
            ):
                continue
            if param.is_flag or param.count:
                opt = name
            elif param.metavar:
                opt = f"{name} {param.metavar}"
            elif isinstance(param.type, click.Choice):
                opt = f"{name} {'|'.join(map(str, param.type.choices))}"
            else:
                opt = f"{name} VALUE"
            if owner == "connect" and where == "listen":
                example = _RELAY_CONNECT
            return f"{name} is {what}: {example.format(opt=opt)}", owner
    return None


def main(argv: Sequence[str] | None = None) -> None:
    """
    The C{epcat} console script.  Exits with the run's status.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name="epcat", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help(), err=True)
        sys.exit(ExitStatus.USAGE)
    except click.UsageError as e:
        from epcat.ui import UI

        UI(log_format=_log_format_of(args)).error(_usage_message(e), event="usage")
        sys.exit(ExitStatus.USAGE)
    except UsageError as e:
        from epcat.ui import UI

        UI(log_format=_log_format_of(args)).error(str(e), event="usage")
        sys.exit(ExitStatus.USAGE)
    except EpcatError as e:
        # (a runtime failure found before the run, e.g. while parsing)
        from epcat.ui import UI

        UI(log_format=_log_format_of(args)).error(e.message, event="failed")
        sys.exit(e.status)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)


def _log_format_of(args: Sequence[str]) -> str:
    for i, arg in enumerate(args):
        if arg == "--log-format" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--log-format="):
            return arg.split("=", 1)[1]
    return "text"
