"""`dynamics ablate` with the conditions of one ablation mode in shared passes equals one condition at a time.

The shared passes replicate each batch once per condition (:func:`dynamics.ablation.rows.ablate_rows`);
perplexity and the per-token NLL behind POS are bit-for-bit equal, sentence scores equal to float32
rounding (tests/test_row_ablation.py explains why), and every accuracy identical.
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

import dynamics.study.measures as study_measures
from checkpoints.adapters import mlp_shape
from dynamics.ablation.rows import ablate_rows
from dynamics.cli.main import main
from dynamics.study.conditions import Unit, study_units
from dynamics.study.driver import run_study
from dynamics.study.measures import StudyInputs, measure_together, measure_unit
from dynamics.study.worker import groups_together
from dynamics.syntax.lmeval import TaskPlan
from dynamics.syntax.pairs import MinimalPair
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
    """Record the number of conditions of every shared pass the study makes."""
    passes: list[int] = []

    @contextmanager
    def spy(model, masks, mode="negative"):
        masks = list(masks)
        passes.append(len(masks))
        with ablate_rows(model, masks, mode=mode) as copies:
            yield copies

    monkeypatch.setattr(study_measures, "ablate_rows", spy)
    yield passes


@pytest.fixture(scope="module")
def one_at_a_time(study_data, tmp_path_factory):
    config = together_config(study_data, tmp_path_factory.mktemp("alone") / "alone.zarr", conditions_per_pass=1)
    with pytest.MonkeyPatch.context() as monkeypatch, counting_passes(monkeypatch) as passes:
        assert not run_study(config, tagger=fake_tagger).failed
    assert passes == []  # --conditions-per-pass 1: no shared pass at all
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
    # negative: clean, neg_top x2, neg_random x2, neg_matched, 4 layer groups (TSE, BLiMP only); positive and
    # both: the top set at 5 and 10%. A tiny model's batches fit 16 conditions in a pass: one pass per phase.
    assert sorted(passes) == sorted([10, 10, 6, 2, 2, 2, 2, 2, 2])
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


def test_a_resumed_study_in_runs_of_three_gives_the_same_cube(study_data, tmp_path, one_at_a_time, monkeypatch):
    config = together_config(study_data, tmp_path / "cut.zarr", conditions_per_pass=3)
    assert len(run_interrupted_study(monkeypatch, config, 4, tagger=fake_tagger)) == 4
    assert int(open_cube(config.out)["done"].sum()) == 2 + 2  # clean (both percents), neg_top and pos_top at 5%
    with counting_passes(monkeypatch) as passes:
        summary = run_study(config, tagger=fake_tagger)
    assert summary.skipped == [0, 1, 2] and summary.done == list(range(3, 14))
    # still to do: negative 4, 5, 8, 9 and 4 groups (TSE, BLiMP: 8 in runs of 3; ppl: 4 in runs of 3),
    # positive 6 alone (no pass), both 3 and 7
    assert sorted(passes) == sorted([3, 3, 2, 3, 3, 2, 3, 1, 2, 2, 2])
    assert_same_cube(open_cube(config.out), one_at_a_time)


def test_a_bug_in_a_shared_pass_stops_the_study_loudly(study_data, tmp_path, monkeypatch, capsys):
    real = study_measures.token_nll_each

    def broken(model, windows, copies, *args, **kwargs):
        if copies > 1:
            raise RuntimeError("shape mismatch in a shared pass")
        return real(model, windows, copies, *args, **kwargs)

    monkeypatch.setattr(study_measures, "token_nll_each", broken)
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


def _inputs(model) -> StudyInputs:
    windows = tiny_input_ids(batch=3, length=20, seed=2)
    inputs = StudyInputs(
        tokenizer=char_tokenizer(),
        tse=TSE,
        blimp=BLIMP,
        blimp_paradigms=("anaphor", "det_noun"),
        ppl_windows=windows,
        tasks=(),
        task_plan=TaskPlan(),
        lmeval_limit=None,
        pos_texts=[],
        tagger=fake_tagger,
        pos_unit="tokens",
        batch_size=2,
    )
    inputs.pos_tags = np.where(np.arange(20) % 3 == 0, "NOUN", "DET")[None].repeat(3, axis=0)
    with torch.inference_mode():
        inputs.clean_token_nll = study_measures.token_nll(model, windows, batch_size=2, progress=False).numpy()
    return inputs


@pytest.mark.parametrize("mode", ["negative", "positive", "both"])
def test_measured_together_equals_measured_alone(mode: str) -> None:
    model = tiny_model("gpt_neox")
    inputs = _inputs(model)
    generator = torch.Generator().manual_seed(0)
    shape = mlp_shape(model)
    masks = [None if mode == "negative" else torch.rand(shape, generator=generator) < 0.1]
    masks += [torch.rand(shape, generator=generator) < p for p in (0.2, 0.4)]
    units = [Unit("main", {"condition": f"c{i}"}, None if m is None else f"set{i}", mode) for i, m in enumerate(masks)]
    units[2] = Unit("main", {"condition": "c2"}, "set2", mode, measures=("tse", "blimp"))  # no perplexity, no POS
    together = measure_together(model, units, masks, inputs)
    assert [set(m.seconds) for m in together] == [{"tse", "blimp", "ppl"}] * 2 + [{"tse", "blimp"}]
    assert together[2].token_nll is None
    for number, (unit, mask, measured) in enumerate(zip(units, masks, together)):
        alone = measure_unit(model, number, unit, mask, inputs)
        alone_nll = inputs.unit_token_nll
        shared = measure_unit(model, number, unit, mask, inputs, measured)
        assert set(shared.data_vars) == set(alone.data_vars)
        if "ppl" in unit.measures:
            assert alone_nll is not None and measured.token_nll is not None
            np.testing.assert_array_equal(measured.token_nll, alone_nll)  # bit for bit
            assert {"ppl", "pos_excess"} <= set(alone.data_vars)
        for name in set(alone.data_vars) - {"seconds"}:
            if name == "tse_margin":  # means of float32 scores: the scan's tolerance (tests/test_row_ablation.py)
                np.testing.assert_allclose(shared[name].values, alone[name].values, rtol=1e-6, atol=1e-6)
            else:
                np.testing.assert_array_equal(shared[name].values, alone[name].values, err_msg=name)
        assert float(shared["seconds"].sel(phase="tse", step=number)) == measured.seconds["tse"]
    assert float(together[0].parts[-1]["ppl"]) != float(together[1].parts[-1]["ppl"])


def test_measure_together_refuses_mixed_modes() -> None:
    model = tiny_model("gpt_neox")
    units = [Unit("main", {"condition": "a"}, None, "negative"), Unit("main", {"condition": "b"}, None, "positive")]
    with pytest.raises(ValueError, match=r"share one ablation mode, got \['negative', 'positive'\]"):
        measure_together(model, units, [None, None], _inputs(model))


def test_units_group_by_a_mode_that_can_share_passes() -> None:
    study = tuple(study_units([1.0, 2.0], 1.0, 2, True))
    groups = groups_together(study, list(range(len(study))))
    assert [{study[n].mode for n in group} for group in groups] == [{"negative"}, {"positive"}, {"both"}]
    assert sorted(n for g in groups for n in g) == list(range(len(study)))
    assert groups_together(study, [0, 3]) == ()  # one unit per mode: nothing to share
    signflip = (Unit("main", {"condition": "a"}, "x", "signflip"), Unit("main", {"condition": "b"}, "y", "signflip"))
    assert groups_together(signflip, [0, 1]) == ()  # an activation mode runs alone (ablate_rows refuses it)


def test_a_phase_without_data_is_left_to_the_unit() -> None:
    model = tiny_model("gpt_neox")
    inputs = _inputs(model)
    inputs.blimp = []
    units = [Unit("main", {"condition": "a"}, None), Unit("main", {"condition": "b"}, "x")]
    mask = torch.zeros(mlp_shape(model), dtype=torch.bool)
    mask[:, :3] = True
    together = measure_together(model, units, [None, mask], inputs)
    assert [set(m.seconds) for m in together] == [{"tse", "ppl"}] * 2
    result = measure_unit(model, 1, units[1], mask, inputs, together[1])
    assert {"tse_acc", "ppl", "pos_excess"} <= set(result.data_vars) and "blimp_acc" not in result
