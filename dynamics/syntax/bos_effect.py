"""What the protocol's BOS choice does to a model's perplexity, measured on one window both ways.

The paper protocol (``window_bos = first``, as the official code) lets the tokenizer's leading
special tokens (BOS for Llama-style tokenizers) open the first perplexity window only: every
later window starts mid-text, without them. For a model trained always to see BOS first, that
can move perplexity a lot (96.2 against 29.3 on one model), and its top set is chosen on the
same BOS-less text. :func:`measure_bos_effect` scores one later window without BOS (as the
protocol does) and with BOS put in front, over the same predicted tokens, so the report can
say what the stored perplexity means for this model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from dynamics.syntax.perplexity import token_nll


@dataclass(frozen=True)
class BosEffect:
    """One window's perplexity without and with the leading special tokens, over ``tokens`` predicted tokens."""

    window: int
    tokens: int
    lead_ids: tuple[int, ...]
    ppl_without: float
    ppl_with: float

    @property
    def factor(self) -> float:
        """``ppl_without / ppl_with`` (above 1: the missing BOS makes the text look harder)."""
        return self.ppl_without / self.ppl_with

    def to_attrs(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "tokens": self.tokens,
            "lead_ids": list(self.lead_ids),
            "ppl_without_bos": self.ppl_without,
            "ppl_with_bos": self.ppl_with,
        }


def measure_bos_effect(
    model: torch.nn.Module, windows: torch.Tensor, lead_ids: list[int], window: int = 1
) -> BosEffect | None:
    """Perplexity of window ``window`` (0-based; the first window already has BOS) scored as the
    protocol scores it and with ``lead_ids`` in front, on the clean model as the caller left it.

    Both passes keep the window's length: the window loses its last ``len(lead_ids)`` tokens, and
    both score the same tokens (the window's second onwards), each conditioned on the whole text
    before it in the window. ``None`` when there is nothing to compare (no leading special tokens,
    or no window after the first).
    """
    if not lead_ids or windows.ndim != 2 or windows.shape[0] <= window:
        return None
    core = windows[window, : windows.shape[1] - len(lead_ids)].to(torch.long)
    if core.numel() < 2:
        return None
    lead = torch.tensor(lead_ids, dtype=torch.long)
    without = token_nll(model, core[None], progress=False)[0]
    with_lead = token_nll(model, torch.cat([lead, core])[None], progress=False)[0][len(lead_ids) :]
    predicted = core.numel() - 1
    return BosEffect(
        window=window,
        tokens=predicted,
        lead_ids=tuple(int(i) for i in lead_ids),
        ppl_without=math.exp(float(without.sum()) / predicted),
        ppl_with=math.exp(float(with_lead.sum()) / predicted),
    )
