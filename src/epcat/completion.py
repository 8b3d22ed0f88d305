# -*- test-case-name: tests.unit.test_completion -*-
"""
Shell completion of endpoint descriptions, through click's own machinery
(L{click.shell_completion}).

C{complete_server} and C{complete_client} are the C{shell_complete} callbacks
of the C{SERVER} and C{CLIENT} arguments.  They offer, for the word being
typed:

  - with no colon yet, the endpoint type prefixes (C{tcp:}, C{tcp6:},
    C{tls:}, ...) of the role: server types for C{listen}, client types for
    C{connect};
  - in a path argument (C{unix:PATH}, the PEM files of C{privateKey=},
    C{certKey=}, C{trustRoots=}, ...), the matching files and directories,
    with the description kept in front (C{unix:/run/} -> C{unix:/run/app.sock});
  - once a type's positional arguments are given (C{tcp:8080:}), that type's
    keyword arguments (C{tcp:8080:interface=}, C{tcp:8080:backlog=});
  - after C{haproxy:}, the server description it wraps.

The tables are static, and nothing here imports Twisted: asking Twisted
(L{epcat.endpoints.server_types}, which runs C{twisted.plugin.getPlugins})
costs about 0.6 s, because loading the plugins imports them and with them
Twisted's reactor machinery and pyOpenSSL; a completion request must answer
in well under 0.1 s.  Third-party endpoint plugins that epcat knows of
(txtorcon's C{tor:}/C{onion:}, autobahn's C{autobahn:}) are offered when
their dropin module is found in a C{twisted/plugins} directory on
C{sys.path}, which needs no import.

Importing this module also registers epcat's variants of click's bash, zsh
and fish completion classes (L{BashComplete}, L{ZshComplete},
L{FishComplete}): click's bash script passes C{COMP_WORDS} as bash split them,
and bash splits words at every character of C{COMP_WORDBREAKS}, which include
C{:} and C{=}, so C{tcp:8080:} reached click as four words; click's bash and
zsh scripts add a space after a single match, which would end the description
at C{tcp:}; and click 8.4.0's fish script does not run (pallets/click#3502).
"""

from __future__ import annotations

import os
import re
import sys
from typing import NamedTuple

import click
from click.shell_completion import BashComplete as _ClickBashComplete
from click.shell_completion import CompletionItem, add_completion_class, split_arg_string
from click.shell_completion import FishComplete as _ClickFishComplete
from click.shell_completion import ZshComplete as _ClickZshComplete


class EndpointSpec(NamedTuple):
    """
    What completion knows about one endpoint type.

    @ivar summary: one line, shown next to the prefix by zsh and fish.
    @ivar positional: the names of the positional arguments, in order, as
        their keyword spelling (C{port}, C{host}); a positional argument may
        also be given as C{name=value}.
    @ivar keywords: the keyword arguments offered once every positional
        argument has been given.
    """

    summary: str
    positional: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()


# Arguments from Twisted's parsers (twisted.internet.endpoints: _parseTCP,
# _parseUNIX, _parseSSL, _TCP6ServerParser, _SystemdParser, _TLSServerEndpointParser,
# _parseClientTCP, _parseClientUNIX, _parseClientSSL, _parseClientTLS) and
# epcat's own (epcat.tlsx, src/twisted/plugins/epcat_endpoints.py).
_SSL_SERVER_KEYWORDS = (
    "privateKey",
    "certKey",
    "extraCertChain",
    "sslmethod",
    "dhParameters",
    "interface",
    "backlog",
)

SERVER_TYPES: dict[str, EndpointSpec] = {
    "tcp": EndpointSpec("TCP over IPv4", ("port",), ("interface", "backlog")),
    "tcp6": EndpointSpec("TCP over IPv6", ("port",), ("interface", "backlog")),
    "unix": EndpointSpec("UNIX stream socket", ("address",), ("mode", "backlog", "lockfile")),
    "ssl": EndpointSpec("TLS over TCP (terminate TLS)", ("port",), _SSL_SERVER_KEYWORDS),
    "tls": EndpointSpec(
        "TLS over TCP6 with a directory of PEM files (SNI)",
        ("path",),
        ("port", "backlog", "interface"),
    ),
    "tlsx": EndpointSpec(
        "TLS with ALPN, client certificates and version limits (epcat)",
        ("port",),
        (
            "privateKey",
            "certKey",
            "extraCertChain",
            "alpn",
            "requireClientCert",
            "clientCA",
            "minVersion",
            "maxVersion",
            "sslmethod",
            "dhParameters",
            "interface",
            "backlog",
        ),
    ),
    "systemd": EndpointSpec(
        "a listening socket inherited from systemd", (), ("domain", "index", "name")
    ),
    "haproxy": EndpointSpec("PROXY protocol header, then the wrapped server endpoint"),
    "stdio": EndpointSpec("standard input and output"),
}

