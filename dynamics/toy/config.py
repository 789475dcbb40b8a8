"""The options of `dynamics toy` (:class:`ToyConfig`) and the names of a suite's files.

Kept apart from :mod:`dynamics.toy.suite` (torch, transformers) so that building the
command line and checking these options import nothing heavy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dynamics.config.options import option
from dynamics.errors import UserInputError

SUITE_FILE = "suite.json"  # written last: a suite without it is unfinished
HELDOUT_FILE = "heldout.txt"


@dataclass(frozen=True)
class ToyConfig:
    """`dynamics toy`: train the built-in model organism and save it as a local suite."""

    out: str = option("toy-suite", help="directory of the suite to create (step<N>/ sub-directories)", flag="-o")
    seed: int = option(0, help="seed of every random choice: corpus, initial weights, batches")
    sentences: int = option(100_000, help="training sentences generated (then sampled in windows, with repeats)")
    heldout_sentences: int = option(2_000, help="held-out sentences (disjoint from training) saved as heldout.txt")
    exclude_tse: bool = option(True, help="keep every TSE benchmark sentence out of the training corpus")
    hidden_size: int = option(128, help="model width (GPT-NeoX hidden_size); the MLP has 4x as many neurons")
    layers: int = option(2, help="transformer blocks")
    heads: int = option(4, help="attention heads (must divide hidden-size)")
    context: int = option(64, help="tokens per training window (and max_position_embeddings)")
    batch_size: int = option(32, help="windows per optimizer step")
    steps: int = option(600, help="optimizer steps (the final checkpoint)")
    checkpoint_every: int = option(40, help="checkpoint interval after the log-spaced start (Pythia: 1000)")
    learning_rate: float = option(3e-3, help="peak AdamW learning rate")
    warmup_steps: int = option(100, help="linear warmup steps before the cosine decay (at most --steps)")
    min_lr_ratio: float = option(0.1, help="final learning rate as a fraction of the peak")
    weight_decay: float = option(0.01, help="AdamW weight decay on weight matrices (not biases, norms)")
    threads: int = option(1, help="torch CPU threads (fixed for bitwise reproducibility; 1 is fastest when busy)")
    overwrite: bool = option(False, help="replace the step directories and files of an existing suite at --out")
    progress: bool = option(True, help="show a progress bar")

    def __post_init__(self) -> None:
        self._check_shape_and_counts()
        self._check_optimizer()

    def _check_shape_and_counts(self) -> None:
        """Sizes and counts are positive integers, the seed fits 32 bits, the heads split the width."""
        positive = (
            "sentences",
            "hidden_size",
            "layers",
            "heads",
            "context",
            "batch_size",
            "steps",
            "checkpoint_every",
            "threads",
            "heldout_sentences",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserInputError(f"--{name.replace('_', '-')} {value!r}: expected a positive integer")
        if self.threads > 1024:
            raise UserInputError(f"--threads {self.threads}: expected 1 to 1024")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise UserInputError(f"--seed {self.seed!r}: expected a whole number from 0 to 4294967295")
        if self.hidden_size % self.heads:
            raise UserInputError(f"--heads {self.heads} must divide --hidden-size {self.hidden_size}")
        if (self.hidden_size // self.heads) % 4:
            raise UserInputError(
                f"--hidden-size {self.hidden_size} / --heads {self.heads}: the head size must be a multiple of 4 "
                "(rotary embeddings use a quarter of it, in pairs)"
            )

    def _check_optimizer(self) -> None:
        """The learning-rate schedule and weight decay are in range."""
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise UserInputError(f"--warmup-steps {self.warmup_steps!r}: expected zero or a positive integer")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise UserInputError(f"--learning-rate {self.learning_rate}: expected a positive number, e.g. 3e-3")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserInputError(f"--min-lr-ratio {self.min_lr_ratio}: expected a number from 0 to 1")
        if self.weight_decay < 0:
            raise UserInputError(f"--weight-decay {self.weight_decay}: expected zero or more")
