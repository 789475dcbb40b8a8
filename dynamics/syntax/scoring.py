"""Sentence log-probabilities and minimal-pair scoring, batched and exact.

A sentence's score is the sum (or mean) of the log-probabilities, in nats, of its tokens.
Every token is scored by conditioning on one *prefix* token, the model's BOS (or EOS when
it has none), as lm-evaluation-harness does; ``prefix=False`` reproduces the paper's TSE
code, which feeds the sentence alone and so leaves its first token unscored.

Batching: sentences are deduplicated, grouped into *units* (the sentences of one minimal
pair), sorted by token length (longest first, so a batch that does not fit in memory fails
at once) and packed into batches under a token budget (rows x padded length). Rows are
right-padded: a causal model's real tokens never attend to later positions, so right
padding leaves every real position exactly as in an unpadded pass, and the default
``0..n-1`` position ids are correct (transformers 5.x builds ``arange`` position ids for
GPT-NeoX and Llama whatever the attention mask). Left padding is supported for comparison,
with position ids from the attention mask.

Two savings keep the arithmetic to what the scores need: the sentences of a unit share
their common prefix (``the author near the guards`` in ``... laughs`` / ``... laugh``),
which runs once, the suffixes running on its key-value cache; and logits are projected
onto the vocabulary only at positions that predict a scored token (``logits_to_keep``),
never at padding or a row's last position.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import transformers
from tqdm.auto import tqdm

from dynamics.errors import UserInputError

logger = logging.getLogger(__name__)

Reduction = Literal["sum", "mean"]
PaddingSide = Literal["right", "left"]

_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])

#: Default budget of a batch, in tokens (rows x padded length). On CPU the logits of a
#: 50k-vocabulary model then take about 4096 x 50k x 4 B = 0.8 GB.
DEFAULT_BATCH_TOKENS = 4096
#: Rows per batch at most, whatever the budget (short sentences gain nothing past this).
DEFAULT_MAX_BATCH_SIZE = 256


def prefix_token_id(tokenizer: Any, prefix_token: int | str | None = None) -> int:
    """The token every sentence is conditioned on: ``prefix_token`` if given, else BOS, else EOS.

    Args:
        tokenizer: A Hugging Face tokenizer.
        prefix_token: An explicit token id or token string to use instead.

    Raises:
        UserInputError: The token string is unknown, or the tokenizer has neither BOS nor EOS.
    """
    if isinstance(prefix_token, int):
        return prefix_token
    if isinstance(prefix_token, str):
        vocab = tokenizer.get_vocab()  # an unknown-token check would fail where <unk> is the token asked for
        if prefix_token not in vocab:
            raise UserInputError(f"prefix token {prefix_token!r} is not in the tokenizer's vocabulary")
        return int(vocab[prefix_token])
    for candidate in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise UserInputError(
        "the tokenizer has neither a BOS nor an EOS token to condition on; "
        "pass prefix=False (--no-prefix) or an explicit prefix token"
    )


def encode(tokenizer: Any, sentences: Sequence[str]) -> list[list[int]]:
    """Token ids of each sentence, without any special token the tokenizer would add."""
    if not sentences:
        return []
    return [list(ids) for ids in tokenizer(list(sentences), add_special_tokens=False)["input_ids"]]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode (no dropout) and no autograd, restoring the training flag on exit."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _batches(
    units: list[list[int]], lengths: list[int], batch_tokens: int, max_batch_size: int
) -> Iterator[list[list[int]]]:
    """Pack units (lists of sequence indexes kept together), longest first, under the budget."""
    unit_len = [max(lengths[i] for i in unit) for unit in units]
    order = sorted(range(len(units)), key=lambda u: (-unit_len[u], u))
    batch: list[list[int]] = []
    rows = width = 0
    for u in order:
        new_width = max(width, unit_len[u])
        new_rows = rows + len(units[u])
        if batch and (new_rows * new_width > batch_tokens or new_rows > max_batch_size):
            yield batch
            batch, rows, new_width = [], 0, unit_len[u]
        batch.append(units[u])
        rows += len(units[u])
        width = new_width
    if batch:
        yield batch


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _pad(
    rows: Sequence[Sequence[int]], padding_side: PaddingSide = "right"
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Padded ids, attention mask and each row's start offset."""
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    starts = []
    for i, row in enumerate(rows):
        start = 0 if padding_side == "right" else width - len(row)
        ids[i, start : start + len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, start : start + len(row)] = 1
        starts.append(start)
    return ids, mask, starts


