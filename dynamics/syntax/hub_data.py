"""Hub datasets (BLiMP, the data of lm-eval tasks) in a run that may have no network: one try, then skip.

``datasets`` retries a request that finds no network five times with a growing back-off
(about 23 s and 11 log lines for each dataset asked for). So before the first Hub dataset
request of a run we make one request of our own, without retries (:func:`check_hub_reachable`);
when it finds no network, :mod:`checkpoints.hub_status` notes why and every later Hub request of
the run (datasets, tasks, checkpoints) gives up at once. With ``HF_HUB_OFFLINE`` or
``HF_DATASETS_OFFLINE`` set nothing is tried at all.
"""

from __future__ import annotations

import os

from checkpoints.hub_status import is_connection_failure, note_unreachable, unreachable_reason
from dynamics.errors import DynamicsError

#: Seconds the one reachability request may take (a network that drops packets, not one that refuses).
PROBE_TIMEOUT_S = 10.0
_TRUE = ("1", "true", "yes", "on")


class HubDataUnavailable(DynamicsError):
    """A Hub dataset cannot be had in this run: offline by the environment, or the Hub cannot be reached."""


def hub_offline() -> bool:
    """True when the Hugging Face libraries are told not to use the network."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def unavailable_reason() -> str | None:
    """Why no Hub dataset may be requested now (None: it may): offline, or found unreachable earlier in this run."""
    if hub_offline():
        return "the Hub is offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set)"
    noted = unreachable_reason()
    return f"the Hub cannot be reached ({noted})" if noted else None


def check_hub_reachable(what: str) -> None:
    """Raise :class:`HubDataUnavailable` (``what: why``) unless a Hub dataset may be requested.

    One request without retries when nothing is known yet; a connection failure is noted for
    the rest of the run. Any other answer (even an HTTP error) means the network is there:
    the real request then says what is wrong.
    """
    reason = unavailable_reason()
    if reason is None:
        try:
            _ask_the_hub()
        except Exception as exc:  # noqa: BLE001 - which exception types the HTTP stack raises varies by version
            if not note_connection_failure(exc):
                return
            reason = unavailable_reason()
    if reason is not None:
        raise HubDataUnavailable(f"{what}: {reason}")


def note_connection_failure(exc: BaseException) -> bool:
    """Note ``exc`` for the rest of the run when it says the network is not there; returns whether it did."""
    if not is_connection_failure(exc):
        return False
    note_unreachable(" ".join(f"{type(exc).__name__}: {exc}".split())[:200])
    return True


def _ask_the_hub() -> None:
    """One HEAD request to the Hub's endpoint, no retries (huggingface_hub's session: its proxies and headers)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S)
