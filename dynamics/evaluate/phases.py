"""The engine's phases as labelled arrays: minimal pairs (TSE, BLiMP), perplexity windows (with POS per
token), and the per-condition phases (lm-eval tasks, POS per word). Each returns one ``xarray.Dataset``
per condition (no ``condition`` dimension yet; :mod:`dynamics.evaluate.engine` stacks them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import xarray as xr

from dynamics.evaluate.benchmarks import Benchmarks, item_coordinates
from dynamics.evaluate.variables import attrs
from dynamics.syntax.blimp import blimp_accuracy
from dynamics.syntax.lmeval import evaluate_task_outcomes
from dynamics.syntax.pairs import MinimalPair
from dynamics.syntax.perplexity import perplexity_of, token_nll_each
from dynamics.syntax.pos import UPOS, excess_surprisal, pos_surprisal, token_excess
from dynamics.syntax.scoring import PairScores, score_pairs_each
from dynamics.syntax.settings import Batching
from dynamics.syntax.tse import TSE_CASES


def score(
    model: torch.nn.Module, benchmarks: Benchmarks, phase: str, copies: int, progress: bool = False
) -> list[PairScores]:
    """The pairs of ``phase`` (``tse`` or ``blimp``) scored under ``copies`` conditions of one pass
    (``progress``: a bar over its sentences)."""
    pairs = benchmarks.tse if phase == "tse" else benchmarks.blimp
    return score_pairs_each(
        model,
        benchmarks.tokenizer,
        pairs,
        copies,
        benchmarks.scoring.rules(phase),
        Batching(progress=progress),
        group_by="case",
        differences_only=True,  # the tokens a pair shares before its first difference cancel
    )


def tse_dataset(scores: PairScores, pairs: Sequence[MinimalPair]) -> xr.Dataset:
    """Accuracy and mean margin per case, over all pairs, and each pair's margin."""
    assert scores.item_margin is not None  # scored with keep_pairs
    return xr.Dataset(
        {
            "tse_acc": ("tse_case", scores.aligned("accuracy", TSE_CASES), attrs("tse_acc")),
            "tse_margin": ("tse_case", scores.aligned("margin", TSE_CASES), attrs("tse_margin")),
            "tse_acc_all": ((), scores.overall_accuracy, attrs("tse_acc_all")),
            "tse_item_margin": ("tse_item", scores.item_margin.astype(np.float32), attrs("tse_item_margin")),
        },
        coords={"tse_case": list(TSE_CASES), **item_coordinates("tse", pairs)},
    )


def blimp_dataset(scores: PairScores, benchmarks: Benchmarks) -> xr.Dataset:
    """Accuracy per paradigm, per phenomenon and over all pairs, and each pair's margin."""
    assert scores.correct is not None and scores.item_margin is not None  # scored with keep_pairs
    accuracy = blimp_accuracy(benchmarks.blimp, scores.correct)
    terms = benchmarks.blimp_terms
    per_paradigm = [accuracy.per_paradigm.get(p, np.nan) for p in benchmarks.blimp_paradigms]
    return xr.Dataset(
        {
            "blimp_acc": ("blimp_paradigm", per_paradigm, attrs("blimp_acc")),
            "blimp_term_acc": ("blimp_phenomenon", [accuracy.per_term[t] for t in terms], attrs("blimp_term_acc")),
            "blimp_acc_all": ((), accuracy.overall, attrs("blimp_acc_all")),
            "blimp_item_margin": ("blimp_item", scores.item_margin.astype(np.float32), attrs("blimp_item_margin")),
        },
        coords={
            "blimp_paradigm": list(benchmarks.blimp_paradigms),
            "blimp_phenomenon": terms,
            **item_coordinates("blimp", benchmarks.blimp),
        },
    )


def corpus_nll(model: torch.nn.Module, benchmarks: Benchmarks, copies: int, progress: bool = False) -> torch.Tensor:
    """Per-token NLL ``[copy, window, token - 1]`` (float64) of the perplexity windows, ``copies`` conditions
    (``progress``: a bar over the windows)."""
    assert benchmarks.ppl_windows is not None
    return token_nll_each(model, benchmarks.ppl_windows, copies, batch_size=benchmarks.batch_size, progress=progress)


def ppl_dataset(nll: torch.Tensor) -> xr.Dataset:
    """Perplexity and per-window NLL sums from one condition's per-token NLL ``[window, token - 1]``."""
    sums = nll.sum(dim=1)
    predicted = int(nll.shape[1])
    return xr.Dataset(
        {
            "ppl": ((), perplexity_of(sums, nll.numel()), attrs("ppl")),
            "ppl_window_nll": ("window", sums.numpy(), attrs("ppl_window_nll")),
        },
        coords={"window": np.arange(nll.shape[0]), "window_tokens": ("window", np.full(nll.shape[0], predicted))},
    )


