r"""Token windows: the text every statistic is computed on.

A :class:`CorpusSpec` fixes the exact token ids (together with the tokenizer): the text is
tokenized as one string *without* special tokens (no BOS/EOS is inserted anywhere), cut
into non-overlapping windows of ``window`` tokens from the start, and the last partial
window is dropped. The ids are hashed by :func:`corpus_hash` into provenance.

Sources:
    ``"wikitext2"``: WikiText-2 through ``datasets.load_dataset("wikitext",
    "wikitext-2-raw-v1", split=...)``. Its rows are the release's lines (blank lines are
    ``""``); they are joined with ``"\\n\\n"`` exactly as in the transformers perplexity guide
    (``"\\n\\n".join(dataset["text"])``), the form most WikiText-2 perplexity code uses.
    Any other value: a path to a local UTF-8 text file, read as-is (no joining, no
    normalisation; ``split`` is ignored). A local copy of WikiText-2 therefore yields
    different ids from the Hub copy; compare runs through :func:`corpus_hash`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
    """

    source: str = WIKITEXT2
    split: str = "test"
    window: int = 2048
    token_budget: int | None = 65536

    def __post_init__(self) -> None:
        if not isinstance(self.window, int) or self.window < 1:
            raise UserInputError(f"corpus window {self.window!r} must be a positive number of tokens, e.g. 2048")
        if self.token_budget is not None and (not isinstance(self.token_budget, int) or self.token_budget < 1):
            raise UserInputError(f"token budget {self.token_budget!r} must be a positive number of tokens, e.g. 65536")
        if self.source == WIKITEXT2 and self.split not in WIKITEXT2_SPLITS:
            raise UserInputError(f"WikiText-2 split {self.split!r} is unknown; use one of {', '.join(WIKITEXT2_SPLITS)}")

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
    return "\n\n".join(rows)


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens, for HF tokenizers or ``tokenizers.Tokenizer``."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or tokenizer
    if hasattr(backend, "encode_batch"):  # a ``tokenizers.Tokenizer``: no length warnings, no copies
        return backend.encode(text, add_special_tokens=False).ids
    return list(tokenizer.encode(text, add_special_tokens=False))


def tokenize_prefix(text: str, tokenizer: Any, n_tokens: int | None) -> list[int]:
    """The first ``n_tokens`` ids of ``tokenizer(text)`` (all ids when ``None``).

    Only a prefix of the text is tokenized, cut at a line break well beyond the tokens kept
    (``_CUT_MARGIN_TOKENS``), and grown by doubling until it is long enough. Tokenizers
    split text into pieces locally, so the kept ids equal those of the whole text.
    """
    if n_tokens is None:
        return _encode(tokenizer, text)
    chars = max(4096, (n_tokens + _CUT_MARGIN_TOKENS) * _CHARS_PER_TOKEN_GUESS)
    while True:
        cut = text.find("\n", chars)
        if cut < 0:
            return _encode(tokenizer, text)[:n_tokens]
        ids = _encode(tokenizer, text[:cut])
        if len(ids) >= n_tokens + _CUT_MARGIN_TOKENS:
            return ids[:n_tokens]
        chars *= 2


def load_token_windows(spec: CorpusSpec, tokenizer: Any) -> torch.Tensor:
    """Non-overlapping token windows of the corpus: a LongTensor [n_windows, spec.window].

    Args:
        spec: the corpus; ``max(1, token_budget // window)`` windows are taken.
        tokenizer: a transformers tokenizer or a ``tokenizers.Tokenizer``.

    Raises:
        UserInputError: bad source, or a text shorter than one window (nothing to take).
        CorpusError: WikiText-2 could not be fetched (offline: use a local file).
    """
    text = read_corpus_text(spec)
    wanted = spec.max_windows
    ids = tokenize_prefix(text, tokenizer, None if wanted is None else wanted * spec.window)
    n_windows = len(ids) // spec.window
    if n_windows == 0:
        raise UserInputError(
            f"corpus {spec.source!r} has only {len(ids)} tokens, fewer than one window of {spec.window}; "
            "use a longer text or a smaller --window"
        )
    if wanted is not None and n_windows < wanted:
        log.warning(
            "corpus %r gives %d windows of %d tokens, fewer than the %d the budget of %d asks for",
            spec.source, n_windows, spec.window, wanted, spec.token_budget,
        )
    windows = torch.tensor(ids[: n_windows * spec.window], dtype=torch.long).view(n_windows, spec.window)
    log.info("corpus %r: %d windows x %d tokens, hash %s", spec.source, n_windows, spec.window, corpus_hash(windows))
    return windows


def corpus_hash(windows: torch.Tensor) -> str:
    """sha256 (hex) of the exact token ids, row-major, as int64 little-endian bytes."""
    array = np.ascontiguousarray(windows.detach().cpu().numpy(), dtype="<i8")
    return hashlib.sha256(array.tobytes()).hexdigest()
