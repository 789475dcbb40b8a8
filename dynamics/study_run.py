"""Running a planned study: inputs, the static neuron sets, then one cube unit per condition."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from checkpoints.models import mlp_shape
from dynamics.corpus import CorpusSpec, corpus_hash, load_token_windows, read_corpus_text
from dynamics.errors import UserInputError
from dynamics.executor import ExecutorSettings, free_worker_caches, open_executor, stop_on_unrecoverable
from dynamics.lmeval_bridge import probe_tasks
from dynamics.measures import neuron_wasserstein
from dynamics.scan_context import _set_threads as set_threads
from dynamics.study import StudyConfig, StudyPlan, StudySummary, fetch_model, provenance
from dynamics.study_conditions import (BLOCKS, layer_groups, match_bottom_percent, negative_ablation_perplexity,
                                       static_dataset, study_units, top_and_random_masks)
from dynamics.study_measure import StudyInputs, pos_table
from dynamics.study_worker import StudySpec, forget_workers, run_condition, seed_worker
from dynamics.syntax.blimp import load_blimp
from dynamics.syntax.pairs import stratified_sample
from dynamics.syntax.perplexity import perplexity
from dynamics.syntax.scoring import prefix_token_id
from dynamics.syntax.tse import sample_tse, tse_pairs
from store.cube import CubeWriter
from store.units import unit_attrs, write_unit_attrs

log = logging.getLogger(__name__)


def execute(config: StudyConfig, plan: StudyPlan, tagger: Any | None) -> StudySummary:
    """Fix the neuron sets here (the driver), then run every condition not done yet on the executor."""
    with open_executor(ExecutorSettings.of(config)) as pool:  # a bad scheduler fails before any download
        checkpoint, model, tokenizer, tse, blimp = load_model(config, plan)
        n_layers, _ = mlp_shape(model)
        groups = layer_groups(n_layers, config.layer_groups) if config.layer_groups else []
        if config.layer_groups > n_layers:
            log.warning("--layer-groups %d: the model has %d layers, using %d groups", config.layer_groups, n_layers,
                        n_layers)
        units = study_units(plan.percents, config.match_percent, len(groups), bool(groups))
        identity = {"model": plan.model_ref.location, "revision": checkpoint.revision, "commit": checkpoint.commit,
                    "corpus": plan.corpus, "analysis": config.analysis(), "dtype": plan.dtype, "units": len(units)}
        summary = StudySummary(units=len(units))
        with CubeWriter(config.out, range(len(units)), identity, provenance(config, plan, checkpoint),
                        overwrite=config.overwrite, unit="condition") as cube:
            write_unit_attrs(cube.path, unit_attrs(BLOCKS, [u.record() for u in units]))
            todo = cube.todo()
            summary.skipped = [i for i in range(len(units)) if i not in todo]
            if not todo:
                return summary
            inputs, wd_windows, corpus = build_inputs(config, plan, model, tokenizer, tse, blimp, tagger)
            static = cube.read_static()
            if static is None:
                static = _fix_neuron_sets(config, plan, model, wd_windows, inputs, groups, cube)
                cube.write_static(static)
            cube.record_provenance({
                "corpus": corpus.to_attrs(), "corpus_hash": corpus_hash(inputs.ppl_windows),
                "wd_tokens": int(wd_windows.numel()), "ppl_tokens": int(inputs.ppl_windows.numel()),
                "tse_pairs": len(inputs.tse), "blimp_pairs": len(inputs.blimp), "lmeval_limit": inputs.lmeval_limit,
                "lmeval_skipped": inputs.task_plan.skipped,
                "pos": "skipped" if inputs.tagger is None else f"{len(inputs.pos_texts)} lines", "layer_groups": groups,
            })
            spec = StudySpec(config, plan, tuple(units), static, tuple(tuple(g) for g in groups), tagger)
            if config.executor == "serial":
                seed_worker(spec, model, inputs)
            del model  # a cluster's workers load their own copy; the serial worker holds the driver's
            try:
                _run_units(pool, spec, todo, cube, summary)
            finally:
                free_worker_caches(pool, forget_workers)  # the cached models
    return summary


def _run_units(pool: Any, spec: StudySpec, todo: list[int], cube: CubeWriter, summary: StudySummary) -> None:
    """Fan the conditions out; write each result as it completes, in any order."""
    bar = tqdm(total=len(todo), desc=f"ablate {spec.config.model}", unit="condition", dynamic_ncols=True)
    results = pool.map(partial(run_condition, spec), todo, name="condition")
    try:
        for done in results:
            unit = spec.units[done.unit]
            bar.set_postfix_str(unit.name)
            if done.ok:
                cube.write_step(done.result, {**unit.record(), "task_attempts": done.attempts})
                summary.done.append(done.unit)
            else:
                cube.mark_failed(done.unit, done.error or "unknown error", {**unit.record(), **done.failure_record()})
                summary.failed.append(done.unit)
                stop_on_unrecoverable(done, f"condition {unit.name}")
                log.warning("condition %s failed, recorded (a re-run retries it): %s", unit.name, done.error)
            bar.update()
    finally:
        results.close()  # Ctrl-C: cancel what is still queued
        bar.close()
    summary.done.sort()
    summary.failed.sort()


def load_inputs(config: StudyConfig, plan: StudyPlan, tagger: Any | None) -> tuple[Any, StudyInputs, torch.Tensor,
                                                                                  CorpusSpec, Any]:
    """The model and everything the conditions are measured on, deterministic in the config.

    Returns ``(model, inputs, wd_windows, corpus spec, checkpoint)``. Workers of a cluster
    call this and get the same benchmark samples and windows as the driver.
    """
    checkpoint, model, tokenizer, tse, blimp = load_model(config, plan)
    inputs, wd_windows, corpus = build_inputs(config, plan, model, tokenizer, tse, blimp, tagger)
    return model, inputs, wd_windows, corpus, checkpoint


def load_model(config: StudyConfig, plan: StudyPlan) -> tuple[Any, Any, Any, list, list]:
    """``(checkpoint, model, tokenizer, TSE pairs, BLiMP pairs)``; the benchmarks first, so a bad
    BLiMP source fails before any download."""
    tse, blimp = _benchmarks(config, plan, config.budgets())
    checkpoint = fetch_model(config, plan)
    tokenizer = checkpoint.load_tokenizer()
    if config.prefix:
        prefix_token_id(tokenizer, config.prefix_token)  # an unknown --prefix-token fails now, not after WD
    model = checkpoint.load_model(device=plan.device, dtype=getattr(torch, plan.dtype))
    set_threads(config.threads, model)
    return checkpoint, model, tokenizer, tse, blimp


def build_inputs(config: StudyConfig, plan: StudyPlan, model: Any, tokenizer: Any, tse: list, blimp: list,
                 tagger: Any | None) -> tuple[StudyInputs, torch.Tensor, CorpusSpec]:
    """The corpus windows, the lm-eval plan and the POS lines (with clean surprisals): ``(inputs,
    wd_windows, corpus spec)``. Only needed when some condition is still to be measured."""
    budgets = config.budgets()
    window = config.window or min(2048, int(getattr(model.config, "max_position_embeddings", 2048) or 2048))
    wd_windows, ppl_windows, corpus = _windows(config, plan, tokenizer, window, budgets["ppl_tokens"])
    inputs = StudyInputs(
        tokenizer=tokenizer, tse=tse, blimp=blimp, blimp_paradigms=plan.paradigms, ppl_windows=ppl_windows,
        tasks=plan.tasks, task_plan=probe_tasks(plan.tasks, config.task_path),
        lmeval_limit=budgets["lmeval_limit"], pos_texts=[], tagger=None, reduction=config.reduction,
        prefix=config.prefix, prefix_token=config.prefix_token, batch_size=config.batch_size,
        task_path=config.task_path, seed=config.seed)
    _prepare_pos(config, corpus, model, inputs, tagger)
    return inputs, wd_windows, corpus


def _benchmarks(config: StudyConfig, plan: StudyPlan, budgets: dict[str, int | None]) -> tuple[list, list]:
    tse: list = []
    if config.tse_per_case or config.full:
        pairs = tse_pairs()
        tse = list(pairs if budgets["tse_per_case"] is None else sample_tse(pairs, budgets["tse_per_case"], config.seed))
    blimp: list = []
    if config.blimp_per_paradigm or config.full:
        pairs = load_blimp(config.blimp, plan.paradigms)
        if budgets["blimp_per_paradigm"] is not None:
            grouped = {p: {"": [x for x in pairs if x.case == p]} for p in plan.paradigms}
            sample = stratified_sample(grouped, budgets["blimp_per_paradigm"], seed=config.seed)
            pairs = [x for p in plan.paradigms for x in sample[p][""]]
        blimp = list(pairs)
    log.info("benchmarks: %d TSE pairs, %d BLiMP pairs", len(tse), len(blimp))
    return tse, blimp


def _windows(config: StudyConfig, plan: StudyPlan, tokenizer: Any, window: int,
             ppl_tokens: int | None) -> tuple[torch.Tensor, torch.Tensor, CorpusSpec]:
    budget = None if ppl_tokens is None else max(config.wd_tokens, ppl_tokens, window)
    spec = CorpusSpec(source=plan.corpus, split=config.corpus_split, window=window, token_budget=budget)
    windows = load_token_windows(spec, tokenizer)
    wd_windows = windows[: max(1, config.wd_tokens // window)]
    ppl_windows = windows if ppl_tokens is None else windows[: max(1, ppl_tokens // window)]
    return wd_windows, ppl_windows, spec


def _prepare_pos(config: StudyConfig, spec: CorpusSpec, model: Any, inputs: StudyInputs, tagger: Any | None) -> None:
    """The POS tagger, the tagged lines and the clean model's word surprisals (or one skip line)."""
    if config.pos == "off" or not config.pos_lines:
        return
    if tagger is None:
        from dynamics.syntax.pos import spacy_tagger

        try:
            tagger = spacy_tagger()
        except UserInputError as exc:
            log.warning("POS excess surprisal skipped: %s", exc)
            return
    lines = [line.strip() for line in read_corpus_text(spec).splitlines() if len(line.split()) >= 5]
    inputs.pos_texts = [" ".join(line.split()[:200]) for line in lines[: config.pos_lines]]
    inputs.tagger = tagger
    inputs.clean_pos = pos_table(model, inputs)


