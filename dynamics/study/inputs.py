"""The model and the inputs a study measures on, built the same way by the driver and every worker.

Everything here is deterministic in the config (seeded samples, fixed windows), so a worker
on a cluster rebuilds exactly what the driver measured the neuron sets on.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from checkpoints import hub_status
from checkpoints.checkpoint import Checkpoint
from checkpoints.hub_errors import RetryPolicy
from checkpoints.hub_source import RevisionSource
from checkpoints.source import open_source
from checkpoints.weight_check import WeightsChangedError, differing_file
from dynamics.config.preflight import context_length
from dynamics.config.protocol import resolve_protocol
from dynamics.errors import UserInputError
from dynamics.evaluate.benchmarks import Benchmarks, LmevalTasks, PosInputs, Scoring, check_benchmarks
from dynamics.evaluate.planning import PassBudget, pass_budget_for
from dynamics.evaluate.sizing import SampleSizes, resized
from dynamics.models.runtime import default_window, load_checkpoint_model, set_threads
from dynamics.study.config import StudyConfig, StudyPlan
from dynamics.syntax.blimp import hub_blimp_skip_reason, load_blimp, paradigm_sample
from dynamics.syntax.corpus import (
    CorpusSpec,
    load_wd_and_ppl_windows,
    read_corpus_text,
    text_specs,
    windows_with_offsets,
)
from dynamics.syntax.lmeval import probe_tasks
from dynamics.syntax.pos import pos_surprisal
from dynamics.syntax.scoring import encode_with_prefix
from dynamics.syntax.tse import sample_tse, tse_pairs
from store.metadata import read_root_attrs

log = logging.getLogger(__name__)


def fetch_model(config: StudyConfig, plan: StudyPlan) -> Checkpoint:
    """The checkpoint the study runs on (downloaded models are kept in the cache); a resumed study whose
    cube was measured on other weights than these is refused (:func:`refuse_changed_weights`)."""
    ref = plan.model_ref
    if ref.kind == "hub":
        source = RevisionSource(
            ref,
            plan.revision or "main",
            cache_dir=config.cache_dir,
            retry=RetryPolicy(attempts=config.retries),
            keep=True,
        )
        checkpoint = source.fetch(0)
    else:
        local = open_source(ref)
        steps = local.available_steps() or [0]
        step = int(plan.revision.removeprefix("step")) if plan.revision else steps[-1]
        if step not in steps:
            raise UserInputError(
                f"--revision {plan.revision}: {ref.name!r} has steps {', '.join(map(str, steps[-5:]))}..."
            )
        checkpoint = local.fetch(step)
    refuse_changed_weights(config.out, ref.location, checkpoint)
    return checkpoint


def refuse_changed_weights(out: str, model_id: str, checkpoint: Checkpoint) -> None:
    """Refuse (exit code 2, before anything is written) to resume the study cube at ``out`` when its last
    run recorded other weights for the same model and revision than ``checkpoint`` holds."""
    path = Path(out)
    if not (path / "zarr.json").is_file():
        return
    attrs = read_root_attrs(path)
    identity = attrs.get("identity", {})
    if identity.get("model") != model_id or identity.get("revision") != checkpoint.revision:
        return  # another model or revision: the cube writer refuses it (or re-initialises an unfinished one)
    stored = attrs.get("provenance", {}).get("weights")
    changed = differing_file(checkpoint.step, stored, checkpoint.weights_record(stored)) if stored else None
    if changed is not None:
        raise WeightsChangedError(
            f"--out {out}: this study was measured on other weights than {model_id} has now ({changed.hashes()}); "
            "its neuron sets and every done condition rest on the stored weights, and --overwrite recomputes the "
            "conditions but keeps the neuron sets: write the study into another --out"
        )


def load_inputs(
    config: StudyConfig, plan: StudyPlan, tagger: Any | None
) -> tuple[Any, Benchmarks, PassBudget, torch.Tensor, CorpusSpec, Any]:
    """The model and everything the conditions are measured on, deterministic in the config.

    Returns ``(model, benchmarks, pass budget, wd_windows, corpus spec, checkpoint)``. Workers of a
    cluster call this and get the same benchmark samples and windows as the driver.
    """
    checkpoint, model, tokenizer, tse, blimp = load_model(config, plan)
    benchmarks, wd_windows, corpus = build_inputs(config, plan, model, tokenizer, tse, blimp, tagger)
    return model, benchmarks, pass_budget(config, model), wd_windows, corpus, checkpoint


def pass_budget(config: StudyConfig, model: Any) -> PassBudget:
    """How many conditions share a pass: as the device's memory allows, at most ``--conditions-per-pass``."""
    return pass_budget_for(model, config.conditions_per_pass)


