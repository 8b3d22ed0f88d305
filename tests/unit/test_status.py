"""
Tests for L{epcat.status.classify}: failures to curl-compatible exit statuses.
"""

from __future__ import annotations

import errno
import os

import pytest
import service_identity
from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.python.failure import Failure

from epcat.status import EpcatError, ExitStatus, classify


def test_exit_status_numbers_are_curls() -> None:
    assert [int(s) for s in ExitStatus] == [0, 1, 2, 6, 7, 28, 35, 60]


def test_dns_lookup_error_is_6() -> None:
    status, reason = classify(Failure(error.DNSLookupError("nx.example.invalid")))
    assert status == ExitStatus.RESOLVE == 6
    assert "could not resolve host" in reason
    assert "nx.example.invalid" in reason


def test_connection_refused_is_7() -> None:
    assert classify(Failure(error.ConnectionRefusedError())) == (7, "connection refused")


def test_connection_refused_from_errno_is_7() -> None:
    refused = error.getConnectError((errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED)))
    assert classify(Failure(refused))[0] == ExitStatus.CONNECT


@pytest.mark.parametrize(
    "exc",
    [
        error.TimeoutError(),
        TimeoutError(),
        error.getConnectError((errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))),
        error.ConnectError(string="Connection timed out"),
    ],
)
def test_timeouts_are_28(exc: BaseException) -> None:
    assert classify(Failure(exc)) == (ExitStatus.TIMEOUT, "timed out")


@pytest.mark.parametrize("exc", [defer.CancelledError(), error.ConnectingCancelledError(None)])
def test_cancelled_by_the_connect_timeout_is_28(exc: BaseException) -> None:
    assert classify(Failure(exc), timed_out=True) == (ExitStatus.TIMEOUT, "timed out")


@pytest.mark.parametrize("exc", [defer.CancelledError(), error.ConnectingCancelledError(None)])
def test_cancelled_otherwise_is_a_failure(exc: BaseException) -> None:
    assert classify(Failure(exc)) == (ExitStatus.FAILURE, "cancelled")


def test_certificate_verify_failed_is_60() -> None:
    exc = SSL.Error(
        [("SSL routines", "tls_process_server_certificate", "certificate verify failed")]
    )
    status, reason = classify(Failure(exc))
    assert status == ExitStatus.TLS_VERIFY == 60
    assert reason == "TLS certificate verification failed: certificate verify failed"


@pytest.mark.parametrize(
    "exc",
    [
        SSL.Error([("SSL routines", "", "sslv3 alert handshake failure")]),
        SSL.Error([("SSL routines", "", "tlsv1 alert internal error")]),
        SSL.Error([]),
        SSL.Error("unexpected eof"),
    ],
)
def test_other_openssl_errors_are_35(exc: BaseException) -> None:
    status, reason = classify(Failure(exc))
    assert status == ExitStatus.TLS_HANDSHAKE == 35
    assert reason.startswith("TLS handshake failed: ")


def test_openssl_reason_strings_are_joined() -> None:
    exc = SSL.Error([("lib", "f", "first reason"), ("lib", "g", "second reason")])
    assert classify(exc)[1] == "TLS handshake failed: first reason; second reason"


@pytest.mark.parametrize(
    "exc",
    [
        service_identity.VerificationError(errors=[]),
        service_identity.CertificateError("no subjectAltName"),
    ],
)
def test_service_identity_errors_are_60(exc: BaseException) -> None:
    status, reason = classify(Failure(exc))
    assert status == ExitStatus.TLS_VERIFY
    assert reason.startswith("TLS certificate verification failed: ")


def test_missing_unix_socket_is_7() -> None:
    # What twisted.internet.unix reports when the socket path does not exist.
    exc = error.getConnectError((errno.ENOENT, os.strerror(errno.ENOENT)))
    assert type(exc) is error.ConnectError
    assert classify(Failure(exc)) == (ExitStatus.CONNECT, "no such file or directory")


def test_connect_error_with_os_error() -> None:
    exc = error.ConnectError(osError=OSError(errno.ENOENT, "No such file or directory"))
    assert classify(exc) == (ExitStatus.CONNECT, "no such file or directory")


def test_no_route_is_7() -> None:
    assert classify(error.NoRouteError()) == (ExitStatus.CONNECT, "no route to host")


def test_cannot_listen_is_1() -> None:
    exc = error.CannotListenError("", 80, OSError(errno.EACCES, "Permission denied"))
    assert classify(Failure(exc)) == (ExitStatus.FAILURE, "permission denied")


def test_clean_close_is_ok() -> None:
    assert classify(Failure(error.ConnectionDone())) == (ExitStatus.OK, "closed")


def test_lost_connection_and_os_errors_are_1() -> None:
    assert classify(error.ConnectionLost())[0] == ExitStatus.FAILURE
    assert classify(OSError(errno.EPIPE, "Broken pipe")) == (ExitStatus.FAILURE, "broken pipe")
    assert classify(ValueError("odd")) == (ExitStatus.FAILURE, "odd")
    assert classify(ValueError()) == (ExitStatus.FAILURE, "ValueError")


def test_classify_takes_an_exception_or_a_failure() -> None:
    exc = error.ConnectionRefusedError()
    assert classify(exc) == classify(Failure(exc))


def test_epcat_error_carries_status_and_message() -> None:
    e = EpcatError(ExitStatus.CONNECT, "cannot connect to tcp:h:1: connection refused")
    assert e.status == 7
    assert e.message == str(e)


def test_epcats_own_timeout_is_28_and_says_how_long() -> None:
    from epcat.status import TimedOut

    status, reason = classify(Failure(TimedOut(2.5, "connect to tcp:h:1")))
    assert status == ExitStatus.TIMEOUT
    assert reason == "connect to tcp:h:1 timed out after 2.5 s"
    assert classify(TimedOut(10))[1] == "timed out after 10 s"


def test_connect_error_holding_a_clean_close_is_one_line() -> None:
    """
    A UNIX listener with a full backlog: Twisted reports a ConnectError
    holding a ConnectionDone failure, whose text ends in a newline and a
    bracket; epcat says what it most likely is, as a connect failure.
    """
    wrapped = error.ConnectError(Failure(error.ConnectionDone()))
    status, reason = classify(Failure(wrapped))
    assert status == ExitStatus.CONNECT
    assert reason == "closed before the connection was made (a full backlog?)"


def test_connect_error_made_with_a_reason_keeps_all_of_it() -> None:
    """
    exec:'s 'command not found (/x:a:b)': the reason it was made with is
    kept whole, colons and all.
    """
    failure = Failure(error.ConnectError(string="command not found (/x:a:b)"))
    assert classify(failure) == (ExitStatus.CONNECT, "command not found (/x:a:b)")
