"""Surprisal with part-of-speech tags, and the excess surprisal an ablation causes.

Two units (``--pos-unit``): ``tokens`` (the paper's, as the official ``utils/tagging.py``):
every model token inside the perplexity windows gets the tag of the tagger token with the
largest character overlap, the tagger running on the text each window covers
(:func:`dynamics.syntax.pos_tagging.window_token_tags`), and a tag's excess is the mean over its tokens of ablated minus
clean NLL (:func:`token_excess`); ``words`` (strict): per word of separate corpus lines, as
below.

A *tagger* (:mod:`dynamics.syntax.pos_tagging`) is any callable ``text -> [(start_char,
end_char, pos), ...]`` giving the words of a text with their character spans and universal
POS tags; the default one is spaCy's ``en_core_web_sm`` (the ``pos`` extra).

Model tokens are aligned to words by character offsets (a fast tokenizer's offset
mapping): a token belongs to the word its non-space characters overlap most; a token made
only of spaces, or falling between words, belongs to the next word (it is part of what
the model had to predict to reach it). A word's surprisal is the sum of its tokens'
surprisals, ``-log p`` in nats. Words none of whose tokens was scored (the first token
without a prefix) get NaN.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from dynamics.errors import UserInputError
from dynamics.syntax.logprobs import prefix_mode, prefix_token_id, token_log_probs
from dynamics.syntax.pos_tagging import Tagger, spacy_tagger
from dynamics.syntax.settings import DEFAULT_BATCH_TOKENS, Batching

#: Universal POS tags (Universal Dependencies v2), the ``pos`` coordinate of the results.
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

WORD_COLUMNS = ["text", "start", "end", "word", "pos", "surprisal", "n_tokens"]


def align_tokens_to_words(
    text: str, token_offsets: Sequence[tuple[int, int]], words: Sequence[tuple[int, int, str]]
) -> list[int]:
    """Index of the word each token belongs to (-1 only when the text has no word after it).

    Args:
        text: The text both the tokenizer and the tagger saw.
        token_offsets: ``(start, end)`` character span of each token.
        words: ``(start, end, pos)`` of each word, in text order, not overlapping.
    """
    starts = [w[0] for w in words]
    out = []
    for start, end in token_offsets:
        while start < end and text[start].isspace():
            start += 1
        best, best_overlap = -1, 0
        # Words are sorted and disjoint: scan back from the last one starting before the
        # token's end while they still end after its start.
        k = bisect.bisect_left(starts, end) - 1
        while start < end and k >= 0 and words[k][1] > start:
            overlap = min(end, words[k][1]) - max(start, words[k][0])
            if overlap >= best_overlap and overlap > 0:
                best, best_overlap = k, overlap
            k -= 1
        if best < 0:
            after = bisect.bisect_left(starts, start)
            best = after if after < len(words) else -1
        out.append(best)
    return out


def word_surprisals(
    text: str,
    token_offsets: Sequence[tuple[int, int]],
    token_surprisals: Sequence[float] | np.ndarray,
    words: Sequence[tuple[int, int, str]],
    text_index: int = 0,
) -> pd.DataFrame:
    """One row per word: its span, POS, summed surprisal of its tokens, and token count.

    ``token_surprisals`` holds NaN for unscored tokens; a word whose tokens are all
    unscored gets NaN, one with some unscored tokens sums the scored ones.
    """
    owner = align_tokens_to_words(text, token_offsets, words)
    total = np.zeros(len(words))
    scored = np.zeros(len(words), dtype=np.int64)
    count = np.zeros(len(words), dtype=np.int64)
    for k, value in zip(owner, token_surprisals):
        if k < 0:
            continue
        count[k] += 1
        if not np.isnan(value):
            total[k] += value
            scored[k] += 1
    total[scored == 0] = np.nan
    return pd.DataFrame(
        {
            "text": np.full(len(words), text_index, dtype=np.int64),
            "start": [w[0] for w in words],
            "end": [w[1] for w in words],
            "word": [text[w[0] : w[1]] for w in words],
            "pos": [w[2] for w in words],
            "surprisal": total,
            "n_tokens": count,
        },
        columns=WORD_COLUMNS,
    )


def pos_surprisal(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    tagger: Tagger | None = None,
    prefix: bool | str = "bos",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Per-word surprisal with POS tags for each text (run clean, or inside an ablation).

    Args:
        model: A causal language model.
        tokenizer: Its fast Hugging Face tokenizer (offset mapping needed).
        texts: Sentences or short paragraphs (each within the model's context).
        tagger: ``text -> [(start, end, pos)]``; default spaCy ``en_core_web_sm``.
        prefix: ``auto`` (the tokenizer's own special tokens), ``none``, ``bos`` (default: BOS,
            else EOS, so that every token is scored) or a token string (``True``/``False``:
            ``bos``/``none``), as in :func:`dynamics.syntax.scoring.score_pairs`.
        batch_tokens: Token budget of a batch.
        device: Where the inputs go; default the model's device.
        progress: Show a tqdm bar.

    Returns:
        A DataFrame with columns ``text`` (index into ``texts``), ``start``, ``end``,
        ``word``, ``pos``, ``surprisal`` (nats), ``n_tokens``.
    """
    tagger = tagger if tagger is not None else spacy_tagger()
    if not getattr(tokenizer, "is_fast", False):
        raise UserInputError("POS alignment needs a fast tokenizer (character offsets); got a slow one")
    mode = prefix_mode(prefix)
    encoded = tokenizer(list(texts), add_special_tokens=mode == "auto", return_offsets_mapping=True)
    prefix_id = None if mode in ("auto", "none") else prefix_token_id(tokenizer, None if mode == "bos" else mode)
    batching = Batching(batch_tokens=batch_tokens, device=device, progress=progress)
    log_probs = token_log_probs(model, encoded["input_ids"], prefix_id, batching)
    frames = []
    for i, text in enumerate(texts):
        surprisal = -log_probs[i]
        if prefix_id is None and len(encoded["input_ids"][i]) > 0:
            surprisal = np.concatenate([[np.nan], surprisal])
        frames.append(word_surprisals(text, encoded["offset_mapping"][i], surprisal, list(tagger(text)), i))
    if not frames:
        return pd.DataFrame(columns=WORD_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def excess_surprisal(clean: pd.DataFrame, ablated: pd.DataFrame) -> pd.DataFrame:
    """Mean excess surprisal ``ablated - clean`` per POS, over words scored in both runs.

    Args:
        clean: :func:`pos_surprisal` of the clean model.
        ablated: :func:`pos_surprisal` of the ablated model, on the same texts and tagger.

    Returns:
        A DataFrame indexed by ``pos`` (sorted) with columns ``excess`` (mean of
        ablated - clean), ``clean`` and ``ablated`` (mean surprisals) and ``count`` (words).

    Raises:
        UserInputError: The two tables do not list the same words.
    """
    key = ["text", "start", "end", "pos"]
    same_words = len(clean) == len(ablated) and clean[key].reset_index(drop=True).equals(
        ablated[key].reset_index(drop=True)
    )
    if not same_words:
        raise UserInputError(
            "clean and ablated surprisals list different words; score the same texts with the same tagger"
        )
    table = pd.DataFrame(
        {
            "pos": clean["pos"].to_numpy(),
            "clean": clean["surprisal"].to_numpy(dtype=np.float64),
            "ablated": ablated["surprisal"].to_numpy(dtype=np.float64),
        }
    ).dropna()
    table["excess"] = table["ablated"] - table["clean"]
    grouped = table.groupby("pos", sort=True)
    out = grouped[["excess", "clean", "ablated"]].mean()
    out["count"] = grouped.size()
    return out


def token_excess(clean_nll: np.ndarray, ablated_nll: np.ndarray, tags: np.ndarray) -> pd.DataFrame:
    """Mean excess NLL (ablated - clean) per tag over the scored tokens of the windows.

    Args:
        clean_nll: ``[n_windows, window - 1]`` NLL of tokens ``1..`` (the first is unscored).
        ablated_nll: the same under the ablation.
        tags: ``[n_windows, window]`` tags from :func:`window_token_tags`.

    Returns:
        A DataFrame indexed by tag (sorted) with ``excess``, ``clean``, ``ablated`` (means) and ``count``.
    """
    table = pd.DataFrame(
        {
            "pos": np.asarray(tags)[:, 1:].reshape(-1),
            "clean": np.asarray(clean_nll, dtype=np.float64).reshape(-1),
            "ablated": np.asarray(ablated_nll, dtype=np.float64).reshape(-1),
        }
    ).dropna()
    table["excess"] = table["ablated"] - table["clean"]
    grouped = table.groupby("pos", sort=True)
    out = grouped[["excess", "clean", "ablated"]].mean()
    out["count"] = grouped.size()
    return out
