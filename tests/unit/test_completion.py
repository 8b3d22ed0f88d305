"""
Tests for L{epcat.completion}: what completing an endpoint description
offers, click's completion entry point (C{_EPCAT_COMPLETE}), the committed
scripts in C{completions/}, and the scripts in real bash, zsh and fish.
"""

from __future__ import annotations

import inspect
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.shell_completion import CompletionItem
from click.testing import CliRunner

from epcat import completion
from epcat.cli import cli
from epcat.completion import CLIENT_TYPES, SERVER_TYPES, complete_client, complete_server

ROOT = Path(__file__).resolve().parents[2]
FILES = {"bash": "epcat.bash", "zsh": "_epcat", "fish": "epcat.fish"}


def values(callback: Callable[..., list[CompletionItem]], text: str) -> list[str]:
    """
    The values a C{shell_complete} callback offers for C{text}.
    """
    return [item.value for item in callback(None, None, text)]


def server(text: str) -> list[str]:
    return values(complete_server, text)


def client(text: str) -> list[str]:
    return values(complete_client, text)


# -- endpoint types


def test_listen_offers_server_types() -> None:
    offers = server("")
    for prefix in ("tcp:", "tcp6:", "tls:", "tlsx:", "unix:", "ssl:", "systemd:", "haproxy:"):
        assert prefix in offers
    assert "stdio:" in offers
    assert "exec:" not in offers
    assert "hostname:" not in offers


def test_connect_offers_client_types() -> None:
    offers = client("")
    for prefix in ("tcp:", "tls:", "tlsx:", "unix:", "ssl:", "stdio:", "exec:", "hostname:"):
        assert prefix in offers
    assert "systemd:" not in offers
    assert "haproxy:" not in offers


#: prefixes of third-party plugins that may be installed (the test extra
#: installs txtorcon, whose client type is tor:)
THIRD_PARTY = {"tor:", "tor", "onion:", "onion", "autobahn:", "autobahn"}


def test_listen_t_offers_the_t_types() -> None:
    assert [o for o in server("t") if o not in THIRD_PARTY] == ["tcp:", "tcp6:", "tls:", "tlsx:"]
    assert server("TC") == ["tcp:", "tcp6:"]
    assert [o for o in client("t") if o not in THIRD_PARTY] == ["tcp:", "tls:", "tlsx:"]


def test_types_carry_a_summary() -> None:
    [item] = complete_server(None, None, "tcp6")  # type: ignore[arg-type]
    assert item.value == "tcp6:"
    assert "IPv6" in item.help


def _twisted_types(role: str) -> set[str]:
    """
    The prefixes Twisted and epcat can parse for C{role}, from Twisted itself
    (the slow way completion avoids), leaving out third-party plugins
    completion does not know of.
    """
    from epcat.catalog import endpoint_types

    ours = ("twisted.", "epcat", "txtorcon", "autobahn")
    return {t.prefix for t in endpoint_types() if t.role == role and t.module.startswith(ours)}


@pytest.mark.parametrize("role", ["server", "client"])
def test_every_type_twisted_parses_is_offered(role: str) -> None:
    offered = {v.rstrip(":") for v in (server("") if role == "server" else client(""))}
    assert _twisted_types(role) <= offered


@pytest.mark.parametrize("role", ["server", "client"])
def test_every_type_offered_is_parsed(role: str) -> None:
    offered = set(SERVER_TYPES if role == "server" else CLIENT_TYPES)
    assert offered <= _twisted_types(role)


