r"""Token windows: the text every statistic is computed on.

A :class:`CorpusSpec` fixes the exact token ids (together with the tokenizer): the text is
tokenized as one string, cut into windows of ``window`` tokens whose starts are ``stride``
tokens apart (default: non-overlapping) from token ``start``, and the last partial window
is dropped. ``window_bos`` says where the tokenizer's own leading special tokens (BOS for
Llama-style tokenizers, nothing for Pythia's) go: ``none`` nowhere; ``first`` the text is
tokenized once with them, so only the first window starts with BOS (the official code);
``every`` each window starts with them. The ids are hashed by :func:`corpus_hash` into
provenance.

WD and perplexity are measured on different texts (:func:`text_specs`): WikiText-2's train
and validation splits, or two files; one text given for both is split into disjoint token
ranges (perplexity from the windows after the WD ones), and two files sharing lines draw a
loud warning.

Sources:
    ``"wikitext2"``: WikiText-2 through ``datasets.load_dataset("wikitext",
    "wikitext-2-raw-v1", split=...)``. Its rows are the release's lines (blank lines are
    ``""``); they are joined with ``"\\n\\n"`` exactly as in the transformers perplexity guide
    (``"\\n\\n".join(dataset["text"])``), the form most WikiText-2 perplexity code uses.
    The official code joins the train split with ``" "`` for its WD windows (``joiner``).
    Any other value: a path to a local UTF-8 text file, read as-is (no joining, no
    normalisation; ``split`` is ignored). A local copy of WikiText-2 therefore yields
    different ids from the Hub copy; compare runs through :func:`corpus_hash`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynamics.config.parts import BudgetOptions
from dynamics.config.protocol import Protocol, ppl_token_budget, wd_stride, wd_window_count
from dynamics.errors import DynamicsError, UserInputError

log = logging.getLogger(__name__)

WIKITEXT2 = "wikitext2"
WIKITEXT2_SPLITS = ("train", "validation", "test")
# Characters tokenized per wanted token on the first try; doubled until enough tokens come.
_CHARS_PER_TOKEN_GUESS = 6
# Tokens kept beyond the budget before the cut, so the cut cannot change any kept token.
_CUT_MARGIN_TOKENS = 256


class CorpusError(DynamicsError):
    """The corpus could not be obtained (e.g. WikiText-2 is not reachable offline)."""


@dataclass(frozen=True)
class CorpusSpec:
    """Which text, and how many windows of how many tokens.

    Attributes:
        source: ``"wikitext2"`` or a path to a local text file.
        split: WikiText-2 split (``train``, ``validation``, ``test``); ignored for a file.
        window: tokens per window.
        token_budget: tokens wanted; ``max(1, token_budget // window)`` windows are taken
            (fewer when the text is shorter). ``None`` takes every full window of the text.
        stride: text tokens between consecutive window starts (``None``: non-overlapping).
        joiner: what joins WikiText-2's rows.
        window_bos: ``none``, ``first`` or ``every`` (see the module docstring).
        start: text tokens skipped before the first window.
    """

    source: str = WIKITEXT2
    split: str = "test"
    window: int = 2048
    token_budget: int | None = 65536
    stride: int | None = None
    joiner: str = "\n\n"
    window_bos: str = "none"
    start: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.window, int) or self.window < 1:
            raise UserInputError(f"corpus window {self.window!r} must be a positive number of tokens, e.g. 2048")
        if self.token_budget is not None and (not isinstance(self.token_budget, int) or self.token_budget < 1):
            raise UserInputError(f"token budget {self.token_budget!r} must be a positive number of tokens, e.g. 65536")
        if self.source == WIKITEXT2 and self.split not in WIKITEXT2_SPLITS:
            raise UserInputError(
                f"WikiText-2 split {self.split!r} is unknown; use one of {', '.join(WIKITEXT2_SPLITS)}"
            )
        if self.stride is not None and (not isinstance(self.stride, int) or self.stride < 1):
            raise UserInputError(f"corpus stride {self.stride!r} must be a positive number of tokens")
        if self.window_bos not in ("none", "first", "every"):
            raise UserInputError(f"window BOS {self.window_bos!r}: expected none, first or every")

    @property
    def max_windows(self) -> int | None:
        """The number of windows the budget asks for (``None``: all of them)."""
        return None if self.token_budget is None else max(1, self.token_budget // self.window)

    def validate_source(self) -> None:
        """Reject a source that is neither ``wikitext2`` nor an existing file (no download)."""
        if self.source == WIKITEXT2:
            return
        path = Path(self.source).expanduser()
        if not path.is_file():
            raise UserInputError(f"corpus {self.source!r} is neither 'wikitext2' nor an existing text file")

    def to_attrs(self) -> dict[str, Any]:
        """The spec as plain values for provenance attrs (``None`` budget stored as -1)."""
        attrs = asdict(self)
        attrs["token_budget"] = -1 if self.token_budget is None else self.token_budget
        return attrs


def read_corpus_text(spec: CorpusSpec) -> str:
    """The raw text of the corpus (see the module docstring for the WikiText-2 joining)."""
    spec.validate_source()
    if spec.source != WIKITEXT2:
        try:
            return Path(spec.source).expanduser().read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UserInputError(f"corpus file {spec.source!r} is not UTF-8 text ({exc.reason})") from None
    import datasets

    try:
        rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=spec.split)["text"]
    except Exception as exc:  # noqa: BLE001  (datasets raises many kinds; all mean "not available")
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CorpusError(
            f"could not load WikiText-2 ({spec.split}) through datasets: {reason}; "
            "offline, pass --corpus PATH to a local text file"
        ) from None
    return spec.joiner.join(rows)


def _encode(tokenizer: Any, text: str, special_tokens: bool = False) -> list[int]:
    """Token ids of ``text`` (with the tokenizer's own special tokens if asked), for HF tokenizers or
    ``tokenizers.Tokenizer``."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or tokenizer
    if hasattr(backend, "encode_batch"):  # a ``tokenizers.Tokenizer``: no length warnings, no copies
        return backend.encode(text, add_special_tokens=special_tokens).ids
    return list(tokenizer.encode(text, add_special_tokens=special_tokens))


def leading_special_ids(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before a text of its own accord (BOS for Llama-style, none for Pythia)."""
    plain = _encode(tokenizer, "a")
    special = _encode(tokenizer, "a", special_tokens=True)
    for k in range(len(special) - len(plain) + 1):
        if special[k : k + len(plain)] == plain:
            return special[:k]
    return []


def tokenize_prefix(text: str, tokenizer: Any, n_tokens: int | None, special_tokens: bool = False) -> list[int]:
    """The first ``n_tokens`` ids of ``tokenizer(text)`` (all ids when ``None``).

    Only a prefix of the text is tokenized, cut at a line break well beyond the tokens kept
    (``_CUT_MARGIN_TOKENS``), and grown by doubling until it is long enough. Tokenizers
    split text into pieces locally, so the kept ids equal those of the whole text.
    """
    if n_tokens is None:
        return _encode(tokenizer, text, special_tokens)
    chars = max(4096, (n_tokens + _CUT_MARGIN_TOKENS) * _CHARS_PER_TOKEN_GUESS)
    while True:
        cut = text.find("\n", chars)
        if cut < 0:
            return _encode(tokenizer, text, special_tokens)[:n_tokens]
        ids = _encode(tokenizer, text[:cut], special_tokens)
        if len(ids) >= n_tokens + _CUT_MARGIN_TOKENS:
            return ids[:n_tokens]
        chars *= 2


def load_token_windows(spec: CorpusSpec, tokenizer: Any) -> torch.Tensor:
    """Token windows of the corpus: a LongTensor [n_windows, spec.window].

    Args:
        spec: the corpus; ``max(1, token_budget // window)`` windows are taken.
        tokenizer: a transformers tokenizer or a ``tokenizers.Tokenizer``.

    Raises:
        UserInputError: bad source, or a text shorter than one window (nothing to take).
        CorpusError: WikiText-2 could not be fetched (offline: use a local file).
    """
    return _cut_windows(spec, tokenizer, read_corpus_text(spec))[0]


def _cut_windows(spec: CorpusSpec, tokenizer: Any, text: str) -> tuple[torch.Tensor, int]:
    """The windows of ``spec`` in ``text`` and the text token just after the last one."""
    lead = leading_special_ids(tokenizer) if spec.window_bos == "every" else []
    body = spec.window - len(lead)  # text tokens per window
    if body < 1:
        raise UserInputError(f"corpus window {spec.window} leaves no room for text after the BOS")
    stride = spec.stride or body
    wanted = spec.max_windows
    needed = None if wanted is None else spec.start + (wanted - 1) * stride + body
    ids = tokenize_prefix(text, tokenizer, needed, special_tokens=spec.window_bos == "first")
    available = len(ids) - spec.start
    n_windows = 0 if available < body else (available - body) // stride + 1
    if wanted is not None:
        n_windows = min(n_windows, wanted)
    if n_windows == 0:
        raise UserInputError(
            f"corpus {spec.source!r} has only {max(0, available)} tokens"
            + (f" after the first {spec.start}" if spec.start else "")
            + f", fewer than one window of {spec.window}; use a longer text or a smaller --window"
        )
    if wanted is not None and n_windows < wanted:
        log.warning(
            "corpus %r gives %d windows of %d tokens, fewer than the %d the budget of %d asks for",
            spec.source,
            n_windows,
            spec.window,
            wanted,
            spec.token_budget,
        )
    starts = [spec.start + k * stride for k in range(n_windows)]
    windows = torch.tensor([lead + ids[s : s + body] for s in starts], dtype=torch.long)
    log.info("corpus %r: %d windows x %d tokens, hash %s", spec.source, n_windows, spec.window, corpus_hash(windows))
    return windows, starts[-1] + body


def windows_with_offsets(spec: CorpusSpec, tokenizer: Any) -> tuple[torch.Tensor, np.ndarray, np.ndarray, str]:
    """The windows of ``spec`` with each token's character span in the text and whether it is special.

    Returns ``(windows [n, window], offsets [n, window, 2], special [n, window] bool, text)``;
    the windows equal :func:`load_token_windows`'s (a leading BOS added to every window has
    the span ``(0, 0)`` and is special). Needs a fast tokenizer (character offsets).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None) or tokenizer
    if not hasattr(backend, "encode_batch"):
        raise UserInputError("token offsets need a fast tokenizer (character offsets); got a slow one")
    text = read_corpus_text(spec)
    windows, _ = _cut_windows(spec, tokenizer, text)
    encoding = backend.encode(text, add_special_tokens=spec.window_bos == "first")
    ids, offsets, special = (
        encoding.ids,
        np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2),
        np.asarray(encoding.special_tokens_mask, dtype=bool),
    )
    lead = leading_special_ids(tokenizer) if spec.window_bos == "every" else []
    body = spec.window - len(lead)
    stride = spec.stride or body
    starts = [spec.start + k * stride for k in range(windows.shape[0])]
    window_offsets = np.zeros((windows.shape[0], spec.window, 2), dtype=np.int64)
    window_special = np.ones((windows.shape[0], spec.window), dtype=bool)
    for k, s in enumerate(starts):
        if ids[s : s + body] != windows[k, len(lead) :].tolist():
            raise DynamicsError("token offsets: the whole-text tokenization differs from the windows'")
        window_offsets[k, len(lead) :] = offsets[s : s + body]
        window_special[k, len(lead) :] = special[s : s + body]
    return windows, window_offsets, window_special, text


def load_wd_and_ppl_windows(
    wd: CorpusSpec, ppl: CorpusSpec, tokenizer: Any, same_text: bool
) -> tuple[torch.Tensor, torch.Tensor, CorpusSpec]:
    """The WD windows and the perplexity windows, and the perplexity spec actually used.

    ``same_text``: both come from one text, so the perplexity windows start after the last
    WD window (disjoint token ranges).
    """
    text = read_corpus_text(wd)
    wd_windows, end = _cut_windows(wd, tokenizer, text)
    if same_text:
        ppl = replace(ppl, start=end)
        return wd_windows, _cut_windows(ppl, tokenizer, text)[0], ppl
    return wd_windows, load_token_windows(ppl, tokenizer), ppl


def parse_corpus(value: str, default_split: str) -> tuple[str, str]:
    """``wikitext2[:SPLIT]`` or a file path -> ``(source, split)``.

    Raises:
        UserInputError: an unknown split, or neither WikiText-2 nor an existing file.
    """
    if value == WIKITEXT2 or value.startswith(WIKITEXT2 + ":"):
        split = value.partition(":")[2] or default_split
        if split not in WIKITEXT2_SPLITS:
            raise UserInputError(
                f"corpus {value!r}: WikiText-2 split {split!r} is unknown; use one of {', '.join(WIKITEXT2_SPLITS)}"
            )
        return WIKITEXT2, split
    if not Path(value).expanduser().is_file():
        raise UserInputError(f"corpus {value!r} is neither wikitext2[:SPLIT] nor an existing text file")
    return value, default_split


def same_text(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """Whether two parsed corpora are one text (the same split, the same file, or files of equal content)."""
    if a[0] == WIKITEXT2 or b[0] == WIKITEXT2:
        return a == b
    first, second = Path(a[0]).expanduser(), Path(b[0]).expanduser()
    return first.resolve() == second.resolve() or first.read_bytes() == second.read_bytes()


#: Lines shorter than this (in words) are not compared: headings such as ``= = History = =`` recur across texts.
OVERLAP_MIN_WORDS = 10


def shared_lines(wd_path: str, ppl_path: str) -> tuple[int, int]:
    """(lines of the perplexity file that also occur in the WD file, its lines), counting lines of at least
    :data:`OVERLAP_MIN_WORDS` words."""

    def lines(path: str) -> list[str]:
        text = Path(path).expanduser().read_text(encoding="utf-8")
        return [line.strip() for line in text.splitlines() if len(line.split()) >= OVERLAP_MIN_WORDS]

    seen = set(lines(wd_path))
    ppl_lines = lines(ppl_path)
    return sum(line in seen for line in ppl_lines), len(ppl_lines)


def warn_if_overlapping(wd: tuple[str, str], ppl: tuple[str, str]) -> None:
    """A loud warning when two different files share lines (WD neurons judged on their own text)."""
    if WIKITEXT2 in (wd[0], ppl[0]) or same_text(wd, ppl):
        return
    shared, total = shared_lines(wd[0], ppl[0])
    if shared:
        log.warning(
            "OVERLAPPING TEXTS: %d of the %d lines (of 10+ words) of the perplexity corpus %r also occur in the "
            "WD corpus %r; "
            "neurons are selected and judged partly on the same text",
            shared,
            total,
            ppl[0],
            wd[0],
        )


def corpus_hash(windows: torch.Tensor) -> str:
    """sha256 (hex) of the exact token ids, row-major, as int64 little-endian bytes."""
    array = np.ascontiguousarray(windows.detach().cpu().numpy(), dtype="<i8")
    return hashlib.sha256(array.tobytes()).hexdigest()


def text_specs(
    config: BudgetOptions, protocol: Protocol, corpus: str, window: int
) -> tuple[CorpusSpec, CorpusSpec | None, bool]:
    """The WD and perplexity corpora of a run: ``(wd spec, ppl spec or None when skipped, same text)``.

    ``--wd-corpus`` / ``--ppl-corpus`` default to ``corpus``; WikiText-2 then means its train
    split for WD and its validation split for perplexity, as the official code. Budgets,
    the WD stride and where BOS goes follow the protocol unless set.
    """
    wd = parse_corpus(config.wd_corpus or corpus, "train")
    ppl = parse_corpus(config.ppl_corpus or corpus, "validation")
    one = same_text(wd, ppl)
    wd_spec = CorpusSpec(
        source=wd[0],
        split=wd[1],
        window=window,
        token_budget=wd_window_count(config, protocol.name, window) * window,
        stride=wd_stride(config, protocol.name, window),
        joiner="\n\n" if one else protocol.wd_joiner,
        window_bos=protocol.window_bos,
    )
    budget = ppl_token_budget(config, protocol.name)
    if budget == 0:
        return wd_spec, None, one
    ppl_spec = CorpusSpec(
        source=ppl[0],
        split=ppl[1],
        window=window,
        token_budget=None if budget is None else max(budget, window),
        window_bos=protocol.window_bos,
    )
    return wd_spec, ppl_spec, one


def check_texts(config: BudgetOptions, corpus: str) -> None:
    """Validate ``--wd-corpus`` / ``--ppl-corpus`` (one line each) and warn loudly when two files share lines."""
    wd = parse_corpus(config.wd_corpus or corpus, "train")
    ppl = parse_corpus(config.ppl_corpus or corpus, "validation")
    warn_if_overlapping(wd, ppl)


def check_corpus_file(corpus: str) -> None:
    """A corpus file must be UTF-8 text with something in it (WikiText-2, ``wikitext2[:SPLIT]``, is checked by
    :func:`dynamics.syntax.corpus.check_texts`; whether it can be had offline is known only when it is loaded)."""
    if corpus == WIKITEXT2 or corpus.startswith(WIKITEXT2 + ":"):
        return
    path = Path(corpus).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserInputError(f"--corpus {corpus!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserInputError(f"--corpus {corpus!r} cannot be read ({exc.strerror or exc})") from None
    if not text.strip():
        raise UserInputError(f"--corpus {corpus!r} is empty: give a text file with at least one window of tokens")
