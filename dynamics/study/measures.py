"""What the study measures under one condition: TSE, BLiMP, perplexity, lm-eval, POS.

:func:`measure_unit` runs the measures a unit asks for with the unit's ablation active and
returns an ``xarray.Dataset`` with a length-1 ``step`` dimension (the unit's number), the
form :class:`store.cube.CubeWriter` writes. Coordinates are the same for every unit (every
TSE case, every loaded BLiMP paradigm and phenomenon, every requested task, the 17
universal POS tags), so the cube's arrays line up; what a unit did not measure is NaN.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from dynamics.ablation import ablate
from dynamics.lmeval import TaskPlan, evaluate_tasks
from dynamics.row_ablation import ablate_rows, conditions_per_pass
from dynamics.study.conditions import Unit
from dynamics.syntax.blimp import blimp_accuracy
from dynamics.syntax.pairs import MinimalPair
from dynamics.syntax.perplexity import perplexity_each
from dynamics.syntax.pos import excess_surprisal, pos_surprisal
from dynamics.syntax.scoring import DEFAULT_BATCH_TOKENS, score_pairs_each
from dynamics.syntax.tse import TSE_CASES

log = logging.getLogger(__name__)

#: Universal POS tags (Universal Dependencies v2), the ``pos`` coordinate.
UPOS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT",
        "SCONJ", "SYM", "VERB", "X")
PHASES = ("tse", "blimp", "ppl", "lmeval", "pos")


@dataclass
class StudyInputs:
    """What every unit is measured on (fixed once per run)."""

    tokenizer: Any
    tse: list[MinimalPair]
    blimp: list[MinimalPair]
    blimp_paradigms: tuple[str, ...]
    ppl_windows: torch.Tensor | None
    tasks: tuple[str, ...]
    task_plan: TaskPlan
    lmeval_limit: int | None
    pos_texts: list[str]
    tagger: Any | None  # None: POS skipped
    reduction: str = "sum"
    prefix: bool = True
    prefix_token: str | None = None
    batch_size: int = 4
    task_path: str | None = None
    seed: int = 0
    clean_pos: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def blimp_terms(self) -> list[str]:
        return sorted({str(p.linguistics_term) for p in self.blimp})


@dataclass
class Measured:
    """Phases of a unit already measured (in a pass shared with other units): their parts and seconds."""

    parts: list[xr.Dataset] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


#: The phases that several units of one ablation mode measure in one pass (:func:`measure_together`).
SHARED_PHASES = ("tse", "blimp", "ppl")


def measure_unit(model: torch.nn.Module, number: int, unit: Unit, mask: torch.Tensor | None,
                 inputs: StudyInputs, measured: Measured | None = None) -> xr.Dataset:
    """Every measure of ``unit`` under its ablation, as unit ``number`` of the cube; the phases in
    ``measured`` (from :func:`measure_together`) are taken from there."""
    measured = measured or Measured()
    seconds = dict.fromkeys(PHASES, 0.0) | measured.seconds
    parts: list[xr.Dataset] = list(measured.parts)
    ablation = ablate(model, mask, mode=unit.mode) if mask is not None else nullcontext()
    with ablation:
        for phase, measure in (("tse", _tse), ("blimp", _blimp), ("ppl", _ppl), ("lmeval", _lmeval), ("pos", _pos)):
            if phase not in unit.measures or phase in measured.seconds:
                continue
            start = time.perf_counter()
            part = measure(model, inputs)
            seconds[phase] = time.perf_counter() - start
            if part is not None:
                parts.append(part)
    parts.append(xr.Dataset({"seconds": ("phase", [seconds[p] for p in PHASES], {"units": "s"})},
                            coords={"phase": list(PHASES)}))
    result = xr.merge(parts, compat="no_conflicts", join="exact").expand_dims(step=[number])
    log.info("unit %d (%s): %s", number, unit.name, ", ".join(f"{p} {s:.1f}s" for p, s in seconds.items() if s))
    return result


def measure_together(model: torch.nn.Module, units: Sequence[Unit], masks: Sequence[torch.Tensor | None],
                     inputs: StudyInputs) -> list[Measured]:
    """TSE, BLiMP and perplexity of several units of one ablation mode, each batch replicated once
    per unit (:func:`dynamics.row_ablation.ablate_rows`): the weights are read once per batch for
    all of them. A phase's seconds are shared equally among the units that measured it."""
    modes = {unit.mode for unit in units}
    if len(modes) > 1:
        raise ValueError(f"units measured together share one ablation mode, got {sorted(modes)}")
    measured = [Measured() for _ in units]
    for phase in SHARED_PHASES:
        chosen = [i for i, unit in enumerate(units) if phase in unit.measures]
        tokens = DEFAULT_BATCH_TOKENS
        if phase == "ppl" and inputs.ppl_windows is not None:
            tokens = inputs.batch_size * int(inputs.ppl_windows.shape[1])
        size = conditions_per_pass(len(chosen), tokens)
        for first in range(0, len(chosen), size):
            run = chosen[first : first + size]
            start = time.perf_counter()
            with ablate_rows(model, [masks[i] for i in run], mode=units[run[0]].mode) as copies:
                parts = _SHARED_MEASURES[phase](model, inputs, copies)
            share = (time.perf_counter() - start) / len(run)
            for i, part in zip(run, parts):
                measured[i].seconds[phase] = share
                if part is not None:
                    measured[i].parts.append(part)
    return measured


