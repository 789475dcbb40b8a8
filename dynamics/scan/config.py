"""The options of `dynamics scan`: the shared option parts plus the scan's own (the CLI is generated from them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from dynamics.config.options import check_numbers, option, redefault, titled
from dynamics.config.parts import (
    DTYPES,
    BenchmarkOptions,
    CubeCommandOptions,
    shared_checks,
)
from dynamics.config.protocol import resolve_protocol
from dynamics.errors import UserInputError
from dynamics.execution.executor import ExecutorSettings

#: More steps ahead than this is a typo: each is a concurrent download.
MAX_PREFETCH_DEPTH = 16


@titled("scan")
@dataclass(frozen=True, kw_only=True)
class ScanConfig(CubeCommandOptions, ExecutorSettings):
    """Everything `dynamics scan` needs; the CLI is generated from these fields."""

    steps: str = option(
        "final", help="step spec: START:STOP:STEP (STOP inclusive), N, a,b,c, pythia, log, final, all", identity=False
    )
    reference_step: int | None = option(
        None,
        help="step whose top neurons form the cohort (default: the cube's own, else the last step asked for)",
        identity=False,
    )
    corpus: str = option(
        "auto", help="wikitext2, a text file, or auto (a local suite's heldout.txt, else wikitext2)", identity=False
    )
    cohort_percent: float = option(
        1.0, help="percent of neurons in the cohort (top WD at the reference step)", identity=True
    )
    cohort_scope: Literal["layer", "global"] = option(
        "layer", help="top percent per layer or over all layers", identity=True
    )
    stepwise: bool = option(
        False, help="also ablate each step's own top neurons (condition neg_stepwise)", identity=True
    )
    matched: bool = option(
        False,
        help="also ablate a perplexity-matched control (condition neg_matched): the bottom "
        "m%% WD neurons per layer at the reference step, m bisected so that perplexity there "
        "matches neg_cohort's (its increase over clean within 5%%)",
        identity=True,
    )
    on_error: Literal["skip", "stop"] = option(
        "skip",
        help="a checkpoint that fails after retries: record it and go on, or stop",
        identity=False,
    )
    keep_checkpoints: bool = option(False, help="keep downloaded revisions in the Hugging Face cache", identity=False)
    prefetch_depth: int = option(
        2,
        help="steps downloaded ahead, concurrently, while a step is analysed, as far as "
        "--max-disk-gib allows (0: none; serial executor only)",
        identity=False,
    )
    max_disk_gib: float = option(
        0.0,
        help="GiB of checkpoints on disk at once: the step analysed and those downloading or "
        "downloaded ahead (0: auto, half the free space of the cache's filesystem; the step "
        "needed now is always fetched)",
        identity=False,
    )
    revision_template: str = option(
        "step{step}",
        help="the Hub revision name of a step: {step} and optionally {tokens} "
        "(e.g. stage1-step{step}-tokens{tokens}B for OLMo); the repo's refs are listed once "
        "and every step is checked against them, `all` is every matching ref",
        identity=False,
    )
    tokens_per_step: int | None = option(
        None,
        help="training tokens per step, for the tokens coordinate (default: "
        "2097152 for Pythia, a toy suite's own, {tokens} of the revision names; "
        "else -1, unknown)",
        identity=False,
    )
    recompute_duplicates: bool = option(
        False,
        help="measure a step whose weight files equal an earlier step's too "
        "(default: copy the earlier step's numbers, flagged duplicate_of)",
        identity=False,
    )
    blimp_per_paradigm: int = redefault(
        BenchmarkOptions,
        "blimp_per_paradigm",
        10,
        help="BLiMP pairs per paradigm measured at every step and condition (seeded sample; 0: skip)",
    )
    tasks: str = redefault(BenchmarkOptions, "tasks", "none")


def check_scan_options(config: ScanConfig) -> None:
    """The checks of plain option values (numbers, the protocol), importing nothing heavy: the
    command line runs them before it imports the scan, so a rejected value is one line at once."""
    check_numbers(
        config,
        [
            *shared_checks(config),
            ("ppl-tokens", config.ppl_tokens is None or config.ppl_tokens >= 0, "0 or more tokens"),
            ("cohort-percent", 0 < config.cohort_percent <= 100, "a percent in (0, 100]"),
            (
                "ppl-tokens",
                not config.matched or config.ppl_tokens != 0,
                "more than 0 with --matched (the match is on perplexity)",
            ),
            (
                "tokens-per-step",
                config.tokens_per_step is None or config.tokens_per_step >= 1,
                "a positive number of tokens",
            ),
            (
                "prefetch-depth",
                0 <= config.prefetch_depth <= MAX_PREFETCH_DEPTH,
                f"0 (no prefetch) to {MAX_PREFETCH_DEPTH} steps ahead",
            ),
            (
                "max-disk-gib",
                math.isfinite(config.max_disk_gib) and config.max_disk_gib >= 0,
                "0 (auto: half the free space of the cache's filesystem) or a positive, finite number of GiB",
            ),
        ],
    )
    if config.dtype not in ("auto", *DTYPES):
        raise UserInputError(f"--dtype {config.dtype!r} is not one of auto, {', '.join(DTYPES)}")
    resolve_protocol(config)
