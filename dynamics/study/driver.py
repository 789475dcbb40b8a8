"""`dynamics ablate`: the paper's ablation study and its controls on one model, into a cube.

Running a planned study: inputs, the static neuron sets, then one cube unit per condition.
"""

from __future__ import annotations

import logging
import platform
import time
from functools import partial
from typing import Any

import numpy as np
import torch
import xarray as xr

from checkpoints.adapters import mlp_shape
from checkpoints.checkpoint import Checkpoint
from dynamics import __version__
from dynamics.ablation.matched import matched_control
from dynamics.config.identity import IDENTITY_VERSION, analysis_identity, settle_identity
from dynamics.config.options import config_dict
from dynamics.config.preflight import check_loaded_model
from dynamics.config.protocol import resolve_protocol
from dynamics.errors import UserInputError
from dynamics.evaluate.benchmarks import CONTENT_LABELS, Benchmarks, content_hashes
from dynamics.evaluate.conditions import Condition
from dynamics.evaluate.sizing import pilot_sizes, stored_sizes
from dynamics.execution.executor import ExecutorSettings, free_worker_caches, open_executor, stop_on_unrecoverable
from dynamics.execution.progress import progress_bar
from dynamics.models.cpu_threads import run_scope
from dynamics.models.modelcalls import model_device
from dynamics.models.runtime import capture_budget
from dynamics.stats.activations import CaptureSettings
from dynamics.stats.neuron_differentiation import analysed_windows, set_differentiation
from dynamics.stats.neurons import neuron_wasserstein
from dynamics.study.conditions import (
    BLOCKS,
    layer_groups,
    static_dataset,
    study_units,
    top_and_random_masks,
)
from dynamics.study.config import StudyConfig, StudyPlan, StudySummary, plan_study, resolve_modes
from dynamics.study.inputs import build_inputs, load_model, pass_budget, sized_benchmarks
from dynamics.study.worker import (
    StudySpec,
    finished_units,
    forget_workers,
    groups_together,
    run_condition,
    seed_worker,
)
from dynamics.syntax.bos_effect import measure_bos_effect
from dynamics.syntax.corpus import CorpusSpec, corpus_hash, leading_special_ids
from store.cube import CubeWriter
from store.units import unit_attrs, write_unit_attrs

log = logging.getLogger(__name__)


def run_study(config: StudyConfig, tagger: Any | None = None) -> StudySummary:
    """Run (or resume) the study of ``config`` into its cube; ``tagger`` overrides spaCy for POS. The run's
    CPU thread settings end with it (:func:`dynamics.models.cpu_threads.run_scope`)."""
    with run_scope():
        return execute(config, plan_study(config), tagger)


def _bos_check(model: Any, tokenizer: Any, corpus: CorpusSpec, ppl_windows: torch.Tensor) -> dict[str, Any] | None:
    """Where only the first perplexity window has the tokenizer's BOS, the second one scored both ways
    (:mod:`dynamics.syntax.bos_effect`); ``None`` where there is nothing to compare."""
    if corpus.window_bos != "first":
        return None
    effect = measure_bos_effect(model, ppl_windows, leading_special_ids(tokenizer))
    return effect.to_attrs() if effect is not None else None


def provenance(config: StudyConfig, plan: StudyPlan, checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "model": config.model,
        "model_id": plan.model_ref.location,
        "revision": checkpoint.revision,
        "commit": checkpoint.commit,
        "weights": checkpoint.weights_record(),  # compared by the next run (dynamics.study.inputs.fetch_model)
        "package_version": __version__,
        "torch_version": torch.__version__,
        "config": config_dict(config),
        "host": platform.node(),
        "seed": config.seed,
        "protocol": resolve_protocol(config).record(),
    }


