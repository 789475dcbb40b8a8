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
from dynamics.study.conditions import Unit
from dynamics.syntax.blimp import blimp_accuracy
from dynamics.syntax.pairs import MinimalPair
from dynamics.syntax.perplexity import perplexity_of, token_nll
from dynamics.syntax.pos import excess_surprisal, pos_surprisal, token_excess
from dynamics.syntax.scoring import score_pairs
from dynamics.syntax.tse import TSE_CASES

log = logging.getLogger(__name__)

#: Universal POS tags (Universal Dependencies v2), the ``pos`` coordinate.
UPOS = (
    "ADJ",
    "ADP",
    "ADV",
    "AUX",
    "CCONJ",
    "DET",
    "INTJ",
    "NOUN",
    "NUM",
    "PART",
    "PRON",
    "PROPN",
    "PUNCT",
    "SCONJ",
    "SYM",
    "VERB",
    "X",
)
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
    tse_reduction: str = "mean"
    blimp_reduction: str = "sum"
    prefix: str = "auto"
    npi: str = "last"
    pos_unit: str = "tokens"
    pos_tags: np.ndarray | None = field(default=None, repr=False)  # [window, token] tags of the perplexity windows
    clean_token_nll: np.ndarray | None = field(default=None, repr=False)
    unit_token_nll: np.ndarray | None = field(default=None, repr=False)  # the current unit's, from its ppl phase
    batch_size: int = 4
    task_path: str | None = None
    seed: int = 0
    clean_pos: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def blimp_terms(self) -> list[str]:
        return sorted({str(p.linguistics_term) for p in self.blimp})


def measure_unit(
    model: torch.nn.Module, number: int, unit: Unit, mask: torch.Tensor | None, inputs: StudyInputs
) -> xr.Dataset:
    """Every measure of ``unit`` under its ablation, as unit ``number`` of the cube."""
    seconds = dict.fromkeys(PHASES, 0.0)
    parts: list[xr.Dataset] = []
    inputs.unit_token_nll = None
    ablation = ablate(model, mask, mode=unit.mode) if mask is not None else nullcontext()
    with ablation:
        for phase, measure in (("tse", _tse), ("blimp", _blimp), ("ppl", _ppl), ("lmeval", _lmeval), ("pos", _pos)):
            if phase not in unit.measures:
                continue
            start = time.perf_counter()
            part = measure(model, inputs)
            seconds[phase] = time.perf_counter() - start
            if part is not None:
                parts.append(part)
    parts.append(
        xr.Dataset({"seconds": ("phase", [seconds[p] for p in PHASES], {"units": "s"})}, coords={"phase": list(PHASES)})
    )
    result = xr.merge(parts, compat="no_conflicts", join="exact").expand_dims(step=[number])
    log.info("unit %d (%s): %s", number, unit.name, ", ".join(f"{p} {s:.1f}s" for p, s in seconds.items() if s))
    return result


def _score(model: torch.nn.Module, inputs: StudyInputs, pairs: Sequence[MinimalPair], reduction: str) -> Any:
    with torch.inference_mode():
        return score_pairs(
            model,
            inputs.tokenizer,
            pairs,
            group_by="case",
            reduction=reduction,  # type: ignore[arg-type]
            prefix=inputs.prefix,
            npi=inputs.npi,  # type: ignore[arg-type]
            keep_pairs=True,
            progress=False,
        )


def _tse(model: torch.nn.Module, inputs: StudyInputs) -> xr.Dataset | None:
    if not inputs.tse:
        return None
    scores = _score(model, inputs, inputs.tse, inputs.tse_reduction)
    acc, margin = scores.aligned("accuracy", TSE_CASES), scores.aligned("margin", TSE_CASES)
    return xr.Dataset(
        {
            "tse_acc": ("tse_case", acc, {"long_name": f"TSE accuracy (good above bad; NPI: vs {inputs.npi})"}),
            "tse_margin": ("tse_case", margin, {"units": "nats", "long_name": "mean log p(good) - log p(bad)"}),
            "tse_acc_all": ((), scores.overall_accuracy, {"long_name": "TSE accuracy over all pairs"}),
        },
        coords={"tse_case": list(TSE_CASES)},
    )


