"""The one evaluation engine: a loaded model, ablation conditions and benchmarks -> one labelled dataset.

:func:`evaluate` runs each benchmark for every condition. TSE, BLiMP and perplexity run their
conditions side by side, each batch replicated once per condition with that condition's
neurons and mode on its rows (:func:`dynamics.ablation.hooks.ablate_rows`: any modes may
share a pass), as many conditions per pass as :class:`dynamics.evaluate.planning.PassBudget`
allows; each condition gets the numbers of its own one-condition pass (perplexity bit for
bit, sentence scores to float32 rounding: tests/test_row_ablation.py). lm-eval tasks and POS
per word run one condition at a time. Pairs are scored from their first difference on.

The result has a ``condition`` dimension first on every variable (their attributes:
:mod:`dynamics.evaluate.variables`): per-case and per-paradigm summaries, each item's margin
(``tse_item_margin``, ``blimp_item_margin``) and each perplexity window's NLL, so that any two
conditions (or steps, or cubes) can be compared item by item.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from dynamics.ablation.hooks import ablate, ablate_rows
from dynamics.evaluate import phases as run
from dynamics.evaluate.benchmarks import PHASES, Benchmarks
from dynamics.evaluate.conditions import Condition, check_conditions
from dynamics.evaluate.planning import PassBudget
from dynamics.evaluate.variables import attrs
from dynamics.execution.progress import progress_bar
from dynamics.syntax.scoring import DEFAULT_BATCH_TOKENS


def evaluate(
    model: torch.nn.Module,
    conditions: Sequence[Condition],
    benchmarks: Benchmarks,
    budget: PassBudget | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Every benchmark of ``benchmarks`` under every condition, as one dataset over ``condition``.

    Args:
        model: a model of a supported family, in eval mode.
        conditions: the conditions, in the order of the result's ``condition`` coordinate.
        benchmarks: what to measure; an empty benchmark is left out of the result.
        budget: how many conditions may share a pass (default: the CPU's :class:`PassBudget`).
        progress: show a bar over the passes and per-condition runs, and one over each pass's
            sentences or windows.

    Raises:
        UserInputError: no condition, a repeated name or an unknown mode.
    """
    check_conditions(conditions)
    budget = budget or PassBudget()
    work = _Work(conditions)
    present = benchmarks.phases()
    units = _planned_units(len(conditions), benchmarks, budget, present)
    with torch.inference_mode(), progress_bar(total=units, desc="evaluate", unit="pass", disable=not progress) as bar:
        for phase in ("tse", "blimp"):
            if phase in present:
                _pairs(model, benchmarks, budget, phase, work, bar, progress)
        if "ppl" in present:
            _corpus(model, benchmarks, budget, work, bar, progress)
        if "lmeval" in present or (benchmarks.pos is not None and benchmarks.pos.unit == "words"):
            _one_at_a_time(model, benchmarks, work, bar)
    return work.dataset()


class _Work:
    """Each condition's parts and phase seconds, gathered as the phases run."""

    def __init__(self, conditions: Sequence[Condition]) -> None:
        self.conditions = list(conditions)
        self.parts: list[list[xr.Dataset]] = [[] for _ in conditions]
        self.seconds = np.zeros((len(conditions), len(PHASES)))

    def add(self, index: int, part: xr.Dataset | None) -> None:
        if part is not None:
            self.parts[index].append(part)

    def spend(self, indices: Sequence[int], phase: str, seconds: float) -> None:
        """Share ``seconds`` of a pass equally among the conditions that shared it."""
        self.seconds[list(indices), PHASES.index(phase)] += seconds / len(indices)

    def dataset(self) -> xr.Dataset:
        merged = [xr.merge(parts, compat="no_conflicts", join="exact") for parts in self.parts]
        names = pd.Index([c.name for c in self.conditions], name="condition", dtype=object)
        out = xr.concat(merged, dim=names, data_vars="all", coords="minimal", compat="override", join="exact")
        out["eval_seconds"] = (("condition", "eval_phase"), self.seconds, attrs("eval_seconds"))
        out = out.assign_coords(eval_phase=list(PHASES))
        return out.transpose("condition", ...)


