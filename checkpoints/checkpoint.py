"""One training step's weights on local disk, and the checks that they can be used.

:class:`Checkpoint` is what every source (:mod:`checkpoints.source`) hands out: where the
files are, what they were fetched as, and the loaders that refuse a corrupt model
(:func:`first_non_finite_parameter`) or a tokenizer that reads text as nothing
(:func:`tokenizer_problem`) with a :class:`~dynamics.errors.CheckpointError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkpoints.fingerprints import tokenizer_fingerprint, weight_fingerprints, weight_stats
from checkpoints.hub_errors import one_line
from checkpoints.loading_info import weights_problem
from dynamics.errors import CheckpointError

__all__ = ["TOKENIZER_PROBE", "Checkpoint", "first_non_finite_parameter", "tokenizer_problem"]


@dataclass
class Checkpoint:
    """One training step's weights on local disk (or why they could not be had)."""

    step: int
    revision: str | None
    path: Path | None
    commit: str | None = None
    gguf_file: str | None = None
    error: str | None = None
    seconds: float = 0.0  # wall time of the fetch, retries included
    downloaded: bool = False  # fetched by this run (and so ours to evict)
    attempts: int = 1
    transfer: str | None = None  # the download backend (hf_xet, http), None when nothing was downloaded

    @property
    def ok(self) -> bool:
        return self.error is None

    def record(self) -> dict[str, Any]:
        """Provenance of this checkpoint for the cube's per-step record: revision, commit, path, and the
        fingerprints (sha256 of every weight file, one sha256 of the tokenizer files); call it before release."""
        path = self.path
        return {
            "revision": self.revision,
            "path": str(path) if path else None,
            **self.weights_record(),
            "tokenizer_sha256": tokenizer_fingerprint(path) if path else None,
            "transfer": self.transfer,
        }

    def weights_record(self, known: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What identifies these weights, to store and compare on a resume: the commit, the sha256 of every
        weight file and the size and mtime of local ones (``known``: an earlier such record, whose hashes
        are kept for files whose size and mtime did not change)."""
        path = self.path
        return {
            "commit": self.commit,
            "weights_sha256": weight_fingerprints(path, self.gguf_file, known) if path else {},
            "weights_stat": weight_stats(path, self.gguf_file) if path else {},
        }

    def load_model(self, device: str = "cpu", dtype: Any = None) -> Any:
        """The model, in eval mode, on ``device``; a corrupt checkpoint, or one whose files do not
        hold the weights its config describes (:func:`checkpoints.loading_info.weights_problem`),
        raises CheckpointError."""
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one bar per scan, not one per checkpoint
        kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its multi-line load report: the problem is said below, in one line
        try:
            # Mismatched shapes are reported, not raised, so that every problem is said the same way.
            model, info = AutoModelForCausalLM.from_pretrained(
                self.path, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
            )
        except Exception as exc:  # transformers raises many types for a bad file
            raise CheckpointError(f"step {self.step}: cannot load the model from {self.path}: {one_line(exc)}") from exc
        finally:
            hf_logging.set_verbosity(verbosity)
        problem = weights_problem(model, info)
        if problem is not None:
            raise CheckpointError(
                f"step {self.step}: the weights in {self.path} do not match its config: {problem}; "
                "the checkpoint is unusable"
            )
        model = model.to(device).eval()
        bad = first_non_finite_parameter(model)
        if bad is not None:
            raise CheckpointError(
                f"step {self.step}: the weights in {self.path} contain NaN or Inf (first in {bad}); "
                "the checkpoint is unusable"
            )
        return model

    def load_tokenizer(self) -> Any:
        """The tokenizer; one that cannot load, or that reduces text to almost nothing, raises CheckpointError."""
        from transformers import AutoTokenizer

        kwargs = {"gguf_file": self.gguf_file} if self.gguf_file else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.path, **kwargs)
        except Exception as exc:
            raise CheckpointError(
                f"step {self.step}: cannot load the tokenizer from {self.path}: {one_line(exc)}"
            ) from exc
        problem = tokenizer_problem(tokenizer)
        if problem:
            raise CheckpointError(f"step {self.step}: the tokenizer in {self.path} is unusable: {problem}")
        return tokenizer


#: A sentence in the TSE vocabulary (which every model this tool evaluates must read) that
#: any usable tokenizer splits into several distinct known tokens.
TOKENIZER_PROBE = "the authors that the guard likes laugh and the pilots swim near the old manager"


def tokenizer_problem(tokenizer: Any) -> str | None:
    """Why ``tokenizer`` cannot be used for evaluation, or ``None``.

    A missing ``tokenizer.json`` can still load (as a vocabulary of a few special tokens)
    and maps any text to unknown tokens: TSE and perplexity would then be meaningless.
    """
    try:
        ids = list(tokenizer(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"])
    except Exception as exc:  # a tokenizer that cannot even encode
        return f"it cannot encode text ({one_line(exc)})"
    unknown = getattr(tokenizer, "unk_token_id", None)
    known = [i for i in ids if i != unknown]
    words = len(TOKENIZER_PROBE.split())
    if len(set(known)) < words // 2:
        return (
            f"it maps a {words}-word sentence to {len(ids)} tokens, {len(set(known))} distinct known ones "
            f"(vocabulary of {len(tokenizer)}); is tokenizer.json missing?"
        )
    return None


def first_non_finite_parameter(model: Any) -> str | None:
    """The name of the first parameter holding NaN or Inf, or ``None``."""
    import torch

    for name, parameter in model.named_parameters():
        if parameter.is_floating_point() and not bool(torch.isfinite(parameter).all()):
            return name
    return None