def test_third_party_types_follow_their_dropins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins = tmp_path / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    assert "tor:" not in client("") or (
        "txtorcon_endpoint_parser" in completion._installed_dropins()
    )
    (plugins / "txtorcon_endpoint_parser.py").write_text("")
    (plugins / "autobahn_endpoints.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "tor:" in client("")
    assert "onion:" in server("")
    assert "autobahn:" in client("") and "autobahn:" in server("")
    assert "onion:" not in client("")
    assert server("onion:80:") == [
        f"onion:80:{k}="
        for k in completion.THIRD_PARTY["txtorcon_endpoint_parser"]["server"]["onion"].keywords
    ]


# -- keyword arguments


def test_tcp_server_keywords() -> None:
    assert server("tcp:8080:") == ["tcp:8080:interface=", "tcp:8080:backlog="]
    assert server("tcp6:8080:") == ["tcp6:8080:interface=", "tcp6:8080:backlog="]
    assert server("tcp:8080:b") == ["tcp:8080:backlog="]


def test_used_keywords_are_not_offered_again() -> None:
    assert server("tcp:8080:interface=127.0.0.1:") == ["tcp:8080:interface=127.0.0.1:backlog="]


def test_no_keywords_before_the_positional_arguments() -> None:
    assert server("tcp:") == []
    assert client("tcp:") == []
    assert client("tcp:example.com:") == []


def test_tcp_client_keywords() -> None:
    assert client("tcp:example.com:80:") == [
        "tcp:example.com:80:timeout=",
        "tcp:example.com:80:bindAddress=",
    ]
    assert client("hostname:example.com:80:") == [
        "hostname:example.com:80:timeout=",
        "hostname:example.com:80:bindAddress=",
    ]


def test_positional_arguments_given_as_keywords() -> None:
    assert client("tcp:host=example.com:port=80:") == [
        "tcp:host=example.com:port=80:timeout=",
        "tcp:host=example.com:port=80:bindAddress=",
    ]


def test_escaped_colons_stay_in_their_argument() -> None:
    assert client("tcp:\\:\\:1:80:t") == ["tcp:\\:\\:1:80:timeout="]


def _keywords(offers: list[str], lead: str) -> list[str]:
    assert all(o.startswith(lead) and o.endswith("=") for o in offers), offers
    return [o[len(lead) : -1] for o in offers]


def test_tls_client_keywords() -> None:
    assert _keywords(client("tls:h:443:"), "tls:h:443:") == [
        "trustRoots",
        "certificate",
        "privateKey",
        "timeout",
        "bindAddress",
        "endpoint",
    ]


def test_ssl_server_keywords() -> None:
    assert _keywords(server("ssl:8443:"), "ssl:8443:") == [
        "privateKey",
        "certKey",
        "extraCertChain",
        "sslmethod",
        "dhParameters",
        "interface",
        "backlog",
    ]


def test_unix_server_keywords() -> None:
    assert _keywords(server("unix:/tmp/s:"), "unix:/tmp/s:") == ["mode", "backlog", "lockfile"]


def test_tlsx_keywords() -> None:
    assert _keywords(client("tlsx:h:443:"), "tlsx:h:443:") == [
        "sni",
        "alpn",
        "verify",
        "minVersion",
        "maxVersion",
        "trustRoots",
        "certificate",
        "privateKey",
        "timeout",
        "bindAddress",
        "endpoint",
    ]
    offered = set(_keywords(server("tlsx:8443:"), "tlsx:8443:"))
    assert {"alpn", "requireClientCert", "clientCA", "minVersion", "maxVersion"} <= offered
    assert set(_keywords(server("ssl:8443:"), "ssl:8443:")) <= offered


def _parameters(func: object, skip: int) -> list[str]:
    names = [
        name
        for name, p in inspect.signature(func).parameters.items()  # type: ignore[arg-type]
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    return names[skip:]


def test_tlsx_and_hostname_tables_match_the_parsers() -> None:
    from epcat.plugins import HostnameClientParser
    from epcat.tlsx import TLSXClientParser, TLSXServerParser

    spec = CLIENT_TYPES["hostname"]
    assert [*spec.positional, *spec.keywords] == _parameters(
        HostnameClientParser.parseStreamClient, 2
    )

    spec = CLIENT_TYPES["tlsx"]
    assert [*spec.positional, *spec.keywords] == _parameters(TLSXClientParser.parseStreamClient, 2)
    spec = SERVER_TYPES["tlsx"]
    assert sorted([*spec.positional, *spec.keywords]) == sorted(
        _parameters(TLSXServerParser.parseStreamServer, 2)
    )


def test_twisted_tables_match_twisted_parsers() -> None:
    from twisted.internet import endpoints

    cases = [
        (SERVER_TYPES["tcp"], "_parseTCP", 1),
        (SERVER_TYPES["unix"], "_parseUNIX", 1),
        (SERVER_TYPES["ssl"], "_parseSSL", 1),
        (CLIENT_TYPES["tls"], "_parseClientTLS", 1),
    ]
    for spec, name, skip in cases:
        parser = getattr(endpoints, name, None)
        if parser is None:
            continue
        assert sorted([*spec.positional, *spec.keywords]) == sorted(_parameters(parser, skip))


def test_systemd_has_keywords_only() -> None:
    assert server("systemd:") == ["systemd:domain=", "systemd:index=", "systemd:name="]
    assert server("systemd:domain=I") == ["systemd:domain=INET", "systemd:domain=INET6"]


def test_choices() -> None:
    assert client("tlsx:h:443:verify=") == ["tlsx:h:443:verify=yes", "tlsx:h:443:verify=no"]
    assert client("tlsx:h:443:minVersion=TLSv1.3:maxVersion=tlsv1.3") == [
        "tlsx:h:443:minVersion=TLSv1.3:maxVersion=TLSv1.3"
    ]


def test_haproxy_completes_the_wrapped_server() -> None:
    assert server("haproxy:tc") == ["haproxy:tcp:", "haproxy:tcp6:"]
    assert server("haproxy:tcp:8080:") == [
        "haproxy:tcp:8080:interface=",
        "haproxy:tcp:8080:backlog=",
    ]


def test_unknown_type_offers_nothing() -> None:
    assert server("nosuch:1:") == []
    assert client("exec:") == []


# -- file names


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "app.sock").write_text("")
    (tmp_path / "apps").mkdir()
    (tmp_path / "a:b.sock").write_text("")
    (tmp_path / "my file.sock").write_text("")
    (tmp_path / ".hidden").write_text("")
    (tmp_path / "key.pem").write_text("")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_unix_completes_paths(tree: Path) -> None:
    assert client(f"unix:{tree}/ap") == [f"unix:{tree}/app.sock", f"unix:{tree}/apps/"]
    assert server("unix:ap") == ["unix:app.sock", "unix:apps/"]
    assert client("unix:") == [
        "unix:a\\:b.sock",
        "unix:app.sock",
        "unix:apps/",
        "unix:key.pem",
        "unix:my file.sock",
    ]
    assert client("unix:.h") == ["unix:.hidden"]


def test_unix_path_with_an_escaped_colon(tree: Path) -> None:
    assert client("unix:a\\:") == ["unix:a\\:b.sock"]


def test_unix_path_with_a_tilde(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tree))
    assert client("unix:~/app.") == [f"unix:{tree}/app.sock"]


