"""Several conditions in one pass (a per-row ablation mask) give the one-condition numbers.

Perplexity is bit-for-bit equal. Sentence scores are equal to 2e-7 relative, not bit for bit:
the CPU's float32 matrix product (torch 2.13, MKL/oneDNN) picks its kernel by the number of
rows M of the call, and for small M (measured here: M <= 3 on one thread; M <= 11 and not a
multiple of 4 on two) that kernel sums in another order than the large-M one, so a row's
value depends on how many rows share the call (by about one float32 ulp). Replicating a
batch C times moves the scoring's small calls (the per-row heads of the shared-prefix pass,
short suffix passes) to the large-M kernel. Corpus windows never make small calls.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from fixtures.study import char_tokenizer
from fixtures.tiny_models import TINY_FAMILIES, tiny_input_ids, tiny_model

from checkpoints.adapters import mlp_shape
from dynamics.ablation.hooks import ablate, ablate_rows
from dynamics.errors import UserInputError
from dynamics.evaluate.benchmarks import Benchmarks, Scoring
from dynamics.evaluate.conditions import Condition
from dynamics.evaluate.engine import evaluate
from dynamics.evaluate.planning import conditions_per_pass
from dynamics.syntax.blimp import blimp_accuracy
from dynamics.syntax.pairs import MinimalPair
from dynamics.syntax.perplexity import perplexity, perplexity_each, window_nll, window_nll_each
from dynamics.syntax.scoring import Batching, score_pairs, score_pairs_each

# Calls models: also run against the lowest transformers the project declares (.ci/run).
pytestmark = pytest.mark.models

#: The measured bound of the kernel-choice difference on sentence scores (see the module docstring).
SCORE_RTOL = 2e-7
QUIET = Batching(progress=False)

PAIRS = [
    {"good": "the author laughs.", "bad": "the author laugh.", "case": "simple"},
    {"good": "the authors near the guard laugh.", "bad": "the authors near the guard laughs.", "case": "across"},
    {
        "good": "no pilot has ever been tall.",
        "bad": "the pilot has ever been tall.",
        "intrusive": "a pilot that no guard likes has ever been tall.",
        "case": "npi",
    },
    {"good": "a pilot swims", "bad": "a pilots swims", "case": "simple"},
    {"good": "x", "bad": "xy", "case": "short"},
]


def _masks(model: torch.nn.Module) -> list[torch.Tensor | None]:
    shape = mlp_shape(model)
    generator = torch.Generator().manual_seed(3)
    first = torch.rand(shape, generator=generator) < 0.3
    second = torch.rand(shape, generator=generator) < 0.5
    second[0] = False  # a layer only some conditions ablate
    return [None, first, second]


def _one_at_a_time(model, masks, mode, measure):  # noqa: ANN001, ANN202
    results = []
    for mask in masks:
        with ablate(model, mask, mode=mode) if mask is not None else nullcontext(), torch.inference_mode():
            results.append(measure())
    return results


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_scores_and_perplexity_equal_one_condition_at_a_time(family: str) -> None:
    model, tokenizer = tiny_model(family), char_tokenizer()
    masks = _masks(model)
    mode = "both" if family == "opt" else "negative"  # under ReLU the negative ablation changes nothing
    windows = tiny_input_ids(batch=3, length=24, seed=5)
    kwargs = dict(batching=Batching(batch_tokens=64, progress=False), group_by="case")
    single = _one_at_a_time(model, masks, mode, lambda: score_pairs(model, tokenizer, PAIRS, keep_pairs=True, **kwargs))
    single_nll = _one_at_a_time(model, masks, mode, lambda: window_nll(model, windows, batch_size=2, progress=False))
    single_ppl = _one_at_a_time(model, masks, mode, lambda: perplexity(model, windows, batch_size=2, progress=False))
    with ablate_rows(model, masks, mode) as copies, torch.inference_mode():
        batched = score_pairs_each(model, tokenizer, PAIRS, copies, **kwargs)
        batched_nll = window_nll_each(model, windows, copies, batch_size=2, progress=False)
        batched_ppl = perplexity_each(model, windows, copies, batch_size=2, progress=False)
    assert copies == 3
    for one, many in zip(single, batched):
        for name in ("good", "bad", "intrusive"):
            np.testing.assert_allclose(
                getattr(many, name), getattr(one, name), rtol=SCORE_RTOL, atol=0, err_msg=f"{family} {name}"
            )
        np.testing.assert_array_equal(many.correct, one.correct)
        np.testing.assert_array_equal(many.accuracy, one.accuracy)
    for c in range(copies):
        assert torch.equal(batched_nll[c], single_nll[c]), family
    assert batched_ppl == single_ppl
    # The conditions did differ: the test compares three different sets of numbers.
    assert not np.array_equal(batched[0].good, batched[1].good)
    assert len(set(batched_ppl)) == 3


@pytest.mark.parametrize("mode", ["negative", "positive", "both", "abs_pre"])
def test_every_preactivation_mode_equal_and_left_padding(mode: str) -> None:
    model, tokenizer = tiny_model("llama"), char_tokenizer()
    masks = _masks(model)
    kwargs = dict(batching=Batching(batch_tokens=80, padding_side="left", progress=False), group_by="case")
    single = _one_at_a_time(model, masks, mode, lambda: score_pairs(model, tokenizer, PAIRS, keep_pairs=True, **kwargs))
    with ablate_rows(model, masks, mode) as copies, torch.inference_mode():
        batched = score_pairs_each(model, tokenizer, PAIRS, copies, **kwargs)
    for one, many in zip(single, batched):
        np.testing.assert_allclose(many.good, one.good, rtol=SCORE_RTOL, atol=0)
        np.testing.assert_allclose(many.bad, one.bad, rtol=SCORE_RTOL, atol=0)
        np.testing.assert_array_equal(many.correct, one.correct)


def test_scan_evaluation_equals_the_loop_over_conditions() -> None:
    """The scan's product path (every condition in one pass) against one ablated pass per condition."""
    model, tokenizer = tiny_model("gpt_neox"), char_tokenizer()
    masks = _masks(model)
    conditions = dict(zip(("clean", "neg_cohort", "neg_random"), masks))
    windows = tiny_input_ids(batch=2, length=16, seed=1)
    blimp = [
        MinimalPair("craig explored that store.", "craig explored that stores.", "det_noun", linguistics_term="agr"),
        MinimalPair("she helped herself.", "she helped himself.", "anaphor", linguistics_term="anaphora"),
        MinimalPair("he helped himself.", "he helped herself.", "anaphor", linguistics_term="anaphora"),
    ]
    as_tse = {"simple": "simple_agrmt", "across": "prep_anim", "npi": "npi_across_anim", "short": "vp_coord"}
    tse = tuple(
        MinimalPair(p["good"], p["bad"], as_tse[p["case"]], pair_id=k, intrusive=p.get("intrusive"))
        for k, p in enumerate(PAIRS)
    )
    benchmarks = Benchmarks(
        tokenizer,
        Scoring(prefix="bos", npi="intrusive"),
        tse=tse,
        blimp=tuple(blimp),
        blimp_paradigms=("anaphor", "det_noun", "absent"),
        ppl_windows=windows,
        batch_size=1,
    )
    result = evaluate(model, [Condition(name, mask) for name, mask in conditions.items()], benchmarks)
    single_blimp = _one_at_a_time(
        model, masks, "negative", lambda: score_pairs(model, tokenizer, blimp, batching=QUIET, keep_pairs=True)
    )
    for i, scores in enumerate(single_blimp):
        per_paradigm = blimp_accuracy(blimp, scores.correct).per_paradigm
        np.testing.assert_array_equal(
            result["blimp_acc"].values[i], [per_paradigm["anaphor"], per_paradigm["det_noun"], np.nan]
        )
    single = _one_at_a_time(
        model, masks, "negative", lambda: score_pairs(model, tokenizer, tse, batching=QUIET, keep_pairs=True)
    )
    single_ppl = _one_at_a_time(model, masks, "negative", lambda: perplexity(model, windows, progress=False))
    for i, scores in enumerate(single):
        cases = result["tse_case"].values.tolist()  # every TSE case; those without a pair are NaN
        np.testing.assert_array_equal(result["tse_acc"].values[i], scores.aligned("accuracy", cases))
        assert np.isfinite(result["tse_acc"].values[i]).sum() == 4
        np.testing.assert_allclose(
            result["tse_margin"].values[i], scores.aligned("margin", cases), rtol=1e-6, atol=1e-6
        )
        assert result["tse_acc_all"].values[i] == scores.overall_accuracy
        # each item's margin: above 0 exactly where the pair is correct, equal to the loop's to float32
        np.testing.assert_array_equal(result["tse_item_margin"].values[i] > 0, scores.correct)
        np.testing.assert_allclose(result["tse_item_margin"].values[i], scores.item_margin, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(result["ppl"].values, single_ppl)


def test_rows_not_in_equal_blocks_are_refused() -> None:
    model = tiny_model("gpt_neox")
    with (
        ablate_rows(model, _masks(model)),
        torch.inference_mode(),
        pytest.raises(ValueError, match="4 rows cannot carry 3"),
    ):
        model(input_ids=tiny_input_ids(batch=4))


def test_bad_mode_and_no_condition_are_user_errors() -> None:
    model = tiny_model("gpt_neox")
    with pytest.raises(UserInputError, match="'sideways' is unknown"), ablate_rows(model, [None], "sideways"):  # type: ignore[arg-type]
        pass
    with pytest.raises(UserInputError, match="at least one condition"), ablate_rows(model, []):
        pass


def test_hooks_removed_and_conditions_per_pass() -> None:
    model = tiny_model("gpt_neox")
    ids = tiny_input_ids(batch=1)
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        with ablate_rows(model, _masks(model)):
            pass
        assert torch.equal(model(input_ids=ids).logits, before)
    assert conditions_per_pass(34, 4096, budget=65536) == 16
    assert conditions_per_pass(3, 4096, budget=65536) == 3
    assert conditions_per_pass(5, 100_000, budget=65536) == 1


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_conditions_of_every_mode_share_a_pass(family: str) -> None:
    """A pass whose row blocks carry different modes, activation modes included, gives each condition
    its one-condition numbers (perplexity bit for bit)."""
    model, tokenizer = tiny_model(family), char_tokenizer()
    shape = mlp_shape(model)
    generator = torch.Generator().manual_seed(11)
    masks = [None] + [torch.rand(shape, generator=generator) < 0.4 for _ in range(5)]
    modes = ["negative", "negative", "signflip", "posrelu", "abs_pre", "both"]
    windows = tiny_input_ids(batch=3, length=24, seed=5)
    kwargs = dict(batching=Batching(batch_tokens=64, progress=False), group_by="case")
    single_nll, single_scores = [], []
    for mask, mode in zip(masks, modes):
        with ablate(model, mask, mode=mode) if mask is not None else nullcontext(), torch.inference_mode():
            single_nll.append(window_nll(model, windows, batch_size=2, progress=False))
            single_scores.append(score_pairs(model, tokenizer, PAIRS, keep_pairs=True, **kwargs))
    with ablate_rows(model, masks, modes) as copies, torch.inference_mode():
        batched_nll = window_nll_each(model, windows, copies, batch_size=2, progress=False)
        batched_scores = score_pairs_each(model, tokenizer, PAIRS, copies, **kwargs)
    for one, many in zip(single_nll, batched_nll):
        assert torch.equal(one, many)
    for one, many in zip(single_scores, batched_scores):
        np.testing.assert_allclose(many.good, one.good, rtol=SCORE_RTOL, atol=0)
        np.testing.assert_array_equal(many.correct, one.correct)
    if family != "opt":  # under ReLU signflip and posrelu change nothing; elsewhere every mode differs
        assert len({float(nll.sum()) for nll in single_nll}) == len(modes)


def test_a_mode_list_of_another_length_is_refused() -> None:
    model = tiny_model("gpt_neox")
    with (
        pytest.raises(UserInputError, match="3 conditions but 2 ablation modes"),
        ablate_rows(model, _masks(model), ["negative", "both"]),
    ):
        pass
