"""The evaluation engine: per-item results that recompute the stored summaries exactly, the phases a
benchmark set asks for, one set of input checks, and the pass planning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures.study import char_tokenizer
from fixtures.tiny_models import tiny_input_ids, tiny_model

from checkpoints.adapters import mlp_shape
from dynamics.errors import UserInputError
from dynamics.evaluate.benchmarks import Benchmarks, Scoring, check_benchmarks
from dynamics.evaluate.conditions import Condition
from dynamics.evaluate.engine import evaluate
from dynamics.evaluate.planning import CONDITION_TOKENS, MAX_CUDA_TOKENS, PassBudget, device_token_budget
from dynamics.syntax.pairs import MinimalPair
from dynamics.syntax.tse import TSE_CASES

pytestmark = pytest.mark.models

WORDS = ["the author", "the pilots", "a guard", "no senator", "the dancers", "some chef"]


def _pairs(cases: list[str], n: int, seed: int) -> tuple[MinimalPair, ...]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        subject = WORDS[rng.integers(len(WORDS))]
        verb = ["laughs", "swims", "is tall", "smiles"][rng.integers(4)]
        wrong = verb.replace("s", "", 1) if verb != "is tall" else "are tall"
        out.append(MinimalPair(f"{subject} {verb}", f"{subject} {wrong}", cases[k % len(cases)], pair_id=k))
    return tuple(out)


@pytest.fixture(scope="module")
def evaluated():
    model = tiny_model("gpt_neox")
    shape = mlp_shape(model)
    generator = torch.Generator().manual_seed(4)
    conditions = [
        Condition("clean"),
        Condition("neg", torch.rand(shape, generator=generator) < 0.5),
        Condition("both", torch.rand(shape, generator=generator) < 0.5, "both"),
        Condition("flip", torch.rand(shape, generator=generator) < 0.5, "signflip"),
    ]
    blimp = tuple(
        MinimalPair(p.good, p.bad, p.case, pair_id=p.pair_id, linguistics_term=f"term{p.pair_id % 2}")
        for p in _pairs(["anaphor", "det_noun", "island"], 24, seed=2)
    )
    benchmarks = Benchmarks(
        char_tokenizer(),
        Scoring(prefix="bos", npi="intrusive"),
        tse=_pairs(list(TSE_CASES[:5]), 40, seed=1),
        blimp=blimp,
        blimp_paradigms=("anaphor", "det_noun", "island", "absent"),
        ppl_windows=tiny_input_ids(batch=5, length=20, seed=3),
        batch_size=2,
    )
    return evaluate(model, conditions, benchmarks, PassBudget(most=3)), benchmarks


def test_accuracies_recomputed_from_the_items_equal_the_stored_ones_exactly(evaluated):
    ds, _ = evaluated
    margins = ds["tse_item_margin"]
    assert margins.dtype == np.float32 and margins.dims == ("condition", "tse_item")
    for c in range(ds.sizes["condition"]):
        correct = margins.values[c] > 0
        assert correct.mean() == ds["tse_acc_all"].values[c]
        for k, case in enumerate(TSE_CASES):
            chosen = ds["tse_item_case"].values == case
            expected = correct[chosen].mean() if chosen.any() else np.nan
            np.testing.assert_array_equal(ds["tse_acc"].values[c, k], expected)
        blimp_correct = ds["blimp_item_margin"].values[c] > 0
        assert blimp_correct.mean() == ds["blimp_acc_all"].values[c]
        for k, paradigm in enumerate(ds["blimp_paradigm"].values):
            chosen = ds["blimp_item_case"].values == paradigm
            expected = blimp_correct[chosen].mean() if chosen.any() else np.nan
            np.testing.assert_array_equal(ds["blimp_acc"].values[c, k], expected)


def test_perplexity_recomputed_from_the_window_sums(evaluated):
    ds, benchmarks = evaluated
    predicted = ds["window_tokens"].values
    assert predicted.tolist() == [19] * 5
    recomputed = np.exp(ds["ppl_window_nll"].values.sum(axis=1) / predicted.sum())
    np.testing.assert_array_equal(recomputed, ds["ppl"].values)
    assert len(set(ds["ppl"].values.tolist())) == 4  # every condition really differs


def test_items_are_named_so_cubes_join_item_by_item(evaluated):
    ds, benchmarks = evaluated
    assert ds["tse_item_uid"].values.tolist() == [p.uid for p in benchmarks.tse]
    assert ds["blimp_item_uid"].values.tolist() == [p.uid for p in benchmarks.blimp]
    assert ds["condition"].values.tolist() == ["clean", "neg", "both", "flip"]
    assert set(ds["eval_phase"].values.tolist()) == {"tse", "blimp", "ppl", "lmeval", "pos"}
    assert (ds["eval_seconds"].sel(eval_phase=["tse", "blimp", "ppl"]) > 0).all()
    assert (ds["eval_seconds"].sel(eval_phase=["lmeval", "pos"]) == 0).all()


def test_a_restricted_benchmark_set_measures_only_its_phases(evaluated):
    _, benchmarks = evaluated
    ds = evaluate(tiny_model("gpt_neox"), [Condition("clean")], benchmarks.only(("tse",)))
    assert {"tse_acc", "tse_item_margin"} <= set(ds.data_vars)
    assert not {"blimp_acc", "ppl", "ppl_window_nll"} & set(ds.data_vars)


def test_conditions_are_checked():
    model, benchmarks = tiny_model("gpt_neox"), Benchmarks(char_tokenizer(), tse=_pairs(["simple_agrmt"], 2, 0))
    with pytest.raises(UserInputError, match="at least one condition"):
        evaluate(model, [], benchmarks)
    with pytest.raises(UserInputError, match="unique; a repeated"):
        evaluate(model, [Condition("a"), Condition("a")], benchmarks)
    with pytest.raises(UserInputError, match="'zero' is unknown"):
        evaluate(model, [Condition("a", None, "zero")], benchmarks)


def test_empty_and_too_long_sentences_are_refused_naming_the_item():
    tokenizer = char_tokenizer()
    empty = Benchmarks(tokenizer, tse=(MinimalPair("the author laughs", "  ", "simple_agrmt", "sing_MS_MV", 3),))
    with pytest.raises(UserInputError, match=r"TSE item simple_agrmt/sing_MS_MV/3 \(bad\) is an empty sentence"):
        check_benchmarks(empty, context=64)
    long = "the author " + "laughs " * 40
    too_long = Benchmarks(tokenizer, blimp=(MinimalPair(long, "the author laugh", "anaphor", pair_id=7),))
    with pytest.raises(
        UserInputError, match=r"BLiMP item anaphor/7 \(good\) has \d+ tokens; the model's context is 64"
    ):
        check_benchmarks(too_long, context=64)
    check_benchmarks(too_long, context=4096)  # fits
    check_benchmarks(too_long, context=None)  # the model does not say: nothing to check


def test_passes_are_planned_within_the_budget():
    assert [list(r) for r in PassBudget(tokens=10_000).chunks(7, 4096)] == [[0, 1], [2, 3], [4, 5], [6]]
    assert [list(r) for r in PassBudget(tokens=10**9, most=3).chunks(7, 4096)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [len(r) for r in PassBudget(tokens=100).chunks(3, 4096)] == [1, 1, 1]  # a batch over budget: one each
    assert device_token_budget("cpu", None, 2048) == CONDITION_TOKENS
    assert device_token_budget("cuda:0", 80 * 2**30, 2048) == 327_680  # half of 80 GiB at 64 B per token and unit
    assert device_token_budget("cuda", 2**50, 64) == MAX_CUDA_TOKENS
    assert device_token_budget("cuda", 2**20, 2048) == CONDITION_TOKENS  # never below the CPU's