def test_missing_directory_offers_nothing(tree: Path) -> None:
    assert client("unix:/nonexistent/dir/x") == []


def test_path_keywords_complete_paths(tree: Path) -> None:
    assert client("tls:h:443:trustRoots=k") == ["tls:h:443:trustRoots=key.pem"]
    assert server("ssl:8443:privateKey=key.pem:certKey=k") == [
        "ssl:8443:privateKey=key.pem:certKey=key.pem"
    ]
    assert server("tls:ap") == ["tls:app.sock", "tls:apps/"]


# -- click's entry point


def complete(shell: str, env: dict[str, str]) -> list[str]:
    """
    Ask click's completion entry point, as a shell script does.
    """
    result = CliRunner().invoke(
        cli, [], prog_name="epcat", env={"_EPCAT_COMPLETE": f"{shell}_complete", **env}
    )
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def bash(words: str, cword: int | None = None) -> list[str]:
    if cword is None:
        cword = len(words.split(" ")) - 1
    return complete("bash", {"COMP_WORDS": words, "COMP_CWORD": str(cword)})


def test_bash_listen_t() -> None:
    assert bash("epcat listen t") == ["plain,tcp:", "plain,tcp6:", "plain,tls:", "plain,tlsx:"]


def test_bash_keywords() -> None:
    assert bash("epcat listen tcp:8080:") == [
        "plain,tcp:8080:interface=",
        "plain,tcp:8080:backlog=",
    ]
    assert bash("epcat -v listen tcp:80 --once connect tcp:h:80:") == [
        "plain,tcp:h:80:timeout=",
        "plain,tcp:h:80:bindAddress=",
    ]


def test_bash_connect_types() -> None:
    offers = bash("epcat listen tcp:80 connect ")
    assert "plain,hostname:" in offers and "plain,exec:" in offers
    assert "plain,systemd:" not in offers


def test_bash_unix_paths(tree: Path) -> None:
    assert bash(f"epcat connect unix:{tree}/ap") == [
        f"plain,unix:{tree}/app.sock",
        f"plain,unix:{tree}/apps/",
    ]


def test_bash_subcommands_and_options() -> None:
    assert bash("epcat listen tcp:80 c") == ["plain,connect"]
    assert bash("epcat --log-format ") == ["plain,text", "plain,json"]
    assert "plain,--once" in bash("epcat listen tcp:80 --o")
    assert bash("epcat --keylog k") == ["file,k"]


