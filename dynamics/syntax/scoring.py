"""Sentence log-probabilities and minimal-pair scoring, batched and exact.

A sentence's score is the sum (or mean) of the log-probabilities, in nats, of its scored
tokens. What precedes the sentence is the ``prefix`` (:func:`encode_with_prefix`): ``auto``
(the tokenizer's own special tokens, as the official code: Pythia adds none, so the first
token is unscored; Llama-style tokenizers add BOS, so every token is scored), ``none``,
``bos`` (BOS, else EOS, always prepended, as lm-evaluation-harness) or a token string.
NPI triples are judged ``last`` (good vs the tuple's last, ungrammatical sentence, as the
official code) or ``intrusive`` (good must beat the intrusive sentence too).

The batched forward passes live in :mod:`dynamics.syntax.logprobs`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from dynamics.errors import UserInputError
from dynamics.syntax.logprobs import (  # noqa: F401  (re-exported: the scoring API in one place)
    PREFIX_MODES,
    common_prefix_length,
    encode,
    encode_with_prefix,
    prefix_mode,
    prefix_token_id,
    token_log_probs,
    token_log_probs_each,
)
from dynamics.syntax.settings import (  # noqa: F401  (re-exported: the scoring API in one place)
    DEFAULT_BATCH_TOKENS,
    DEFAULT_MAX_BATCH_SIZE,
    Batching,
    NpiRule,
    PaddingSide,
    Reduction,
    ScoringRules,
)

logger = logging.getLogger(__name__)


def reduce_log_probs(log_probs: Sequence[np.ndarray], reduction: Reduction) -> np.ndarray:
    """Sum, or mean over scored tokens (NaN when none is scored), of each sequence."""
    if reduction == "sum":
        return np.array([float(lp.sum()) for lp in log_probs], dtype=np.float64)
    if reduction == "mean":
        return np.array([float(lp.mean()) if lp.size else np.nan for lp in log_probs], dtype=np.float64)
    raise UserInputError(f"reduction={reduction!r}; expected 'sum' or 'mean'")


def score_sentences(
    model: torch.nn.Module,
    tokenizer: Any,
    sentences: Sequence[str],
    rules: ScoringRules = ScoringRules(),
    batching: Batching = Batching(),
) -> np.ndarray:
    """Log-probability of each sentence (float64, nats), batched.

    Repeated sentences are scored once. ``rules``: the reduction and the prefix
    (:class:`dynamics.syntax.settings.ScoringRules`; its NPI rule concerns pairs only);
    ``batching``: see :class:`dynamics.syntax.settings.Batching`.
    """
    unique, index = _deduplicate(sentences)
    ids, prefix_id = encode_with_prefix(tokenizer, unique, rules.prefix)
    per_token = token_log_probs(model, ids, prefix_id, batching)
    return reduce_log_probs(per_token, rules.reduction)[index] if sentences else np.zeros(0)


@dataclass(frozen=True)
class PairScores:
    """Minimal-pair results: accuracy and mean margin per group, optionally per pair.

    A pair is correct when its good sentence scores strictly higher than its bad one and,
    for NPI triples judged ``intrusive``, than its intrusive one too. The margin is ``good - bad``.
    ``item_margin`` (kept with the pairs) is each pair's margin against what it is judged by:
    ``good - bad``, or ``min(good - bad, good - intrusive)`` for a triple judged ``intrusive``, so
    a pair is correct exactly when its ``item_margin`` is above 0.
    """

    group_by: str
    groups: tuple[str, ...]
    accuracy: np.ndarray  # [group]
    margin: np.ndarray  # [group], mean of good - bad
    count: np.ndarray  # [group], pairs
    overall_accuracy: float  # over all pairs (micro average)
    good: np.ndarray | None = None  # [pair] log-probabilities, when kept
    bad: np.ndarray | None = None
    intrusive: np.ndarray | None = None  # NaN where a pair has no intrusive sentence
    pair_group: np.ndarray | None = None  # [pair] group labels
    correct: np.ndarray | None = None  # [pair] booleans
    item_margin: np.ndarray | None = None  # [pair] margin against what the pair is judged by

    def aligned(self, name: str, groups: Sequence[str]) -> np.ndarray:
        """``accuracy``, ``margin`` or ``count`` for ``groups`` in that order; NaN for a group not scored."""
        where = {group: i for i, group in enumerate(self.groups)}
        values = getattr(self, name)
        return np.array([values[where[g]] if g in where else np.nan for g in groups], dtype=np.float64)

    def summary_only(self) -> PairScores:
        """These scores without the per-pair arrays (as ``keep_pairs=False`` gives them)."""
        return replace(self, good=None, bad=None, intrusive=None, pair_group=None, correct=None, item_margin=None)

    def to_dataset(self) -> Any:
        """An ``xarray.Dataset``: ``accuracy``, ``margin``, ``count`` over the group dimension
        (named ``group_by``), and the per-pair variables over ``pair`` when kept."""
        import xarray as xr

        data: dict[str, Any] = {
            "accuracy": (self.group_by, self.accuracy),
            "margin": (self.group_by, self.margin),
            "count": (self.group_by, self.count),
        }
        coords: dict[str, Any] = {self.group_by: list(self.groups)}
        if self.good is not None:
            data |= {"good": ("pair", self.good), "bad": ("pair", self.bad), "intrusive": ("pair", self.intrusive)}
        if self.correct is not None:
            data |= {"correct": ("pair", self.correct), "pair_group": ("pair", self.pair_group)}
        return xr.Dataset(data, coords=coords, attrs={"overall_accuracy": self.overall_accuracy})


def summarize_pairs(
    good: np.ndarray,
    bad: np.ndarray,
    groups: Sequence[str],
    intrusive: np.ndarray | None = None,
    group_by: str = "case",
    keep_pairs: bool = False,
) -> PairScores:
    """Accuracy and mean margin per group from per-pair scores (groups sorted by name).

    Args:
        good: Score of each pair's grammatical sentence.
        bad: Score of each pair's ungrammatical sentence.
        groups: Group label of each pair (case, paradigm, phenomenon, ...).
        intrusive: Score of each pair's intrusive sentence, NaN where there is none.
        group_by: Name of the group dimension in the result.
        keep_pairs: Keep the per-pair arrays in the result.
    """
    good = np.asarray(good, dtype=np.float64)
    bad = np.asarray(bad, dtype=np.float64)
    labels = np.asarray([str(g) for g in groups], dtype=object)
    if not (good.shape == bad.shape == labels.shape):
        raise UserInputError(f"good {good.shape}, bad {bad.shape} and groups {labels.shape} differ in length")
    intrusive = np.full_like(good, np.nan) if intrusive is None else np.asarray(intrusive, dtype=np.float64)
    correct = (good > bad) & (np.isnan(intrusive) | (good > intrusive))
    item_margin = np.where(np.isnan(intrusive), good - bad, np.minimum(good - bad, good - intrusive))
    names = tuple(sorted(set(labels.tolist())))
    member = [labels == name for name in names]
    return PairScores(
        group_by=group_by,
        groups=names,
        accuracy=np.array([correct[m].mean() for m in member], dtype=np.float64),
        margin=np.array([(good[m] - bad[m]).mean() for m in member], dtype=np.float64),
        count=np.array([int(m.sum()) for m in member], dtype=np.int64),
        overall_accuracy=float(correct.mean()) if correct.size else float("nan"),
        good=good if keep_pairs else None,
        bad=bad if keep_pairs else None,
        intrusive=intrusive if keep_pairs else None,
        pair_group=labels.astype(str) if keep_pairs else None,
        correct=correct if keep_pairs else None,
        item_margin=item_margin if keep_pairs else None,
    )


def score_pairs(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: Sequence[Any],
    rules: ScoringRules = ScoringRules(),
    batching: Batching = Batching(),
    *,
    group_by: str = "case",
    keep_pairs: bool = False,
    differences_only: bool = False,
) -> PairScores:
    """Score minimal pairs: accuracy and mean margin (good - bad) per group.

    Args:
        model: A causal language model.
        tokenizer: Its Hugging Face tokenizer.
        pairs: Records with attributes (or mapping keys) ``good``, ``bad``, ``group_by``
            and, optionally, ``intrusive`` (NPI triples).
        rules: The reduction over scored tokens, the prefix and the NPI rule
            (:class:`dynamics.syntax.settings.ScoringRules`; with ``npi="last"`` the intrusive
            sentences are not scored and stay NaN).
        batching: Token budget, rows per batch, padding side, device and progress bar
            (:class:`dynamics.syntax.settings.Batching`); both (or all three) sentences of a
            pair always go in the same batch.
        group_by: The record field that labels groups, e.g. ``case`` or ``paradigm``.
        keep_pairs: Keep per-pair scores in the result.
        differences_only: Leave unprojected the tokens a pair's sentences share before their
            first difference (see :func:`score_pairs_each`); per-sentence scores are then not kept.
    """
    scores = score_pairs_each(
        model, tokenizer, pairs, 1, rules, batching, group_by=group_by, differences_only=differences_only
    )[0]
    return scores if keep_pairs else scores.summary_only()


def score_pairs_each(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: Sequence[Any],
    copies: int,
    rules: ScoringRules = ScoringRules(),
    batching: Batching = Batching(),
    *,
    group_by: str = "case",
    differences_only: bool = False,
) -> list[PairScores]:
    """:func:`score_pairs` under ``copies`` ablation conditions in one pass per batch (inside
    :func:`dynamics.ablation.hooks.ablate_rows`): one :class:`PairScores` per condition, with its
    per-pair arrays (the paired comparisons between conditions need them).

    ``differences_only``: the tokens a pair's sentences share before their first difference
    are not projected onto the vocabulary. Their log-probabilities are the same in every
    sentence of the pair (same context, same token), so they cancel in each comparison and
    margin: with ``sum``, always; with ``mean``, when the pair's sentences score equally many
    tokens (a pair whose lengths differ is scored whole). Accuracy, margin and ``correct`` are
    then those of the whole scores up to float rounding, and the per-sentence scores
    (``good``, ``bad``, ``intrusive``) are left out.
    """
    goods = [str(_field(p, "good")) for p in pairs]
    bads = [str(_field(p, "bad")) for p in pairs]
    intrusives = [_field(p, "intrusive", None) if rules.npi == "intrusive" else None for p in pairs]
    labels = [_field(p, group_by) for p in pairs]
    unique, index = _deduplicate(goods + bads + [s for s in intrusives if s is not None])
    n = len(pairs)
    intrusive_index = np.full(n, -1, dtype=np.int64)
    intrusive_index[np.flatnonzero([s is not None for s in intrusives])] = index[2 * n :]
    members = [[index[k], index[n + k]] + ([intrusive_index[k]] if intrusive_index[k] >= 0 else []) for k in range(n)]
    ids, prefix_id = encode_with_prefix(tokenizer, unique, rules.prefix)
    starts = _difference_starts(ids, prefix_id, members, rules.reduction) if differences_only else np.zeros(n, np.int64)
    per_copy = token_log_probs_each(
        model,
        ids,
        prefix_id,
        copies,
        batching,
        units=_pair_units(members),
        needed_from=_needed_from(members, starts, len(unique)) if differences_only else None,
    )
    results = []
    for per_token in per_copy:
        if differences_only:
            good, bad, intrusive = _pair_scores_from(per_token, members, starts, rules.reduction)
        else:
            scores = reduce_log_probs(per_token, rules.reduction)
            intrusive = np.where(intrusive_index >= 0, scores[np.maximum(intrusive_index, 0)], np.nan)
            good, bad = scores[index[:n]], scores[index[n : 2 * n]]
        summary = summarize_pairs(good, bad, labels, intrusive, group_by, keep_pairs=True)
        results.append(replace(summary, good=None, bad=None, intrusive=None) if differences_only else summary)
    return results


def _pair_units(members: list[list[int]]) -> list[list[int]]:
    """One batching unit per pair (its sentences' indexes); a sentence shared with an earlier pair
    is scored with that pair, and a pair left with none has no unit."""
    claimed: set[int] = set()
    units: list[list[int]] = []
    for member in members:
        unit = [int(i) for i in dict.fromkeys(member) if i not in claimed]
        claimed.update(unit)
        if unit:
            units.append(unit)
    return units


def _needed_from(members: list[list[int]], starts: np.ndarray, sentences: int) -> list[int]:
    """Per sentence, the first position any of its pairs needs: a sentence of several pairs is needed
    from the earliest of their starts."""
    first = np.full(sentences, np.iinfo(np.int64).max, dtype=np.int64)
    for k, member in enumerate(members):
        first[member] = np.minimum(first[member], starts[k])
    return first.tolist()


def _difference_starts(
    ids: Sequence[Sequence[int]], prefix_id: int | None, members: list[list[int]], reduction: str
) -> np.ndarray:
    """Per pair, the first scored position where its sentences can differ (0 for a ``mean``
    pair whose sentences score different numbers of tokens)."""
    rows = [([prefix_id] if prefix_id is not None else []) + list(x) for x in ids]
    starts = np.zeros(len(members), dtype=np.int64)
    for k, member in enumerate(members):
        lengths = {len(rows[m]) for m in member}
        if reduction == "mean" and len(lengths) > 1:
            continue
        shared = min(common_prefix_length(rows[member[0]], rows[m]) for m in member[1:]) if len(member) > 1 else 0
        starts[k] = max(0, shared - 1)  # scored position j predicts token j + 1
    return starts


def _pair_scores_from(
    per_token: list[np.ndarray], members: list[list[int]], starts: np.ndarray, reduction: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Good, bad and intrusive scores of each pair over its positions from ``starts`` on."""
    scores = np.full((3, len(members)), np.nan)
    for k, member in enumerate(members):
        for slot, m in enumerate(member):
            values = per_token[m]
            part = float(values[starts[k] :].sum())
            scores[slot, k] = part if reduction == "sum" else (part / values.size if values.size else np.nan)
    return scores[0], scores[1], scores[2]


def _deduplicate(sentences: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Unique sentences in first-seen order, and each input's index among them."""
    position: dict[str, int] = {}
    index = np.array([position.setdefault(s, len(position)) for s in sentences], dtype=np.int64)
    return list(position), index


def _field(record: Any, name: str, default: Any = ...) -> Any:
    if isinstance(record, dict):
        value = record.get(name, default)
    else:
        value = getattr(record, name, default)
    if value is ...:
        raise UserInputError(f"pair record {record!r} has no field {name!r}")
    return value
