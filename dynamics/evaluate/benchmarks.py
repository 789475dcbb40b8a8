"""What conditions are evaluated on, and with which scoring choices: one :class:`Benchmarks` per run.

The scan and the study build it once (the same loaders, samples and seeds) and hand it to
:func:`dynamics.evaluate.engine.evaluate` with each group of conditions. It is checked once
(:func:`check_benchmarks`): every sentence has words, none is longer than the model's context.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from dynamics.config.protocol import Protocol
from dynamics.errors import UserInputError
from dynamics.syntax.pairs import MinimalPair
from dynamics.syntax.settings import ScoringRules

#: The evaluation's phases, in the order they run.
PHASES = ("tse", "blimp", "ppl", "lmeval", "pos")


@dataclass(frozen=True)
class Scoring:
    """The protocol's scoring choices (docs/protocol.md): sentence reductions, what precedes a
    sentence, how NPI triples are judged, and the unit of POS surprisal."""

    tse_reduction: str = "sum"
    blimp_reduction: str = "sum"
    prefix: str = "bos"
    npi: str = "intrusive"
    pos_unit: str = "tokens"

    @classmethod
    def of(cls, protocol: Protocol) -> Scoring:
        return cls(protocol.tse_reduction, protocol.blimp_reduction, protocol.prefix, protocol.npi, protocol.pos_unit)

    def rules(self, phase: str) -> ScoringRules:
        """How the pairs of ``phase`` (``tse`` or ``blimp``) are scored: its reduction, the prefix and
        the NPI rule, checked (:class:`dynamics.syntax.settings.ScoringRules`)."""
        reduction = self.tse_reduction if phase == "tse" else self.blimp_reduction
        return ScoringRules.parse(reduction, self.prefix, self.npi)


@dataclass(frozen=True)
class LmevalTasks:
    """lm-evaluation-harness tasks: ``tasks`` label the results (every requested one), ``runnable``
    are those whose data could be loaded (the others stay NaN)."""

    tasks: tuple[str, ...]
    runnable: tuple[str, ...]
    limit: int | None = None
    task_path: str | None = None
    seed: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why it cannot run


@dataclass(frozen=True)
class PosInputs:
    """POS excess surprisal: per model token of the perplexity windows (``tokens``: their tags and
    the clean model's per-token NLL) or per word of tagged corpus lines (``words``: the tagger,
    the lines and the clean model's word table)."""

    unit: str
    tags: np.ndarray | None = None  # tokens: [window, token] tag strings
    clean_token_nll: np.ndarray | None = None  # tokens: [window, token - 1]
    tagger: Any = None  # words
    texts: tuple[str, ...] = ()  # words
    clean_table: Any = None  # words: a pandas DataFrame (dynamics.syntax.pos.pos_surprisal)


@dataclass(frozen=True)
class Benchmarks:
    """The items every condition is measured on; a benchmark left empty is not measured."""

    tokenizer: Any
    scoring: Scoring = Scoring()
    tse: tuple[MinimalPair, ...] = ()
    blimp: tuple[MinimalPair, ...] = ()
    blimp_paradigms: tuple[str, ...] = ()  # the blimp_paradigm coordinate (every requested paradigm)
    ppl_windows: torch.Tensor | None = None
    batch_size: int = 4  # perplexity windows per batch
    lmeval: LmevalTasks | None = None
    pos: PosInputs | None = None

    def phases(self) -> tuple[str, ...]:
        """The phases with something to measure."""
        present = {
            "tse": bool(self.tse),
            "blimp": bool(self.blimp),
            "ppl": self.ppl_windows is not None and len(self.ppl_windows) > 0,
            "lmeval": self.lmeval is not None and bool(self.lmeval.tasks),
            "pos": self.pos is not None,
        }
        return tuple(phase for phase in PHASES if present[phase])

    def only(self, phases: Collection[str]) -> Benchmarks:
        """These benchmarks restricted to ``phases`` (the others emptied)."""
        unknown = set(phases) - set(PHASES)
        if unknown:
            raise ValueError(f"unknown evaluation phases {sorted(unknown)}; expected some of {PHASES}")
        return replace(
            self,
            tse=self.tse if "tse" in phases else (),
            blimp=self.blimp if "blimp" in phases else (),
            blimp_paradigms=self.blimp_paradigms if "blimp" in phases else (),
            ppl_windows=self.ppl_windows if "ppl" in phases else None,
            lmeval=self.lmeval if "lmeval" in phases else None,
            pos=self.pos if "pos" in phases else None,
        )

    @property
    def blimp_terms(self) -> list[str]:
        """The BLiMP phenomena (``linguistics_term``) of the loaded pairs, sorted."""
        return sorted({str(p.linguistics_term) for p in self.blimp})


def check_benchmarks(benchmarks: Benchmarks, context: int | None) -> None:
    """Refuse, as one line naming the item, a sentence without words or one longer than the model's
    context (``context`` tokens; None: the model does not say).

    Raises:
        UserInputError: the first bad sentence, with its benchmark, case and pair id.
    """
    for name, pairs in (("TSE", benchmarks.tse), ("BLiMP", benchmarks.blimp)):
        for pair in pairs:
            for sentence in ("good", "bad", "intrusive"):
                _check_sentence(benchmarks.tokenizer, name, pair, sentence, context)


def _check_sentence(tokenizer: Any, name: str, pair: MinimalPair, which: str, context: int | None) -> None:
    sentence = getattr(pair, which)
    if sentence is None:
        return
    where = f"{name} item {pair.uid} ({which})"
    if not str(sentence).strip():
        raise UserInputError(f"{where} is an empty sentence; every sentence of a pair needs words")
    if context is None or len(str(sentence).encode("utf-8")) + 2 < context:  # a token covers at least one byte
        return
    tokens = len(tokenizer(str(sentence), add_special_tokens=False)["input_ids"])
    if tokens + 1 > context:  # + the prefix token a protocol may put first
        raise UserInputError(
            f"{where} has {tokens} tokens; the model's context is {context}: expected sentences of at most "
            f"{context - 1} tokens (shorten or remove the item)"
        )


def items_hash(pairs: Sequence[MinimalPair]) -> str | None:
    """sha256 of the items' content (sentences, case, sub-case, id, phenomenon), in order; None for none."""
    if not pairs:
        return None
    digest = hashlib.sha256()
    for pair in pairs:
        fields = (
            pair.good,
            pair.bad,
            pair.intrusive or "",
            pair.case,
            pair.subcase,
            pair.pair_id,
            pair.linguistics_term,
        )
        digest.update(json.dumps(fields, default=str).encode("utf-8"))
    return digest.hexdigest()


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of what a tokenizer does: its vocabulary and special tokens (the fast tokenizer's whole
    definition when it has one), so a changed tokenizer is told apart from a renamed one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    special = json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str)
    return hashlib.sha256((definition + special).encode("utf-8")).hexdigest()


