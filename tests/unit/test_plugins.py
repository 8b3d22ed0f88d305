"""
Tests for L{epcat.plugins}: the C{stdio:}, C{exec:} and C{hostname:} client
endpoint types and the environment of C{exec:} children.

Nothing runs a reactor here: parsing goes through Twisted's own
C{clientFromString}; the C{exec:} endpoint spawns through a reactor that
records C{spawnProcess} and hands back a fake process; the C{stdio:}
endpoint makes fake transports (or a real L{StandardIO} on pipes, with a
L{MemoryReactorClock}).  Real children and real stdin/stdout are in
C{tests/e2e/test_plugins_e2e.py}.
"""

from __future__ import annotations

import inspect
import os
import signal
import stat
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from OpenSSL import crypto
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import HostnameEndpoint, clientFromString
from twisted.internet.error import (
    ConnectError,
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ProcessDone,
    ProcessExitedAlready,
    ProcessTerminated,
)
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHostnameResolver,
    IHostResolution,
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.stdio import PipeAddress, StandardIO
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.plugin import IPlugin, getPlugins
from twisted.python.failure import Failure
from zope.interface import implementer

from epcat import plugins
from epcat.endpoints import HALF_CLOSE_SHUTDOWN, half_close_mode, parse_client
from epcat.plugins import (
    EXEC_CHILD_FDS,
    ChildExit,
    ExecClientParser,
    ExecEndpoint,
    ExecTransport,
    HostnameClientParser,
    ProcessAddress,
    StandardIOClientEndpoint,
    StdioClientParser,
    command_text,
    environment_for,
    split_command,
)
from epcat.relay import Pair, SideFactory
from epcat.status import UsageError

# -- helpers


@implementer(IHalfCloseableProtocol)
class Recorder(Protocol):
    """
    Records what its transport tells it, half-close included.
    """

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.data = b""
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        self.events.append("made")

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def readConnectionLost(self) -> None:
        self.events.append("readLost")

    def writeConnectionLost(self) -> None:
        self.events.append("writeLost")

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.events.append("lost")
        self.reason = reason


class RecordingFactory(Factory):
    def __init__(self) -> None:
        self.addresses: list[Any] = []
        self.protocols: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        self.addresses.append(addr)
        protocol = Recorder()
        protocol.factory = self
        self.protocols.append(protocol)
        return protocol


class FakeProcess:
    """
    Stands in for Twisted's C{Process}: records what the transport does.
    """

    def __init__(self, pid: int = 4242) -> None:
        self.pid = pid
        self.written: list[bytes] = []
        self.calls: list[str] = []
        self.signals: list[str | int] = []
        self.producer: Any = None
        self.exited = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writeSequence(self, seq: list[bytes]) -> None:
        self.written.extend(seq)

    def closeStdin(self) -> None:
        self.calls.append("closeStdin")

    def loseConnection(self) -> None:
        self.calls.append("loseConnection")

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = (producer, streaming)

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def signalProcess(self, signal_name: str | int) -> None:
        if self.exited:
            raise ProcessExitedAlready()
        self.signals.append(signal_name)


