"""The settings the scoring API takes whole, each a small frozen dataclass checked when it is made:
how sentences are batched for the exact forward passes (:class:`Batching`) and how a sentence is
scored and a minimal pair judged (:class:`ScoringRules`).

They travel as one value from :func:`dynamics.syntax.scoring.score_pairs` down to
:func:`dynamics.syntax.logprobs.token_log_probs_each`, instead of a dozen arguments forwarded one
by one at every level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch

from dynamics.config.parts import NPI_RULES, REDUCTIONS
from dynamics.errors import UserInputError

PaddingSide = Literal["right", "left"]
Reduction = Literal["sum", "mean"]
NpiRule = Literal["last", "intrusive"]

#: Default budget of a batch, in tokens (rows x padded length); logits are projected in
#: bounded chunks (:data:`dynamics.models.modelcalls.LOGITS_CHUNK_BYTES`) whatever the budget.
DEFAULT_BATCH_TOKENS = 4096
#: Rows per batch at most, whatever the budget (short sentences gain nothing past this).
DEFAULT_MAX_BATCH_SIZE = 256


@dataclass(frozen=True)
class Batching:
    """How sentences are packed into forward passes; none of it changes a score.

    Attributes:
        batch_tokens: Budget of a batch in tokens (rows x padded length); the sentences of
            one minimal pair always share a batch, and a pair longer than the budget still runs, alone.
        max_batch_size: Rows per batch at most.
        padding_side: ``right`` (default) or ``left``; both give the same scores.
        device: Where the inputs go; default the model's device.
        progress: Show a tqdm bar over the sentences.

    Raises:
        UserInputError: a budget or a row limit below 1, or another padding side.
    """

    batch_tokens: int = DEFAULT_BATCH_TOKENS
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    padding_side: PaddingSide = "right"
    device: torch.device | str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_tokens < 1 or self.max_batch_size < 1:
            raise UserInputError(
                f"batch_tokens={self.batch_tokens} and max_batch_size={self.max_batch_size} must both be >= 1"
            )
        if self.padding_side not in ("right", "left"):
            raise UserInputError(f"padding_side={self.padding_side!r}; expected 'right' or 'left'")


@dataclass(frozen=True)
class ScoringRules:
    """How a sentence's score is made and a minimal pair judged (docs/protocol.md).

    Attributes:
        reduction: ``sum`` (default) or ``mean`` of the log-probabilities of the scored tokens.
        prefix: What precedes each sentence: ``auto``, ``none``, ``bos`` (default) or a token
            string (``True``/``False``: ``bos``/``none``); see
            :func:`dynamics.syntax.logprobs.encode_with_prefix`.
        npi: How an NPI triple is judged (pairs only): ``intrusive`` (default: good must beat
            both other sentences) or ``last`` (good vs the tuple's last sentence only, as the
            official code; the intrusive sentences are then not scored).

    Raises:
        UserInputError: another reduction or NPI rule.
    """

    reduction: Reduction = "sum"
    prefix: bool | str = "bos"
    npi: NpiRule = "intrusive"

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise UserInputError(f"reduction={self.reduction!r}; expected 'sum' or 'mean'")
        if self.npi not in NPI_RULES:
            raise UserInputError(f"npi={self.npi!r}; expected 'last' or 'intrusive'")

    @classmethod
    def parse(cls, reduction: str, prefix: bool | str, npi: str) -> ScoringRules:
        """The rules from choices spelled as plain strings (a resolved protocol's), checked on creation."""
        # The casts narrow what __post_init__ then checks: anything else is refused there.
        return cls(cast(Reduction, reduction), prefix, cast(NpiRule, npi))
