"""Whether the Hub could be reached in this run: one retry budget per run, not per step or file.

The first request that fails because the network is not there (a name that does not resolve,
a refused connection, a timeout) is noted here with its reason; every later Hub request of
the same run (the next step's fingerprint, a BLiMP paradigm, an lm-eval task) asks
:func:`unreachable_reason` first and gives up at once with one line instead of retrying
again. A run starts with :func:`forget` (the CLI calls it per command; tests between runs).
"""

from __future__ import annotations

import errno
import socket
import threading

_lock = threading.Lock()
_reason: str | None = None

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


def forget() -> None:
    """Start a new run: the Hub is tried again."""
    global _reason
    with _lock:
        _reason = None
