"""The options of `dynamics scan` (the CLI is generated from :class:`ScanConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from dynamics.config import option
from dynamics.executor import HELP as EXECUTOR_HELP
from dynamics.runtime import DTYPES


@dataclass(frozen=True)
class ScanConfig:
    """Everything `dynamics scan` needs; the CLI is generated from these fields."""

    model: str = option(help="Pythia alias (pythia-1.4b), Hub id, local suite directory or .gguf file", flag="-m")
    out: str = option(help="the cube to create or resume (a .zarr directory)", flag="-o")
    steps: str = option("final", help="step spec: START:STOP:STEP (STOP inclusive), N, a,b,c, pythia, log, final, all")
    reference_step: int | None = option(None, help="step whose top neurons form the cohort (default: the cube's own, else the last step asked for)")
    corpus: str = option("auto", help="wikitext2, a text file, or auto (a local suite's heldout.txt, else wikitext2)")
    corpus_split: str = option("test", help="WikiText-2 split (ignored for a file)")
    window: int | None = option(None, help="tokens per corpus window (default: min(2048, the model's context))")
    wd_tokens: int = option(65536, help="corpus tokens whose pre-activations give each neuron's WD")
    ppl_tokens: int = option(16384, help="corpus tokens for perplexity under each condition (0: skip)")
    tse_per_case: int = option(100, help="TSE pairs per case (stratified over sub-cases; 0: skip TSE)")
    cohort_percent: float = option(1.0, help="percent of neurons in the cohort (top WD at the reference step)")
    cohort_scope: Literal["layer", "global"] = option("layer", help="top percent per layer or over all layers")
    stepwise: bool = option(False, help="also ablate each step's own top neurons (condition neg_stepwise)")
    matched: bool = option(False, help="also ablate a perplexity-matched control (condition neg_matched): the bottom "
                           "m%% WD neurons per layer at the reference step, m bisected so that perplexity there "
                           "matches neg_cohort's within 2%%")
    seed: int = option(0, help="seed of the random control set and the TSE sample")
    reduction: Literal["sum", "mean"] = option("sum", help="sentence score: sum or mean of token log-probabilities")
    prefix: bool = option(True, help="score every token, conditioning on BOS/EOS (--no-prefix: leave the first unscored)")
    memory_budget_gib: float = option(2.0, help="GiB of pre-activations held at once (decides layers per pass)")
    batch_size: int = option(4, help="corpus windows per forward pass")
    on_error: Literal["skip", "stop"] = option("skip", help="a checkpoint that fails after retries: record it and go on, or stop")
    keep_checkpoints: bool = option(False, help="keep downloaded revisions in the Hugging Face cache")
    overwrite: bool = option(False, help="recompute steps that are already done in the cube")
    retries: int = option(4, help="attempts per checkpoint download (transient errors back off exponentially)")
    cache_dir: str | None = option(None, help="Hugging Face cache directory (default: the hub's own, ~/.cache/huggingface/hub)")
    device: str = option("auto", help="cuda, cuda:N, cpu or auto (CUDA when present)")
    dtype: str = option("float32", help="model weights dtype", choices=list(DTYPES))
    prefetch: bool = option(True, help="download step t+1 while step t is analysed")
    threads: int = option(0, help="torch CPU threads; 0: auto (1 for models under 50M parameters, whose small "
                          "ops stall on thread barriers, else torch's default)")
    executor: Literal["serial", "dask"] = option("serial", help=EXECUTOR_HELP["executor"])
    scheduler: str = option("local", help=EXECUTOR_HELP["scheduler"])
    workers: int = option(0, help=EXECUTOR_HELP["workers"])
    task_retries: int = option(1, help=EXECUTOR_HELP["task_retries"])
    resources: str = option("", help=EXECUTOR_HELP["resources"])

    def analysis(self) -> dict[str, Any]:
        """The settings that make two cubes' numbers comparable (the cube's identity)."""
        keys = ("corpus_split", "window", "wd_tokens", "ppl_tokens", "tse_per_case", "cohort_percent",
                "cohort_scope", "stepwise", "seed", "reduction", "prefix", "dtype")
        extra = ("matched",) if self.matched else ()  # absent when off: cubes made before --matched still resume
        return {k: getattr(self, k) for k in keys + extra}