#: How each content hash is named in a refusal.
CONTENT_LABELS = {
    "wd_tokens": "WD text (its token ids)",
    "ppl_tokens": "perplexity text (its token ids)",
    "tse": "TSE sample",
    "blimp": "BLiMP sample (its sentences)",
    "tokenizer": "tokenizer",
}


def content_hashes(benchmarks: Benchmarks, wd_windows: torch.Tensor | None) -> dict[str, str | None]:
    """The content a cube's numbers depend on besides the weights and the settings: the token ids of the
    WD and perplexity text, the TSE and BLiMP items, and the tokenizer (None: not used)."""
    from dynamics.syntax.corpus import corpus_hash

    return {
        "wd_tokens": corpus_hash(wd_windows) if wd_windows is not None else None,
        "ppl_tokens": corpus_hash(benchmarks.ppl_windows) if benchmarks.ppl_windows is not None else None,
        "tse": items_hash(benchmarks.tse),
        "blimp": items_hash(benchmarks.blimp),
        "tokenizer": tokenizer_hash(benchmarks.tokenizer),
    }


def item_coordinates(prefix: str, pairs: Sequence[MinimalPair]) -> dict[str, Any]:
    """Coordinates naming each scored item, so two cubes join item by item: ``<prefix>_item`` (its
    position in the sample), ``<prefix>_item_case`` (TSE case or BLiMP paradigm),
    ``<prefix>_item_uid`` (``case/subcase/pair_id`` in the benchmark) and, for BLiMP items,
    ``<prefix>_item_phenomenon`` (the item's ``linguistics_term``, which pools it per phenomenon)."""
    dim = f"{prefix}_item"
    coords = {
        dim: np.arange(len(pairs)),
        f"{dim}_case": (dim, np.asarray([p.case for p in pairs], dtype=object)),
        f"{dim}_uid": (dim, np.asarray([p.uid for p in pairs], dtype=object)),
    }
    if any(p.linguistics_term for p in pairs):
        coords[f"{dim}_phenomenon"] = (dim, np.asarray([p.linguistics_term for p in pairs], dtype=object))
    return coords
