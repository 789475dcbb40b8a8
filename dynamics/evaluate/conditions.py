"""An ablation condition: a name, the neurons it ablates (None: the clean model) and the mode."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dynamics.ablation.modes import ablation_mode
from dynamics.errors import UserInputError


@dataclass(frozen=True)
class Condition:
    """One ablation condition: ``mask`` a boolean [layer, neuron] set (or anything
    :func:`dynamics.ablation.hooks.neuron_indices` takes), ``None`` for the clean model."""

    name: str
    mask: Any = None
    mode: str = "negative"


def check_conditions(conditions: Sequence[Condition]) -> None:
    """Refuse an empty list, a repeated name or an unknown mode (one line each)."""
    if not conditions:
        raise UserInputError("an evaluation needs at least one condition")
    names = [c.name for c in conditions]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserInputError(f"condition names must be unique; {', '.join(repeated)} repeated")
    for condition in conditions:
        ablation_mode(condition.mode)
