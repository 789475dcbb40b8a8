"""Hub failures: which are permanent (said at once, in this tool's words) and which are retried.

A permanent error (a repository, revision or file that does not exist, refused access, a
file missing from the cache while offline) becomes one line naming the model and what to
do, with no retry; a transient one (a timeout, a reset connection, a 5xx) is retried with
backoff, one log line per retry.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checkpoints import hub_status
from dynamics.errors import CheckpointError, DynamicsError, UserInputError

log = logging.getLogger(__name__)


class ModelUnavailableError(CheckpointError, UserInputError):
    """A checkpoint that does not exist or cannot be had as asked: a recorded step failure in a
    scan (a CheckpointError), and the user's input to fix (exit code 2) when it stops a command."""


class HubUnreachableError(ModelUnavailableError):
    """The Hub cannot be reached and the cache holds nothing of the model: nothing could be had
    at all, so the command stops before anything is written (the user chooses what to run on)."""


@dataclass
class RetryPolicy:
    """Transient failures are retried ``attempts - 1`` times, waiting backoff * 2**k."""

    attempts: int = 4
    backoff: float = 2.0
    max_wait: float = 60.0
    sleep: Callable[[float], None] = field(default=lambda seconds: time.sleep(seconds), repr=False)

    def call(
        self, fn: Callable[[], Any], what: str, explain: Callable[[BaseException], str | None] | None = None
    ) -> tuple[Any, int]:
        """``(fn(), attempts)``; a permanent error at once, as ``explain`` words it when it can.

        A connection failure (:func:`checkpoints.hub_status.is_connection_failure`) is retried
        only while the run's budget lasts (:func:`checkpoints.hub_status.spend_retry`); when
        it is spent the Hub is noted unreachable for the rest of the run.
        """
        for attempt in range(1, self.attempts + 1):
            try:
                result = fn()
            except Exception as exc:
                permanent = is_permanent(exc)
                told = explain(exc) if permanent and explain else None
                if told:
                    raise ModelUnavailableError(f"{told} (after {attempt} attempt(s))") from exc
                network = not permanent and hub_status.is_connection_failure(exc)
                if permanent or attempt == self.attempts or (network and not hub_status.spend_retry()):
                    if network:
                        hub_status.note_unreachable(one_line(exc))
                        raise CheckpointError(
                            f"{what}: the Hugging Face Hub cannot be reached ({one_line(exc)}; "
                            f"after {attempt} attempt(s))"
                        ) from exc
                    raise CheckpointError(f"{what}: {one_line(exc)} (after {attempt} attempt(s))") from exc
                wait = min(self.backoff * 2 ** (attempt - 1), self.max_wait)
                # A dead network ends in one line (the run's budget is small): its retries are details.
                log.log(
                    logging.INFO if network else logging.WARNING,
                    "%s failed (%s); retrying in %.1fs (attempt %d of %d)",
                    what,
                    one_line(exc),
                    wait,
                    attempt + 1,
                    self.attempts,
                )
                self.sleep(wait)
            else:
                hub_status.note_reached()
                return result, attempt
        raise AssertionError("unreachable")


def is_permanent(exc: BaseException) -> bool:
    """Errors that retrying cannot fix: missing repos, revisions or files, refused access, no network allowed.

    A file missing from the *local* cache is permanent only when the cache is all there is
    (offline, or the Hub noted unreachable in this run); online the client raises the same
    error when the Hub cannot be reached, which may pass.
    """
    from huggingface_hub import errors

    if isinstance(exc, errors.LocalEntryNotFoundError):
        return cache_only()
    permanent = (
        errors.RepositoryNotFoundError,  # GatedRepoError too
        errors.RevisionNotFoundError,
        errors.EntryNotFoundError,
        DynamicsError,
    )
    return isinstance(exc, permanent) or http_status(exc) in (401, 403, 404)


def explain_hub_error(exc: BaseException, model_id: str, revision: str | None, cache_dir: Path) -> str | None:
    """One line for a permanent Hub error, in this tool's terms (None: nothing better than the library's)."""
    from huggingface_hub import errors

    at = f"{model_id}@{revision}" if revision else model_id
    if isinstance(exc, errors.GatedRepoError):
        return (
            f"{model_id} is a gated model: accept its terms on huggingface.co and log in (hf auth login), "
            "or choose another --model"
        )
    if isinstance(exc, errors.RepositoryNotFoundError) or http_status(exc) in (401, 404) and revision is None:
        return (
            f"no model {model_id!r} on the Hugging Face Hub (or it is private): check the id, use an alias "
            "such as pythia-70m or a local directory, or --cache-dir with a cache that holds it"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return (
            f"{model_id} has no revision {revision!r} on the Hugging Face Hub; list the steps it has with "
            f"`dynamics steps all --model {model_id}`"
        )
    if isinstance(exc, errors.LocalEntryNotFoundError) and offline():
        return (
            f"{at}: not in the Hugging Face cache at {cache_dir}, and HF_HUB_OFFLINE=1 forbids downloading it; "
            "pass --cache-dir with the cache that holds it, or unset HF_HUB_OFFLINE to download it"
        )
    if isinstance(exc, errors.LocalEntryNotFoundError) and hub_status.unreachable_reason() is not None:
        return (
            f"{at}: not in the Hugging Face cache at {cache_dir}, and the Hugging Face Hub cannot be reached "
            f"({hub_status.unreachable_reason()}); pass --cache-dir with a cache that holds it"
        )
    if isinstance(exc, errors.EntryNotFoundError):
        return f"{at}: a file this revision lists is missing on the Hub ({one_line(exc)})"
    if http_status(exc) in (401, 403):
        return f"{at}: the Hugging Face Hub refused access (HTTP {http_status(exc)}); log in (hf auth login) or choose another --model"
    return None


def http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def cache_only() -> bool:
    """Whether this run may only read the cache: offline, or the Hub noted unreachable earlier in the run."""
    return offline() or hub_status.unreachable_reason() is not None


def unreachable_message(model_id: str, cache_dir: Path) -> str:
    """One line for a Hub that cannot be reached when nothing of ``model_id`` is cached: what to do instead."""
    from huggingface_hub import constants

    return (
        f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({hub_status.unreachable_reason()}), "
        f"and nothing of {model_id} is in the Hugging Face cache at {cache_dir}: without a network, set "
        "HF_HUB_OFFLINE=1 and pass --cache-dir with a cache that holds the model, or use a local suite "
        "(a directory of step<N>/ folders), a saved model directory, or --model toy"
    )


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