class ProcessReactor(MemoryReactorClock):
    """
    Records C{spawnProcess} calls and connects each process protocol to a
    L{FakeProcess}, as the real reactor does before returning.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[dict[str, Any]] = []

    def spawnProcess(self, processProtocol: Any, executable: str, args: Any = (),
                     env: Any = None, path: Any = None, uid: Any = None, gid: Any = None,
                     usePTY: Any = False, childFDs: Any = None) -> FakeProcess:
        process = FakeProcess(pid=1000 + len(self.spawned))
        self.spawned.append(dict(protocol=processProtocol, executable=executable, args=args,
                                 env=env, path=path, childFDs=childFDs, process=process))
        processProtocol.makeConnection(process)
        return process


def connect_exec(command: str = "cat", **kwargs: Any) -> tuple[ProcessReactor, Recorder,
                                                                ExecTransport, Any]:
    reactor = ProcessReactor()
    endpoint = ExecEndpoint(reactor, split_command(command), **kwargs)
    results: list[Any] = []
    endpoint.connect(RecordingFactory()).addBoth(results.append)
    protocol = results[0]
    assert isinstance(protocol, Recorder), protocol
    spawned = reactor.spawned[0]
    return reactor, protocol, protocol.transport, spawned


# -- the plugins


def test_get_plugins_finds_the_three_client_parsers() -> None:
    found = {p.prefix: p for p in getPlugins(IStreamClientEndpointStringParserWithReactor)
             if p.prefix in ("stdio", "exec", "hostname")}
    assert set(found) == {"stdio", "exec", "hostname"}
    assert isinstance(found["stdio"], StdioClientParser)
    assert isinstance(found["exec"], ExecClientParser)
    assert isinstance(found["hostname"], HostnameClientParser)
    assert all(IPlugin.providedBy(p) for p in found.values())


def test_docstrings_summarise_in_their_first_line() -> None:
    expected = {
        StdioClientParser: ("stdin", "stdout", "stdio:"),
        ExecClientParser: ("child process", "exec:COMMAND", "stderr"),
        HostnameClientParser: ("IPv4", "IPv6", "hostname:HOST:PORT"),
    }
    for parser, words in expected.items():
        first = (parser.__doc__ or "").strip().splitlines()[0]
        assert all(word in first for word in words), first


def test_parse_methods_have_explicit_signatures() -> None:
    stdio = inspect.signature(StdioClientParser().parseStreamClient)
    exec_ = inspect.signature(ExecClientParser().parseStreamClient)
    hostname = inspect.signature(HostnameClientParser().parseStreamClient)
    assert list(stdio.parameters) == ["reactor", "empty"]
    assert list(exec_.parameters) == ["reactor", "command", "assignments"]
    assert exec_.parameters["command"].kind is inspect.Parameter.VAR_POSITIONAL
    assert list(hostname.parameters) == ["reactor", "host", "port", "timeout", "bindAddress"]
    assert hostname.parameters["timeout"].default == "30"
    assert hostname.parameters["bindAddress"].default is None


@pytest.mark.parametrize(
    "description", ["stdio:", "stdio", "exec:cat", "hostname:localhost:8080"]
)
def test_half_close_is_a_shutdown(description: str) -> None:
    assert half_close_mode(description) == HALF_CLOSE_SHUTDOWN


# -- exec: parsing


@pytest.mark.parametrize(
    ("description", "argv"),
    [
        ("exec:cat", ["cat"]),
        ("exec:sh -c \"echo hi; cat >/dev/null\"", ["sh", "-c", "echo hi; cat >/dev/null"]),
        ("exec:sh -c 'tr a-z A-Z'", ["sh", "-c", "tr a-z A-Z"]),
        ("exec:printf '%s\\\\n' \"two words\" three", ["printf", "%s\\n", "two words", "three"]),
        # (Twisted removes one backslash before shlex sees the command)
        ("exec:printf '%s\\n'", ["printf", "%sn"]),
        # an escaped colon, as in every description
        ("exec:ssh -W localhost\\:22 jumphost", ["ssh", "-W", "localhost:22", "jumphost"]),
        # unescaped colons split the description; the pieces are joined back
        ("exec:ssh -W localhost:22 jumphost", ["ssh", "-W", "localhost:22", "jumphost"]),
        ("exec:echo a:b:c", ["echo", "a:b:c"]),
        ("exec:sh -c \"echo x:y\"", ["sh", "-c", "echo x:y"]),
        # an unescaped '=' makes a keyword argument; it is put back
        ("exec:env A=1 cat", ["env", "A=1", "cat"]),
        ("exec:env A=1=2 cat", ["env", "A=1=2", "cat"]),
        ("exec:env A\\=1 B\\=2 cat", ["env", "A=1", "B=2", "cat"]),
        ("exec:env A=1:B=2", ["env", "A=1:B=2"]),
        # a backslash for shlex is written as two in a description
        ("exec:echo a\\\\ b", ["echo", "a b"]),
        ("exec:echo \"a\\\\\"b\"", ["echo", 'a"b']),
        ("EXEC:true", ["true"]),
    ],
)
def test_exec_description_is_split_like_a_shell(description: str, argv: list[str]) -> None:
    reactor = ProcessReactor()
    endpoint = clientFromString(reactor, description)
    assert isinstance(endpoint, ExecEndpoint)
    assert IStreamClientEndpoint.providedBy(endpoint)
    assert list(endpoint.argv) == argv
    assert reactor.spawned == []  # nothing runs at parse time


@pytest.mark.parametrize(
    ("description", "words"),
    [
        ("exec:", "a command is missing"),
        ("exec:   ", "a command is missing"),
        ("exec:''", "a command is missing"),
        ("exec:sh -c \"echo", "no closing quotation"),
        ("exec:echo a:b=c", "escape them as '\\:' and '\\='"),
    ],
)
def test_exec_bad_commands(description: str, words: str) -> None:
    with pytest.raises(ValueError) as raised:
        clientFromString(ProcessReactor(), description)
    assert words in str(raised.value)
    # and epcat turns it into a one-line usage error quoting the description
    with pytest.raises(UsageError) as usage:
        parse_client(ProcessReactor(), description)
    assert repr(description) in str(usage.value) and words in str(usage.value)


def test_command_text_rebuilds_in_order() -> None:
    assert command_text(["a", "b", "c"], {}) == "a:b:c"
    assert command_text([], {"x": "1", "y": "2"}) == "x=1:y=2"
    with pytest.raises(ValueError):
        command_text(["a"], {"b": "c"})
    with pytest.raises(ValueError):
        command_text([""], {})


def test_split_command_expands_nothing() -> None:
    assert split_command("echo $HOME *.py ~ >out") == ["echo", "$HOME", "*.py", "~", ">out"]


def test_exec_endpoint_needs_a_command() -> None:
    with pytest.raises(ValueError):
        ExecEndpoint(ProcessReactor(), [])


# -- exec: the endpoint


def test_connect_spawns_with_stderr_passed_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPCAT_TEST_INHERITED", "yes")
    reactor, protocol, transport, spawned = connect_exec("sh -c 'echo hi'")
    assert spawned["args"] == ["sh", "-c", "echo hi"]
    assert os.path.isabs(spawned["executable"]) and spawned["executable"].endswith("/sh")
    assert spawned["childFDs"] == {0: "w", 1: "r", 2: 2} == dict(EXEC_CHILD_FDS)
    assert spawned["env"]["EPCAT_TEST_INHERITED"] == "yes"
    assert spawned["path"] is None
    assert protocol.events == ["made"]
    assert isinstance(transport, ExecTransport)
    assert transport.pid == 1000 and transport.argv == ("sh", "-c", "echo hi")
    assert transport.exit is None
    assert protocol.factory.addresses == [ProcessAddress(None, ("sh", "-c", "echo hi"))]


def test_with_environment_returns_a_copy_with_more_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EPCAT_CONN_ID", "from-epcat's-own-environment")
    reactor = ProcessReactor()
    base = ExecEndpoint(reactor, ["cat"])
    one = base.with_environment({"EPCAT_CONN_ID": "1", "EPCAT_PEER_ADDR": "127.0.0.1"})
    two = one.with_environment({"EPCAT_CONN_ID": "2"})
    assert isinstance(one, ExecEndpoint) and one is not base
    assert dict(base.extra_env) == {}
    assert dict(one.extra_env) == {"EPCAT_CONN_ID": "1", "EPCAT_PEER_ADDR": "127.0.0.1"}
    assert dict(two.extra_env) == {"EPCAT_CONN_ID": "2", "EPCAT_PEER_ADDR": "127.0.0.1"}
    assert two.argv == base.argv and two.reactor is reactor
    for endpoint in (base, one, two):
        endpoint.connect(RecordingFactory())
    envs = [s["env"] for s in reactor.spawned]
    assert envs[0]["EPCAT_CONN_ID"] == "from-epcat's-own-environment"
    assert envs[1]["EPCAT_CONN_ID"] == "1" and envs[1]["EPCAT_PEER_ADDR"] == "127.0.0.1"
    assert envs[2]["EPCAT_CONN_ID"] == "2"
    assert envs[1]["PATH"] == os.environ["PATH"]


def test_with_environment_of_a_parsed_description() -> None:
    endpoint = clientFromString(ProcessReactor(), "exec:env")
    copy = endpoint.with_environment({"EPCAT_CONN_ID": "7"})
    assert copy.environment()["EPCAT_CONN_ID"] == "7"
    assert "EPCAT_CONN_ID" not in endpoint.extra_env


def test_command_not_found_fails_the_connection() -> None:
    reactor = ProcessReactor()
    endpoint = ExecEndpoint(reactor, ["epcat-no-such-command-here"])
    failures: list[Failure] = []
    factory = RecordingFactory()
    endpoint.connect(factory).addErrback(failures.append)
    assert failures and failures[0].check(ConnectError)
    assert "command not found (epcat-no-such-command-here)" in str(failures[0].value)
    assert reactor.spawned == [] and factory.protocols == []


def test_a_file_that_is_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("echo hi\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    failures: list[Failure] = []
    ExecEndpoint(ProcessReactor(), [str(script)]).connect(RecordingFactory()).addErrback(
        failures.append
    )
    assert "not an executable file" in str(failures[0].value)


def test_the_childs_path_finds_the_program(tmp_path: Path) -> None:
    program = tmp_path / "epcat-test-program"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    reactor = ProcessReactor()
    endpoint = ExecEndpoint(reactor, ["epcat-test-program"], extra_env={"PATH": str(tmp_path)})
    endpoint.connect(RecordingFactory())
    assert reactor.spawned[0]["executable"] == str(program)
    assert reactor.spawned[0]["args"] == ["epcat-test-program"]


def test_spawn_error_fails_the_connection() -> None:
    class Failing(ProcessReactor):
        def spawnProcess(self, *args: Any, **kwargs: Any) -> Any:
            raise OSError(24, "Too many open files")

    failures: list[Failure] = []
    ExecEndpoint(Failing(), ["cat"]).connect(RecordingFactory()).addErrback(failures.append)
    assert failures[0].check(ConnectError)
    assert "Too many open files" in str(failures[0].value)


# -- exec: the transport


def test_data_both_ways() -> None:
    _, protocol, transport, spawned = connect_exec()
    transport.write(b"to the child")
    transport.writeSequence([b"a", b"b"])
    assert spawned["process"].written == [b"to the child", b"a", b"b"]
    spawned["protocol"].childDataReceived(1, b"from its stdout")
    spawned["protocol"].childDataReceived(2, b"never: stderr is not a pipe")
    assert protocol.data == b"from its stdout"


def test_half_close_closes_stdin_then_confirms() -> None:
    _, protocol, transport, spawned = connect_exec()
    process = spawned["process"]
    transport.loseWriteConnection()
    transport.loseWriteConnection()
    assert process.calls == ["closeStdin"]
    assert protocol.events == ["made"]
    spawned["protocol"].childConnectionLost(0)  # its stdin pipe closed
    assert protocol.events == ["made", "writeLost"]
    spawned["protocol"].childConnectionLost(1)  # it closed its stdout
    assert protocol.events == ["made", "writeLost", "readLost"]
    spawned["protocol"].processEnded(Failure(ProcessDone(0)))
    assert protocol.events == ["made", "writeLost", "readLost", "lost"]
    assert protocol.reason is not None and protocol.reason.check(ConnectionDone)
    assert transport.exit == ChildExit(0) and transport.exit.ok


def test_a_child_closing_its_stdin_early_is_not_the_end() -> None:
    reactor, protocol, transport, spawned = connect_exec()
    process = spawned["process"]
    spawned["protocol"].childConnectionLost(0)
    assert protocol.events == ["made"]
    # writes are discarded by the process; the producer is neither
    # registered nor stopped
    producer = object()
    transport.registerProducer(producer, True)
    assert process.producer is None
    transport.unregisterProducer()
    # our own half-close is still confirmed, a moment later
    transport.loseWriteConnection()
    assert process.calls == []
    reactor.advance(0)
    assert protocol.events == ["made", "writeLost"]


def test_non_zero_exit_status_is_kept_and_reported() -> None:
    _, protocol, transport, spawned = connect_exec("sh -c 'exit 3'")
    spawned["protocol"].childConnectionLost(1)
    spawned["protocol"].processEnded(Failure(ProcessTerminated(3, None, 3 << 8)))
    assert transport.exit == ChildExit(3) and not transport.exit.ok
    assert str(transport.exit) == "exit status 3"
    assert protocol.reason is not None and protocol.reason.check(ProcessTerminated)
    assert protocol.reason.value.exitCode == 3


def test_killed_by_a_signal_nobody_sent() -> None:
    _, protocol, transport, spawned = connect_exec()
    spawned["protocol"].processEnded(Failure(ProcessTerminated(None, signal.SIGSEGV, 11)))
    assert transport.exit == ChildExit(None, signal.SIGSEGV)
    assert str(transport.exit) == f"killed by signal {int(signal.SIGSEGV)} (SIGSEGV)"
    assert protocol.reason is not None and protocol.reason.check(ProcessTerminated)


def test_lose_connection_closes_the_pipes_then_terminates_then_kills() -> None:
    """
    The stream ended both ways (the child closed its stdout): closing waits
    C{kill_grace} seconds for the child to finish before SIGTERM, and as
    long again before SIGKILL.
    """
    reactor, protocol, transport, spawned = connect_exec("sleep 100", kill_grace=3.0,
                                                         cut_off_grace=0.5)
    process = spawned["process"]
    spawned["protocol"].childConnectionLost(1)  # it closed its stdout
    assert protocol.events == ["made", "readLost"]
    transport.loseConnection()
    transport.loseConnection()
    assert process.calls == ["loseConnection"]
    assert transport.disconnecting
    transport.resumeProducing()  # ignored while closing
    assert "resume" not in process.calls
    reactor.advance(2.9)
    assert process.signals == []
    reactor.advance(0.2)
    assert process.signals == ["TERM"]
    reactor.advance(3.0)
    assert process.signals == ["TERM", "KILL"]
    spawned["protocol"].processEnded(Failure(ProcessTerminated(None, signal.SIGKILL, 9)))
    assert transport.exit == ChildExit(None, signal.SIGKILL)
    # a consequence of closing, not a failure
    assert protocol.reason is not None and protocol.reason.check(ConnectionDone)
    assert reactor.getDelayedCalls() == []


def test_lose_connection_cutting_the_child_off_terminates_it_soon() -> None:
    """
    Closing while the child's stdout is still open (the other side was
    lost, or epcat closed the pair) cuts the child off: SIGTERM comes after
    C{cut_off_grace} seconds, not C{kill_grace}, then SIGKILL C{kill_grace}
    later, so a child that ignores its pipes (sleep) cannot keep the pair.
    """
    reactor, protocol, transport, spawned = connect_exec("sleep 100", kill_grace=3.0,
                                                         cut_off_grace=0.5)
    process = spawned["process"]
    transport.loseConnection()
    assert process.calls == ["loseConnection"]
    spawned["protocol"].childConnectionLost(1)  # we closed it: not a half-close
    assert protocol.events == ["made"]
    reactor.advance(0.4)
    assert process.signals == []
    reactor.advance(0.2)
    assert process.signals == ["TERM"]
    reactor.advance(2.9)
    assert process.signals == ["TERM"]
    reactor.advance(0.2)
    assert process.signals == ["TERM", "KILL"]
    spawned["protocol"].processEnded(Failure(ProcessTerminated(None, signal.SIGKILL, 9)))
    assert protocol.reason is not None and protocol.reason.check(ConnectionDone)
    assert reactor.getDelayedCalls() == []


def test_the_default_graces() -> None:
    endpoint = ExecEndpoint(ProcessReactor(), ["cat"])
    assert endpoint.kill_grace == plugins.KILL_GRACE == 5.0
    assert endpoint.cut_off_grace == plugins.CUT_OFF_GRACE
    assert 0 < plugins.CUT_OFF_GRACE < plugins.KILL_GRACE


class HalfCloseTransport(StringTransport):
    """
    A L{StringTransport} that half-closes, and whose C{unregisterProducer}
    with no producer is a no-op, as Twisted's TCP transport's.
    """

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


def exec_pair(command: str) -> tuple[ProcessReactor, Pair, HalfCloseTransport, ExecTransport,
                                     Any, list[str]]:
    """
    A relay pair: a TCP-like inbound side (a L{HalfCloseTransport}) joined
    to an C{exec:} outbound side whose child is a L{FakeProcess}.
    """
    reactor = ProcessReactor()
    events: list[str] = []
    pair = Pair(reactor, 1, on_event=lambda event, pair, side: events.append(event))
    inbound = HalfCloseTransport()
    pair.inbound.makeConnection(inbound)
    endpoint = ExecEndpoint(reactor, split_command(command), kill_grace=3.0,
                            cut_off_grace=0.5)
    endpoint.connect(SideFactory(pair.outbound))
    assert pair.joined
    transport = pair.outbound.transport
    assert isinstance(transport, ExecTransport)
    return reactor, pair, inbound, transport, reactor.spawned[0], events


def test_a_reset_client_ends_the_pair_and_its_child_promptly() -> None:
    """
    The inbound connection is reset: the child's pipes are closed at once
    and a child that ignores them (sleep) is terminated after the cut-off
    grace, which ends the pair.
    """
    reactor, pair, _, transport, spawned, events = exec_pair("sleep 600")
    process = spawned["process"]
    pair.inbound.dataReceived(b"x")
    assert process.written == [b"x"]
    pair.inbound.connectionLost(Failure(ConnectionLost("Connection reset by peer")))
    assert process.calls == ["closeStdin", "loseConnection"]
    assert "closed" not in events
    reactor.advance(0.5)
    assert process.signals == ["TERM"]
    spawned["protocol"].processEnded(Failure(ProcessTerminated(None, signal.SIGTERM, 15)))
    assert transport.exit == ChildExit(None, signal.SIGTERM)
    assert events[-1] == "closed"
    assert pair.done.called
    assert reactor.getDelayedCalls() == []


def test_a_clean_eof_from_the_client_lets_the_child_finish() -> None:
    """
    The client's EOF (a half-close) closes the child's stdin only: no timer,
    no signal; what the child writes after it still reaches the client.
    """
    reactor, pair, inbound, transport, spawned, events = exec_pair("sh -c 'cat; echo done'")
    process = spawned["process"]
    pair.inbound.dataReceived(b"x")
    pair.inbound.readConnectionLost()
    assert process.calls == ["closeStdin"]
    reactor.advance(60)
    assert process.signals == []
    spawned["protocol"].childDataReceived(1, b"x")
    spawned["protocol"].childDataReceived(1, b"done\n")
    assert inbound.value() == b"xdone\n"
    spawned["protocol"].childConnectionLost(0)
    spawned["protocol"].childConnectionLost(1)  # its output ended: passed on
    assert inbound.write_closed
    spawned["protocol"].processEnded(Failure(ProcessDone(0)))
    assert transport.exit == ChildExit(0)
    assert process.signals == []
    assert inbound.disconnecting  # both directions over: closed once flushed
    assert "closed" not in events  # (until the inbound connection is gone)
    pair.inbound.connectionLost(Failure(ConnectionDone()))
    assert events[-1] == "closed"


def test_a_child_that_exits_after_close_needs_no_signal() -> None:
    reactor, protocol, transport, spawned = connect_exec()
    transport.loseConnection()
    spawned["protocol"].processEnded(Failure(ProcessTerminated(None, signal.SIGPIPE, 13)))
    assert protocol.reason is not None and protocol.reason.check(ConnectionDone)
    assert reactor.getDelayedCalls() == []
    reactor.advance(100)
    assert spawned["process"].signals == []


def test_failure_after_close_is_still_reported() -> None:
    _, protocol, transport, spawned = connect_exec()
    transport.loseConnection()
    spawned["protocol"].processEnded(Failure(ProcessTerminated(2, None, 2 << 8)))
    assert protocol.reason is not None and protocol.reason.check(ProcessTerminated)


def test_abort_kills_at_once() -> None:
    reactor, protocol, transport, spawned = connect_exec()
    process = spawned["process"]
    transport.abortConnection()
    assert process.signals == ["KILL"] and process.calls == ["loseConnection"]
    spawned["protocol"].processEnded(Failure(ProcessTerminated(None, signal.SIGKILL, 9)))
    assert protocol.reason is not None and protocol.reason.check(ConnectionAborted)
    assert reactor.getDelayedCalls() == []


def test_abort_after_the_child_exited_is_harmless() -> None:
    _, protocol, transport, spawned = connect_exec()
    spawned["process"].exited = True
    transport.abortConnection()  # ProcessExitedAlready is swallowed
    spawned["protocol"].processEnded(Failure(ProcessDone(0)))
    transport.abortConnection()
    transport.loseConnection()
    assert protocol.events == ["made", "lost"]


def test_flow_control_and_addresses() -> None:
    _, _, transport, spawned = connect_exec()
    process = spawned["process"]
    producer = object()
    transport.registerProducer(producer, True)
    assert process.producer == (producer, True)
    transport.unregisterProducer()
    assert process.producer is None
    transport.pauseProducing()
    transport.resumeProducing()
    assert process.calls == ["pause", "resume"]
    transport.stopProducing()
    assert process.calls[-1] == "loseConnection"
    assert transport.getPeer() == ProcessAddress(1000, ("cat",))
    assert str(transport.getPeer()) == "exec cat (pid 1000)"
    assert transport.getHost() == ProcessAddress(os.getpid())
    assert str(transport.getHost()) == f"pid {os.getpid()}"


def test_signal_process_passes_through() -> None:
    _, _, transport, spawned = connect_exec()
    transport.signalProcess("HUP")
    assert spawned["process"].signals == ["HUP"]


# -- stdio:


class FakeStdio:
    """
    Stands in for L{StandardIO}: connects the protocol at once, and has
    the attributes the endpoint looks at.
    """

    made: list[FakeStdio] = []

    def __init__(self, protocol: Any, stdin: int = 0, stdout: int = 1,
                 reactor: Any = None) -> None:
        self.protocol = protocol
        self.fds = (stdin, stdout)
        self.reactor = reactor
        self.disconnected = False
        self.disconnecting = False
        self.stdin_ended = False
        self.stdout_ended = False
        FakeStdio.made.append(self)
        protocol.makeConnection(self)


@pytest.fixture
def fake_stdio(monkeypatch: pytest.MonkeyPatch) -> list[FakeStdio]:
    monkeypatch.setattr(plugins, "_stdio_transports", {})
    monkeypatch.setattr(StandardIOClientEndpoint, "_stdio", FakeStdio)
    FakeStdio.made = []
    return FakeStdio.made


def stdio_connect(endpoint: StandardIOClientEndpoint) -> Any:
    results: list[Any] = []
    endpoint.connect(RecordingFactory()).addBoth(results.append)
    return results[0]


def test_stdio_parses_with_and_without_a_colon() -> None:
    reactor = MemoryReactorClock()
    for description in ("stdio:", "stdio", "STDIO:"):
        assert isinstance(clientFromString(reactor, description), StandardIOClientEndpoint)


def test_stdio_takes_no_arguments() -> None:
    with pytest.raises(ValueError, match="stdio: takes no arguments"):
        clientFromString(MemoryReactorClock(), "stdio:/dev/tty")
    with pytest.raises(UsageError, match="does not take mode="):
        parse_client(MemoryReactorClock(), "stdio:mode=1")


def test_stdio_connects_the_protocol_to_stdin_and_stdout(fake_stdio: list[FakeStdio]) -> None:
    reactor = MemoryReactorClock()
    protocol = stdio_connect(clientFromString(reactor, "stdio:"))
    assert isinstance(protocol, Recorder) and protocol.events == ["made"]
    assert isinstance(protocol.factory.addresses[0], PipeAddress)
    assert fake_stdio[0].fds == (0, 1) and fake_stdio[0].reactor is reactor


def test_stdio_one_connection_at_a_time(fake_stdio: list[FakeStdio]) -> None:
    reactor = MemoryReactorClock()
    first = StandardIOClientEndpoint(reactor)
    other = StandardIOClientEndpoint(reactor)  # stdin/stdout belong to the process
    stdio_connect(first)
    for endpoint in (first, other):
        failure = stdio_connect(endpoint)
        assert isinstance(failure, Failure) and failure.check(ConnectError)
        assert "stdio: already in use" in str(failure.value)
    assert len(fake_stdio) == 1
    # once the first has ended, the next may have them
    fake_stdio[0].disconnecting = True
    assert isinstance(stdio_connect(other), Recorder)
    # other descriptors are another stdio
    assert isinstance(stdio_connect(StandardIOClientEndpoint(reactor, 3, 4)), Recorder)


@pytest.mark.parametrize("spent", ["stdin_ended", "stdout_ended"])
def test_stdio_spent_by_an_earlier_connection(fake_stdio: list[FakeStdio], spent: str) -> None:
    endpoint = StandardIOClientEndpoint(MemoryReactorClock())
    stdio_connect(endpoint)
    setattr(fake_stdio[0], spent, True)
    fake_stdio[0].disconnected = True
    failure = stdio_connect(endpoint)
    assert isinstance(failure, Failure) and failure.check(ConnectError)
    assert "ended with an earlier connection" in str(failure.value)


def test_stdio_factory_that_refuses(fake_stdio: list[FakeStdio]) -> None:
    class Refusing(Factory):
        def buildProtocol(self, addr: Any) -> None:
            return None

    failures: list[Failure] = []
    StandardIOClientEndpoint(MemoryReactorClock()).connect(Refusing()).addErrback(
        failures.append
    )
    assert failures[0].check(ConnectError) and fake_stdio == []


@pytest.fixture
def pipes() -> Any:
    fds = []

    def make() -> tuple[int, int]:
        r, w = os.pipe()
        fds.extend([r, w])
        return r, w

    yield make
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def test_real_standard_io_transport_remembers_spent_streams(pipes: Any) -> None:
    """
    The transport the endpoint makes is Twisted's L{StandardIO} (epcat's
    relay recognises it), and it records stdin's end and stdout's half-close.
    """
    stdin_r, _ = pipes()
    _, stdout_w = pipes()
    reactor = MemoryReactorClock()
    protocol = Recorder()
    transport = plugins._StdioTransport(protocol, stdin=stdin_r, stdout=stdout_w,
                                        reactor=reactor)
    assert isinstance(transport, StandardIO)
    assert protocol.transport is transport and protocol.events == ["made"]
    transport.childConnectionLost("read", Failure(ConnectionDone()))
    assert transport.stdin_ended and protocol.events == ["made", "readLost"]
    assert not transport.stdout_ended
    transport.loseWriteConnection()
    assert transport.stdout_ended


def test_real_standard_io_normal_close_does_not_spend_stdout(pipes: Any) -> None:
    stdin_r, _ = pipes()
    _, stdout_w = pipes()
    protocol = Recorder()
    transport = plugins._StdioTransport(protocol, stdin=stdin_r, stdout=stdout_w,
                                        reactor=MemoryReactorClock())
    transport.loseConnection()
    transport.childConnectionLost("write", Failure(ConnectionDone()))
    assert not transport.stdout_ended and not transport.stdin_ended
    assert plugins._stdio_state(transport) == "free"


# -- hostname:


def test_hostname_builds_a_hostname_endpoint() -> None:
    reactor = MemoryReactorClock()
    endpoint = clientFromString(
        reactor, "hostname:127.0.0.1:4433:timeout=7:bindAddress=127.0.0.2"
    )
    assert isinstance(endpoint, HostnameEndpoint)
    assert reactor.tcpClients == []
    endpoint.connect(Factory.forProtocol(Protocol))
    host, port, _factory, timeout, bind = reactor.tcpClients[0]
    assert (host, port, timeout, bind) == ("127.0.0.1", 4433, 7.0, ("127.0.0.2", 0))


@implementer(IHostnameResolver)
class HostsResolver:
    """
    Resolves names from a table, synchronously, honouring the address
    types asked for; records every question.
    """

    def __init__(self, hosts: dict[str, list[str]]) -> None:
        self.hosts = hosts
        self.asked: list[tuple[str, Any]] = []

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> Any:
        self.asked.append((hostName, addressTypes))
        receiver.resolutionBegan(HostResolution(hostName))
        for ip in self.hosts.get(hostName, [hostName]):
            kind = IPv6Address if ":" in ip else IPv4Address
            if addressTypes is None or kind in addressTypes:
                receiver.addressResolved(kind("TCP", ip, portNumber))
        receiver.resolutionComplete()


@implementer(IHostResolution)
class HostResolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


def resolving_reactor(hosts: dict[str, list[str]]) -> tuple[MemoryReactorClock, HostsResolver]:
    reactor = MemoryReactorClock()
    resolver = HostsResolver(hosts)
    reactor.installNameResolver(resolver)
    return reactor, resolver


@pytest.mark.parametrize("description", ["hostname:\\:\\:1:8080", "hostname:[\\:\\:1]:8080"])
def test_hostname_ipv6_literal(description: str) -> None:
    reactor, resolver = resolving_reactor({})
    endpoint = clientFromString(reactor, description)
    endpoint.connect(Factory.forProtocol(Protocol))
    assert resolver.asked[0][0] == "::1"
    host, port, _factory, timeout, bind = reactor.tcpClients[0]
    assert (host, port, timeout, bind) == ("::1", 8080, 30.0, None)


def test_hostname_resolves_both_families_and_tries_each() -> None:
    """
    Where C{tcp:} asks for IPv4 addresses only, C{hostname:} asks for every
    family and tries the addresses in turn (happy eyeballs): an IPv6-only
    server behind a name with both kinds of address is reached.
    """
    hosts = {"dual.test": ["::1", "127.0.0.1"]}
    reactor, resolver = resolving_reactor(hosts)
    clientFromString(reactor, "hostname:dual.test:8080").connect(Factory.forProtocol(Protocol))
    assert resolver.asked[0][0] == "dual.test"
    asked_types = resolver.asked[0][1]
    assert asked_types is None or IPv6Address in asked_types
    reactor.advance(1.0)  # the next attempt starts if the first has not answered
    tried = [client[0] for client in reactor.tcpClients]
    assert tried == ["::1", "127.0.0.1"]


def test_hostname_keywords_like_tcp() -> None:
    endpoint = clientFromString(MemoryReactorClock(), "hostname:host=example.com:port=80")
    assert isinstance(endpoint, HostnameEndpoint)


@pytest.mark.parametrize(
    ("description", "words"),
    [
        ("hostname::80", "a host to connect to is missing"),
        ("hostname:localhost:http", "expected a port number"),
        ("hostname:localhost:0", "1-65535"),
        ("hostname:localhost:70000", "1-65535"),
        ("hostname:localhost:80:timeout=0", "positive number of seconds"),
        ("hostname:localhost:80:timeout=soon", "number of seconds"),
        ("hostname:localhost:80:bindAddress=", "expected an IP address"),
    ],
)
def test_hostname_bad_values(description: str, words: str) -> None:
    with pytest.raises(ValueError, match="hostname: ") as raised:
        clientFromString(MemoryReactorClock(), description)
    assert words in str(raised.value)


def test_hostname_missing_port_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="missing port"):
        parse_client(MemoryReactorClock(), "hostname:localhost")


# -- environment_for


def transport_with(peer: Any, host: Any) -> StringTransport:
    return StringTransport(hostAddress=host, peerAddress=peer)


def test_environment_for_tcp() -> None:
    env = environment_for(
        transport_with(IPv4Address("TCP", "192.0.2.5", 50123),
                       IPv4Address("TCP", "127.0.0.1", 8080)),
        3,
    )
    assert env == {
        "EPCAT_PEER_ADDR": "192.0.2.5",
        "EPCAT_PEER_PORT": "50123",
        "EPCAT_LOCAL_ADDR": "127.0.0.1",
        "EPCAT_LOCAL_PORT": "8080",
        "EPCAT_CONN_ID": "3",
    }


def test_environment_for_tcp6() -> None:
    env = environment_for(
        transport_with(IPv6Address("TCP", "::1", 40000), IPv6Address("TCP", "::1", 8443)),
        "12",
    )
    assert env["EPCAT_PEER_ADDR"] == "::1" and env["EPCAT_PEER_PORT"] == "40000"
    assert env["EPCAT_LOCAL_ADDR"] == "::1" and env["EPCAT_LOCAL_PORT"] == "8443"
    assert env["EPCAT_CONN_ID"] == "12"


def test_environment_for_unix_sockets() -> None:
    env = environment_for(
        transport_with(UNIXAddress(None), UNIXAddress(b"/run/app.sock")), 1
    )
    assert env == {"EPCAT_PEER_ADDR": "", "EPCAT_LOCAL_ADDR": "/run/app.sock",
                   "EPCAT_CONN_ID": "1"}
    env = environment_for(transport_with(UNIXAddress("/tmp/peer"), UNIXAddress("/tmp/s")), 2)
    assert env["EPCAT_PEER_ADDR"] == "/tmp/peer" and "EPCAT_PEER_PORT" not in env


def test_environment_for_stdio() -> None:
    env = environment_for(transport_with(PipeAddress(), PipeAddress()), 1)
    assert env == {"EPCAT_PEER_ADDR": "", "EPCAT_LOCAL_ADDR": "", "EPCAT_CONN_ID": "1"}
    assert environment_for(None, 4) == {"EPCAT_PEER_ADDR": "", "EPCAT_LOCAL_ADDR": "",
                                        "EPCAT_CONN_ID": "4"}


def test_environment_values_are_all_strings() -> None:
    env = environment_for(
        transport_with(IPv4Address("TCP", "192.0.2.1", 1), IPv4Address("TCP", "192.0.2.2", 2)), 9
    )
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())


class FakeConnection:
    """The pyOpenSSL connection behind a TLS transport's getHandle()."""

    def __init__(self, certificate: Any) -> None:
        self.certificate = certificate
        self.asked: list[bool] = []

    def get_peer_certificate(self, *, as_cryptography: bool = False) -> Any:
        self.asked.append(as_cryptography)
        if self.certificate is None:
            return None
        if as_cryptography:
            return self.certificate
        return crypto.X509.from_cryptography(self.certificate)