def execute(config: StudyConfig, plan: StudyPlan, tagger: Any | None) -> StudySummary:
    """Fix the neuron sets here (the driver), then run every condition not done yet on the executor."""
    with open_executor(ExecutorSettings.of(config)) as pool:  # a bad scheduler fails before any download
        checkpoint, model, tokenizer, tse, blimp = load_model(config, plan)
        n_layers, _ = mlp_shape(model)
        percents = [("--percents", p) for p in plan.percents]  # --match-percent is one of them
        check_loaded_model(
            model,
            config.window,
            percents + ([("--group-percent", config.group_percent)] if config.layer_groups else []),
        )  # before the cube
        groups = layer_groups(n_layers, config.layer_groups) if config.layer_groups else []
        if config.layer_groups > n_layers:
            log.warning(
                "--layer-groups %d: the model has %d layers, using %d groups", config.layer_groups, n_layers, n_layers
            )
        modes = resolve_modes(config.modes, config.full, config.protocol)
        units = study_units(plan.percents, config.match_percent, len(groups), bool(groups), modes)
        identity = {
            "model": plan.model_ref.location,
            "revision": checkpoint.revision,
            "commit": checkpoint.commit,
            "corpus": plan.corpus,
            "analysis": analysis_identity(config),
            "identity_version": IDENTITY_VERSION,
            "texts": {"wd": config.wd_corpus or plan.corpus, "ppl": config.ppl_corpus or plan.corpus},
            "dtype": plan.dtype,
            "units": len(units),
        }
        identity = settle_identity(config.out, identity, type(config))  # a cube made by an earlier version resumes
        summary = StudySummary(units=len(units))
        with CubeWriter(
            config.out,
            range(len(units)),
            identity,
            provenance(config, plan, checkpoint),
            overwrite=config.overwrite,
            unit="condition",
        ) as cube:
            write_unit_attrs(cube.path, unit_attrs(BLOCKS, [u.record() for u in units]))
            todo = cube.todo()
            summary.skipped = [i for i in range(len(units)) if i not in todo]
            if not todo:
                return summary
            benchmarks, wd_windows, corpus = build_inputs(config, plan, model, tokenizer, tse, blimp, tagger)
            cube.check_content(content_hashes(benchmarks, wd_windows), CONTENT_LABELS)  # refused, never mixed
            static = cube.read_static()
            if static is None:
                static = _fix_neuron_sets(config, plan, model, wd_windows, benchmarks, groups, cube)
                if config.target_ci:
                    static = static.merge(_pilot(config, plan, model, benchmarks, static, cube))
                cube.write_static(static)
            sizes = stored_sizes(static)
            if sizes is not None:
                benchmarks = sized_benchmarks(config, plan, benchmarks, model, sizes)
            ppl_windows = benchmarks.ppl_windows
            assert ppl_windows is not None  # build_inputs always cuts them
            cube.record_provenance(
                {
                    "corpus": corpus.to_attrs(),
                    "wd_corpus": {"source": config.wd_corpus or plan.corpus, "split": "train"},
                    "corpus_hash": corpus_hash(ppl_windows),
                    "wd_corpus_hash": corpus_hash(wd_windows),
                    "wd_tokens": int(wd_windows.numel()),
                    "ppl_tokens": int(ppl_windows.numel()),
                    "tse_pairs": len(benchmarks.tse),
                    "blimp_pairs": len(benchmarks.blimp),
                    "lmeval_limit": config.budgets()["lmeval_limit"],
                    "lmeval_skipped": benchmarks.lmeval.skipped if benchmarks.lmeval else {},
                    "pos": (
                        "skipped"
                        if benchmarks.pos is None
                        else f"{len(benchmarks.pos.texts)} lines"
                        if benchmarks.pos.unit == "words"
                        else f"every token of {len(ppl_windows)} perplexity windows"
                    ),
                    "layer_groups": groups,
                    "bos_check": _bos_check(model, tokenizer, corpus, ppl_windows),
                }
            )
            # One process runs every condition in order: those of one ablation mode share their passes.
            shared = config.executor == "serial" and config.conditions_per_pass != 1
            together = groups_together(tuple(units), todo) if shared else ()
            spec = StudySpec(config, plan, tuple(units), static, tuple(tuple(g) for g in groups), tagger, together)
            if config.executor == "serial":
                seed_worker(spec, model, benchmarks, pass_budget(config, model))
            del model  # a cluster's workers load their own copy; the serial worker holds the driver's
            try:
                _run_units(pool, spec, todo, cube, summary)
            finally:
                free_worker_caches(pool, forget_workers)  # the cached models
    return summary


