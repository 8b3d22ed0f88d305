# -*- test-case-name: tests.test_cli -*-
"""
The command line: a click chain group (C{listen} / C{connect} / C{endpoints})
that builds a L{Plan}, and the one place where exceptions become messages and
exit statuses.

Twisted, pyOpenSSL and rich are imported only inside commands, so C{--help},
C{--version} and shell completion stay fast.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import click

from epcat import __version__
from epcat.status import EpcatError, ExitStatus, UsageError

EPILOG = """\b
Examples:
  epcat listen tcp:8080 connect tcp:127.0.0.1:80      forward a port
  epcat connect tls:example.com:443                    stdin/stdout <-> TLS
  epcat listen unix:/tmp/app.sock                      first client <-> stdin/stdout
  epcat listen ssl:8443:privateKey=key.pem:certKey=cert.pem connect tcp:127.0.0.1:80
  epcat connect tcp:relay.example:9000 connect tcp:127.0.0.1:22   reverse tunnel

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

    def __init__(self, verbosity: int, log_format: str) -> None:
        self.verbosity = verbosity
        self.log_format = log_format


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
@click.version_option(__version__, "-V", "--version", prog_name="epcat", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, log_format: str) -> None:
    """Pipe bytes between two Twisted endpoints.

    \b
    epcat [GLOBAL] listen SERVER connect CLIENT   relay every accepted connection to CLIENT
    epcat [GLOBAL] connect CLIENT                 stdin/stdout <-> one connection (nc host port)
    epcat [GLOBAL] listen SERVER                  first accepted connection <-> stdin/stdout (nc -l)
    epcat [GLOBAL] connect CLIENT_A connect CLIENT_B   join two outbound connections
    epcat endpoints                               list the endpoint types available here

    Global options go before the first subcommand.
    """
    verbosity = -1 if quiet else min(verbose, 2)
    ctx.obj = Settings(verbosity, log_format)


@cli.command()
@click.argument("server", metavar="SERVER")
def listen(server: str) -> tuple[str, str]:
    """Listen on the server endpoint SERVER.

    SERVER is a Twisted server endpoint description, e.g. tcp:8080,
    tcp:8080:interface=127.0.0.1, tcp6:8080, unix:/run/app.sock,
    ssl:8443:privateKey=key.pem:certKey=cert.pem, haproxy:tcp:8080 or
    systemd:domain=INET:index=0.  Followed by 'connect CLIENT', every accepted
    connection gets its own connection to CLIENT; alone, the first accepted
    connection is joined to stdin/stdout and epcat exits when it ends.
    """
    return ("listen", server)


@cli.command()
@click.argument("client", metavar="CLIENT")
def connect(client: str) -> tuple[str, str]:
    """Connect to the client endpoint CLIENT.

    CLIENT is a Twisted client endpoint description, e.g.
    tcp:example.com:80, tcp:host=::1:port=80 (via tcp6), unix:/run/app.sock,
    tls:example.com:443, tls:localhost:8443:trustRoots=/path/to/ca-dir.
    Alone, the connection is joined to stdin/stdout (like 'nc host port');
    after 'listen SERVER', each accepted connection gets one; after another
    'connect', the two connections are joined.
    """
    return ("connect", client)


@cli.command()
@click.argument("type_name", metavar="[TYPE]", required=False)
def endpoints(type_name: str | None) -> tuple[str, str | None]:
    """List the endpoint types this installation knows.

    Server and client types, Twisted's own and every installed endpoint
    plugin, with the module that provides each and its arguments.  With TYPE,
    show just that type.
    """
    return ("endpoints", type_name)


@cli.result_callback()
@click.pass_context
def dispatch(ctx: click.Context, steps: Sequence[tuple[str, Any]], **_: Any) -> None:
    settings: Settings = ctx.obj
    names = [name for name, _ in steps]
    if "endpoints" in names:
        if names != ["endpoints"]:
            raise UsageError("'endpoints' cannot be combined with listen or connect")
        from epcat.catalog import show_endpoints

        show_endpoints(steps[0][1], sys.stdout)
        return
    from epcat.plan import make_plan

    plan = make_plan(steps, settings.verbosity, settings.log_format)
    go(plan)


def go(plan: Any) -> None:
    """
    Run C{plan} under C{react()}; never returns (C{react} exits the process).
    The seam CLI tests patch, so that they never start a reactor.
    """
    from twisted.internet.task import react

    from epcat.ui import UI

    ui = UI(plan.verbosity, plan.log_format)
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
    return f"{prefix}{message.rstrip('.')} ({hint})"


def main(argv: Sequence[str] | None = None) -> None:
    """
    The C{epcat} console script.  Exits with the run's status.
    """
    from epcat.ui import UI

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name="epcat", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help(), err=True)
        sys.exit(ExitStatus.USAGE)
    except click.UsageError as e:
        UI(log_format=_log_format_of(args)).error(_usage_message(e), event="usage")
        sys.exit(ExitStatus.USAGE)
    except UsageError as e:
        UI(log_format=_log_format_of(args)).error(str(e), event="usage")
        sys.exit(ExitStatus.USAGE)
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