CLIENT_TYPES: dict[str, EndpointSpec] = {
    "tcp": EndpointSpec("TCP (IPv4 names)", ("host", "port"), ("timeout", "bindAddress")),
    "hostname": EndpointSpec(
        "TCP to every address of a name, IPv4 and IPv6 (happy eyeballs)",
        ("host", "port"),
        ("timeout", "bindAddress"),
    ),
    "unix": EndpointSpec("UNIX stream socket", ("path",), ("timeout", "lockfile")),
    "tls": EndpointSpec(
        "TLS with certificate and host name verification",
        ("host", "port"),
        ("trustRoots", "certificate", "privateKey", "timeout", "bindAddress", "endpoint"),
    ),
    "tlsx": EndpointSpec(
        "TLS with SNI, ALPN, version limits (epcat)",
        ("host", "port"),
        (
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
        ),
    ),
    "ssl": EndpointSpec(
        "TLS over TCP, legacy (no host name check)",
        ("host", "port"),
        ("certKey", "privateKey", "caCertsDir", "hostname", "timeout", "bindAddress"),
    ),
    "stdio": EndpointSpec("standard input and output"),
    "exec": EndpointSpec("a child process's stdin and stdout", ("command",)),
}

#: Endpoint plugins of other packages: dropin module name -> role -> types.
#: Offered only when the dropin is installed (see L{_installed_dropins}).
THIRD_PARTY: dict[str, dict[str, dict[str, EndpointSpec]]] = {
    "txtorcon_endpoint_parser": {
        "server": {
            "onion": EndpointSpec(
                "Tor onion service (txtorcon)",
                ("public_port",),
                (
                    "localPort",
                    "controlPort",
                    "hiddenServiceDir",
                    "privateKey",
                    "privateKeyFile",
                    "version",
                    "singleHop",
                ),
            )
        },
        "client": {
            "tor": EndpointSpec(
                "TCP through Tor (txtorcon)",
                ("host", "port"),
                ("socksHostname", "socksPort", "socksUsername", "socksPassword"),
            )
        },
    },
    "autobahn_endpoints": {
        role: {
            "autobahn": EndpointSpec(
                "WebSocket around the wrapped endpoint (autobahn)",
                ("description",),
                ("url", "compression", "autofrag", "subprotocol", "debug"),
            )
        }
        for role in ("server", "client")
    },
}

#: Arguments whose value is a file or directory name.
PATH_ARGUMENTS = frozenset(
    {
        "address",
        "path",
        "privateKey",
        "certKey",
        "extraCertChain",
        "dhParameters",
        "certificate",
        "trustRoots",
        "caCertsDir",
        "clientCA",
        "hiddenServiceDir",
        "privateKeyFile",
    }
)

#: Arguments with a fixed set of values.
CHOICES: dict[str, tuple[str, ...]] = {
    "domain": ("INET", "INET6", "UNIX"),
    "lockfile": ("0", "1"),
    "verify": ("yes", "no"),
    "requireClientCert": ("yes", "no"),
    "minVersion": ("TLSv1.2", "TLSv1.3"),
    "maxVersion": ("TLSv1.2", "TLSv1.3"),
    "sslmethod": ("TLS_METHOD", "SSLv23_METHOD", "TLSv1_2_METHOD"),
}

#: Wrapper types whose only positional argument is another description.
WRAPPERS = {"server": frozenset({"haproxy"}), "client": frozenset()}

_SEPARATOR = re.compile(r"(?<!\\):")