def load_model(config: StudyConfig, plan: StudyPlan) -> tuple[Any, Any, Any, list, list]:
    """``(checkpoint, model, tokenizer, TSE pairs, BLiMP pairs)``; the benchmarks first, so a bad
    BLiMP source fails before any download."""
    hub_status.forget()  # a new run (or worker): the Hub is tried again, one retry budget for all it loads
    tse, blimp = benchmark_samples(config, plan, config.budgets())
    checkpoint = fetch_model(config, plan)
    tokenizer = checkpoint.load_tokenizer()
    encode_with_prefix(tokenizer, ["a"], resolve_protocol(config).prefix)  # an unknown --prefix fails now, not after WD
    model = load_checkpoint_model(checkpoint, plan.device, plan.dtype)
    set_threads(config.threads, model)
    return checkpoint, model, tokenizer, tse, blimp


def build_inputs(
    config: StudyConfig, plan: StudyPlan, model: Any, tokenizer: Any, tse: list, blimp: list, tagger: Any | None
) -> tuple[Benchmarks, torch.Tensor, CorpusSpec]:
    """The corpus windows, the lm-eval plan and the POS inputs (with the clean model's surprisals):
    ``(benchmarks, wd_windows, corpus spec)``. Only needed when some condition is still to be measured."""
    budgets = config.budgets()
    window = default_window(model, config.window)
    wd_windows, ppl_windows, corpus = _windows(config, plan, tokenizer, window, budgets["ppl_tokens"])
    protocol = resolve_protocol(config)
    task_plan = probe_tasks(plan.tasks, config.task_path)
    benchmarks = Benchmarks(
        tokenizer,
        Scoring.of(protocol),
        tse=tuple(tse),
        blimp=tuple(blimp),
        blimp_paradigms=plan.paradigms,
        ppl_windows=ppl_windows,
        batch_size=config.batch_size,
        lmeval=LmevalTasks(
            plan.tasks,
            tuple(task_plan.runnable),
            budgets["lmeval_limit"],
            config.task_path,
            config.seed,
            skipped=dict(task_plan.skipped),
        )
        if plan.tasks
        else None,
    )
    check_benchmarks(benchmarks, context_length(model.config))
    return replace(benchmarks, pos=_pos_inputs(config, corpus, model, benchmarks, tagger)), wd_windows, corpus


def sized_benchmarks(
    config: StudyConfig, plan: StudyPlan, benchmarks: Benchmarks, model: Any, sizes: SampleSizes
) -> Benchmarks:
    """``benchmarks`` with the TSE and BLiMP samples ``--target-ci`` chose (same seed, other sizes)."""
    budgets = {**config.budgets(), "tse_per_case": sizes.tse_per_case, "blimp_per_paradigm": sizes.blimp_per_paradigm}
    tse, blimp = benchmark_samples(config, plan, budgets)
    return resized(benchmarks, tse, blimp, context_length(model.config))


