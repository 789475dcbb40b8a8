"""`dynamics ablate` with conditions in shared passes (any modes side by side) equals one condition at a time.

The shared passes replicate each batch once per condition (:func:`dynamics.ablation.hooks.ablate_rows`,
each row block with its own neurons and mode); perplexity and the per-token NLL behind POS are
bit-for-bit equal, sentence scores equal to float32 rounding (tests/test_row_ablation.py explains
why), and every accuracy identical.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from fixtures.study import (
    char_tokenizer,
    fake_tagger,
    run_interrupted_study,
)
from fixtures.tiny_models import tiny_input_ids, tiny_model
from study.test_study import study_config

import dynamics.evaluate.engine as engine
import dynamics.evaluate.phases as phases
from checkpoints.adapters import mlp_shape
from dynamics.ablation.hooks import ablate_rows
from dynamics.cli.main import main
from dynamics.evaluate.benchmarks import Benchmarks, PosInputs, Scoring
from dynamics.evaluate.planning import PassBudget
from dynamics.study.conditions import Unit, study_units
from dynamics.study.driver import run_study
from dynamics.study.measures import measure_shared, measure_unit
from dynamics.study.worker import groups_together
from dynamics.syntax.pairs import MinimalPair
from dynamics.syntax.perplexity import token_nll
from dynamics.syntax.tse import TSE_CASES
from store import open_cube

# Calls models: also run against the lowest transformers the project declares (.ci/run).
pytestmark = pytest.mark.models

#: Variables that hold sums of float32 log-probabilities (equal to rounding, see the module docstring).
MARGINS = ("tse_margin", "group_tse_margin")


def together_config(study_data, out, **overrides):
    """Every shared phase and the POS phase that reads the perplexity pass's per-token NLL."""
    return study_config(study_data / "llama", out, study_data, pos="auto", pos_unit="tokens", **overrides)


@contextmanager
def counting_passes(monkeypatch):
    """Record the number of conditions of every pass the study makes (1: a condition alone)."""
    passes: list[int] = []

    @contextmanager
    def spy(model, masks, modes="negative"):
        masks = list(masks)
        passes.append(len(masks))
        with ablate_rows(model, masks, modes) as copies:
            yield copies

    monkeypatch.setattr(engine, "ablate_rows", spy)
    yield passes


@pytest.fixture(scope="module")
def one_at_a_time(study_data, tmp_path_factory):
    config = together_config(study_data, tmp_path_factory.mktemp("alone") / "alone.zarr", conditions_per_pass=1)
    with pytest.MonkeyPatch.context() as monkeypatch, counting_passes(monkeypatch) as passes:
        assert not run_study(config, tagger=fake_tagger).failed
    assert set(passes) == {1}  # --conditions-per-pass 1: every condition alone
    return open_cube(config.out)


def assert_same_cube(together, alone) -> None:
    names = sorted(set(alone.data_vars) - {"seconds", "group_seconds"})
    assert names == sorted(set(together.data_vars) - {"seconds", "group_seconds"})
    assert {"ppl", "pos_excess", "pos_surprisal", "tse_acc", "blimp_acc", "group_tse_margin"} <= set(names)
    for name in names:
        a, b = together[name].values, alone[name].values
        if name in MARGINS:  # the scan's tolerance on margins (tests/test_row_ablation.py)
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_shared_passes_give_the_cube_of_one_condition_at_a_time(study_data, tmp_path, one_at_a_time, monkeypatch):
    config = together_config(study_data, tmp_path / "together.zarr")
    with counting_passes(monkeypatch) as passes:
        summary = run_study(config, tagger=fake_tagger)
    assert summary.done == list(range(14)) and not summary.failed
    # the 10 main units (clean, neg/pos/both_top and neg_random at 5 and 10%, neg_matched) whatever their modes,
    # then the 4 layer groups (TSE, BLiMP only). A tiny model's batches fit them all: one pass per phase.
    assert sorted(passes) == sorted([10, 10, 10, 4, 4])
    together = open_cube(config.out)
    assert_same_cube(together, one_at_a_time)
    ppl = together["ppl"].sel(percent=10.0)
    # the conditions of a pass really differ (neg_matched keeps m = 0.1%: no neuron of a tiny layer, so clean's)
    assert len(set(ppl.sel(condition=["clean", "neg_top", "pos_top", "both_top", "neg_random"]).values.tolist())) == 5
    assert float(together["pos_excess"].sel(condition="clean", percent=10.0, pos="NOUN")) == 0.0  # clean NLL = clean
    assert float(abs(together["pos_excess"].sel(condition="both_top", percent=10.0, pos="NOUN"))) > 0
    # each unit of a pass carries an equal share of its seconds
    seconds = together["seconds"].sel(phase="ppl", percent=10.0)
    assert float(seconds.sel(condition="neg_top")) == float(seconds.sel(condition="neg_random")) > 0