def pos_token_dataset(ablated_nll: np.ndarray, benchmarks: Benchmarks) -> xr.Dataset:
    """POS surprisal and excess per model token of the perplexity windows, as the official tagging, and
    each window's excess sums and counts per POS (for paired comparisons over windows)."""
    pos = benchmarks.pos
    assert pos is not None and pos.tags is not None and pos.clean_token_nll is not None
    excess = token_excess(pos.clean_token_nll, ablated_nll, pos.tags)
    tags = np.asarray(pos.tags)[:, 1:]  # the first token of a window is not scored
    index = {tag: i for i, tag in enumerate(UPOS)}
    codes = np.vectorize(lambda tag: index.get(tag, -1), otypes=[np.int64])(tags)
    per_token = np.asarray(ablated_nll, dtype=np.float64) - np.asarray(pos.clean_token_nll, dtype=np.float64)
    sums = np.zeros((tags.shape[0], len(UPOS)))
    counts = np.zeros((tags.shape[0], len(UPOS)), dtype=np.int64)
    window = np.broadcast_to(np.arange(tags.shape[0])[:, None], tags.shape)
    kept = (codes >= 0) & np.isfinite(per_token)
    np.add.at(sums, (window[kept], codes[kept]), per_token[kept])
    np.add.at(counts, (window[kept], codes[kept]), 1)
    return xr.Dataset(
        {
            **_pos_means(excess, "tokens"),
            "pos_window_excess": (("window", "pos"), sums, attrs("pos_window_excess")),
            "pos_window_count": (("window", "pos"), counts, attrs("pos_window_count")),
        },
        coords={"pos": list(UPOS), "window": np.arange(tags.shape[0])},
    )


def pos_word_dataset(model: torch.nn.Module, benchmarks: Benchmarks) -> xr.Dataset | None:
    """POS surprisal and excess per word of the tagged corpus lines, on the model as it is now."""
    pos = benchmarks.pos
    if pos is None or pos.tagger is None or not pos.texts or pos.clean_table is None:
        return None
    table = pos_surprisal(
        model,
        benchmarks.tokenizer,
        list(pos.texts),
        tagger=pos.tagger,
        prefix=benchmarks.scoring.prefix,
        progress=False,
    )
    return xr.Dataset(_pos_means(excess_surprisal(pos.clean_table, table), "words"), coords={"pos": list(UPOS)})


def _pos_means(excess: pd.DataFrame, unit: str) -> dict[str, tuple]:
    """``pos_surprisal`` and ``pos_excess`` from a table indexed by tag with ``ablated`` and ``excess`` means."""
    surprisal = excess["ablated"].reindex(list(UPOS)).to_numpy(dtype=float)
    extra = excess["excess"].reindex(list(UPOS)).to_numpy(dtype=float)
    return {
        "pos_surprisal": ("pos", surprisal, {**attrs("pos_surprisal"), "unit": unit}),
        "pos_excess": ("pos", extra, {**attrs("pos_excess"), "unit": unit}),
    }


def lmeval_dataset(model: torch.nn.Module, benchmarks: Benchmarks) -> xr.Dataset | None:
    """lm-eval ``acc`` and ``acc_norm`` of each task on the model as it is now (NaN: not runnable), and
    each example's ``acc`` (``lmeval_item_correct``) of the tasks that report one."""
    tasks = benchmarks.lmeval
    if tasks is None or not tasks.tasks:
        return None
    outcomes = evaluate_task_outcomes(
        model,
        benchmarks.tokenizer,
        list(tasks.runnable),
        tasks.limit,
        include_path=tasks.task_path,
        seed=tasks.seed,
    )
    scores = outcomes.metrics
    values = {metric: [scores.get(t, {}).get(metric, np.nan) for t in tasks.tasks] for metric in ("acc", "acc_norm")}
    ds = xr.Dataset(
        {
            "lmeval_acc": ("task", values["acc"], attrs("lmeval_acc")),
            "lmeval_acc_norm": ("task", values["acc_norm"], attrs("lmeval_acc_norm")),
        },
        coords={"task": list(tasks.tasks)},
    )
    return ds.merge(lmeval_items_dataset(outcomes.items, tasks.tasks)) if outcomes.items else ds


def lmeval_items_dataset(items: Mapping[str, tuple[np.ndarray, np.ndarray]], tasks: Sequence[str]) -> xr.Dataset:
    """Each example's ``acc`` (1/0) along ``lmeval_item``, task after task in ``tasks`` order, named by
    ``lmeval_item_task`` and ``lmeval_item_doc`` (lm-eval's doc id), so two cubes join item by item."""
    present = [t for t in tasks if t in items]
    labels = np.asarray([t for t in present for _ in items[t][0]], dtype=object)
    docs = np.concatenate([items[t][0] for t in present]).astype(np.int64)
    correct = np.concatenate([items[t][1] for t in present]).astype(np.float32)
    return xr.Dataset(
        {"lmeval_item_correct": ("lmeval_item", correct, attrs("lmeval_item_correct"))},
        coords={
            "lmeval_item": np.arange(len(correct)),
            "lmeval_item_task": ("lmeval_item", labels),
            "lmeval_item_doc": ("lmeval_item", docs),
        },
    )