def _log_probs_at(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[target]`` per row, as gather - logsumexp (one temporary less)."""
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float()
    return (picked - torch.logsumexp(logits.float(), dim=-1)).cpu()


def _forward_log_probs(
    model: torch.nn.Module,
    units: list[list[list[int]]],
    device: torch.device,
    padding_side: PaddingSide,
) -> list[list[torch.Tensor]]:
    """Log-probabilities of tokens 1..n-1 of each row given the tokens before it (float32).

    Units of several rows sharing a first token run in two passes: their common prefix
    once, then each row's suffix on top of the prefix's key-value cache (right padding
    only). The rest run in one pass. Logits are never projected at padding or at a row's
    last position.
    """
    out: list[list[torch.Tensor] | None] = [None] * len(units)
    shared = [
        min(min(_common_prefix(unit[0], row) for row in unit), min(len(row) for row in unit) - 1)
        if len(unit) > 1 and padding_side == "right" else 0
        for unit in units
    ]
    two_pass = [u for u, n in enumerate(shared) if n >= 1]
    # A sliding window counts padded positions too: the prefix's padding would shorten it.
    window = _sliding_window(model)
    if two_pass and window is not None:
        span = max(shared[u] for u in two_pass) + max(len(r) - shared[u] for u in two_pass for r in units[u])
        two_pass = two_pass if span < window else []
    if two_pass and _accepts(model, "past_key_values"):
        results = _prefix_pass(model, [units[u] for u in two_pass], [shared[u] for u in two_pass], device)
        if results is not None:
            for u, result in zip(two_pass, results):
                out[u] = result
    rest = [u for u in range(len(units)) if out[u] is None]
    if rest:
        rows = [row for u in rest for row in units[u]]
        ids, mask, starts = _pad(rows, padding_side)
        keep = torch.zeros_like(ids, dtype=torch.bool)
        for i, row in enumerate(rows):
            keep[i, starts[i] : starts[i] + len(row) - 1] = True
        targets = torch.zeros_like(ids)
        targets[:, :-1] = ids[:, 1:]
        kwargs: dict[str, Any] = {
            "input_ids": ids.to(device), "attention_mask": mask.to(device), "use_cache": False
        }
        if padding_side == "left":
            kwargs["position_ids"] = (kwargs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        flat = _log_probs_at(_kept_logits(model, kwargs, keep.to(device)), targets[keep].to(device))
        per_row = iter(torch.split(flat, keep.sum(dim=1).tolist()))
        for u in rest:
            out[u] = [next(per_row) for _ in units[u]]
    return out  # type: ignore[return-value]


def _prefix_pass(
    model: torch.nn.Module, units: list[list[list[int]]], shared: list[int], device: torch.device
) -> list[list[torch.Tensor]] | None:
    """Two passes: each unit's first ``shared`` tokens once, then every row's suffix on the
    cached prefix. ``None`` when the model returns no key-value cache."""
    prefix_ids, prefix_mask, _ = _pad([unit[0][:n] for unit, n in zip(units, shared)])
    keep1 = prefix_mask.bool()  # all of them: a prefix's last position predicts each suffix's first token
    targets1 = torch.zeros_like(prefix_ids)
    targets1[:, :-1] = prefix_ids[:, 1:]
    out1 = model(input_ids=prefix_ids.to(device), attention_mask=prefix_mask.to(device), use_cache=True,
                 **_keep_kwargs(model, keep1.to(device)))
    cache = getattr(out1, "past_key_values", None)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        return None
    logits1 = out1.logits[keep1.to(device)] if out1.logits.ndim == 3 else out1.logits
    lp1 = _log_probs_at(logits1, targets1[keep1].to(device))  # wrong at each prefix's last position
    owner = torch.tensor([u for u, unit in enumerate(units) for _ in unit])
    last = torch.cumsum(torch.tensor(shared), 0)[owner] - 1  # row -> its prefix's last position in logits1
    heads = _log_probs_at(logits1[last.to(device)],
                          torch.tensor([row[n] for unit, n in zip(units, shared) for row in unit], device=device))
    suffix_ids, suffix_mask, _ = _pad([row[n:] for unit, n in zip(units, shared) for row in unit])
    cache.batch_select_indices(owner.to(device))
    keep2 = suffix_mask.bool()
    keep2[torch.arange(len(owner)), suffix_mask.sum(dim=1) - 1] = False
    targets2 = torch.zeros_like(suffix_ids)
    targets2[:, :-1] = suffix_ids[:, 1:]
    offsets = torch.tensor(shared)[owner]
    kwargs = {
        "input_ids": suffix_ids.to(device),
        "attention_mask": torch.cat([prefix_mask[owner], suffix_mask], dim=1).to(device),
        "position_ids": (offsets[:, None] + torch.arange(suffix_ids.shape[1])[None]).to(device),
        "past_key_values": cache,
        "use_cache": True,
    }
    lp2 = _log_probs_at(_kept_logits(model, kwargs, keep2.to(device)), targets2[keep2].to(device))
    tails = iter(torch.split(lp2, keep2.sum(dim=1).tolist()))
    results, row = [], 0
    for unit, n in zip(units, shared):
        end = int(last[row])
        common = lp1[end - n + 1 : end]
        results.append([torch.cat([common, heads[row + k : row + k + 1], next(tails)]) for k in range(len(unit))])
        row += len(unit)
    return results


def _keep_kwargs(model: torch.nn.Module, keep: torch.Tensor) -> dict[str, Any]:
    # A boolean [batch, seq] ``logits_to_keep`` is understood from transformers 5 on.
    if _TRANSFORMERS_MAJOR >= 5 and _accepts(model, "logits_to_keep"):
        return {"logits_to_keep": keep}
    return {}


def _sliding_window(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return getattr(config, "sliding_window", None)


def _accepts(model: torch.nn.Module, argument: str) -> bool:
    return argument in inspect.signature(model.forward).parameters


def _kept_logits(model: torch.nn.Module, kwargs: dict[str, Any], keep: torch.Tensor) -> torch.Tensor:
    """Logits at the ``keep`` positions only, ``[keep.sum(), vocab]``.

    transformers >= 5 projects only those positions onto the vocabulary when given a boolean
    ``logits_to_keep``; for a model without the argument all logits are indexed here.
    """
    logits = model(**kwargs, **_keep_kwargs(model, keep)).logits
    if logits.ndim == 3:
        logits = logits[keep]
    if logits.shape[0] != int(keep.sum()):
        raise RuntimeError(f"logits of shape {tuple(logits.shape)} for {int(keep.sum())} kept positions")
    return logits


def token_log_probs(
    model: torch.nn.Module,
    token_ids: Sequence[Sequence[int]],
    prefix_id: int | None,
    *,
    units: Sequence[Sequence[int]] | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    device: torch.device | str | None = None,
    padding_side: PaddingSide = "right",
    progress: bool = True,
) -> list[np.ndarray]:
    """Log-probability (nats, float64) of every scored token of every sequence.

    Args:
        model: A causal language model returning ``.logits``.
        token_ids: One list of token ids per sequence (no special tokens).
        prefix_id: Token prepended to every sequence, so that all its tokens are scored;
            ``None`` scores tokens 1..n-1 only (the first is unscored).
        units: Groups of sequence indexes to keep in one batch (the two or three sentences
            of a minimal pair); every index must appear in exactly one unit. The first
            sequence of a unit is its anchor: the others' log-probabilities over the prefix
            they share with it are taken from it instead of recomputed. Default: each
            sequence alone.
        batch_tokens: Budget of a batch in tokens (rows x padded length); a unit longer
            than the budget still runs, alone.
        max_batch_size: Rows per batch at most.
        device: Where the inputs go; default the model's device.
        padding_side: ``right`` (default) or ``left``; both give the same scores.
        progress: Show a tqdm bar over sequences.

    Returns:
        One array per sequence, ``len(ids)`` long with a prefix, ``len(ids) - 1`` without
        (empty when nothing is scored).
    """
    if batch_tokens < 1 or max_batch_size < 1:
        raise UserInputError(
            f"batch_tokens={batch_tokens} and max_batch_size={max_batch_size} must both be >= 1"
        )
    if padding_side not in ("right", "left"):
        raise UserInputError(f"padding_side={padding_side!r}; expected 'right' or 'left'")
    rows = [([prefix_id] if prefix_id is not None else []) + list(ids) for ids in token_ids]
    results: list[np.ndarray] = [np.zeros(0, dtype=np.float64) for _ in rows]
    lengths = [len(r) for r in rows]
    if units is None:
        units = [[i] for i in range(len(rows))]
    # A row of length < 2 has nothing to predict: leave it out of the forward passes.
    units = [[i for i in unit if lengths[i] >= 2] for unit in units]
    units = [unit for unit in units if unit]
    device = torch.device(device) if device is not None else model_device(model)
    with eval_mode(model), tqdm(
        total=sum(len(u) for u in units), unit="sent", desc="scoring", disable=not progress
    ) as bar:
        for batch in _batches(units, lengths, batch_tokens, max_batch_size):
            unit_rows = [[rows[i] for i in unit] for unit in batch]
            for unit, unit_lp in zip(batch, _forward_log_probs(model, unit_rows, device, padding_side)):
                for i, lp in zip(unit, unit_lp):
                    results[i] = lp.numpy().astype(np.float64)
            bar.update(sum(len(unit) for unit in batch))
    return results


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
    reduction: Reduction = "sum",
    prefix: bool = True,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    device: torch.device | str | None = None,
    progress: bool = True,
    *,
    prefix_token: int | str | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    padding_side: PaddingSide = "right",
) -> np.ndarray:
    """Log-probability of each sentence (float64, nats), batched.

    Repeated sentences are scored once. See :func:`token_log_probs` for the batching
    arguments and :func:`prefix_token_id` for ``prefix_token``.
    """
    _check_reduction(reduction)
    unique, index = _deduplicate(sentences)
    units = [[i] for i in range(len(unique))]
    per_token = _score_unique(
        model, tokenizer, unique, units, prefix, prefix_token, batch_tokens, max_batch_size,
        device, padding_side, progress,
    )
    return reduce_log_probs(per_token, reduction)[index] if sentences else np.zeros(0)


@dataclass(frozen=True)
class PairScores:
    """Minimal-pair results: accuracy and mean margin per group, optionally per pair.

    A pair is correct when its good sentence scores strictly higher than its bad one and,
    for NPI triples, than its intrusive one too. The margin is ``good - bad``.
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
            data |= {
                "good": ("pair", self.good),
                "bad": ("pair", self.bad),
                "intrusive": ("pair", self.intrusive),
                "correct": ("pair", self.correct),
                "pair_group": ("pair", self.pair_group),
            }
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
    )