def test_an_interrupted_study_keeps_what_its_shared_passes_measured(study_data, tmp_path, one_at_a_time, monkeypatch):
    """Interrupted (Ctrl-C or SIGTERM) as its 4th unit starts, a study in passes of three still writes
    every unit whose measures its shared passes already made (the rest of the main units), and a re-run
    does only the layer groups; the cube equals one condition at a time."""
    config = together_config(study_data, tmp_path / "cut.zarr", conditions_per_pass=3)
    started = run_interrupted_study(monkeypatch, config, 4, tagger=fake_tagger)
    assert started[:4] == [0, 1, 2, 3] and sorted(started[4:]) == list(range(3, 10))  # 3-9 written on the way out
    assert int(open_cube(config.out)["done"].sum()) == 11  # every main unit (clean fills both percents)
    with counting_passes(monkeypatch) as passes:
        summary = run_study(config, tagger=fake_tagger)
    assert summary.skipped == list(range(10)) and summary.done == [10, 11, 12, 13]
    assert sorted(passes) == sorted([3, 1, 3, 1])  # the 4 layer groups, TSE and BLiMP, in runs of three
    assert_same_cube(open_cube(config.out), one_at_a_time)


def test_a_bug_in_a_shared_pass_stops_the_study_loudly(study_data, tmp_path, monkeypatch, capsys):
    real = phases.token_nll_each

    def broken(model, windows, copies, *args, **kwargs):
        if copies > 1:
            raise RuntimeError("shape mismatch in a shared pass")
        return real(model, windows, copies, *args, **kwargs)

    monkeypatch.setattr(phases, "token_nll_each", broken)
    out = tmp_path / "bug.zarr"
    args = [
        "ablate",
        "--model",
        str(study_data / "llama"),
        "--out",
        str(out),
        "--corpus",
        str(study_data / "corpus.txt"),
    ]
    args += ["--window", "64", "--wd-tokens", "512", "--ppl-tokens", "256", "--percents", "10"]
    args += ["--match-percent", "10", "--match-iterations", "2", "--tse-per-case", "1", "--blimp-per-paradigm", "0"]
    args += ["--tasks", "none", "--layer-groups", "0", "--pos", "off", "--threads", "1", "--task-retries", "2"]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 1, err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            "dynamics ablate: error: bug in dynamics at condition condition=clean: RuntimeError: shape mismatch"
        )
    )
    steps = open_cube(out, include_pending=True).attrs["steps"]
    statuses = [record["status"] for record in steps.values()]
    assert statuses.count("done") == 0 and statuses.count("failed") == 1  # the first unit of the pass, not retried
    failed = next(record for record in steps.values() if record["status"] == "failed")
    assert failed["error_type"] == "RuntimeError" and "in broken" in failed["traceback"]


# ---------------------------------------------------------------------------- the pieces

TSE = [
    MinimalPair("the author laughs.", "the author laugh.", TSE_CASES[0]),
    MinimalPair("the authors near the guard laugh.", "the authors near the guard laughs.", TSE_CASES[1]),
    MinimalPair(
        "no pilot has ever been tall.",
        "the pilot has ever been tall.",
        TSE_CASES[-1],
        intrusive="a pilot that no guard likes has ever been tall.",
    ),
]
BLIMP = [
    MinimalPair("craig explored that store.", "craig explored that stores.", "det_noun", linguistics_term="agreement"),
    MinimalPair("she helped herself.", "she helped himself.", "anaphor", linguistics_term="anaphora"),
]


def _benchmarks(model) -> Benchmarks:
    windows = tiny_input_ids(batch=3, length=20, seed=2)
    tags = np.where(np.arange(20) % 3 == 0, "NOUN", "DET")[None].repeat(3, axis=0)
    with torch.inference_mode():
        clean = token_nll(model, windows, batch_size=2, progress=False).numpy()
    return Benchmarks(
        char_tokenizer(),
        Scoring("mean", "sum", "auto", "last", "tokens"),
        tse=tuple(TSE),
        blimp=tuple(BLIMP),
        blimp_paradigms=("anaphor", "det_noun"),
        ppl_windows=windows,
        batch_size=2,
        pos=PosInputs("tokens", tags=tags, clean_token_nll=clean, tagger=fake_tagger),
    )