def test_bash_line_and_word_as_the_script_sends_them() -> None:
    """
    The script passes the line up to the cursor and bash's own current word,
    which bash cuts at ':' and '='; each offer is answered from that word on.
    """

    def line(text: str, word: str) -> list[str]:
        return complete(
            "bash",
            {"COMP_WORDS": "ignored", "COMP_CWORD": "0", "COMP_LINE": text, "COMP_WORD": word},
        )

    assert line("epcat listen t", "t") == ["plain,tcp:", "plain,tcp6:", "plain,tls:", "plain,tlsx:"]
    assert line("epcat listen tcp:8080:", "") == ["plain,interface=", "plain,backlog="]
    assert line("epcat listen tcp:8080:i", "i") == ["plain,interface="]
    assert line("epcat connect tlsx:h:443:verify=", "") == ["plain,yes", "plain,no"]
    assert "plain,connect" in line("epcat listen tcp:8080 ", "")
    assert line("epcat listen 'tcp:8080:b", "tcp:8080:b") == ["plain,tcp:8080:backlog="]
    assert line("epcat --keylog /tmp/k", "/tmp/k") == ["file,/tmp/k"]


def test_zsh() -> None:
    offers = complete("zsh", {"COMP_WORDS": "epcat listen t", "COMP_CWORD": "2"})
    assert offers[:3] == ["plain", "tcp\\:", "TCP over IPv4"]
    offers = complete("zsh", {"COMP_WORDS": "epcat listen tcp:8080:", "COMP_CWORD": "2"})
    assert offers == ["plain", "tcp:8080:interface=", "_", "plain", "tcp:8080:backlog=", "_"]


def test_fish() -> None:
    offers = complete("fish", {"COMP_WORDS": "epcat listen t", "COMP_CWORD": "t"})
    assert offers[0] == "plain,tcp:\tTCP over IPv4"
    assert len(offers) == 4
    offers = complete(
        "fish",
        {
            "COMP_WORDS": "epcat connect tlsx:h:443:alpn=h2,http/1.1:s",
            "COMP_CWORD": "tlsx:h:443:alpn=h2,http/1.1:s",
        },
    )
    assert offers == ["plain,tlsx:h:443:alpn=h2,http/1.1:sni="]


# -- the committed scripts


@pytest.mark.parametrize("shell", sorted(FILES))
def test_committed_script_is_current(shell: str) -> None:
    committed = (ROOT / "completions" / FILES[shell]).read_text(encoding="utf-8")
    assert committed == completion.source(shell), (
        f"completions/{FILES[shell]} is stale: run scripts/gen-completions"
    )


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    return env


def test_committed_scripts_are_what_epcat_prints() -> None:
    for shell, name in FILES.items():
        printed = subprocess.run(
            [sys.executable, "-m", "epcat"],
            env=_env(_EPCAT_COMPLETE=f"{shell}_source"),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        # (click 8.4 adds a newline after the script, 8.5 does not)
        printed = printed.rstrip("\n") + "\n"
        assert printed == (ROOT / "completions" / name).read_text(encoding="utf-8"), name


def test_generator_check_passes() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-completions"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("shell", "argv"),
    [("bash", ["bash", "-n"]), ("zsh", ["zsh", "-n"]), ("fish", ["fish", "--no-execute"])],
)
def test_script_syntax(shell: str, argv: list[str]) -> None:
    _need(argv[0])
    done = subprocess.run(
        [*argv, str(ROOT / "completions" / FILES[shell])],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


# -- the scripts in real shells


@pytest.fixture
def shell_env(tmp_path: Path, tree: Path) -> dict[str, str]:
    """
    An environment whose C{epcat} is this checkout's, run by this Python,
    with C{tree} as the working directory of the shells.
    """
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "epcat"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m epcat "$@"\n')
    script.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    return _env(
        PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        HOME=str(home),
        TERM="dumb",
        HISTFILE=os.devnull,
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local"),
    )


class Terminal:
    """
    A shell on a pseudo-terminal, typed at as a person would.
    """

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # pragma: no cover - the child
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        self.pid, self.fd, self.output = pid, fd, ""

    def read_until(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        end = time.monotonic() + timeout
        while True:
            clean = self.output.replace("\r", "")
            match = re.search(pattern, clean, re.M)
            if match:
                self.output = clean[match.end() :]
                return match
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} in {self.output!r}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.1))
            if ready:
                try:
                    self.output += os.read(self.fd, 65536).decode("utf-8", "replace")
                except OSError:
                    pass

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def args(self, text: str) -> str:
        """
        Type C{text} (holding TABs) then C{X} and Enter; return what the
        C{epcat} shell function printed: each argument in angle brackets.
        """
        self.type(text)
        time.sleep(0.2)
        self.type("X\n")
        return self.read_until(r"^(<.*>)$").group(1)

    def close(self) -> None:
        try:
            os.kill(self.pid, 9)
        except OSError:
            pass
        os.waitpid(self.pid, 0)
        os.close(self.fd)


