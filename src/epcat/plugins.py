# -*- test-case-name: tests.unit.test_plugins -*-
"""
epcat's own client endpoint types C{stdio:}, C{exec:} and C{hostname:}, for
every Twisted program.

The parsers are registered as Twisted plugins by the dropin module
C{twisted/plugins/epcat_endpoints.py}, so C{clientFromString} finds them in
any program once epcat is installed::

    stdio:                          stdin and stdout
    exec:cat                        a child process: its stdin and stdout
    exec:ssh -W localhost\\:22 jumphost
    exec:sh -c "tr a-z A-Z"
    hostname:localhost:8080         TCP to both address families (happy eyeballs)
    hostname:example.com:443:timeout=5:bindAddress=192.0.2.7

C{stdio:} (L{StandardIOClientEndpoint}) connects the protocol to stdin and
stdout with L{twisted.internet.stdio.StandardIO}, as Twisted's own C{stdio:}
server does.  One connection uses them at a time; stdin and stdout are
spent once stdin has reached its end or stdout has been closed.

C{exec:COMMAND} (L{ExecEndpoint}) runs COMMAND as a child process: the
child's stdout and stdin are the stream; its stderr is epcat's own stderr
(inherited, not read); the end of the stream towards it closes its stdin;
closing the connection closes both pipes, and a child still running a
moment later is sent SIGTERM, then SIGKILL (L{ExecTransport.loseConnection});
its exit status is logged and kept on the transport (L{ExecTransport.exit}).
COMMAND is split into words as a POSIX shell would (L{shlex.split}: quotes
and backslashes) but is not run by a shell: write C{exec:sh -c "..."} for
pipes, redirections and variables.  Inside an endpoint description a colon
or an equals sign is written C{\\:} and C{\\=} (and a backslash C{\\\\}):
Twisted's description parser removes those escapes before this module sees
the command.  An unescaped colon or equals sign splits the description into
several arguments; the command is rebuilt from them when that can be done
unambiguously (L{command_text}).

C{hostname:HOST:PORT} (L{HostnameClientParser}) is Twisted's
L{HostnameEndpoint}, which the endpoints documentation lists as "TCP
(Hostname)" but gives no description prefix: it resolves both IPv4 and IPv6
addresses and connects to whichever answers first (RFC 8305, happy
eyeballs), where Twisted's C{tcp:} client resolves IPv4 only.

Security: C{exec:} runs the command with epcat's own privileges (its user,
groups, working directory and environment, plus the C{EPCAT_*} variables of
L{environment_for}), and what a connected peer sends is the command's
input.  epcat takes endpoint descriptions only from its own command line,
never from the network, so a peer cannot choose or change the command; a
program that builds descriptions from untrusted text must refuse C{exec:}
itself, because any Twisted program that calls C{clientFromString} sees
this type once epcat is installed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
from collections.abc import Mapping, Sequence
from typing import Any

import attr
from twisted.internet import defer
from twisted.internet.error import (
    ConnectError,
    ConnectionAborted,
    ConnectionDone,
    ProcessExitedAlready,
)
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IHalfCloseableProtocol,
    IPushProducer,
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
    ITransport,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.stdio import PipeAddress, StandardIO
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

#: The description prefixes of the three types.
STDIO_PREFIX = "stdio"
EXEC_PREFIX = "exec"
HOSTNAME_PREFIX = "hostname"

#: Seconds an C{exec:} child may go on running after epcat closed its
#: stdin and stdout at the end of a pair (the child had closed its stdout
#: already) before it is sent SIGTERM; as long again, and SIGKILL.
KILL_GRACE = 5.0

#: Seconds an C{exec:} child may go on running after epcat cut it off:
#: closed its stdin and stdout while its stdout was still open (the other
#: side of the pair was reset or otherwise lost, or epcat closed the pair)
#: before it is sent SIGTERM; SIGKILL follows L{KILL_GRACE} later.  A child
#: that does not read its stdin or write its stdout (C{sleep}) never
#: notices the pipes closing; this keeps the pair, and its slot under
#: --max-connections, from outliving the connection by more than a moment.
CUT_OFF_GRACE = 1.0

#: The child's file descriptors: stdin and stdout are pipes to epcat, its
#: stderr is epcat's stderr (inherited, so it is passed through unread).
EXEC_CHILD_FDS: Mapping[int, Any] = {0: "w", 1: "r", 2: 2}

#: Signals that end a child as a consequence of epcat closing its pipes.
_CLOSING_SIGNALS = frozenset({signal.SIGPIPE, signal.SIGTERM, signal.SIGKILL})

_log = Logger(namespace="epcat.exec")


# -- stdio:


class _StdioTransport(StandardIO):
    """
    L{StandardIO} that remembers whether stdin reached its end and whether
    stdout was closed or broke, so that L{StandardIOClientEndpoint} can tell
    a later connection that they are spent.

    @ivar stdin_ended: stdin reached its end (or failed).
    @ivar stdout_ended: stdout was half-closed, or writing to it failed.
    """

    stdin_ended = False
    stdout_ended = False

    def loseWriteConnection(self) -> None:
        self.stdout_ended = True
        super().loseWriteConnection()

    def childConnectionLost(self, fd: str, reason: Failure) -> None:
        if not self.disconnected:
            if fd == "read":
                self.stdin_ended = True
            elif not self.disconnecting:
                self.stdout_ended = True
        super().childConnectionLost(fd, reason)


#: (stdin fd, stdout fd) -> the transport of the last C{stdio:} connection:
#: stdin and stdout belong to the process, not to an endpoint.
_stdio_transports: dict[tuple[int, int], Any] = {}


def _stdio_state(transport: Any) -> str:
    """
    C{"busy"}, C{"spent"} or C{"free"}: may another connection use the
    stdin and stdout C{transport} used?
    """
    if not (transport.disconnected or transport.disconnecting):
        return "busy"
    if getattr(transport, "stdin_ended", False) or getattr(transport, "stdout_ended", False):
        return "spent"
    return "free"


@implementer(IStreamClientEndpoint)
class StandardIOClientEndpoint:
    """
    A client endpoint whose one connection is stdin and stdout.

    L{connect} builds the protocol with address L{PipeAddress} and attaches
    L{StandardIO} to it; the connection is made before the L{Deferred}
    returned fires.  Half-closes: C{loseWriteConnection} ends stdout, and
    the end of stdin arrives as C{readConnectionLost} (for an
    L{IHalfCloseableProtocol}).  Ending the connection only stops reading
    stdin: it does not close it.

    @cvar _stdio: makes the transport (replaced in tests).
    """

    _stdio: Any = _StdioTransport

    def __init__(self, reactor: Any, stdin: int = 0, stdout: int = 1) -> None:
        """
        @param reactor: an C{IReactorFDSet} provider.
        @param stdin: the file descriptor to read.
        @param stdout: the file descriptor to write.
        """
        self._reactor = reactor
        self._stdin = stdin
        self._stdout = stdout

    def connect(self, protocolFactory: Any) -> defer.Deferred[Any]:
        """
        Connect a protocol from C{protocolFactory} to stdin and stdout.

        @return: a L{Deferred} that fires with the protocol, or fails with
            L{ConnectError} when another connection is using stdin and
            stdout now (C{"stdio: already in use"}), when an earlier one
            used them up (stdin at its end, stdout closed), or when the
            factory builds no protocol.
        """
        key = (self._stdin, self._stdout)
        previous = _stdio_transports.get(key)
        if previous is not None:
            state = _stdio_state(previous)
            if state == "busy":
                return defer.fail(ConnectError(string="stdio: already in use"))
            if state == "spent":
                return defer.fail(ConnectError(
                    string="stdio: stdin or stdout ended with an earlier connection"
                ))
        protocol = protocolFactory.buildProtocol(PipeAddress())
        if protocol is None:
            return defer.fail(ConnectError(string="stdio: the factory refused the connection"))
        try:
            transport = self._stdio(
                protocol, stdin=self._stdin, stdout=self._stdout, reactor=self._reactor
            )
        except BaseException:
            return defer.fail()
        _stdio_transports[key] = transport
        return defer.succeed(protocol)


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class StdioClientParser:
    """
    stdin and stdout, as a client endpoint: stdio:

    C{epcat listen tcp:8080 connect stdio:} reads as C{epcat listen
    tcp:8080}.  Takes no arguments.  One connection at a time.
    """

    prefix = STDIO_PREFIX

    def parseStreamClient(self, reactor: Any, *empty: str) -> IStreamClientEndpoint:
        """
        Build a C{stdio:} client endpoint on file descriptors 0 and 1.

        @param empty: what follows C{stdio:}, which must be nothing
            (Twisted's parser passes the empty string after the colon).
        @raise ValueError: an argument was given.
        """
        extra = [a for a in empty if a]
        if extra:
            raise ValueError(f"stdio: takes no arguments, got {':'.join(extra)!r}")
        return StandardIOClientEndpoint(reactor)


# -- exec:


def command_text(parts: Sequence[str], assignments: Mapping[str, str]) -> str:
    """
    Rebuild an C{exec:} COMMAND from the pieces Twisted's description parser
    split it into: unescaped colons separate C{parts}, and a piece holding an
    unescaped C{=} arrives as an entry of C{assignments} (C{key=value}).

    Parts alone are joined with C{:}; assignments alone (which keep their
    order) are written back as C{key=value} and joined with C{:}.  When
    there are both, their order in the description is lost.

    @param parts: the positional arguments, in order.
    @param assignments: the keyword arguments, in order.
    @return: the COMMAND as written, minus its escapes.
    @raise ValueError: the command is empty, or it holds both an unescaped
        colon and an unescaped equals sign, so that it cannot be rebuilt.
    """
    if parts and assignments:
        raise ValueError(
            "exec: COMMAND has both an unescaped ':' and an unescaped '=', so it cannot be "
            "put back together; escape them as '\\:' and '\\=' (e.g. exec:env A\\=1 cat)"
        )
    if assignments:
        text = ":".join(f"{key}={value}" for key, value in assignments.items())
    else:
        text = ":".join(parts)
    if not text.strip():
        raise ValueError("exec: a command is missing, e.g. exec:cat")
    return text


def split_command(text: str) -> list[str]:
    """
    Split COMMAND into words as a POSIX shell would (L{shlex.split}): single
    and double quotes group words, a backslash escapes the next character.
    Nothing is expanded: no variables, globs or redirections.

    @param text: the command, escapes of the endpoint description removed.
    @return: the argument vector; the first word names the program.
    @raise ValueError: unbalanced quotes, a trailing backslash, or no words.
    """
    try:
        words = shlex.split(text, posix=True)
    except ValueError as e:
        raise ValueError(f"exec: {text!r}: {str(e).lower()}") from None
    if not words:
        raise ValueError("exec: a command is missing, e.g. exec:cat")
    return words


@attr.s(frozen=True, auto_attribs=True)
class ChildExit:
    """
    How an C{exec:} child ended.

    @ivar code: its exit status (0-255), or L{None} when a signal killed it.
    @ivar signal: the number of the signal that killed it, or L{None}.
    """

    code: int | None
    signal: int | None = None

    @property
    def ok(self) -> bool:
        """It exited with status 0."""
        return self.code == 0

    def __str__(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by signal {self.signal} ({name})"
        return f"exit status {self.code}"


@implementer(IAddress)
@attr.s(frozen=True, auto_attribs=True)
class ProcessAddress:
    """
    The address of one end of an C{exec:} connection: a process.

    @ivar pid: its process id.
    @ivar argv: its command line, or L{None} for epcat itself.
    """

    pid: int | None
    argv: tuple[str, ...] | None = None

    def __str__(self) -> str:
        if self.argv is None:
            return f"pid {self.pid}"
        return f"exec {shlex.join(self.argv)} (pid {self.pid})"


@implementer(ITransport, IConsumer, IPushProducer)
class ExecTransport:
    """
    The transport an C{exec:} protocol sees: writing goes to the child's
    stdin, and the child's stdout is read.

    Half-close: L{loseWriteConnection} closes the child's stdin once what was
    written has been flushed (the child reads its end of input), and an
    L{IHalfCloseableProtocol} then gets C{writeConnectionLost}; the child
    closing its stdout arrives as C{readConnectionLost}.  A child that closes
    its stdin early is not reported: writes to it are discarded from then
    on.  The connection is lost when the child has exited and both pipes
    are closed.

    @ivar argv: the child's command line.
    @ivar pid: the child's process id.
    @ivar process: Twisted's L{IProcessTransport} of the child.
    @ivar exit: how the child ended (L{ChildExit}), or L{None} while it runs.
    """

    disconnecting = False

    def __init__(self, process: Any, protocol: Any, argv: Sequence[str], reactor: Any,
                 kill_grace: float = KILL_GRACE,
                 cut_off_grace: float = CUT_OFF_GRACE) -> None:
        """
        @param process: the child's L{IProcessTransport}.
        @param protocol: the protocol this is the transport of.
        @param argv: the child's command line.
        @param reactor: an C{IReactorTime} provider (for the kill timers).
        @param kill_grace: seconds, see L{loseConnection}.
        @param cut_off_grace: seconds, see L{loseConnection}.
        """
        self.process = process
        self._protocol = protocol
        self.argv = tuple(argv)
        self.pid: int | None = process.pid
        self.exit: ChildExit | None = None
        self._reactor = reactor
        self._kill_grace = kill_grace
        self._cut_off_grace = cut_off_grace
        self._stdin_open = True
        #: the child has not closed its stdout (nor has epcat)
        self._stdout_open = True
        self._write_lost_wanted = False
        self._closing = False
        self._aborted = False
        self._timer: Any = None

    # ITransport

    def write(self, data: bytes) -> None:
        self.process.write(data)

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.process.writeSequence(list(data))

    def loseWriteConnection(self) -> None:
        """
        Close the child's stdin after flushing what was written to it.
        """
        if self._write_lost_wanted:
            return
        self._write_lost_wanted = True
        if self._stdin_open:
            self.process.closeStdin()
        else:
            # already gone (the child closed it): confirm as a real
            # transport would, later
            self._reactor.callLater(0, self._protocol_write_lost)

    def loseConnection(self) -> None:
        """
        Close the child's stdin (after flushing) and stdout; if the child
        has not exited in time, send it SIGTERM, and SIGKILL C{kill_grace}
        seconds after that.

        In time is C{kill_grace} seconds when the child had closed its
        stdout already (the stream ended both ways: it is finishing), and
        C{cut_off_grace} seconds when it had not: epcat is cutting it off
        (the other side of the connection was reset or lost, or epcat
        closed the connection), and a child that neither reads its stdin
        nor writes its stdout would never notice.
        """
        if self._closing or self.exit is not None:
            return
        cut_off = self._stdout_open
        self._closing = True
        self.disconnecting = True
        self._stdout_open = False
        self.process.loseConnection()
        grace = self._cut_off_grace if cut_off else self._kill_grace
        self._timer = self._reactor.callLater(grace, self._kill, "TERM", grace)

    def abortConnection(self) -> None:
        """
        Kill the child (SIGKILL) and close its pipes, discarding what was
        not written.
        """
        if self.exit is not None:
            return
        self._aborted = True
        self._closing = True
        self.disconnecting = True
        self._cancel_timer()
        self._signal("KILL")
        self.process.loseConnection()

    def getPeer(self) -> ProcessAddress:
        """The child."""
        return ProcessAddress(self.pid, self.argv)

    def getHost(self) -> ProcessAddress:
        """epcat itself."""
        return ProcessAddress(os.getpid())

    # IConsumer (the child's stdin)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._stdin_open:
            self.process.registerProducer(producer, streaming)
        # (a child that closed its stdin discards what is written: no need
        # to slow the producer, and no reason to stop it)

    def unregisterProducer(self) -> None:
        if self._stdin_open:
            self.process.unregisterProducer()

    # IPushProducer (the child's stdout)

    def pauseProducing(self) -> None:
        self.process.pauseProducing()

    def resumeProducing(self) -> None:
        if not self._closing:
            self.process.resumeProducing()

    def stopProducing(self) -> None:
        self.loseConnection()

    # process control

    def signalProcess(self, signal_name: str | int) -> None:
        """
        Send the child a signal (C{"TERM"}, C{"KILL"}, ... or a number).

        @raise ProcessExitedAlready: it has exited.
        """
        self.process.signalProcess(signal_name)

    def _signal(self, signal_name: str) -> None:
        try:
            self.process.signalProcess(signal_name)
        except (ProcessExitedAlready, OSError):
            pass

    def _kill(self, signal_name: str, waited: float) -> None:
        """
        Send the child C{signal_name} (C{"TERM"}, then C{"KILL"}) unless it
        has exited; after SIGTERM, arm SIGKILL C{kill_grace} seconds later.

        @param waited: seconds since its pipes were closed, for the log.
        """
        self._timer = None
        if self.exit is not None:
            return
        _log.info(
            "exec: {command} (pid {pid}) still running {waited:g} s after its pipes were "
            "closed: sending SIG{signal_name}",
            command=shlex.join(self.argv), pid=self.pid, waited=waited,
            signal_name=signal_name,
        )
        self._signal(signal_name)
        if signal_name == "TERM":
            self._timer = self._reactor.callLater(
                self._kill_grace, self._kill, "KILL", waited + self._kill_grace
            )

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # from the process protocol

    def _protocol_write_lost(self) -> None:
        if self.exit is not None:
            return
        half = IHalfCloseableProtocol(self._protocol, None)
        if half is not None:
            half.writeConnectionLost()

    def _ended(self, reason: Failure) -> Failure:
        """
        Record how the child ended; log it; return the reason the
        protocol's connection was lost: L{ConnectionDone} for exit status 0
        and for a child killed by SIGPIPE, SIGTERM or SIGKILL after epcat
        closed its pipes (the consequences of closing);
        L{ConnectionAborted} after L{abortConnection}; else (a non-zero
        exit status, or another signal) Twisted's L{ProcessTerminated},
        which carries C{exitCode} and C{signal}.
        """
        self._cancel_timer()
        value = reason.value
        code = getattr(value, "exitCode", None)
        sig = getattr(value, "signal", None)
        self.exit = ChildExit(code, sig)
        command = shlex.join(self.argv)
        if self.exit.ok:
            _log.info("exec: {command} (pid {pid}) ended: {exit}", command=command,
                      pid=self.pid, exit=self.exit)
        else:
            _log.warn("exec: {command} (pid {pid}) ended: {exit}", command=command,
                      pid=self.pid, exit=self.exit)
        if self._aborted:
            return Failure(ConnectionAborted())
        if self.exit.ok:
            return Failure(ConnectionDone())
        if self._closing and sig in _CLOSING_SIGNALS:
            return Failure(ConnectionDone())
        return reason


class _ExecProcessProtocol(ProcessProtocol):
    """
    Joins a child process to an L{IProtocol}, as Twisted's
    C{endpoints._WrapIProtocol} does, and also passes half-close both ways
    and keeps the exit status (see L{ExecTransport}).
    """

    def __init__(self, protocol: Any, argv: Sequence[str], reactor: Any,
                 kill_grace: float, cut_off_grace: float = CUT_OFF_GRACE) -> None:
        self.protocol = protocol
        self.argv = tuple(argv)
        self.reactor = reactor
        self.kill_grace = kill_grace
        self.cut_off_grace = cut_off_grace
        self.exec_transport: ExecTransport | None = None

    def makeConnection(self, process: Any) -> None:
        self.transport = process
        transport = ExecTransport(process, self.protocol, self.argv, self.reactor,
                                  self.kill_grace, self.cut_off_grace)
        self.exec_transport = transport
        _log.debug("exec: started {command} (pid {pid})", command=shlex.join(self.argv),
                   pid=process.pid)
        self.protocol.makeConnection(transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self.protocol.dataReceived(data)

    def childConnectionLost(self, childFD: int) -> None:
        transport = self.exec_transport
        if transport is None or transport.exit is not None:
            return
        if childFD == 0:
            transport._stdin_open = False
            if transport._write_lost_wanted:
                transport._protocol_write_lost()
        elif childFD == 1 and not transport._closing:
            transport._stdout_open = False
            half = IHalfCloseableProtocol(self.protocol, None)
            if half is not None:
                half.readConnectionLost()

    def processEnded(self, reason: Failure) -> None:
        transport = self.exec_transport
        if transport is None:
            return
        self.protocol.connectionLost(transport._ended(reason))


@implementer(IStreamClientEndpoint)
@attr.s(frozen=True, auto_attribs=True, eq=False)
class ExecEndpoint:
    """
    A client endpoint whose connections are child processes: each L{connect}
    runs C{argv} with C{reactor.spawnProcess} (modelled on Twisted's
    L{twisted.internet.endpoints.ProcessEndpoint}, which cannot half-close,
    names no addresses and cannot be aborted).

    The child gets epcat's environment plus C{extra_env}, epcat's working
    directory, and epcat's stderr as its own (L{EXEC_CHILD_FDS}).

    @ivar reactor: an C{IReactorProcess} and C{IReactorTime} provider.
    @ivar argv: the command line; the first word is looked up in C{PATH}.
    @ivar extra_env: variables added to (or replacing) epcat's environment.
    @ivar kill_grace: seconds, see L{ExecTransport.loseConnection}.
    @ivar cut_off_grace: seconds, see L{ExecTransport.loseConnection}.
    """

    reactor: Any
    argv: tuple[str, ...] = attr.ib(converter=tuple)
    extra_env: Mapping[str, str] = attr.ib(factory=dict, converter=dict)
    kill_grace: float = KILL_GRACE
    cut_off_grace: float = CUT_OFF_GRACE

    @argv.validator
    def _check_argv(self, attribute: Any, value: tuple[str, ...]) -> None:
        if not value or not value[0]:
            raise ValueError("exec: a command is missing, e.g. exec:cat")

    def with_environment(self, extra: Mapping[str, str]) -> ExecEndpoint:
        """
        A copy of this endpoint whose children also get C{extra} in their
        environment (on top of what this one adds), e.g.
        C{environment_for(transport, conn_id)}.
        """
        return attr.evolve(self, extra_env={**self.extra_env, **extra})

    def environment(self) -> dict[str, str]:
        """
        The environment a child started now gets: C{os.environ} plus
        C{extra_env}.
        """
        return {**os.environ, **self.extra_env}

    def connect(self, protocolFactory: Any) -> defer.Deferred[Any]:
        """
        Start the child and connect a protocol from C{protocolFactory} to it
        (before the returned L{Deferred} fires); the protocol's transport is
        an L{ExecTransport}.

        @return: a L{Deferred} that fires with the protocol, or fails with
            L{ConnectError} when the program is not found or not executable
            (looked up in the child's C{PATH}), the factory builds no
            protocol, or the process cannot be started (the OS error).
        """
        env = self.environment()
        program = self.argv[0]
        executable = shutil.which(program, path=env.get("PATH", os.defpath))
        if executable is None:
            if os.sep in program and os.path.exists(program):
                why = f"not an executable file ({program})"
            else:
                why = f"command not found ({program})"
            return defer.fail(ConnectError(string=why))
        protocol = protocolFactory.buildProtocol(ProcessAddress(None, self.argv))
        if protocol is None:
            return defer.fail(ConnectError(string="exec: the factory refused the connection"))
        process_protocol = _ExecProcessProtocol(protocol, self.argv, self.reactor,
                                                self.kill_grace, self.cut_off_grace)
        try:
            self.reactor.spawnProcess(
                process_protocol, executable, list(self.argv), env=env,
                childFDs=dict(EXEC_CHILD_FDS),
            )
        except OSError as e:
            return defer.fail(ConnectError(osError=e.strerror or str(e)))
        except BaseException:
            return defer.fail()
        return defer.succeed(protocol)


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class ExecClientParser:
    """
    a child process: exec:COMMAND (its stdin and stdout; stderr passed through)

    C{exec:COMMAND}: COMMAND is split into words as a POSIX shell would
    (quotes, backslashes; no expansion) and run with epcat's privileges;
    escape C{:} and C{=} in it as C{\\:} and C{\\=}.  The end of the stream
    towards the child closes its stdin.  E.g. C{exec:cat},
    C{exec:ssh -W localhost\\:22 jumphost}, C{exec:sh -c "tr a-z A-Z"}.
    """

    prefix = EXEC_PREFIX

    def parseStreamClient(self, reactor: Any, *command: str,
                          **assignments: str) -> IStreamClientEndpoint:
        """
        Build an C{exec:} client endpoint.

        @param command: COMMAND, in the pieces Twisted's parser split it
            into at unescaped colons (see L{command_text}).
        @param assignments: pieces of COMMAND that held an unescaped C{=}.
        @return: an L{ExecEndpoint}.
        @raise ValueError: no command, unbalanced quotes, or a command that
            cannot be put back together; the message says which.
        """
        return ExecEndpoint(reactor, split_command(command_text(command, assignments)))


# -- hostname:


def _port_number(value: str | int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"hostname: port {value!r}: expected a port number") from None
    if not 1 <= number <= 65535:
        raise ValueError(f"hostname: port {value}: expected a port number 1-65535")
    return number


def _seconds(value: str | float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"hostname: timeout={value}: expected a number of seconds") from None
    if not 0 < number < float("inf"):
        raise ValueError(f"hostname: timeout={value}: expected a positive number of seconds")
    return number


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class HostnameClientParser:
    """
    TCP to a host name over IPv4 and IPv6, first to answer wins: hostname:HOST:PORT

    C{hostname:HOST:PORT[:timeout=S][:bindAddress=IP]}: Twisted's
    L{HostnameEndpoint} (RFC 8305 happy eyeballs), where C{tcp:} resolves
    IPv4 only.  Escape the colons of an IPv6 literal: C{hostname:\\:\\:1:80}.
    """

    prefix = HOSTNAME_PREFIX

    def parseStreamClient(
        self,
        reactor: Any,
        host: str,
        port: str,
        timeout: str = "30",
        bindAddress: str | None = None,
    ) -> IStreamClientEndpoint:
        """
        Build a C{hostname:} client endpoint.

        @param host: a host name, or an IPv4 or IPv6 address (brackets
            allowed).
        @param port: TCP port, 1-65535.
        @param timeout: seconds for each connection attempt (default 30).
        @param bindAddress: local IP address to connect from.
        @return: a L{HostnameEndpoint}.
        @raise ValueError: a missing host or a bad value; the message names
            it.
        """
        from twisted.internet.endpoints import HostnameEndpoint

        name = host.strip()
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        if not name:
            raise ValueError("hostname: a host to connect to is missing, "
                             "e.g. hostname:localhost:8080")
        bind = None
        if bindAddress is not None:
            if not bindAddress.strip():
                raise ValueError("hostname: bindAddress=: expected an IP address")
            bind = (bindAddress.strip(), 0)
        return HostnameEndpoint(reactor, name, _port_number(port), _seconds(timeout), bind)


# -- the environment of exec: children


def _address_parts(address: Any) -> tuple[str, str | None]:
    """
    (address, port) of a Twisted address for the environment: host and port
    of an IP address; the path of a UNIX socket (empty when unnamed) and no
    port; empty and no port for anything else (stdio).
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return str(host), str(port)
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    return (name or "", None)


def _peer_certificate_subject(transport: Any) -> str | None:
    """
    The subject of the certificate the TLS peer of C{transport} presented,
    as an RFC 4514 string, or L{None} (not TLS, no certificate, or no
    handshake yet).
    """
    certificate = None
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is not None:
        try:
            handle = get_handle()
        except Exception:
            handle = None
        getter = getattr(handle, "get_peer_certificate", None)
        if getter is not None:
            try:
                certificate = getter(as_cryptography=True)
            except TypeError:  # pyOpenSSL before 24.3
                certificate = getter()
            except Exception:
                certificate = None
    if certificate is None:
        return None
    to_cryptography = getattr(certificate, "to_cryptography", None)
    if to_cryptography is not None:
        certificate = to_cryptography()
    try:
        return certificate.subject.rfc4514_string()
    except Exception:
        return None


def environment_for(transport: Any, conn_id: int | str) -> dict[str, str]:
    """
    The variables an C{exec:} child gets about the inbound connection it
    serves, as socat's C{SOCAT_PEERADDR} and ncat's C{NCAT_REMOTE_ADDR}:

      - C{EPCAT_PEER_ADDR}, C{EPCAT_PEER_PORT}: the peer's IP address and
        port (behind C{haproxy:}, those the PROXY header carried); for a
        UNIX socket the peer's path (usually empty) and no port; for stdin
        and stdout empty and no port;
      - C{EPCAT_LOCAL_ADDR}, C{EPCAT_LOCAL_PORT}: the same for epcat's end;
      - C{EPCAT_CONN_ID}: C{conn_id}, the number epcat's log lines show;
      - C{EPCAT_PEER_CERT_SUBJECT}: for a TLS connection whose peer sent a
        certificate, its subject as an RFC 4514 string
        (C{CN=alice,O=Example}); absent otherwise.  The handshake must be
        done: call this after it.

    @param transport: the inbound connection's transport (C{getPeer},
        C{getHost}; C{getHandle} for TLS), or L{None} for stdin/stdout.
    @param conn_id: the connection's number.
    @return: the variables, all values strings.
    """
    env: dict[str, str] = {"EPCAT_CONN_ID": str(conn_id)}
    if transport is None:
        env["EPCAT_PEER_ADDR"] = ""
        env["EPCAT_LOCAL_ADDR"] = ""
        return env
    for prefix, method in (("PEER", "getPeer"), ("LOCAL", "getHost")):
        try:
            address = getattr(transport, method)()
        except Exception:
            address = None
        value, port = _address_parts(address)
        env[f"EPCAT_{prefix}_ADDR"] = value
        if port is not None:
            env[f"EPCAT_{prefix}_PORT"] = port
    subject = _peer_certificate_subject(transport)
    if subject is not None:
        env["EPCAT_PEER_CERT_SUBJECT"] = subject
    return env


__all__ = [
    "ChildExit",
    "ExecClientParser",
    "ExecEndpoint",
    "ExecTransport",
    "HostnameClientParser",
    "ProcessAddress",
    "StandardIOClientEndpoint",
    "StdioClientParser",
    "command_text",
    "environment_for",
    "split_command",
]