def score_pairs(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: Sequence[Any],
    group_by: str = "case",
    reduction: Reduction = "sum",
    prefix: bool = True,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    device: torch.device | str | None = None,
    keep_pairs: bool = False,
    progress: bool = True,
    *,
    prefix_token: int | str | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    padding_side: PaddingSide = "right",
) -> PairScores:
    """Score minimal pairs: accuracy and mean margin (good - bad) per group.

    Args:
        model: A causal language model.
        tokenizer: Its Hugging Face tokenizer.
        pairs: Records with attributes (or mapping keys) ``good``, ``bad``, ``group_by``
            and, optionally, ``intrusive`` (NPI triples: correct only if good beats both).
        group_by: The record field that labels groups, e.g. ``case`` or ``paradigm``.
        reduction: ``sum`` (default) or ``mean`` over scored tokens.
        prefix: Condition every sentence on BOS/EOS (default) or leave its first token
            unscored (the paper's code).
        batch_tokens: Token budget of a batch; both (or all three) sentences of a pair
            always go in the same batch.
        device: Where the inputs go; default the model's device.
        keep_pairs: Keep per-pair scores in the result.
        progress: Show a tqdm bar.
        prefix_token: Explicit prefix token (id or string) instead of BOS/EOS.
        max_batch_size: Rows per batch at most.
        padding_side: ``right`` (default) or ``left``.
    """
    _check_reduction(reduction)
    goods = [str(_field(p, "good")) for p in pairs]
    bads = [str(_field(p, "bad")) for p in pairs]
    intrusives = [_field(p, "intrusive", None) for p in pairs]
    labels = [_field(p, group_by) for p in pairs]
    unique, index = _deduplicate(goods + bads + [s for s in intrusives if s is not None])
    n = len(pairs)
    has_intrusive = [s is not None for s in intrusives]
    intrusive_index = np.full(n, -1, dtype=np.int64)
    intrusive_index[np.flatnonzero(has_intrusive)] = index[2 * n :]
    # One unit per pair; a sentence shared with an earlier pair is scored with that pair.
    claimed: set[int] = set()
    units: list[list[int]] = []
    for k in range(n):
        members = [index[k], index[n + k]] + ([intrusive_index[k]] if has_intrusive[k] else [])
        unit = [int(i) for i in dict.fromkeys(members) if i not in claimed]
        claimed.update(unit)
        if unit:
            units.append(unit)
    per_token = _score_unique(
        model, tokenizer, unique, units, prefix, prefix_token, batch_tokens, max_batch_size,
        device, padding_side, progress,
    )
    scores = reduce_log_probs(per_token, reduction)
    intrusive = np.where(intrusive_index >= 0, scores[np.maximum(intrusive_index, 0)], np.nan)
    good, bad = scores[index[:n]], scores[index[n : 2 * n]]
    return summarize_pairs(good, bad, labels, intrusive, group_by, keep_pairs)


def _score_unique(
    model: torch.nn.Module,
    tokenizer: Any,
    sentences: list[str],
    units: list[list[int]],
    prefix: bool,
    prefix_token: int | str | None,
    batch_tokens: int,
    max_batch_size: int,
    device: torch.device | str | None,
    padding_side: PaddingSide,
    progress: bool,
) -> list[np.ndarray]:
    prefix_id = prefix_token_id(tokenizer, prefix_token) if prefix else None
    return token_log_probs(
        model, encode(tokenizer, sentences), prefix_id, units=units, batch_tokens=batch_tokens,
        max_batch_size=max_batch_size, device=device, padding_side=padding_side, progress=progress,
    )


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


def _check_reduction(reduction: str) -> None:
    if reduction not in ("sum", "mean"):
        raise UserInputError(f"reduction={reduction!r}; expected 'sum' or 'mean'")