@contextmanager
def _ablated(model: torch.nn.Module, conditions: Sequence[Condition]) -> Iterator[int]:
    with ablate_rows(model, [c.mask for c in conditions], [c.mode for c in conditions]) as copies:
        yield copies


def _pairs(
    model: torch.nn.Module,
    benchmarks: Benchmarks,
    budget: PassBudget,
    phase: str,
    work: _Work,
    bar: Any,
    progress: bool = False,
) -> None:
    """TSE or BLiMP: the conditions in passes of as many as the budget allows."""
    pairs = benchmarks.tse if phase == "tse" else benchmarks.blimp
    for chunk in budget.chunks(len(work.conditions), DEFAULT_BATCH_TOKENS):
        bar.set_postfix_str(f"{phase}: {', '.join(work.conditions[c].name for c in chunk)}")
        start = time.perf_counter()
        with _ablated(model, [work.conditions[c] for c in chunk]) as copies:
            scored = run.score(model, benchmarks, phase, copies, progress)
        for c, scores in zip(chunk, scored):
            work.add(c, run.tse_dataset(scores, pairs) if phase == "tse" else run.blimp_dataset(scores, benchmarks))
        work.spend(chunk, phase, time.perf_counter() - start)
        bar.update()


def _corpus(
    model: torch.nn.Module, benchmarks: Benchmarks, budget: PassBudget, work: _Work, bar: Any, progress: bool = False
) -> None:
    """Perplexity (and POS per model token) of the corpus windows, conditions side by side."""
    windows = benchmarks.ppl_windows
    assert windows is not None
    pos_tokens = benchmarks.pos is not None and benchmarks.pos.unit == "tokens"
    tokens = min(benchmarks.batch_size, int(windows.shape[0])) * int(windows.shape[1])
    for chunk in budget.chunks(len(work.conditions), tokens):
        bar.set_postfix_str(f"ppl: {', '.join(work.conditions[c].name for c in chunk)}")
        start = time.perf_counter()
        with _ablated(model, [work.conditions[c] for c in chunk]) as copies:
            nll = run.corpus_nll(model, benchmarks, copies, progress)
        for c, per_condition in zip(chunk, nll):
            work.add(c, run.ppl_dataset(per_condition))
        work.spend(chunk, "ppl", time.perf_counter() - start)
        if pos_tokens:
            start = time.perf_counter()
            for c, per_condition in zip(chunk, nll):
                work.add(c, run.pos_token_dataset(per_condition.numpy(), benchmarks))
            work.spend(chunk, "pos", time.perf_counter() - start)
        bar.update()


def _one_at_a_time(model: torch.nn.Module, benchmarks: Benchmarks, work: _Work, bar: Any) -> None:
    """lm-eval tasks and POS per word: each condition alone, its ablation active."""
    for c, condition in enumerate(work.conditions):
        bar.set_postfix_str(f"lm-eval/POS: {condition.name}")
        with ablate(model, condition.mask, condition.mode) if condition.mask is not None else nullcontext():
            for phase, measure in (("lmeval", run.lmeval_dataset), ("pos", run.pos_word_dataset)):
                start = time.perf_counter()
                work.add(c, measure(model, benchmarks))
                work.spend([c], phase, time.perf_counter() - start)
        bar.update()


def _planned_units(n: int, benchmarks: Benchmarks, budget: PassBudget, present: tuple[str, ...]) -> int:
    """How many passes and per-condition runs :func:`evaluate` will make (the progress bar's total)."""
    total = sum(len(budget.chunks(n, DEFAULT_BATCH_TOKENS)) for phase in ("tse", "blimp") if phase in present)
    if "ppl" in present and benchmarks.ppl_windows is not None:
        windows = benchmarks.ppl_windows
        total += len(budget.chunks(n, min(benchmarks.batch_size, int(windows.shape[0])) * int(windows.shape[1])))
    if "lmeval" in present or (benchmarks.pos is not None and benchmarks.pos.unit == "words"):
        total += n
    return total
