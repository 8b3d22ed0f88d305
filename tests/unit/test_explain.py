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