CASES = [
    ("epcat listen tcp6\t", "<listen><tcp6:X>"),
    ("epcat listen tcp:8080:in\t", "<listen><tcp:8080:interface=X>"),
    (
        "epcat listen tcp:8080:interface=127.0.0.1:b\t",
        "<listen><tcp:8080:interface=127.0.0.1:backlog=X>",
    ),
    ("epcat listen haproxy:tcp6\t", "<listen><haproxy:tcp6:X>"),
    ("epcat connect unix:app.\t", "<connect><unix:app.sock><X>"),
    ("epcat connect unix:my\t", "<connect><unix:my file.sock><X>"),
    ("epcat connect unix:ap\t", "<connect><unix:appX>"),
    ("epcat connect tls:h:443:trustRoots=ap\t", "<connect><tls:h:443:trustRoots=appX>"),
    ("epcat connect tls:h:443:trustRoots=apps\t", "<connect><tls:h:443:trustRoots=apps/X>"),
    ("epcat --keylog ke\t", "<--keylog><key.pem><X>"),
    ("epcat listen tcp:80 co\t", "<listen><tcp:80><connect><X>"),
]


def _need(shell: str) -> None:
    """
    A shell these tests drive; in CI (CI=true) a missing one is a failure.
    """
    if shutil.which(shell) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{shell} is not installed")
        pytest.skip(f"{shell} is not installed")


def _check_cases(term: Terminal) -> None:
    for typed, expected in CASES:
        assert term.args(typed) == expected, typed


def test_real_bash(shell_env: dict[str, str], tree: Path) -> None:
    _need("bash")
    term = Terminal(["bash", "--norc", "--noprofile", "-i"], shell_env, tree)
    try:
        term.type(
            f"source {ROOT / 'completions' / 'epcat.bash'}; "
            "epcat() { printf '<%s>' \"$@\"; echo; }; PS1='$ '; echo READY\n"
        )
        term.read_until(r"^READY$")
        term.type("epcat listen t\t\t")
        listing = term.read_until(r"^tcp:\s+tcp6:\s+tls:\s+tlsx:\s*$")
        assert listing
        term.type("\x15")
        _check_cases(term)
    finally:
        term.close()


def test_real_zsh(shell_env: dict[str, str], tree: Path) -> None:
    _need("zsh")
    term = Terminal(["zsh", "-f", "-i"], shell_env, tree)
    try:
        term.type(
            "autoload -Uz compinit && compinit -u -D; "
            f"source {ROOT / 'completions' / '_epcat'}; "
            "epcat() { printf '<%s>' \"$@\"; echo; }; PS1='$ '; echo READY\n"
        )
        term.read_until(r"^READY$")
        term.type("epcat listen t\t")
        term.read_until(r"^tlsx:\s+-- ")
        term.type("\x15")
        _check_cases(term)
    finally:
        term.close()


def test_real_fish(shell_env: dict[str, str], tree: Path) -> None:
    _need("fish")
    def offers(line: str) -> list[str]:
        script = f"source {ROOT / 'completions' / 'epcat.fish'}; complete -C {line!r}"
        done = subprocess.run(
            ["fish", "--no-config", "-c", script],
            env=shell_env,
            cwd=tree,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return [o.split("\t")[0] for o in done.stdout.splitlines()]

    assert sorted(offers("epcat listen t")) == ["tcp6:", "tcp:", "tls:", "tlsx:"]
    assert offers("epcat listen tcp:8080:in") == ["tcp:8080:interface="]
    assert offers("epcat connect tlsx:h:443:alpn=h2,http/1.1:s") == [
        "tlsx:h:443:alpn=h2,http/1.1:sni="
    ]
    assert offers("epcat connect unix:ap") == ["unix:app.sock", "unix:apps/"]
    assert "connect" in offers("epcat listen tcp:80 ")


# -- callbacks for explain DESCRIPTION and endpoints TYPE


def test_complete_description_offers_both_roles() -> None:
    offers = values(completion.complete_description, "")
    assert "systemd:" in offers and "hostname:" in offers
    assert offers.count("tcp:") == 1
    offers = values(completion.complete_description, "tcp:80:")
    assert offers == ["tcp:80:backlog=", "tcp:80:interface="]


def test_complete_type_name() -> None:
    offers = values(completion.complete_type_name, "t")
    assert [o for o in offers if o not in THIRD_PARTY] == ["tcp", "tcp6", "tls", "tlsx"]