def _blimp(model: torch.nn.Module, inputs: StudyInputs) -> xr.Dataset | None:
    if not inputs.blimp:
        return None
    scores = _score(model, inputs, inputs.blimp, inputs.blimp_reduction)
    acc = blimp_accuracy(inputs.blimp, scores.correct)
    terms = inputs.blimp_terms
    return xr.Dataset(
        {
            "blimp_acc": (
                "blimp_paradigm",
                [acc.per_paradigm.get(p, np.nan) for p in inputs.blimp_paradigms],
                {"long_name": "BLiMP accuracy per paradigm"},
            ),
            "blimp_term_acc": (
                "blimp_phenomenon",
                [acc.per_term[t] for t in terms],
                {"long_name": "BLiMP accuracy per phenomenon (linguistics_term), pooled"},
            ),
            "blimp_acc_all": ((), acc.overall, {"long_name": "BLiMP accuracy over all pairs"}),
        },
        coords={"blimp_paradigm": list(inputs.blimp_paradigms), "blimp_phenomenon": terms},
    )


def _ppl(model: torch.nn.Module, inputs: StudyInputs) -> xr.Dataset | None:
    if inputs.ppl_windows is None:
        return None
    with torch.inference_mode():
        nll = token_nll(model, inputs.ppl_windows, batch_size=inputs.batch_size, progress=False)
    inputs.unit_token_nll = nll.numpy()
    value = perplexity_of(nll.sum(dim=1), nll.numel())
    return xr.Dataset({"ppl": ((), value, {"long_name": "perplexity on the corpus windows"})})


def _lmeval(model: torch.nn.Module, inputs: StudyInputs) -> xr.Dataset | None:
    if not inputs.tasks:
        return None
    scores = evaluate_tasks(
        model,
        inputs.tokenizer,
        inputs.task_plan.runnable,
        inputs.lmeval_limit,
        include_path=inputs.task_path,
        seed=inputs.seed,
    )
    values = {metric: [scores.get(t, {}).get(metric, np.nan) for t in inputs.tasks] for metric in ("acc", "acc_norm")}
    return xr.Dataset(
        {
            "lmeval_acc": (
                "task",
                values["acc"],
                {"long_name": "lm-eval acc (NaN: skipped, see attrs lmeval_skipped)"},
            ),
            "lmeval_acc_norm": ("task", values["acc_norm"], {"long_name": "lm-eval acc_norm (NaN where not reported)"}),
        },
        coords={"task": list(inputs.tasks)},
    )


def pos_table(model: torch.nn.Module, inputs: StudyInputs) -> pd.DataFrame:
    with torch.inference_mode():
        return pos_surprisal(
            model, inputs.tokenizer, inputs.pos_texts, tagger=inputs.tagger, prefix=inputs.prefix, progress=False
        )


def _pos(model: torch.nn.Module, inputs: StudyInputs) -> xr.Dataset | None:
    if inputs.pos_unit == "tokens" and inputs.pos_tags is not None and inputs.clean_token_nll is not None:
        ablated = inputs.unit_token_nll
        if ablated is None:
            assert inputs.ppl_windows is not None  # pos_tags come from them
            with torch.inference_mode():
                ablated = token_nll(model, inputs.ppl_windows, batch_size=inputs.batch_size, progress=False).numpy()
        excess = token_excess(inputs.clean_token_nll, ablated, inputs.pos_tags)
    elif inputs.tagger is None or not inputs.pos_texts or inputs.clean_pos is None:
        return None
    else:
        excess = excess_surprisal(inputs.clean_pos, pos_table(model, inputs))
    surprisal = excess["ablated"].reindex(list(UPOS)).to_numpy(dtype=float)
    return xr.Dataset(
        {
            "pos_surprisal": (
                "pos",
                surprisal,
                {"units": "nats", "long_name": f"mean surprisal per POS (per {inputs.pos_unit[:-1]})"},
            ),
            "pos_excess": (
                "pos",
                excess["excess"].reindex(list(UPOS)).to_numpy(dtype=float),
                {"units": "nats", "long_name": f"mean surprisal minus the clean model's, same {inputs.pos_unit}"},
            ),
        },
        coords={"pos": list(UPOS)},
    )