def _run_units(pool: Any, spec: StudySpec, todo: list[int], cube: CubeWriter, summary: StudySummary) -> None:
    """Fan the conditions out; write each result as it completes, in any order. The bar names the
    condition running (serially, the next in ``todo``); Ctrl-C or SIGTERM first writes every condition
    whose measures are all in hand (:func:`dynamics.study.worker.finished_units`)."""
    bar = progress_bar(total=len(todo), desc=f"ablate {spec.config.model}", unit="condition")
    results = pool.map(partial(run_condition, spec), todo, name="condition")
    written: set[int] = set()
    try:
        bar.set_postfix_str(f"running {spec.units[todo[0]].name}")
        for done in results:
            unit = spec.units[done.unit]
            if done.ok:
                cube.write_step(done.result, {**unit.record(), "task_attempts": done.attempts})
                summary.done.append(done.unit)
                written.add(done.unit)
            else:
                cube.mark_failed(done.unit, done.error or "unknown error", {**unit.record(), **done.failure_record()})
                summary.failed.append(done.unit)
                stop_on_unrecoverable(done, f"condition {unit.name}")
                log.warning("condition %s failed, recorded (a re-run retries it): %s", unit.name, done.error)
            later = [n for n in todo if n not in written and n not in summary.failed]
            bar.set_postfix_str(f"running {spec.units[later[0]].name}" if later else "")
            bar.update()
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM: keep what a shared pass already measured
        for number, result in finished_units(spec, [n for n in todo if n not in written]):
            cube.write_step(result, {**spec.units[number].record(), "task_attempts": 1})
            summary.done.append(number)
        raise
    finally:
        results.close()  # Ctrl-C: cancel what is still queued
        bar.close()
    summary.done.sort()
    summary.failed.sort()


def _pilot(
    config: StudyConfig, plan: StudyPlan, model: Any, benchmarks: Benchmarks, static: xr.Dataset, cube: CubeWriter
) -> xr.Dataset:
    """``--target-ci``: the sample sizes from a pilot on the options' sample (dynamics/evaluate/sizing.py),
    comparing neg_top with neg_random at the match percent."""
    at = {"percent": config.match_percent}
    pair = (
        Condition("neg_top", torch.from_numpy(static["top_mask"].sel(at).values)),
        Condition("neg_random", torch.from_numpy(static["random_mask"].sel(at).values)),
    )
    sizes, pilot = pilot_sizes(model, benchmarks, pass_budget(config, model), pair, config.target_ci, config.seed)
    cube.record_provenance({"target_ci": sizes.record(pilot)})
    return sizes.to_static(pilot)


def differentiation_of(
    config: StudyConfig, model: Any, wd_windows: torch.Tensor, tokenizer: Any, top: Any, random: Any
) -> xr.Dataset:
    """The differentiated pairs of the top set and its random control at the headline percent, on the
    first WD windows holding ``--differentiation-tokens`` tokens (and their POS tags, when spaCy can tag)."""
    start = time.perf_counter()
    windows = analysed_windows(wd_windows, config.differentiation_tokens)
    with torch.inference_mode():
        found = set_differentiation(
            model,
            windows,
            {"top": top, "random": random},
            tokenizer,
            k=config.differentiation_k,
            top=config.differentiation_pairs,
            capture=CaptureSettings(
                memory_budget=capture_budget(config.memory_budget_gib, str(model_device(model))),
                batch_size=config.batch_size,
            ),
        )
    tags = analysed_token_tags(config, windows, tokenizer)
    if tags is not None:
        found["diff_token_pos"] = ("diff_token", tags.reshape(-1), {"long_name": "POS tag of each analysed token"})
    log.info("differentiated pairs of %d neurons in %.1fs", found.sizes["diff_member"], time.perf_counter() - start)
    return found


