"""What the study measures under one condition: TSE, BLiMP, perplexity, lm-eval, POS.

:func:`measure_unit` runs the measures a unit asks for with the unit's ablation active and
returns an ``xarray.Dataset`` with a length-1 ``step`` dimension (the unit's number), the
form :class:`store.cube.CubeWriter` writes. Coordinates are the same for every unit (every
TSE case, every loaded BLiMP paradigm and phenomenon, every requested task, the 17
universal POS tags), so the cube's arrays line up; what a unit did not measure is NaN.

:func:`measure_together` runs the TSE, BLiMP and perplexity phases of several units of one
ablation mode in shared forward passes (each batch replicated once per unit, a per-row
ablation mask: :func:`dynamics.ablation.rows.ablate_rows`), so the weights are read once per
batch for all of them; :func:`measure_unit` then takes those phases from its
:class:`Measured` and runs the others (lm-eval, POS) alone, as before.
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

from dynamics.ablation.hooks import Mode, ablate, ablation_function
from dynamics.ablation.rows import ablate_rows, conditions_per_pass
from dynamics.errors import UserInputError
from dynamics.study.conditions import Unit
from dynamics.syntax.blimp import blimp_accuracy
from dynamics.syntax.lmeval import TaskPlan, evaluate_tasks
from dynamics.syntax.pairs import MinimalPair
from dynamics.syntax.perplexity import perplexity_of, token_nll, token_nll_each
from dynamics.syntax.pos import excess_surprisal, pos_surprisal, token_excess
from dynamics.syntax.scoring import DEFAULT_BATCH_TOKENS, PairScores, score_pairs_each
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
#: The phases several units of one ablation mode measure in shared passes (:func:`measure_together`).
SHARED_PHASES = ("tse", "blimp", "ppl")


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


@dataclass
class Measured:
    """The phases of one unit measured in passes shared with other units (:func:`measure_together`)."""

    parts: list[xr.Dataset] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> this unit's share of the passes' time
    token_nll: np.ndarray | None = field(default=None, repr=False)  # its per-token NLL, for its POS phase


def shares_passes(mode: Mode) -> bool:
    """Whether units of ``mode`` can share passes: :func:`dynamics.ablation.rows.ablate_rows` rewrites the
    pre-activation with :func:`dynamics.ablation.hooks.ablation_function`, which activation modes lack."""
    try:
        ablation_function(mode)
    except UserInputError:
        return False
    return True


def measure_unit(
    model: torch.nn.Module,
    number: int,
    unit: Unit,
    mask: torch.Tensor | None,
    inputs: StudyInputs,
    measured: Measured | None = None,
) -> xr.Dataset:
    """Every measure of ``unit`` under its ablation, as unit ``number`` of the cube; the phases in
    ``measured`` (from :func:`measure_together`) are taken from there, not measured again."""
    measured = measured or Measured()
    seconds = dict.fromkeys(PHASES, 0.0) | measured.seconds
    parts: list[xr.Dataset] = list(measured.parts)
    inputs.unit_token_nll = measured.token_nll
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
    parts.append(
        xr.Dataset({"seconds": ("phase", [seconds[p] for p in PHASES], {"units": "s"})}, coords={"phase": list(PHASES)})
    )
    result = xr.merge(parts, compat="no_conflicts", join="exact").expand_dims(step=[number])
    shared = f" ({', '.join(measured.seconds)} in shared passes)" if measured.seconds else ""
    log.info(
        "unit %d (%s): %s%s", number, unit.name, ", ".join(f"{p} {s:.1f}s" for p, s in seconds.items() if s), shared
    )
    return result


def measure_together(
    model: torch.nn.Module,
    units: Sequence[Unit],
    masks: Sequence[torch.Tensor | None],
    inputs: StudyInputs,
    most: int = 0,
) -> list[Measured]:
    """TSE, BLiMP and perplexity of ``units`` (one ablation mode, ``masks[i]`` the neurons of
    ``units[i]``), each batch replicated once per unit in one forward pass.

    The units run in groups of :func:`dynamics.ablation.rows.conditions_per_pass` (at most
    ``most`` when it is positive) per phase. Each unit gets the numbers of its own pass: its
    perplexity and per-token NLL (kept for its POS phase) bit for bit, its sentence scores to
    float32 rounding (see tests/test_row_ablation.py). A phase's seconds are shared equally
    among the units of each pass.
    """
    modes = {unit.mode for unit in units}
    if len(modes) != 1:
        raise ValueError(f"units measured together share one ablation mode, got {sorted(modes)}")
    mode = modes.pop()
    if len(masks) != len(units):
        raise ValueError(f"{len(units)} units but {len(masks)} masks")
    measured = [Measured() for _ in units]
    present = {"tse": bool(inputs.tse), "blimp": bool(inputs.blimp), "ppl": inputs.ppl_windows is not None}
    for phase in (p for p in SHARED_PHASES if present[p]):  # a phase without data is left to measure_unit
        chosen = [i for i, unit in enumerate(units) if phase in unit.measures]
        size = conditions_per_pass(len(chosen), _tokens_per_batch(phase, inputs))
        size = min(size, most) if most > 0 else size
        for first in range(0, len(chosen), size):
            run = chosen[first : first + size]
            start = time.perf_counter()
            with ablate_rows(model, [masks[i] for i in run], mode=mode) as copies:
                parts, nll = _shared_phase(phase, model, inputs, copies)
            share = (time.perf_counter() - start) / len(run)
            for c, (i, part) in enumerate(zip(run, parts)):
                measured[i].seconds[phase] = share
                if part is not None:
                    measured[i].parts.append(part)
                if nll is not None:
                    measured[i].token_nll = nll[c]
    return measured


def _tokens_per_batch(phase: str, inputs: StudyInputs) -> int:
    """Tokens one unreplicated batch of ``phase`` holds (what :func:`conditions_per_pass` multiplies)."""
    if phase == "ppl" and inputs.ppl_windows is not None:
        return min(inputs.batch_size, int(inputs.ppl_windows.shape[0])) * int(inputs.ppl_windows.shape[1])
    return DEFAULT_BATCH_TOKENS


def _shared_phase(
    phase: str, model: torch.nn.Module, inputs: StudyInputs, copies: int
) -> tuple[list[xr.Dataset | None], np.ndarray | None]:
    """``phase`` under ``copies`` conditions: one part per condition, and the per-token NLL
    ``[copy, window, token]`` of the perplexity phase."""
    if phase == "tse":
        return _tse_each(model, inputs, copies), None
    if phase == "blimp":
        return _blimp_each(model, inputs, copies), None
    return _ppl_each(model, inputs, copies)


def _score(
    model: torch.nn.Module, inputs: StudyInputs, pairs: Sequence[MinimalPair], reduction: str, copies: int
) -> list[PairScores]:
    with torch.inference_mode():
        return score_pairs_each(
            model,
            inputs.tokenizer,
            pairs,
            copies,
            group_by="case",
            reduction=reduction,  # type: ignore[arg-type]
            prefix=inputs.prefix,
            npi=inputs.npi,  # type: ignore[arg-type]
            keep_pairs=True,
            progress=False,
            differences_only=True,  # the tokens a pair shares before its first difference cancel
        )


def _tse(model: torch.nn.Module, inputs: StudyInputs) -> xr.Dataset | None:
    return _tse_each(model, inputs, 1)[0]


def _tse_each(model: torch.nn.Module, inputs: StudyInputs, copies: int) -> list[xr.Dataset | None]:
    if not inputs.tse:
        return [None] * copies
    return [_tse_dataset(scores, inputs) for scores in _score(model, inputs, inputs.tse, inputs.tse_reduction, copies)]


def _tse_dataset(scores: PairScores, inputs: StudyInputs) -> xr.Dataset:
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
    return _blimp_each(model, inputs, 1)[0]


def _blimp_each(model: torch.nn.Module, inputs: StudyInputs, copies: int) -> list[xr.Dataset | None]:
    if not inputs.blimp:
        return [None] * copies
    scored = _score(model, inputs, inputs.blimp, inputs.blimp_reduction, copies)
    return [_blimp_dataset(scores, inputs) for scores in scored]


def _blimp_dataset(scores: PairScores, inputs: StudyInputs) -> xr.Dataset:
    assert scores.correct is not None  # keep_pairs=True
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
    parts, nll = _ppl_each(model, inputs, 1)
    inputs.unit_token_nll = None if nll is None else nll[0]
    return parts[0]


def _ppl_each(
    model: torch.nn.Module, inputs: StudyInputs, copies: int
) -> tuple[list[xr.Dataset | None], np.ndarray | None]:
    if inputs.ppl_windows is None:
        return [None] * copies, None
    with torch.inference_mode():
        nll = token_nll_each(model, inputs.ppl_windows, copies, batch_size=inputs.batch_size, progress=False)
    values = [perplexity_of(per_copy.sum(dim=1), per_copy.numel()) for per_copy in nll]
    parts: list[xr.Dataset | None] = [
        xr.Dataset({"ppl": ((), value, {"long_name": "perplexity on the corpus windows"})}) for value in values
    ]
    return parts, nll.numpy()


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