def _score(model: torch.nn.Module, inputs: StudyInputs, pairs: Sequence[MinimalPair], copies: int = 1) -> list[Any]:
    with torch.inference_mode():
        return score_pairs_each(model, inputs.tokenizer, pairs, copies, group_by="case",
                                reduction=inputs.reduction, prefix=inputs.prefix,  # type: ignore[arg-type]
                                prefix_token=inputs.prefix_token, keep_pairs=True, progress=False)


def _tse(model: torch.nn.Module, inputs: StudyInputs) -> xr.Dataset | None:
    return _tse_each(model, inputs, 1)[0]


def _tse_each(model: torch.nn.Module, inputs: StudyInputs, copies: int) -> list[xr.Dataset | None]:
    if not inputs.tse:
        return [None] * copies
    return [_tse_dataset(scores) for scores in _score(model, inputs, inputs.tse, copies)]


def _tse_dataset(scores: Any) -> xr.Dataset:
    acc, margin = scores.aligned("accuracy", TSE_CASES), scores.aligned("margin", TSE_CASES)
    return xr.Dataset(
        {
            "tse_acc": ("tse_case", acc, {"long_name": "TSE accuracy (good above bad, and above intrusive for NPI)"}),
            "tse_margin": ("tse_case", margin, {"units": "nats", "long_name": "mean log p(good) - log p(bad)"}),
            "tse_acc_all": ((), scores.overall_accuracy, {"long_name": "TSE accuracy over all pairs"}),
        },
        coords={"tse_case": list(TSE_CASES)},
    )


def _blimp(model: torch.nn.Module, inputs: StudyInputs) -> xr.Dataset | None:
    return _blimp_each(model, inputs, 1)[0]


def _blimp_each(model: torch.nn.Module, inputs: StudyInputs, copies: int) -> list[xr.Dataset | None]:
    if not inputs.blimp:
        return [None] * copies
    return [_blimp_dataset(inputs, scores) for scores in _score(model, inputs, inputs.blimp, copies)]


def _blimp_dataset(inputs: StudyInputs, scores: Any) -> xr.Dataset:
    acc = blimp_accuracy(inputs.blimp, scores.correct)
    terms = inputs.blimp_terms
    return xr.Dataset(
        {
            "blimp_acc": ("blimp_paradigm", [acc.per_paradigm.get(p, np.nan) for p in inputs.blimp_paradigms],
                          {"long_name": "BLiMP accuracy per paradigm"}),
            "blimp_term_acc": ("blimp_phenomenon", [acc.per_term[t] for t in terms],
                               {"long_name": "BLiMP accuracy per phenomenon (linguistics_term), pooled"}),
            "blimp_acc_all": ((), acc.overall, {"long_name": "BLiMP accuracy over all pairs"}),
        },
        coords={"blimp_paradigm": list(inputs.blimp_paradigms), "blimp_phenomenon": terms},
    )


def _ppl(model: torch.nn.Module, inputs: StudyInputs) -> xr.Dataset | None:
    return _ppl_each(model, inputs, 1)[0]


def _ppl_each(model: torch.nn.Module, inputs: StudyInputs, copies: int) -> list[xr.Dataset | None]:
    if inputs.ppl_windows is None:
        return [None] * copies
    with torch.inference_mode():
        values = perplexity_each(model, inputs.ppl_windows, copies, batch_size=inputs.batch_size, progress=False)
    return [xr.Dataset({"ppl": ((), value, {"long_name": "perplexity on the corpus windows"})}) for value in values]


_SHARED_MEASURES = {"tse": _tse_each, "blimp": _blimp_each, "ppl": _ppl_each}


def _lmeval(model: torch.nn.Module, inputs: StudyInputs) -> xr.Dataset | None:
    if not inputs.tasks:
        return None
    scores = evaluate_tasks(model, inputs.tokenizer, inputs.task_plan.runnable, inputs.lmeval_limit,
                            include_path=inputs.task_path, seed=inputs.seed)
    values = {metric: [scores.get(t, {}).get(metric, np.nan) for t in inputs.tasks] for metric in ("acc", "acc_norm")}
    return xr.Dataset(
        {
            "lmeval_acc": ("task", values["acc"], {"long_name": "lm-eval acc (NaN: skipped, see attrs lmeval_skipped)"}),
            "lmeval_acc_norm": ("task", values["acc_norm"], {"long_name": "lm-eval acc_norm (NaN where not reported)"}),
        },
        coords={"task": list(inputs.tasks)},
    )


def pos_table(model: torch.nn.Module, inputs: StudyInputs) -> pd.DataFrame:
    with torch.inference_mode():
        return pos_surprisal(model, inputs.tokenizer, inputs.pos_texts, tagger=inputs.tagger, prefix=inputs.prefix,
                             progress=False)


def _pos(model: torch.nn.Module, inputs: StudyInputs) -> xr.Dataset | None:
    if inputs.tagger is None or not inputs.pos_texts or inputs.clean_pos is None:
        return None
    excess = excess_surprisal(inputs.clean_pos, pos_table(model, inputs))
    surprisal = excess["ablated"].reindex(list(UPOS)).to_numpy(dtype=float)
    return xr.Dataset(
        {
            "pos_surprisal": ("pos", surprisal, {"units": "nats", "long_name": "mean word surprisal per POS"}),
            "pos_excess": ("pos", excess["excess"].reindex(list(UPOS)).to_numpy(dtype=float),
                           {"units": "nats", "long_name": "mean surprisal minus the clean model's, same words"}),
        },
        coords={"pos": list(UPOS)},
    )