def _installed_dropins() -> set[str]:
    """
    The module names in every C{twisted/plugins} directory on C{sys.path},
    found without importing anything.
    """
    found = set()
    for entry in sys.path:
        directory = os.path.join(entry or ".", "twisted", "plugins")
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        found.update(name.rsplit(".", 1)[0] for name in names if name.endswith((".py", ".pyc")))
    return found


def endpoint_specs(role: str) -> dict[str, EndpointSpec]:
    """
    The endpoint types completion offers for C{role}: the built-in ones and
    those of the known third-party plugins that are installed.

    @param role: C{"server"} or C{"client"}.
    @return: prefix (lower case, no colon) -> L{EndpointSpec}.
    """
    specs = dict(SERVER_TYPES if role == "server" else CLIENT_TYPES)
    wanted = [name for name in THIRD_PARTY if THIRD_PARTY[name].get(role)]
    if wanted:
        installed = _installed_dropins()
        for name in wanted:
            if name in installed:
                for prefix, spec in THIRD_PARTY[name][role].items():
                    specs.setdefault(prefix, spec)
    return specs


def _escape(text: str) -> str:
    """
    Escape the characters an endpoint description gives meaning to.
    """
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def complete_paths(partial: str, lead: str = "") -> list[CompletionItem]:
    """
    File and directory names for a path argument inside a description.

    Directories end with C{/} (the shells then add no space).  Colons and
    equals signs in names are escaped as the description syntax wants
    (C{\\:}); a leading C{~} is expanded, since Twisted does not expand it.
    Names starting with a dot are offered only when C{partial}'s last
    component starts with one.

    @param partial: the (escaped) path typed so far.
    @param lead: the description text before the path, kept on every offer.
    """
    raw = _unescape(partial)
    if raw.startswith("~"):
        raw = os.path.expanduser(raw)
    directory, base = os.path.split(raw)
    try:
        entries = sorted(os.scandir(directory or "."), key=lambda e: e.name)
    except OSError:
        return []
    items = []
    for entry in entries:
        name = entry.name
        if not name.startswith(base) or (name.startswith(".") and not base.startswith(".")):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        path = os.path.join(directory, name) + ("/" if is_dir else "")
        items.append(CompletionItem(lead + _escape(path)))
    return items


def _complete_description(text: str, role: str, lead: str = "") -> list[CompletionItem]:
    specs = endpoint_specs(role)
    parts = _SEPARATOR.split(text)
    if len(parts) == 1:
        typed = text.lower()
        return [
            CompletionItem(lead + prefix + ":", help=spec.summary)
            for prefix, spec in sorted(specs.items())
            if prefix.startswith(typed)
        ]
    kind = parts[0].lower()
    head = lead + parts[0] + ":"
    if kind in WRAPPERS[role]:
        return _complete_description(text[len(parts[0]) + 1 :], role, head)
    spec = specs.get(kind)
    if spec is None:
        return []
    done, current = parts[1:-1], parts[-1]
    before = head + "".join(part + ":" for part in done)
    used = {part.split("=", 1)[0] for part in done if "=" in part}
    given = sum(1 for part in done if "=" not in part)
    pending = [name for name in spec.positional if name not in used][given:]

    if "=" in current:
        key, _, value = current.partition("=")
        return _complete_value(key, value, before + key + "=")
    if pending:
        if pending[0] in PATH_ARGUMENTS:
            return complete_paths(current, before)
        return []
    return [
        CompletionItem(before + keyword + "=")
        for keyword in spec.keywords
        if keyword not in used and keyword.startswith(current)
    ]


def _complete_value(key: str, value: str, lead: str) -> list[CompletionItem]:
    if key in PATH_ARGUMENTS:
        return complete_paths(value, lead)
    return [
        CompletionItem(lead + choice)
        for choice in CHOICES.get(key, ())
        if choice.lower().startswith(value.lower())
    ]


