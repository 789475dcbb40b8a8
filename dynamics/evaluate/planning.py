"""How many conditions share a forward pass: each batch is replicated once per condition, so a pass
holds ``conditions x tokens per batch`` tokens, kept under a budget sized by the device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Replicated tokens (rows x length) one pass may hold on the CPU: conditions beyond it run in further passes.
CONDITION_TOKENS = 65536
#: Bytes a replicated token of a pass is taken to need on a GPU, per hidden unit (activations of the
#: residual stream, attention and MLP in flight, float32 worst case): sizes the CUDA budget.
BYTES_PER_TOKEN_PER_HIDDEN = 64
#: The most tokens one pass may hold on a GPU however much memory is free (a kernel-size bound).
MAX_CUDA_TOKENS = 1 << 20


@dataclass(frozen=True)
class PassBudget:
    """``tokens``: replicated tokens one pass may hold; ``most``: conditions per pass at most (0: no cap)."""

    tokens: int = CONDITION_TOKENS
    most: int = 0

    def conditions_per_pass(self, n_conditions: int, tokens_per_batch: int) -> int:
        """How many of ``n_conditions`` share a pass of batches of ``tokens_per_batch`` tokens (at least one)."""
        size = conditions_per_pass(n_conditions, tokens_per_batch, self.tokens)
        return min(size, self.most) if self.most > 0 else size

    def chunks(self, n_conditions: int, tokens_per_batch: int) -> list[range]:
        """The condition indices ``0..n_conditions-1`` in runs of :meth:`conditions_per_pass`."""
        size = self.conditions_per_pass(n_conditions, tokens_per_batch)
        return [range(first, min(first + size, n_conditions)) for first in range(0, n_conditions, size)]


def conditions_per_pass(n_conditions: int, tokens_per_batch: int, budget: int = CONDITION_TOKENS) -> int:
    """How many conditions share a pass so that ``conditions x tokens_per_batch`` stays under ``budget``
    (at least one)."""
    return max(1, min(n_conditions, budget // max(1, tokens_per_batch)))


def device_token_budget(device: str, free_bytes: int | None, hidden: int) -> int:
    """Replicated tokens per pass: :data:`CONDITION_TOKENS` on the CPU; on a GPU what half its free memory
    holds at :data:`BYTES_PER_TOKEN_PER_HIDDEN` bytes per token and hidden unit (at least the CPU's,
    at most :data:`MAX_CUDA_TOKENS`), so a GPU runs many conditions per pass."""
    if not device.startswith("cuda") or free_bytes is None:
        return CONDITION_TOKENS
    fits = free_bytes // 2 // max(1, BYTES_PER_TOKEN_PER_HIDDEN * hidden)
    return int(max(CONDITION_TOKENS, min(MAX_CUDA_TOKENS, fits)))


def pass_budget_for(model: Any, most: int = 0) -> PassBudget:
    """The budget of a model on its device: :func:`device_token_budget` with the memory free now and the
    width of its embeddings, at most ``most`` conditions per pass (0: no cap)."""
    import torch

    parameter = next(model.parameters())
    device = str(parameter.device)
    free = int(torch.cuda.mem_get_info(parameter.device)[0]) if parameter.device.type == "cuda" else None
    hidden = int(model.get_input_embeddings().weight.shape[-1])
    return PassBudget(device_token_budget(device, free, hidden), most)
