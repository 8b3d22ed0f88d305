# -*- test-case-name: tests.unit.test_status -*-
"""
Exit statuses, and the one mapping from failures to them.

The numbers for runtime failures are the ones curl uses for the same failure
(curl(1), section EXIT CODES), so that scripts written for curl read epcat's
statuses the same way.  Nothing here imports Twisted at import time.
"""

from __future__ import annotations

import enum
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.python.failure import Failure


class ExitStatus(enum.IntEnum):
    """
    The process exit statuses of epcat, documented in README and epcat(1).
    """

    OK = 0
    FAILURE = 1
    USAGE = 2
    RESOLVE = 6  # curl: CURLE_COULDNT_RESOLVE_HOST
    CONNECT = 7  # curl: CURLE_COULDNT_CONNECT
    TIMEOUT = 28  # curl: CURLE_OPERATION_TIMEDOUT
    TLS_HANDSHAKE = 35  # curl: CURLE_SSL_CONNECT_ERROR
    TLS_VERIFY = 60  # curl: CURLE_PEER_FAILED_VERIFICATION


class UsageError(Exception):
    """
    Bad input from the user: an option, a combination of subcommands or an
    endpoint description.  Reported as one line and exit status 2.
    """


class EpcatError(Exception):
    """
    A runtime failure that ends the process with C{status}.

    @ivar status: the exit status.
    @ivar message: one line for humans, naming the endpoint and the reason.
    """

    def __init__(self, status: ExitStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class TimedOut(Exception):
    """
    epcat gave up on something because a timeout it was given expired.

    @ivar seconds: the timeout, in seconds.
    @ivar what: what timed out, for the message.
    """

    def __init__(self, seconds: float, what: str = "") -> None:
        super().__init__(seconds, what)
        self.seconds = seconds
        self.what = what

    def __str__(self) -> str:
        what = f"{self.what} " if self.what else ""
        return f"{what}timed out after {self.seconds:g} s"


def _openssl_reason(error: BaseException) -> str:
    """
    Turn a pyOpenSSL C{Error} into the human part of its reason strings.

    @param error: an C{OpenSSL.SSL.Error}, whose C{args[0]} is a list of
        (library, function, reason) tuples.
    """
    try:
        reasons = [r[2] for r in error.args[0] if len(r) == 3 and r[2]]
    except (IndexError, TypeError):
        reasons = []
    return "; ".join(reasons) or str(error) or error.__class__.__name__


def _is_verification(error: BaseException) -> bool:
    """
    Did this TLS error come from peer certificate verification?
    """
    name = type(error).__name__
    if _from_service_identity(error) or name in ("VerificationError", "CertificateError"):
        return True
    return "certificate verify failed" in _openssl_reason(error)


def classify(failure: Failure | BaseException, timed_out: bool = False) -> tuple[ExitStatus, str]:
    """
    Map the reason a connection attempt or a connection failed to an exit
    status and a short reason in words.

    @param failure: the L{Failure} (or exception) that ended the attempt.
    @param timed_out: C{True} when epcat itself cancelled the attempt because
        a timeout expired, so that the resulting C{CancelledError} reads as a
        timeout.
    @return: (status, reason), the reason with no endpoint in it.
    """
    from twisted.internet import defer, error

    exc = failure.value if hasattr(failure, "value") else failure
    if isinstance(exc, TimedOut):
        return ExitStatus.TIMEOUT, str(exc)
    if isinstance(exc, (defer.CancelledError, error.ConnectingCancelledError)):
        if timed_out:
            return ExitStatus.TIMEOUT, "timed out"
        return ExitStatus.FAILURE, "cancelled"
    if isinstance(exc, error.DNSLookupError):
        return ExitStatus.RESOLVE, "could not resolve host" + _detail(exc)
    if isinstance(exc, (error.TimeoutError, TimeoutError)):
        return ExitStatus.TIMEOUT, "timed out"
    if isinstance(exc, error.ConnectionRefusedError):
        return ExitStatus.CONNECT, "connection refused"
    if isinstance(exc, error.NoRouteError):
        return ExitStatus.CONNECT, "no route to host"
    if isinstance(exc, error.CannotListenError):
        return ExitStatus.FAILURE, _os_reason(exc.socketError)
    if isinstance(exc, error.ConnectError):
        os_error = getattr(exc, "osError", None)
        inners = (os_error, *exc.args)
        if any(isinstance(getattr(i, "value", None), error.ConnectionDone) for i in inners):
            # (Linux answers a non-blocking connect to a UNIX listener whose
            # backlog is full with EAGAIN, which Twisted waits on as if in
            # progress, and then sees the socket hang up: it reports a
            # ConnectError holding a ConnectionDone failure)
            return ExitStatus.CONNECT, "closed before the connection was made (a full backlog?)"
        text = _os_reason(os_error) if os_error else _connect_error_text(exc)
        if "timed out" in text.lower():
            return ExitStatus.TIMEOUT, "timed out"
        return ExitStatus.CONNECT, text
    if _is_tls_error(exc):
        if _is_verification(exc):
            return ExitStatus.TLS_VERIFY, "TLS certificate verification failed: " + _tls_text(exc)
        return ExitStatus.TLS_HANDSHAKE, "TLS handshake failed: " + _tls_text(exc)
    if isinstance(exc, error.ConnectionDone):
        return ExitStatus.OK, "closed"
    if isinstance(exc, (error.ConnectionLost, error.ConnectionAborted)):
        return ExitStatus.FAILURE, "connection lost" + _detail(exc)
    if isinstance(exc, OSError):
        return ExitStatus.FAILURE, _os_reason(exc)
    return ExitStatus.FAILURE, str(exc) or type(exc).__name__


def _from_service_identity(exc: BaseException) -> bool:
    """
    Is C{exc} service-identity's, or L{epcat.tlsfix}'s stand-in for its
    C{CertificateError} (marked C{tls_verification})?
    """
    module = type(exc).__module__ or ""
    return module.startswith("service_identity") or getattr(exc, "tls_verification", False)


def _is_tls_error(exc: BaseException) -> bool:
    return (type(exc).__module__ or "").startswith("OpenSSL") or _from_service_identity(exc)


def _tls_text(exc: BaseException) -> str:
    if _from_service_identity(exc):
        return str(exc) or type(exc).__name__
    return _openssl_reason(exc)


def _detail(exc: BaseException) -> str:
    text = " ".join(str(a) for a in exc.args if a)
    return f" ({text})" if text else ""


def _connect_error_text(exc: BaseException) -> str:
    given = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
    if given.strip():
        # (the reason it was made with, e.g. exec:'s "command not found
        # (/x:a:b)", whose own colons the rendering below would cut at)
        given = given.strip().rstrip(".")
        return given[0].lower() + given[1:] if given[1:2].islower() else given
    text = str(exc)
    # Twisted renders ConnectError as "An error occurred while connecting: 2: No
    # such file or directory."; keep the part after the errno.
    if ":" in text:
        parts = [p.strip(" .") for p in text.split(":")]
        tail = [p for p in parts[1:] if p and not p.isdigit()]
        if tail:
            return tail[-1].lower() if tail[-1][:1].isupper() else tail[-1]
    return text


def _os_reason(err: object) -> str:
    """
    The strerror of an OS error (or errno), lower-cased the way curl and
    socat print them.
    """
    if isinstance(err, OSError) and err.strerror:
        return err.strerror[0].lower() + err.strerror[1:]
    if isinstance(err, int):
        return os.strerror(err).lower()
    if isinstance(err, tuple) and err and isinstance(err[0], int):
        return os.strerror(err[0]).lower()
    return str(err)


