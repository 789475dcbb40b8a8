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

from dynamics.errors import CheckpointError, DynamicsError, UserInputError

log = logging.getLogger(__name__)


class ModelUnavailableError(CheckpointError, UserInputError):
    """A checkpoint that does not exist or cannot be had as asked: a recorded step failure in a
    scan (a CheckpointError), and the user's input to fix (exit code 2) when it stops a command."""


@dataclass
class RetryPolicy:
    """Transient failures are retried ``attempts - 1`` times, waiting backoff * 2**k."""

    attempts: int = 4
    backoff: float = 2.0
    max_wait: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def call(
        self, fn: Callable[[], Any], what: str, explain: Callable[[BaseException], str | None] | None = None
    ) -> tuple[Any, int]:
        """``(fn(), attempts)``; a permanent error at once, as ``explain`` words it when it can."""
        for attempt in range(1, self.attempts + 1):
            try:
                return fn(), attempt
            except Exception as exc:
                permanent = is_permanent(exc)
                told = explain(exc) if permanent and explain else None
                if told:
                    raise ModelUnavailableError(f"{told} (after {attempt} attempt(s))") from exc
                if permanent or attempt == self.attempts:
                    raise CheckpointError(f"{what}: {one_line(exc)} (after {attempt} attempt(s))") from exc
                wait = min(self.backoff * 2 ** (attempt - 1), self.max_wait)
                log.warning(
                    "%s failed (%s); retrying in %.1fs (attempt %d of %d)",
                    what,
                    one_line(exc),
                    wait,
                    attempt + 1,
                    self.attempts,
                )
                self.sleep(wait)
        raise AssertionError("unreachable")


def is_permanent(exc: BaseException) -> bool:
    """Errors that retrying cannot fix: missing repos, revisions or files, refused access, no network allowed.

    A file missing from the *local* cache is permanent only offline; online the client
    raises the same error when the Hub cannot be reached, which may pass.
    """
    from huggingface_hub import errors

    if isinstance(exc, errors.LocalEntryNotFoundError):
        return offline()
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
    if isinstance(exc, errors.LocalEntryNotFoundError):
        return (
            f"{at}: not in the Hugging Face cache at {cache_dir}, and HF_HUB_OFFLINE=1 forbids downloading it; "
            "pass --cache-dir with the cache that holds it, or unset HF_HUB_OFFLINE to download it"
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


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
