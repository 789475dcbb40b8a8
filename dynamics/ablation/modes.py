"""The ablation modes: one table from a mode's name to where it acts and how it rewrites a chosen neuron.

Every hook path (one condition, or one condition per row block of a pass) takes its rewrite
from :data:`MODES`, so a new mode is one entry here (plus its test in tests/test_ablation.py)
and runs everywhere, shared passes included. The names are the official code's.

=========  ============  =========================  ===========================================
mode       site          the chosen neuron becomes  meaning
=========  ============  =========================  ===========================================
negative   pre           act(max(a, 0))             the paper's intervention: negative part gone
positive   pre           act(min(a, 0))             the contrast: positive part gone
both       pre           act(0)                     the pre-activation is zeroed
signflip   activation    abs(act(a))                official ``SelectiveSignFlip``: the
                                                    activation's negative outputs made positive
posrelu    activation    a if a > 0 else act(a)     official ``SelectivePosReLU``: identity on the
                                                    positive side, the activation on the negative
abs_pre    pre           act(abs(a))                the negative side mirrored before the
                                                    activation (magnitude kept, sign lost)
=========  ============  =========================  ===========================================

``a`` is the pre-activation (the output of the family's pre-activation module, the gate of a
gated MLP); a *pre* mode rewrites ``a`` before the nonlinearity, an *activation* mode rewrites
the nonlinearity's output ``act(a)`` (and may read ``a``, its input).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from dynamics.errors import UserInputError

Site = Literal["pre_activation", "activation"]
#: ``rewrite(chosen, inputs)``: ``chosen`` are the chosen columns of the hooked module's output (a
#: gathered copy the rewrite may change in place), ``inputs`` the same columns of its input (the
#: pre-activation, for activation modes; None for pre modes). Returns the new columns.
Rewrite = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _posrelu(chosen: torch.Tensor, inputs: torch.Tensor | None) -> torch.Tensor:
    assert inputs is not None  # an activation-site mode is always given its input
    return torch.where(inputs > 0, inputs, chosen)


@dataclass(frozen=True)
class AblationMode:
    """One mode: its name, the module it hooks, its rewrite and a one-line meaning for reports."""

    name: str
    site: Site
    rewrite: Rewrite
    meaning: str


MODES: dict[str, AblationMode] = {
    mode.name: mode
    for mode in (
        AblationMode(
            "negative",
            "pre_activation",
            lambda chosen, _: chosen.clamp_min_(0),
            "negative pre-activations zeroed, a' = max(a, 0) (the paper's ablation)",
        ),
        AblationMode(
            "positive",
            "pre_activation",
            lambda chosen, _: chosen.clamp_max_(0),
            "positive pre-activations zeroed, a' = min(a, 0) (the contrast)",
        ),
        AblationMode("both", "pre_activation", lambda chosen, _: chosen.zero_(), "pre-activation zeroed, a' = 0"),
        AblationMode(
            "signflip",
            "activation",
            lambda chosen, _: chosen.abs_(),
            "negative activation outputs made positive, |act(a)| (official SelectiveSignFlip)",
        ),
        AblationMode(
            "posrelu",
            "activation",
            _posrelu,
            "identity on positive a, act(a) on negative a (official SelectivePosReLU)",
        ),
        AblationMode(
            "abs_pre",
            "pre_activation",
            lambda chosen, _: chosen.abs_(),
            "negative pre-activations mirrored, a' = |a| (magnitude kept, sign lost)",
        ),
    )
}
#: The modes that rewrite the activation's output rather than its input.
ACTIVATION_MODES: tuple[str, ...] = tuple(name for name, mode in MODES.items() if mode.site == "activation")


def ablation_mode(name: str) -> AblationMode:
    """The mode called ``name``.

    Raises:
        UserInputError: an unknown mode (the message lists the known ones).
    """
    if name not in MODES:
        raise UserInputError(f"ablation mode {name!r} is unknown; use one of {', '.join(MODES)}")
    return MODES[name]


def elementwise(name: str, activation: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Callable:
    """The map of mode ``name`` on one chosen neuron, out of place, for checks and plots.

    Pre-activation modes: ``a -> a'`` (the activation then applies). Activation modes:
    ``a -> `` the neuron's output, which needs ``activation``.

    Raises:
        UserInputError: an unknown mode, or an activation mode without ``activation``.
    """
    mode = ablation_mode(name)
    if mode.site == "pre_activation":
        return lambda a: mode.rewrite(a.clone(), None)
    if activation is None:
        raise UserInputError(f"ablation mode {name!r} rewrites the activation's output: pass the activation")
    act = activation
    return lambda a: mode.rewrite(act(a).clone(), a)