def test_measured_together_equals_measured_alone() -> None:
    """Units of every mode in one shared pass (and one without perplexity) get their one-unit numbers."""
    model = tiny_model("gpt_neox")
    benchmarks, budget = _benchmarks(model), PassBudget()
    generator = torch.Generator().manual_seed(0)
    shape = mlp_shape(model)
    masks = [None] + [torch.rand(shape, generator=generator) < p for p in (0.1, 0.2, 0.3, 0.4)]
    modes = ["negative", "positive", "both", "signflip", "posrelu"]
    units = [
        Unit("main", {"condition": f"c{i}"}, None if m is None else f"set{i}", mode)
        for i, (m, mode) in enumerate(zip(masks, modes))
    ]
    numbers = list(range(len(units)))
    together = measure_shared(model, numbers, units, masks, benchmarks, budget)
    assert sorted(together) == numbers
    results = []
    for number, (unit, mask) in enumerate(zip(units, masks)):
        alone = measure_unit(model, number, unit, mask, benchmarks, budget)
        shared = measure_unit(model, number, unit, mask, benchmarks, budget, together[number])
        assert set(shared.data_vars) == set(alone.data_vars)
        assert {"ppl", "ppl_window_nll", "pos_excess", "pos_window_excess", "tse_item_margin"} <= set(alone.data_vars)
        for name in set(alone.data_vars) - {"seconds"}:
            if name in ("tse_margin", "tse_item_margin", "blimp_item_margin"):  # float32 scores: the scan's tolerance
                np.testing.assert_allclose(shared[name].values, alone[name].values, rtol=1e-6, atol=1e-6)
            else:
                np.testing.assert_array_equal(shared[name].values, alone[name].values, err_msg=name)
        results.append(shared)
    assert len({float(r["ppl"].item()) for r in results}) == len(units)  # the conditions of the pass really differ


def test_measure_shared_refuses_units_asking_for_different_measures() -> None:
    model = tiny_model("gpt_neox")
    units = [Unit("main", {"condition": "a"}, None), Unit("groups", {"condition": "b"}, None, measures=("tse",))]
    with pytest.raises(ValueError, match="share their measures"):
        measure_shared(model, [0, 1], units, [None, None], _benchmarks(model), PassBudget())


def test_units_group_by_the_measures_they_ask_for() -> None:
    study = tuple(study_units([1.0, 2.0], 1.0, 2, True))
    groups = groups_together(study, list(range(len(study))))
    assert [{study[n].measures for n in group} for group in groups] == [{study[0].measures}, {("tse", "blimp")}]
    assert {study[n].mode for n in groups[0]} == {"negative", "positive", "both"}  # every mode in one group
    assert sorted(n for g in groups for n in g) == list(range(len(study)))
    assert groups_together(study, [0, len(study) - 1]) == ()  # one unit per measure set: nothing to share


def test_a_phase_without_data_is_left_out() -> None:
    model = tiny_model("gpt_neox")
    benchmarks = _benchmarks(model).only(("tse", "ppl", "pos"))
    units = [Unit("main", {"condition": "a"}, None), Unit("main", {"condition": "b"}, "x")]
    mask = torch.zeros(mlp_shape(model), dtype=torch.bool)
    mask[:, :3] = True
    together = measure_shared(model, [0, 1], units, [None, mask], benchmarks, PassBudget())
    result = measure_unit(model, 1, units[1], mask, benchmarks, PassBudget(), together[1])
    assert {"tse_acc", "ppl", "pos_excess"} <= set(result.data_vars) and "blimp_acc" not in result
    assert (
        float(result["seconds"].sel(phase="blimp", step=1)) == 0.0 < float(result["seconds"].sel(phase="ppl", step=1))
    )


def test_a_groups_shared_passes_show_their_bars(capsys) -> None:
    """The serial study measures a group's shared part as one long call: with ``progress`` it shows the
    engine's bar over the passes and each pass's own bar (sentences, windows); without, it is silent."""
    model = tiny_model("gpt_neox")
    benchmarks = _benchmarks(model)
    units = [Unit("main", {"condition": "a"}, None), Unit("main", {"condition": "b"}, None)]
    measure_shared(model, [0, 1], units, [None, None], benchmarks, PassBudget())
    assert capsys.readouterr().err == ""
    measure_shared(model, [0, 1], units, [None, None], benchmarks, PassBudget(), progress=True)
    lines = capsys.readouterr().err.splitlines()
    descriptions = {line.split(":")[0] for line in lines}
    assert {"evaluate", "scoring", "perplexity"} <= descriptions, lines
    # off a terminal each bar is a few whole lines, its last one complete: TSE, BLiMP and perplexity passes
    assert any(line.startswith("evaluate: 100% 3/3") for line in lines), lines
