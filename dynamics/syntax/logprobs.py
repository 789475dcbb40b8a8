"""Exact, batched log-probabilities of every token of many sentences.

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
onto the vocabulary only at positions that predict a scored token, never at padding or a
row's last position. Every model call goes through :mod:`dynamics.models.modelcalls`, which finds
by behaviour whether a model supports both savings and falls back (with a debug line)
where it does not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from dynamics.errors import UserInputError
from dynamics.execution.progress import progress_bar
from dynamics.models.cpu_threads import map_batches
from dynamics.models.modelcalls import (
    capabilities,
    decoder_states,
    eval_mode,
    hidden_log_probs,
    kept_log_probs,
    model_device,
    replicate_rows,
    select_rows,
    sliding_window,
)
from dynamics.syntax.settings import Batching, PaddingSide

logger = logging.getLogger(__name__)


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
        "pass --prefix none (or auto) or an explicit prefix token"
    )


def encode(tokenizer: Any, sentences: Sequence[str], special_tokens: bool = False) -> list[list[int]]:
    """Token ids of each sentence; with ``special_tokens`` as ``tokenizer(..., add_special_tokens=True)`` gives
    them (the tokenizer's own BOS where it adds one), else without any special token."""
    if not sentences:
        return []
    return [list(ids) for ids in tokenizer(list(sentences), add_special_tokens=special_tokens)["input_ids"]]


#: ``--prefix`` values with a meaning of their own; any other value is a token string.
PREFIX_MODES = ("auto", "none", "bos")


def prefix_mode(prefix: bool | str | None) -> str:
    """``--prefix`` as a string: ``True`` (the old spelling) is ``bos``, ``False`` and ``None`` are ``none``."""
    if prefix is True:
        return "bos"
    if prefix is False or prefix is None:
        return "none"
    return str(prefix)


def encode_with_prefix(
    tokenizer: Any, sentences: Sequence[str], prefix: bool | str
) -> tuple[list[list[int]], int | None]:
    """The ids to score and the token prepended to each (``None``: none), for a ``--prefix`` value.

    ``auto``: the tokenizer's own ``add_special_tokens=True`` ids, nothing prepended: every token
    after the first is scored (a tokenizer that adds BOS has every word scored; Pythia's, which
    adds nothing, leaves the first word's first token unscored), exactly as the official code.
    ``none``: the sentence alone. ``bos``: BOS (else EOS) prepended. Any other value: that token
    prepended.

    Raises:
        UserInputError: a token string the tokenizer does not know, or ``bos`` without BOS or EOS.
    """
    mode = prefix_mode(prefix)
    if mode == "auto":
        return encode(tokenizer, sentences, special_tokens=True), None
    ids = encode(tokenizer, sentences)
    if mode == "none":
        return ids, None
    return ids, prefix_token_id(tokenizer, None if mode == "bos" else mode)


def _batches(units: list[list[int]], lengths: list[int], batching: Batching) -> Iterator[list[list[int]]]:
    """Pack units (lists of sequence indexes kept together), longest first, under the budget."""
    unit_len = [max(lengths[i] for i in unit) for unit in units]
    order = sorted(range(len(units)), key=lambda u: (-unit_len[u], u))
    batch: list[list[int]] = []
    rows = width = 0
    for u in order:
        new_width = max(width, unit_len[u])
        new_rows = rows + len(units[u])
        if batch and (new_rows * new_width > batching.batch_tokens or new_rows > batching.max_batch_size):
            yield batch
            batch, rows, new_width = [], 0, unit_len[u]
        batch.append(units[u])
        rows += len(units[u])
        width = new_width
    if batch:
        yield batch


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
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


def _forward_log_probs(
    model: torch.nn.Module,
    units: list[list[list[int]]],
    device: torch.device,
    padding_side: PaddingSide,
    copies: int = 1,
    skips: list[list[int]] | None = None,
) -> list[list[list[torch.Tensor]]]:
    """Log-probabilities of tokens 1..n-1 of each row given the tokens before it (float32),
    per copy: ``[copy][unit][row]``.

    Units of several rows sharing a first token run in two passes when the model can
    continue from a key-value cache (:func:`dynamics.models.modelcalls.capabilities`): their
    common prefix once, then each row's suffix on top of the prefix's cache (right padding
    only). The rest run in one pass. Only positions that predict a scored token are
    projected onto the vocabulary, and of those only from ``skips[unit][row]`` on (earlier
    ones are NaN; the body still runs over them). With ``copies > 1`` every pass carries the
    batch ``copies`` times, one block of rows after the other (one block per ablation
    condition of :func:`dynamics.ablation.hooks.ablate_rows`).
    """
    skips = skips if skips is not None else [[0] * len(unit) for unit in units]
    out: list[list[list[torch.Tensor] | None]] = [[None] * len(units) for _ in range(copies)]
    shared = [
        min(min(common_prefix_length(unit[0], row) for row in unit), min(len(row) for row in unit) - 1)
        if len(unit) > 1 and padding_side == "right"
        else 0
        for unit in units
    ]
    two_pass = [u for u, n in enumerate(shared) if n >= 1]
    # A sliding window counts padded positions too: the prefix's padding would shorten it.
    window = sliding_window(model)
    if two_pass and window is not None:
        span = max(shared[u] for u in two_pass) + max(len(r) - shared[u] for u in two_pass for r in units[u])
        two_pass = two_pass if span < window else []
    if two_pass and capabilities(model).cache_keyword is not None:
        results = _prefix_pass(
            model,
            [units[u] for u in two_pass],
            [shared[u] for u in two_pass],
            device,
            copies,
            [skips[u] for u in two_pass],
        )
        for c in range(copies):
            for u, result in zip(two_pass, results[c]):
                out[c][u] = result
    rest = [u for u in range(len(units)) if out[0][u] is None]
    if rest:
        rows = [row for u in rest for row in units[u]]
        row_skips = [min(k, len(row) - 1) for u in rest for row, k in zip(units[u], skips[u])]
        ids, mask, starts = _pad(rows, padding_side)
        keep = torch.zeros_like(ids, dtype=torch.bool)
        for i, row in enumerate(rows):
            keep[i, starts[i] + row_skips[i] : starts[i] + len(row) - 1] = True
        targets = torch.zeros_like(ids)
        targets[:, :-1] = ids[:, 1:]
        positions = (mask.cumsum(-1) - 1).clamp(min=0).to(device) if padding_side == "left" else None
        flat, _ = kept_log_probs(
            model,
            replicate_rows(ids, copies).to(device),
            replicate_rows(keep, copies).to(device),
            replicate_rows(targets[keep], copies).to(device),
            replicate_rows(mask, copies).to(device),
            None if positions is None else replicate_rows(positions, copies),
        )
        for c, block in enumerate(_per_copy(flat.cpu(), copies)):
            per_row = iter(torch.split(block, keep.sum(dim=1).tolist()))
            i = 0
            for u in rest:
                out[c][u] = []
                for _ in units[u]:
                    out[c][u].append(_after_nan(row_skips[i], next(per_row)))  # type: ignore[union-attr]
                    i += 1
    return out  # type: ignore[return-value]


def _per_copy(values: torch.Tensor, copies: int) -> list[torch.Tensor]:
    """The ``copies`` equal blocks of ``values`` (empty blocks when it is empty)."""
    size = values.shape[0] // copies
    return [values[c * size : (c + 1) * size] for c in range(copies)]


def _after_nan(count: int, values: torch.Tensor) -> torch.Tensor:
    """``count`` NaNs (positions not projected) followed by ``values``."""
    return torch.cat([torch.full((count,), float("nan")), values]) if count else values


def _prefix_pass(
    model: torch.nn.Module,
    units: list[list[list[int]]],
    shared: list[int],
    device: torch.device,
    copies: int = 1,
    skips: list[list[int]] | None = None,
) -> list[list[list[torch.Tensor]]]:
    """Two passes: each unit's first ``shared`` tokens once, then every row's suffix on the
    cached prefix (selected once per row); ``[copy][unit][row]``. A unit's prefix positions are
    projected from the smallest of its rows' ``skips`` on (at most up to the prefix's last
    position, which always is: it predicts each row's first suffix token)."""
    skips = skips if skips is not None else [[0] * len(unit) for unit in units]
    prefix_ids, prefix_mask, _ = _pad([unit[0][:n] for unit, n in zip(units, shared)])
    lengths = torch.tensor(shared)
    first = [min(min(skip), n - 1) for skip, n in zip(skips, shared)]  # a unit's first projected position
    # Positions first..n-2 predict the prefix's own tokens 1..n-1; position n-1 (each row's
    # first suffix token) is projected per row (the heads).
    keep1 = torch.zeros_like(prefix_mask, dtype=torch.bool)
    for u, (start, n) in enumerate(zip(first, shared)):
        keep1[u, start : n - 1] = True
    counts = keep1.sum(dim=1)
    offsets = torch.cumsum(counts, 0) - counts  # a unit's first value among the kept ones
    owner = torch.tensor([u for u, unit in enumerate(units) for _ in unit])
    targets1 = torch.zeros_like(prefix_ids)
    targets1[:, :-1] = prefix_ids[:, 1:]
    heads_targets = torch.tensor([row[n] for unit, n in zip(units, shared) for row in unit])
    copy_owner = torch.cat([owner + c * len(units) for c in range(copies)])
    found = capabilities(model)
    hidden1, cache = decoder_states(
        model,
        replicate_rows(prefix_ids, copies).to(device),
        replicate_rows(prefix_mask, copies).to(device),
        use_cache=True,
    )
    lp1 = hidden_log_probs(
        model, hidden1[replicate_rows(keep1, copies).to(device)], replicate_rows(targets1[keep1], copies).to(device)
    ).cpu()
    last = hidden1[torch.arange(copies * len(units), device=device), replicate_rows(lengths - 1, copies).to(device)]
    heads = hidden_log_probs(model, last[copy_owner.to(device)], replicate_rows(heads_targets, copies).to(device)).cpu()
    suffix_ids, suffix_mask, _ = _pad([row[n:] for unit, n in zip(units, shared) for row in unit])
    select_rows(cache, copy_owner.to(device))
    keep2 = suffix_mask.bool()
    keep2[torch.arange(len(owner)), suffix_mask.sum(dim=1) - 1] = False
    targets2 = torch.zeros_like(suffix_ids)
    targets2[:, :-1] = suffix_ids[:, 1:]
    hidden2, _ = decoder_states(
        model,
        replicate_rows(suffix_ids, copies).to(device),
        replicate_rows(torch.cat([prefix_mask[owner], suffix_mask], dim=1), copies).to(device),
        replicate_rows(lengths[owner][:, None] + torch.arange(suffix_ids.shape[1])[None], copies).to(device),
        cache=cache,
        cache_keyword=found.cache_keyword,
        use_cache=True,
    )
    lp2 = hidden_log_probs(
        model, hidden2[replicate_rows(keep2, copies).to(device)], replicate_rows(targets2[keep2], copies).to(device)
    ).cpu()
    per_copy = []
    for lp1_c, heads_c, lp2_c in zip(_per_copy(lp1, copies), _per_copy(heads, copies), _per_copy(lp2, copies)):
        tails = iter(torch.split(lp2_c, keep2.sum(dim=1).tolist()))
        results, row = [], 0
        for u, unit in enumerate(units):
            common = _after_nan(first[u], lp1_c[int(offsets[u]) : int(offsets[u] + counts[u])])
            results.append([torch.cat([common, heads_c[row + k : row + k + 1], next(tails)]) for k in range(len(unit))])
            row += len(unit)
        per_copy.append(results)
    return per_copy


def token_log_probs(
    model: torch.nn.Module,
    token_ids: Sequence[Sequence[int]],
    prefix_id: int | None,
    batching: Batching = Batching(),
    *,
    units: Sequence[Sequence[int]] | None = None,
    needed_from: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """Log-probability (nats, float64) of every scored token of every sequence.

    Args:
        model: A causal language model returning ``.logits``.
        token_ids: One list of token ids per sequence (no special tokens).
        prefix_id: Token prepended to every sequence, so that all its tokens are scored;
            ``None`` scores tokens 1..n-1 only (the first is unscored).
        batching: Token budget, rows per batch, padding side, device and progress bar
            (:class:`dynamics.syntax.settings.Batching`); none of it changes a score.
        units: Groups of sequence indexes to keep in one batch (the two or three sentences
            of a minimal pair); every index must appear in exactly one unit. The first
            sequence of a unit is its anchor: the others' log-probabilities over the prefix
            they share with it are taken from it instead of recomputed. Default: each
            sequence alone.
        needed_from: Per sequence, the first scored position whose log-probability is wanted;
            earlier positions may come back NaN, never projected onto the vocabulary (the
            model still runs over them). Default: every position.

    Returns:
        One array per sequence, ``len(ids)`` long with a prefix, ``len(ids) - 1`` without
        (empty when nothing is scored).
    """
    return token_log_probs_each(model, token_ids, prefix_id, 1, batching, units=units, needed_from=needed_from)[0]


def token_log_probs_each(
    model: torch.nn.Module,
    token_ids: Sequence[Sequence[int]],
    prefix_id: int | None,
    copies: int,
    batching: Batching = Batching(),
    *,
    units: Sequence[Sequence[int]] | None = None,
    needed_from: Sequence[int] | None = None,
) -> list[list[np.ndarray]]:
    """:func:`token_log_probs` of ``copies`` conditions at once: every batch (packed as for one)
    runs ``copies`` times over in one pass, block ``c`` being condition ``c`` of
    :func:`dynamics.ablation.hooks.ablate_rows`; ``[copy][sequence]``.

    ``needed_from[i]``: the first scored position of sequence ``i`` whose log-probability is
    wanted; the positions before it may come back NaN, never projected onto the vocabulary
    (the model still runs over them). Default: every position.

    On the CPU, batches may run side by side (:func:`dynamics.models.cpu_threads.map_batches`),
    each exactly as alone."""
    if copies < 1:
        raise UserInputError(f"copies={copies}; expected at least 1")
    rows = [([prefix_id] if prefix_id is not None else []) + list(ids) for ids in token_ids]
    needed = _needed_positions(needed_from, len(rows))
    lengths = [len(r) for r in rows]
    kept = _scored_units(units, lengths)
    results = [[np.zeros(0, dtype=np.float64) for _ in rows] for _ in range(copies)]
    device = torch.device(batching.device) if batching.device is not None else model_device(model)
    with (
        eval_mode(model),
        progress_bar(
            total=sum(len(u) for u in kept), unit="sent", desc="scoring", disable=not batching.progress
        ) as bar,
    ):

        def run(batch: list[list[int]]) -> list[list[list[torch.Tensor]]]:
            unit_rows = [[rows[i] for i in unit] for unit in batch]
            skips = [[needed[i] for i in unit] for unit in batch]
            return _forward_log_probs(model, unit_rows, device, batching.padding_side, copies, skips)

        if kept:
            capabilities(model)  # probed here, before batches may run side by side
        batches = list(_batches(kept, lengths, batching))
        for batch, per_copy in zip(batches, map_batches(device, run, batches)):
            _store(results, batch, per_copy)
            bar.update(sum(len(unit) for unit in batch))
    return results


def _needed_positions(needed_from: Sequence[int] | None, count: int) -> list[int]:
    """Each sequence's first wanted position (0 for all when ``needed_from`` is None), checked against ``count``."""
    needed = [0] * count if needed_from is None else [max(0, int(k)) for k in needed_from]
    if len(needed) != count:
        raise UserInputError(f"needed_from has {len(needed)} entries for {count} sequences")
    return needed


def _scored_units(units: Sequence[Sequence[int]] | None, lengths: list[int]) -> list[list[int]]:
    """The units (default: each sequence alone) without their rows of length < 2: those have nothing
    to predict and stay out of the forward passes."""
    if units is None:
        units = [[i] for i in range(len(lengths))]
    kept = [[i for i in unit if lengths[i] >= 2] for unit in units]
    return [unit for unit in kept if unit]


def _store(results: list[list[np.ndarray]], batch: list[list[int]], per_copy: list[list[list[torch.Tensor]]]) -> None:
    """Put one batch's log-probabilities (``[copy][unit][row]``) at their sequences' places in ``results``."""
    for copy_results, copy_lp in zip(results, per_copy):
        for unit, unit_lp in zip(batch, copy_lp):
            for i, lp in zip(unit, unit_lp):
                copy_results[i] = lp.numpy().astype(np.float64)