def analysed_token_tags(config: StudyConfig, windows: torch.Tensor, tokenizer: Any) -> Any:
    """The POS tag of every analysed token (None when POS is off or spaCy cannot tag)."""
    if config.pos == "off":
        return None
    from dynamics.syntax.pos_tagging import spacy_tagger, tag_token_ids

    try:
        tagger = spacy_tagger(config.pos_model, keep_space=True)
    except UserInputError as exc:
        log.info("differentiated pairs without POS tags: %s", exc)  # the POS phase says so once, as a warning
        return None
    return tag_token_ids(windows, tokenizer, tagger)


def _fix_neuron_sets(
    config: StudyConfig,
    plan: StudyPlan,
    model: Any,
    wd_windows: torch.Tensor,
    benchmarks: Benchmarks,
    groups: list[list[int]],
    cube: CubeWriter,
) -> xr.Dataset:
    """WD of every neuron, the top/random sets per percent and the perplexity-matched control."""
    start = time.perf_counter()
    with torch.inference_mode():
        wd = neuron_wasserstein(
            model,
            wd_windows,
            capture_budget(config.memory_budget_gib, str(model_device(model))),
            config.batch_size,
            progress=True,
            with_mapping_difficulty=config.mapping_difficulty or config.rank_by == "md",
            seed=config.seed,
        )
    scores = wd[config.rank_by].values  # the top sets, their controls and the matched set by WD or MD
    top, random = top_and_random_masks(scores, plan.percents, config.seed, resolve_protocol(config).random_control)

    windows = benchmarks.ppl_windows
    assert windows is not None  # build_inputs always cuts them
    found = matched_control(
        model,
        windows,
        config.batch_size,
        scores,
        torch.from_numpy(top[plan.percents.index(config.match_percent)]),
        config,  # the bracket, tolerance and iterations of --match-*
    )
    matched, match, clean, target = found.mask, found.match, found.clean, found.target
    increase, increase_se, noise = found.increase, found.increase_se, found.noise
    log.info(
        "matched control: m = %.4g%%, perplexity %.4f vs top-%g%% %.4f (clean %.4f), %s",
        match.argument,
        match.value,
        config.match_percent,
        target,
        clean,
        "matched" if match.converged else match.reason,
    )
    static = static_dataset(wd, plan.percents, top, random, matched, match, clean, groups)
    if config.differentiation_tokens:
        headline = plan.percents.index(config.match_percent)
        static = static.merge(
            differentiation_of(config, model, wd_windows, benchmarks.tokenizer, top[headline], random[headline])
        )
    static.attrs = {}
    static["matched_trials"] = (
        ("trial", "trial_field"),
        np.asarray(match.trials, dtype=float).reshape(-1, 2),
        {"long_name": "bisection trials: (m percent, perplexity)"},
    )
    static = static.assign_coords(trial_field=["m_percent", "ppl"])
    static["matched_top_increase"] = ((), increase, {"long_name": "relative perplexity increase of the top set"})
    static["matched_top_increase_se"] = ((), increase_se, {"long_name": "its standard error (paired windows)"})
    cube.record_provenance(
        {
            "matched_control": {
                "m_percent": match.argument,
                "ppl": match.value,
                "target_ppl": target,
                "clean_ppl": clean,
                "converged": match.converged,
                "reason": match.reason,
                "trials": match.trials,
                "tolerance": config.match_tolerance,
                "tolerance_of": "the top set's increase over clean",
                "band_ppl": match.band,
                "bracket": [config.match_low, config.match_high],
                "last_bracket": list(match.bracket),
                "top_increase": increase,
                "top_increase_se": increase_se,
                "noise_warning": noise,
            }
        }
    )
    log.info("neuron sets fixed in %.1fs", time.perf_counter() - start)
    return static
