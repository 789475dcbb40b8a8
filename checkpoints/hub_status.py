"""Whether the Hub could be reached in this run: one retry budget per run, not per step or file.

The first request that fails because the network is not there (a name that does not resolve,
a refused connection, a timeout) is noted here with its reason; every later Hub request of
the same run (the next step's fingerprint, a BLiMP paradigm, an lm-eval task) asks
:func:`unreachable_reason` first and gives up at once with one line instead of retrying
again. Connection failures are retried from one budget per run (:func:`spend_retry`,
:data:`CONNECTION_RETRIES` in a row, whatever the call; a call that succeeds refills it), so
a dead network costs one short round of waits, not one per step. A run starts with :func:`forget` (``run_scan`` and the
study's model loading call it; tests between runs).
"""

from __future__ import annotations

import errno
import socket
import threading

_lock = threading.Lock()
_reason: str | None = None
#: Retries of connection failures a whole run may spend (each waits the RetryPolicy's backoff):
#: enough for a blip, few enough that a dead network is given up on within seconds.
CONNECTION_RETRIES = 2
_retries_left = CONNECTION_RETRIES

#: errno values of a network that is not there (as opposed to a server that answered badly).
_NETWORK_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ENETDOWN,
}
#: Words of the messages requests/httpx/urllib3 wrap such failures in (their exception types vary by version).
_NETWORK_WORDS = (
    "name or service not known",
    "temporary failure in name resolution",
    "nodename nor servname",
    "failed to resolve",
    "connection refused",
    "network is unreachable",
    "no route to host",
    "timed out",
    "max retries exceeded",
    "connecterror",
    "connecttimeout",
)


def is_connection_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the network is not there."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (socket.gaierror, socket.timeout, TimeoutError, ConnectionRefusedError)):
            return True
        if isinstance(current, OSError) and current.errno in _NETWORK_ERRNOS:
            return True
        text = f"{type(current).__name__} {current}".lower()
        if any(word in text for word in _NETWORK_WORDS):
            return True
        current = current.__cause__ or current.__context__
    return False


def note_unreachable(reason: str) -> None:
    """Remember, for the rest of this run, that the Hub could not be reached (the first reason is kept)."""
    global _reason
    with _lock:
        if _reason is None:
            _reason = reason


def unreachable_reason() -> str | None:
    """Why the Hub could not be reached earlier in this run, or None when nothing failed that way."""
    with _lock:
        return _reason


def spend_retry() -> bool:
    """Take one retry of a connection failure from this run's budget; False once it is spent."""
    global _retries_left
    with _lock:
        if _reason is not None or _retries_left <= 0:
            return False
        _retries_left -= 1
        return True


def note_failure(reason: str) -> None:
    """A best-effort Hub call (a fingerprint, a size) failed because the network is not there: it is not
    retried, but it spends one retry of the budget; once the budget is spent the Hub is noted unreachable."""
    if not spend_retry():
        note_unreachable(reason)


def note_reached() -> None:
    """A Hub call succeeded: a later connection failure gets the whole retry budget again (a blip
    hours into a scan is not a dead network). Once the Hub was noted unreachable, it stays so."""
    global _retries_left
    with _lock:
        if _reason is None:
            _retries_left = CONNECTION_RETRIES


def forget() -> None:
    """Start a new run: the Hub is tried again, with a full retry budget."""
    global _reason, _retries_left
    with _lock:
        _reason = None
        _retries_left = CONNECTION_RETRIES