def _fix_neuron_sets(config: StudyConfig, plan: StudyPlan, model: Any, wd_windows: torch.Tensor,
                     inputs: StudyInputs, groups: list[list[int]], cube: CubeWriter) -> xr.Dataset:
    """WD of every neuron, the top/random sets per percent and the perplexity-matched control."""
    start = time.perf_counter()
    with torch.inference_mode():
        wd = neuron_wasserstein(model, wd_windows, int(config.memory_budget_gib * 2**30), config.batch_size,
                                progress=True)
    top, random = top_and_random_masks(wd["wd"].values, plan.percents, config.seed)

    ablated_ppl = negative_ablation_perplexity(model, inputs.ppl_windows, config.batch_size)
    clean = perplexity(model, inputs.ppl_windows, batch_size=config.batch_size, progress=False)
    target = ablated_ppl(torch.from_numpy(top[plan.percents.index(config.match_percent)]))
    matched, match = match_bottom_percent(wd["wd"].values, ablated_ppl, target, config.match_low, config.match_high,
                                          config.match_tolerance, config.match_iterations)
    log.info("matched control: m = %.4g%%, perplexity %.4f vs top-%g%% %.4f (clean %.4f), %s", match.argument,
             match.value, config.match_percent, target, clean, "matched" if match.converged else match.reason)
    static = static_dataset(wd, plan.percents, top, random, matched, match, clean, groups)
    static.attrs = {}
    static["matched_trials"] = (("trial", "trial_field"), np.asarray(match.trials, dtype=float).reshape(-1, 2),
                                {"long_name": "bisection trials: (m percent, perplexity)"})
    static = static.assign_coords(trial_field=["m_percent", "ppl"])
    cube.record_provenance({"matched_control": {
        "m_percent": match.argument, "ppl": match.value, "target_ppl": target, "clean_ppl": clean,
        "converged": match.converged, "reason": match.reason, "trials": match.trials,
        "tolerance": config.match_tolerance, "bracket": [config.match_low, config.match_high]}})
    log.info("neuron sets fixed in %.1fs", time.perf_counter() - start)
    return static