def benchmark_samples(config: StudyConfig, plan: StudyPlan, budgets: dict[str, int | None]) -> tuple[list, list]:
    """The TSE and BLiMP samples of ``budgets`` (``None``: every pair; 0: none)."""
    tse: list = []
    if (config.tse_per_case or config.full) and budgets["tse_per_case"] != 0:
        pairs = tse_pairs()
        tse = list(
            pairs if budgets["tse_per_case"] is None else sample_tse(pairs, budgets["tse_per_case"], config.seed)
        )
    blimp: list = []
    local = hub_blimp_skip_reason(config.blimp, plan.model_ref.kind)
    if local and (config.blimp_per_paradigm or config.full):
        log.info("BLiMP skipped: %s", local)
    elif (config.blimp_per_paradigm or config.full) and budgets["blimp_per_paradigm"] != 0:
        pairs = load_blimp(config.blimp, plan.paradigms)
        if budgets["blimp_per_paradigm"] is not None:
            pairs = paradigm_sample(pairs, plan.paradigms, budgets["blimp_per_paradigm"], config.seed)
        blimp = list(pairs)
    log.info("benchmarks: %d TSE pairs, %d BLiMP pairs", len(tse), len(blimp))
    return tse, blimp


def _windows(
    config: StudyConfig, plan: StudyPlan, tokenizer: Any, window: int, ppl_tokens: int | None
) -> tuple[torch.Tensor, torch.Tensor, CorpusSpec]:
    """WD windows, perplexity windows (``--full``: the whole split) and the perplexity corpus."""
    wd_spec, ppl_spec, one_text = text_specs(config, resolve_protocol(config), plan.corpus, window)
    assert ppl_spec is not None  # plan_study: --ppl-tokens >= 2
    ppl_spec = replace(ppl_spec, token_budget=None if ppl_tokens is None else max(ppl_tokens, window))
    wd_windows, ppl_windows, ppl_spec = load_wd_and_ppl_windows(wd_spec, ppl_spec, tokenizer, one_text)
    return wd_windows, ppl_windows, ppl_spec


def _pos_inputs(
    config: StudyConfig, spec: CorpusSpec, model: Any, benchmarks: Benchmarks, tagger: Any | None
) -> PosInputs | None:
    """The POS tagger and what the clean model gives (None, with one skip line, when POS is off or
    unavailable): per token of the perplexity windows (``--pos-unit tokens``) or per word of
    ``--pos-lines`` lines of the perplexity text (``words``)."""
    unit = benchmarks.scoring.pos_unit
    if config.pos == "off" or (unit == "words" and not config.pos_lines):
        return None
    if tagger is None:
        from dynamics.syntax.pos_tagging import spacy_tagger

        try:
            tagger = spacy_tagger(config.pos_model, keep_space=unit == "tokens")
        except UserInputError as exc:
            log.warning("POS excess surprisal skipped: %s", exc)
            return None
    if unit == "tokens":
        from dynamics.syntax.perplexity import token_nll
        from dynamics.syntax.pos_tagging import window_token_tags

        windows, offsets, special, text = windows_with_offsets(spec, benchmarks.tokenizer)
        assert benchmarks.ppl_windows is not None and torch.equal(windows, benchmarks.ppl_windows)
        with torch.inference_mode():
            clean = token_nll(model, windows, batch_size=config.batch_size, progress=False).numpy()
        return PosInputs(
            "tokens", tags=window_token_tags(text, offsets, special, tagger), clean_token_nll=clean, tagger=tagger
        )
    lines = [line.strip() for line in read_corpus_text(spec).splitlines() if len(line.split()) >= 5]
    texts = tuple(" ".join(line.split()[:200]) for line in lines[: config.pos_lines])
    with torch.inference_mode():
        clean_table = pos_surprisal(
            model, benchmarks.tokenizer, list(texts), tagger=tagger, prefix=benchmarks.scoring.prefix, progress=False
        )
    return PosInputs("words", tagger=tagger, texts=texts, clean_table=clean_table)
