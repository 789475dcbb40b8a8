"""The option parts shared by the commands (one definition each): the model, the cube, the corpus and
budgets, the benchmarks, the scoring protocol, the runtime; and the range checks of their values."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from dynamics.config.options import option, titled

DTYPES = ("float32", "bfloat16", "float16")

MAX_THREADS = 1024  # torch takes a C int; more threads than this is a typo, not a machine

PROTOCOLS = ("paper", "strict")

REDUCTIONS = ("sum", "mean")

NPI_RULES = ("last", "intrusive")

RANDOM_POOLS = ("all", "non-top")

WINDOW_BOS = ("first", "every")

POS_UNITS = ("tokens", "words")


@titled("model", lead=True)
@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """Options of the part "model" (one definition each, shared by every command that uses them)."""

    model: str = option(
        help="Pythia alias (pythia-1.4b), Hub id, toy (the built-in model organism, trained on "
        "first use), local suite directory, saved model directory or .gguf file",
        flag="-m",
        identity=False,
    )


@titled("cube", lead=True)
@dataclass(frozen=True, kw_only=True)
class CubeOptions:
    """Options of the part "cube" (one definition each, shared by every command that uses them)."""

    out: str = option(help="the cube to create or resume (a .zarr directory)", flag="-o", identity=False)
    overwrite: bool = option(
        False, help="recompute units (steps, conditions) that are already done in the cube", identity=False
    )


@titled("corpus and budgets")
@dataclass(frozen=True, kw_only=True)
class BudgetOptions:
    """Options of the part "corpus and budgets" (one definition each, shared by every command that uses them)."""

    wd_corpus: str | None = option(
        None,
        help="text of the WD windows: wikitext2[:SPLIT] or a text file (default: "
        "--corpus; WikiText-2: its train split, as the official code)",
        identity=True,
    )
    ppl_corpus: str | None = option(
        None,
        help="text of the perplexity windows: wikitext2[:SPLIT] or a text file "
        "(default: --corpus; WikiText-2: its validation split, as the official code; one "
        "file for both: perplexity from the windows after the WD ones)",
        identity=True,
    )
    window: int | None = option(
        None, help="tokens per corpus window (default: min(2048, the model's context))", identity=True
    )
    wd_tokens: int | None = option(
        None,
        help="corpus tokens (windows x window) whose pre-activations give each "
        "neuron's WD (default: the protocol's: paper 256 windows, strict 65536)",
        identity=True,
    )
    wd_stride: int | None = option(
        None,
        help="tokens between the starts of consecutive WD windows (default: the "
        "protocol's: paper half a window, as the official code; strict a whole window)",
        identity=True,
    )
    ppl_tokens: int | None = option(
        None,
        help="corpus tokens for perplexity under each condition (default: the "
        "protocol's: paper the whole split, strict 16384; 0: skip where allowed; the "
        "matched control needs them)",
        identity=True,
    )
    tse_per_case: int = option(100, help="TSE pairs per case (stratified over sub-cases; 0: skip TSE)", identity=True)
    target_ci: float = option(
        0.0,
        help="size the TSE and BLiMP samples from a pilot (the --tse-per-case and --blimp-per-paradigm "
        "sample) so that the 95%% CI of the headline accuracy difference (ablate: neg_top against "
        "neg_random; scan: neg_cohort against clean, at the reference step) reaches +/- this many points, "
        "within the pairs the data holds (0: off); the sizes are stored in the cube and a resumed run reads them",
        identity=True,
    )
    mapping_difficulty: bool = option(
        False,
        help="also store each neuron's mapping difficulty (MD, on the WD "
        "tokens, 10,000 seeded token pairs per layer); the report gives its Spearman "
        "correlation with WD per layer",
        identity=True,
    )


@titled("benchmarks")
@dataclass(frozen=True, kw_only=True)
class BenchmarkOptions:
    """Options of the part "benchmarks": BLiMP and lm-eval (one definition each; a command may redefault)."""

    blimp: str = option(
        "hub",
        help="BLiMP source: hub (nyu-mll/blimp; tried once per run, skipped with one line when "
        "unreachable; not asked for a local suite such as toy, measured offline) or a directory of "
        "<paradigm>.jsonl files",
        identity=False,  # the BLiMP content is (the cube's content hashes), not where it came from
    )
    blimp_per_paradigm: int = option(50, help="BLiMP pairs per paradigm (seeded sample; 0: skip BLiMP)", identity=True)
    blimp_paradigms: str = option("all", help="comma-separated BLiMP paradigms, or all", identity=True)
    tasks: str = option(
        "default",
        help="lm-eval tasks, comma-separated; default: arc_easy, arc_challenge, piqa, hellaswag, "
        "winogrande, boolq, openbookqa, lambada_openai; none: skip",
        identity=True,
    )
    lmeval_limit: int = option(100, help="lm-eval examples per task (0: all)", identity=True)
    task_path: str | None = option(None, help="a directory of extra lm-eval task YAML files", identity=False)


@titled("mechanism")
@dataclass(frozen=True, kw_only=True)
class MechanismOptions:
    """Options of the part "mechanism": how the top set is ranked and how its differentiation is analysed."""

    rank_by: Literal["wd", "md"] = option(
        "wd",
        help="rank neurons by WD (the paper's Wasserstein neurons) or by mapping difficulty (md, on the "
        "same tokens) to choose the top set (and the scan's cohort)",
        identity=True,
    )
    differentiation_tokens: int = option(
        8192,
        help="WD tokens on which the top set's and the random control's differentiated pairs are found "
        "(the first WD windows holding them; 0: skip the analysis)",
        identity=True,
    )
    differentiation_k: int = option(
        10, help="nearest neighbours (cosine of the MLP inputs) whose pairs are candidates", identity=True
    )
    differentiation_pairs: int = option(
        20, help="differentiated pairs kept per neuron (largest |dy| / ||dx||)", identity=True
    )


@titled("perplexity-matched control")
@dataclass(frozen=True, kw_only=True)
class MatchOptions:
    """Options of the part "perplexity-matched control": the bisection for the bottom m% by rank."""

    match_tolerance: float = option(
        0.05,
        help="the match's tolerance, relative to the top set's perplexity increase over clean (0.05: "
        "within 5%% of that increase)",
        identity=True,
    )
    match_iterations: int = option(
        12,
        help="bisection steps after the bracket's two ends are tried (at most N + 2 perplexity evaluations in all)",
        identity=True,
    )
    match_low: float = option(
        0.1, help="lower end of the bracket for m (percent of lowest-ranked neurons)", identity=True
    )
    match_high: float = option(90.0, help="upper end of the bracket for m", identity=True)


@titled("scoring protocol")
@dataclass(frozen=True, kw_only=True)
class ScoringOptions:
    """Options of the part "scoring protocol" (one definition each, shared by every command that uses them)."""

    protocol: Literal["paper", "strict"] = option(
        "paper",
        help="paper: every choice below as the official code "
        "(docs/protocol.md); strict: the variants this project prefers",
        identity=False,
    )
    tse_reduction: str | None = option(
        None,
        help="TSE sentence score: sum or mean of token log-probabilities "
        "(default: the protocol's: paper mean, strict sum)",
        choices=list(REDUCTIONS),
        identity=False,
    )
    blimp_reduction: str | None = option(
        None,
        help="BLiMP sentence score: sum or mean (default: the protocol's: sum)",
        choices=list(REDUCTIONS),
        identity=False,
    )
    prefix: str | None = option(
        None,
        help="what precedes a sentence: auto (the tokenizer's own special tokens: Pythia "
        "none, so its first token is unscored; Llama-style BOS), none, bos (BOS, else EOS, "
        "always), or a token string (default: the protocol's: paper auto, strict bos)",
        identity=False,
    )
    npi: str | None = option(
        None,
        help="NPI cases: last (good vs the tuple's last, ungrammatical sentence) or "
        "intrusive (good must beat the intrusive sentence too) (default: the protocol's: paper "
        "last, strict intrusive)",
        choices=list(NPI_RULES),
        identity=False,
    )
    random_control: str | None = option(
        None,
        help="where the random control's neurons come from: all (every neuron "
        "of the layer) or non-top (the others) (default: the protocol's: paper all, "
        "strict non-top)",
        choices=list(RANDOM_POOLS),
        identity=False,
    )
    window_bos: str | None = option(
        None,
        help="first: the text tokenized once, so only the first window starts with "
        "the tokenizer's BOS; every: each WD and perplexity window starts with it (where "
        "the tokenizer adds one) (default: the protocol's: paper first, strict every)",
        choices=list(WINDOW_BOS),
        identity=False,
    )
    pos_unit: str | None = option(
        None,
        help="POS excess surprisal per model token inside the perplexity windows "
        "(tokens, as the official tagging) or per word of --pos-lines corpus lines (words) "
        "(default: the protocol's: paper tokens, strict words)",
        choices=list(POS_UNITS),
        identity=False,
    )
    seed: int = option(0, help="seed of the random controls and the benchmark samples", identity=True)


@titled("runtime")
@dataclass(frozen=True, kw_only=True)
class RuntimeOptions:
    """Options of the part "runtime" (one definition each, shared by every command that uses them)."""

    device: str = option("auto", help="cuda, cuda:N, cpu or auto (CUDA when present)", identity=False)
    dtype: str = option(
        "auto",
        help="model weights dtype; auto: on CUDA the checkpoint's own (float16 for Pythia; "
        "bfloat16 where float16 overflows), on the CPU float32 (statistics are float32 either way)",
        choices=["auto", *DTYPES],
        identity=True,
    )
    threads: int = option(
        0,
        help="torch CPU threads; 0: auto (1 for models under 50M parameters, whose small "
        "ops stall on thread barriers, with batches run side by side on every core and a lone "
        "batch's vocabulary projection on whichever of 1 thread and every core is timed "
        "faster, numbers as on 1 thread; else torch's default)",
        identity=False,
    )
    batch_size: int = option(4, help="corpus windows per forward pass", identity=False)
    memory_budget_gib: float = option(
        0.0,
        help="GiB of pre-activations held at once (decides layers per pass); "
        "0: auto (on CUDA half the device memory free after loading, on the CPU 2)",
        identity=False,
    )
    retries: int = option(
        4, help="attempts per checkpoint download (transient errors back off exponentially)", identity=False
    )
    cache_dir: str | None = option(
        None,
        help="Hugging Face cache directory (default: the hub's own, ~/.cache/huggingface/hub)",
        identity=False,
    )


@dataclass(frozen=True, kw_only=True)
class CubeCommandOptions(
    ModelOptions,
    CubeOptions,
    BudgetOptions,
    BenchmarkOptions,
    MechanismOptions,
    MatchOptions,
    ScoringOptions,
    RuntimeOptions,
):
    """The option parts of every command that makes a cube (`scan`, `ablate`): one list, so the two
    commands share each definition, its validation and its place in ``--help``."""


def shared_checks(config: object) -> list[tuple[str, bool, str]]:
    """The range checks of the budget, scoring and runtime options a config carries (name, ok, what is accepted)."""
    checks: list[tuple[str, bool, str]] = []
    if isinstance(config, ScoringOptions):
        checks += [("seed", 0 <= config.seed < 2**32, "a whole number from 0 to 4294967295")]
    if isinstance(config, BudgetOptions):
        checks += [
            ("wd-tokens", config.wd_tokens is None or config.wd_tokens >= 2, "at least 2 tokens"),
            ("wd-stride", config.wd_stride is None or config.wd_stride >= 1, "at least 1 token"),
            ("window", config.window is None or config.window >= 2, "at least 2 tokens"),
            ("tse-per-case", config.tse_per_case >= 0, "0 or more pairs"),
            ("target-ci", 0 <= config.target_ci <= 100, "0 (off) or accuracy points in (0, 100]"),
        ]
    if isinstance(config, BenchmarkOptions):
        checks += [
            ("blimp-per-paradigm", config.blimp_per_paradigm >= 0, "0 or more pairs"),
            ("lmeval-limit", config.lmeval_limit >= 0, "0 (all) or more examples"),
        ]
        if isinstance(config, BudgetOptions):  # the pilot of --target-ci is the options' TSE and BLiMP sample
            piloted = config.tse_per_case > 0 or config.blimp_per_paradigm > 0
            checks += [
                (
                    "target-ci",
                    config.target_ci == 0 or piloted,
                    "0 (off) with --tse-per-case 0 and --blimp-per-paradigm 0 (no sample to pilot and size)",
                )
            ]
    if isinstance(config, MechanismOptions):
        checks += [
            ("differentiation-tokens", config.differentiation_tokens >= 0, "0 (skip) or more tokens"),
            ("differentiation-k", config.differentiation_k >= 1, "at least 1 neighbour"),
            ("differentiation-pairs", config.differentiation_pairs >= 1, "at least 1 pair"),
        ]
    if isinstance(config, MatchOptions):
        checks += [
            ("match-tolerance", 0 < config.match_tolerance < 1, "a fraction in (0, 1), e.g. 0.02"),
            ("match-iterations", config.match_iterations >= 1, "at least 1"),
            ("match-low", 0 < config.match_low < 100, "a percent in (0, 100)"),
            ("match-high", config.match_low < config.match_high <= 100, "a percent above --match-low, at most 100"),
        ]
    if isinstance(config, RuntimeOptions):
        checks += [
            ("retries", config.retries >= 1, "at least 1"),
            (
                "memory-budget-gib",
                math.isfinite(config.memory_budget_gib) and config.memory_budget_gib >= 0,
                "0 (auto) or a positive, finite number of GiB",
            ),
            ("batch-size", config.batch_size >= 1, "at least 1"),
            ("threads", 0 <= config.threads <= MAX_THREADS, f"0 (auto) or 1 to {MAX_THREADS}"),
        ]
    return checks