def complete_server(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """
    The C{shell_complete} callback of C{listen SERVER}.

    @param incomplete: the description typed so far.
    @return: whole descriptions, each starting with C{incomplete}'s completed
        part (the shell scripts keep what bash considers a separate word).
    """
    return _complete_description(incomplete, "server")


def complete_client(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """
    The C{shell_complete} callback of C{connect CLIENT}; see
    L{complete_server}.
    """
    return _complete_description(incomplete, "client")


def complete_description(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """
    A C{shell_complete} callback for a description that may be either kind
    (C{epcat explain DESCRIPTION}): server and client offers together.
    """
    seen: dict[str, CompletionItem] = {}
    for role in ("server", "client"):
        for item in _complete_description(incomplete, role):
            seen.setdefault(item.value, item)
    return sorted(seen.values(), key=lambda item: item.value)


def complete_type_name(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """
    A C{shell_complete} callback for a bare type name, server or client
    (C{epcat endpoints TYPE}).
    """
    names: dict[str, str] = {}
    for role in ("server", "client"):
        for prefix, spec in endpoint_specs(role).items():
            names.setdefault(prefix, spec.summary)
    typed = incomplete.lower()
    return [
        CompletionItem(prefix, help=summary)
        for prefix, summary in sorted(names.items())
        if prefix.startswith(typed)
    ]


# -- click's completion classes, adapted to descriptions

# click's bash script, changed in three places: it also passes the line up to
# the cursor (COMP_LINE) and bash's own current word ($2, which bash cut at
# the last COMP_WORDBREAKS character, e.g. after "tcp:8080:"), so that
# BashComplete sees the description whole and can answer with just the part
# bash replaces; it adds no space after an offer ending in ':', '=' or '/'; and
# it quotes offers for the shell (printf %q: spaces in file names).
_SOURCE_BASH = """\
%(complete_func)s() {
    local IFS=$'\\n'
    local response

    response=$(env COMP_WORDS="${COMP_WORDS[*]}" COMP_CWORD=$COMP_CWORD \
COMP_LINE="${COMP_LINE:0:COMP_POINT}" COMP_WORD="$2" \
%(complete_var)s=bash_complete $1)

    for completion in $response; do
        IFS=',' read -r type value <<< "$completion"

        if [[ $type == 'dir' ]]; then
            COMPREPLY=()
            compopt -o dirnames
        elif [[ $type == 'file' ]]; then
            COMPREPLY=()
            compopt -o default
        elif [[ $type == 'plain' ]]; then
            if [[ $value == *[:=/] ]]; then
                compopt -o nospace
            fi
            printf -v value '%%q' "$value"
            COMPREPLY+=("$value")
        fi
    done

    return 0
}

%(complete_func)s_setup() {
    complete -o nosort -F %(complete_func)s %(prog_name)s
}

%(complete_func)s_setup;
"""

# click's zsh script, with offers ending in ':', '=' or '/' added without the
# space suffix (compadd -S '').
_SOURCE_ZSH = """\
#compdef %(prog_name)s

%(complete_func)s() {
    local -a completions
    local -a completions_with_descriptions
    local -a open_completions
    local -a open_completions_with_descriptions
    local -a response
    (( ! $+commands[%(prog_name)s] )) && return 1

    response=("${(@f)$(env COMP_WORDS="${words[*]}" COMP_CWORD=$((CURRENT-1)) \
%(complete_var)s=zsh_complete %(prog_name)s)}")

    for type key descr in ${response}; do
        if [[ "$type" == "plain" ]]; then
            if [[ "$key" == *[:=/] ]]; then
                if [[ "$descr" == "_" ]]; then
                    open_completions+=("$key")
                else
                    open_completions_with_descriptions+=("$key":"$descr")
                fi
            elif [[ "$descr" == "_" ]]; then
                completions+=("$key")
            else
                completions_with_descriptions+=("$key":"$descr")
            fi
        elif [[ "$type" == "dir" ]]; then
            _path_files -/
        elif [[ "$type" == "file" ]]; then
            _path_files -f
        fi
    done

    if [ -n "$open_completions_with_descriptions" ]; then
        _describe -V unsorted open_completions_with_descriptions -U -S ''
    fi

    if [ -n "$open_completions" ]; then
        compadd -U -V unsorted -S '' -a open_completions
    fi

    if [ -n "$completions_with_descriptions" ]; then
        _describe -V unsorted completions_with_descriptions -U
    fi

    if [ -n "$completions" ]; then
        compadd -U -V unsorted -a completions
    fi
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    # autoload from fpath, call function directly
    %(complete_func)s "$@"
else
    # eval/source/. command, register function for later
    compdef %(complete_func)s %(prog_name)s
fi
"""

# click 8.4.0's fish script is broken (pallets/click#3502: an unescaped "\n"
# splits a line of the script, and fish's command substitution splits the
# response on newlines anyway).  This is the script of click 8.1-8.3, with a
# response line per offer: TYPE,VALUE[<TAB>HELP], split at the first comma
# only (values may hold commas: alpn=h2,http/1.1).  fish adds no space after
# an offer ending in '/', '=' or ':' by itself.
_SOURCE_FISH = """\
function %(complete_func)s;
    set -l response (env %(complete_var)s=fish_complete COMP_WORDS=(commandline -cp) \
COMP_CWORD=(commandline -t) %(prog_name)s);

    for completion in $response;
        set -l metadata (string split -m 1 "," -- $completion);

        if test $metadata[1] = "dir";
            __fish_complete_directories $metadata[2];
        else if test $metadata[1] = "file";
            __fish_complete_path $metadata[2];
        else if test $metadata[1] = "plain";
            echo $metadata[2];
        end;
    end;
end;

complete --no-files --command %(prog_name)s --arguments \
"(%(complete_func)s)";
"""


class BashComplete(_ClickBashComplete):
    """
    click's bash completion, seeing endpoint descriptions whole.

    With C{COMP_LINE} (the command line up to the cursor) in the environment,
    the words are split from it as the shell would (so C{tcp:8080:} is one
    word), and each offer is cut down to the part that replaces bash's own
    current word C{COMP_WORD}: bash replaces only the text after the last
    C{COMP_WORDBREAKS} character.  Without C{COMP_LINE} it is click's class
    (C{COMP_WORDS}, C{COMP_CWORD}), offering whole words.
    """

    source_template = _SOURCE_BASH

    _cut = ""

    def get_completion_args(self) -> tuple[list[str], str]:
        line = os.environ.get("COMP_LINE")
        if line is None:
            return super().get_completion_args()
        # A sentinel character shows whether the cursor is in a word or
        # after a space, quotes and escapes included.
        words = split_arg_string(line + "\x00")
        incomplete = words[-1][:-1]
        word = os.environ.get("COMP_WORD", incomplete)
        if incomplete.endswith(word):
            self._cut = incomplete[: len(incomplete) - len(word)]
        return words[1:-1], incomplete

    def format_completion(self, item: CompletionItem) -> str:
        value = item.value
        if self._cut and item.type == "plain" and value.startswith(self._cut):
            value = value[len(self._cut) :]
        return f"{item.type},{value}"


class ZshComplete(_ClickZshComplete):
    """
    click's zsh completion, adding no space after an offer that ends in
    C{:}, C{=} or C{/} (a description or path still being typed).
    """

    source_template = _SOURCE_ZSH


class FishComplete(_ClickFishComplete):
    """
    click's fish completion with a script that works whatever click's
    version: one response line per offer, C{TYPE,VALUE} and, when the offer
    has help, a tab and the help (fish shows it as the description).
    """

    source_template = _SOURCE_FISH

    def format_completion(self, item: CompletionItem) -> str:
        value = " ".join(str(item.value).splitlines())
        if item.help:
            return f"{item.type},{value}\t{' '.join(item.help.split())}"
        return f"{item.type},{value}"


add_completion_class(BashComplete)
add_completion_class(ZshComplete)
add_completion_class(FishComplete)


def source(shell: str, prog_name: str = "epcat") -> str:
    """
    The completion script for C{shell}, as C{_EPCAT_COMPLETE={shell}_source
    epcat} prints it, ending in one newline (how many click adds depends on
    its version).

    @param shell: C{"bash"}, C{"zsh"} or C{"fish"}.
    @raise ValueError: another shell.
    """
    from click.shell_completion import get_completion_class

    from epcat.cli import cli

    cls = get_completion_class(shell)
    if cls is None:
        raise ValueError(f"no completion for shell {shell!r}")
    complete_var = "_{}_COMPLETE".format(prog_name.replace("-", "_").upper())
    return cls(cli, {}, prog_name, complete_var).source().rstrip("\n") + "\n"