class FakeTLSTransport(StringTransport):
    def __init__(self, connection: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.connection = connection

    def getHandle(self) -> Any:
        return self.connection


@pytest.fixture(scope="module")
def client_certificate() -> x509.Certificate:
    ca = trustme.CA()
    leaf = ca.issue_cert("alice@example.com", common_name="alice",
                         organization_name="Example, Inc.")
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())


def test_environment_for_tls_peer_certificate(client_certificate: x509.Certificate) -> None:
    connection = FakeConnection(client_certificate)
    transport = FakeTLSTransport(connection, peerAddress=IPv4Address("TCP", "127.0.0.1", 5),
                                 hostAddress=IPv4Address("TCP", "127.0.0.1", 6))
    env = environment_for(transport, 1)
    subject = env["EPCAT_PEER_CERT_SUBJECT"]
    assert subject == client_certificate.subject.rfc4514_string()
    assert "CN=alice" in subject and "O=Example\\, Inc." in subject
    assert connection.asked == [True]
    assert env["EPCAT_PEER_PORT"] == "5"


def test_environment_for_tls_with_an_old_pyopenssl(client_certificate: x509.Certificate) -> None:
    class OldConnection(FakeConnection):
        def get_peer_certificate(self) -> Any:  # type: ignore[override]
            return crypto.X509.from_cryptography(self.certificate)

    transport = FakeTLSTransport(OldConnection(client_certificate))
    env = environment_for(transport, 1)
    assert env["EPCAT_PEER_CERT_SUBJECT"] == client_certificate.subject.rfc4514_string()


def test_environment_for_tls_without_a_client_certificate() -> None:
    env = environment_for(FakeTLSTransport(FakeConnection(None)), 1)
    assert "EPCAT_PEER_CERT_SUBJECT" not in env


def test_environment_for_plain_tcp_handle_is_a_socket() -> None:
    import socket

    with socket.socket() as sock:
        env = environment_for(FakeTLSTransport(sock), 1)
    assert "EPCAT_PEER_CERT_SUBJECT" not in env


def test_environment_for_exec_sets_it_in_the_child() -> None:
    reactor = ProcessReactor()
    inbound = transport_with(IPv4Address("TCP", "127.0.0.1", 40001),
                             IPv4Address("TCP", "127.0.0.1", 7000))
    endpoint = ExecEndpoint(reactor, ["env"]).with_environment(environment_for(inbound, 5))
    endpoint.connect(RecordingFactory())
    env = reactor.spawned[0]["env"]
    assert env["EPCAT_PEER_ADDR"] == "127.0.0.1" and env["EPCAT_PEER_PORT"] == "40001"
    assert env["EPCAT_LOCAL_PORT"] == "7000" and env["EPCAT_CONN_ID"] == "5"
