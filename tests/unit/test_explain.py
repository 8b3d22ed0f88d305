"""
epcat explain: what a description means, without opening anything.
"""

from __future__ import annotations

import io

import pytest

from epcat.explain import arguments, explain
from epcat.status import UsageError


def explained(description: str) -> str:
    out = io.StringIO()
    explain(description, out)
    return out.getvalue()


def test_tcp_server_with_defaults() -> None:
    text = explained("tcp:8080:interface=127.0.0.1")
    assert "TCP4ServerEndpoint" in text
    assert "port = 8080" in text
    assert "interface = 127.0.0.1" in text
    assert "backlog = 50  (default)" in text
    assert "half-close: yes" in text


def test_client_and_server_both_shown_for_unix() -> None:
    text = explained("unix:/tmp/x.sock")
    assert "as a server" in text and "as a client" in text


def test_haproxy_wraps() -> None:
    text = explained("haproxy:tcp:80")
    assert "wraps:      tcp:80" in text


def test_tls_client_arguments_named() -> None:
    names = [name for name, _, _ in arguments("client", "tls:example.com:443")]
    assert names[:2] == ["host", "port"]
    assert "trustRoots" in names


def test_bad_description_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as raised:
        explained("tpc:80")
    assert "did you mean tcp?" in str(raised.value)


def test_nothing_is_opened(tmp_path) -> None:
    # a unix server description names a path; explaining it creates nothing
    path = tmp_path / "never.sock"
    explained(f"unix:{path}")
    assert not path.exists()


def test_tcp_client_arguments_named_with_defaults() -> None:
    """
    Twisted's tcp: client parser takes *args: explain still names every
    argument (its own reading of the description) and gives the endpoint
    class's defaults for the rest.
    """
    text = explained("tcp:127.0.0.1:80")
    assert "host = 127.0.0.1\n" in text
    assert "port = 80\n" in text
    assert "timeout = 30  (default)" in text
    assert "bindAddress = None  (default)" in text
    assert "(extra)" not in text
    assert arguments("client", "tcp:host=127.0.0.1:port=80:bindAddress=127.0.0.1")[3] == (
        "bindAddress", "127.0.0.1", True)


def test_unix_client_says_lockfile_as_a_description_does() -> None:
    text = explained("unix:/tmp/x.sock:lockfile=1:timeout=3")
    assert "path = /tmp/x.sock" in text
    assert "timeout = 3\n" in text
    assert "lockfile = True" in text
    assert "checkPID" not in text


def test_ssl_client_says_how_epcat_builds_it() -> None:
    text = explained("ssl:localhost:443")
    assert "host = localhost" in text and "port = 443" in text
    assert "epcat connect builds it as tlsx:" in text


def test_exec_command_is_named_and_stdio_shows_no_empty_argument() -> None:
    assert "command = sh -c cat" in explained("exec:sh -c cat")
    assert "(extra)" not in explained("stdio:")


def test_a_client_path_too_long_is_said_beside_the_server() -> None:
    text = explained("unix:/tmp/" + "a" * 120 + ".sock")
    assert "as a server" in text
    assert "as a client (epcat connect):\n    would fail: cannot connect to" in text
    assert "AF_UNIX path too long" in text
