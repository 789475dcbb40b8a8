"""Requests that make no sense for the model are refused before the cube exists; a failed run
leaves nothing that refuses the corrected command."""

import logging
import math
from fractions import Fraction

import pytest
from test_cli_fuzz import ABLATE_FAST, FAST

import dynamics.scan.driver as scan_driver
import dynamics.scan.plan as scan_plan
from dynamics.cli.main import main
from dynamics.config.preflight import smallest_percent
from dynamics.stats.cohort import cohort_size
from store import open_cube


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("neurons", [1, 3, 64, 512, 2048, 6144, 8192, 11008, 24576])
def test_the_smallest_percent_selects_one_neuron_and_a_smaller_one_none(neurons):
    p = smallest_percent(neurons)
    # independent: round half up of p% of n is at least 1 exactly when p * n / 100 >= 1/2
    assert Fraction(repr(p)) * neurons / 100 >= Fraction(1, 2)
    assert cohort_size(p, neurons) == 1
    below = p - 10.0 ** (math.floor(math.log10(p)) - 3)  # one unit less in the 4th significant digit
    assert Fraction(repr(below)) * neurons / 100 < Fraction(1, 2)


def _run(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own refusals
        return exc.code


def _scan(tiny_suite, out, *extra):
    return _run(["scan", "--model", str(tiny_suite), "--out", str(out), "--steps", "8", *FAST, *extra])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--cohort-percent", "1e-9"],
            "--cohort-percent 1e-09 selects no neuron of this model (its layers have 64 MLP "
            "neurons each); expected at least 0.7813 (one neuron per layer)",
        ),
        (
            ["--cohort-percent", "0.3", "--cohort-scope", "global"],
            "--cohort-percent 0.3 selects no neuron of this model (it has 128 MLP neurons in all); expected at least "
            "0.3907 (one neuron)",
        ),
        (["--window", "256"], "--window 256: the model's context is 32 tokens; expected at most 32"),
        (["--seed", "-1"], "--seed -1: expected a whole number from 0 to 4294967295"),
        (["--memory-budget-gib", "inf"], "argument --memory-budget-gib: invalid finite number value: 'inf'"),
    ],
)
def test_scan_refuses_before_the_cube_exists(tiny_suite, tmp_path, capsys, extra, message):
    assert _scan(tiny_suite, tmp_path / "c.zarr", *extra) == 2
    assert message in capsys.readouterr().err
    assert listing(tmp_path) == []


def test_the_suggested_smallest_cohort_percent_runs(tiny_suite, tmp_path):
    assert _scan(tiny_suite, tmp_path / "c.zarr", "--cohort-percent", "0.7813") == 0
    assert open_cube(tmp_path / "c.zarr")["cohort"].values.sum(axis=1).tolist() == [1, 1]  # one per layer


def test_a_model_whose_config_is_not_on_disk_is_checked_when_loaded(tiny_suite, tmp_path, monkeypatch, capsys):
    # A Hub revision not in the cache yet: the same check runs on the loaded reference step,
    # and the cube made meanwhile is removed again (the user's input stopped the run).
    monkeypatch.setattr(scan_plan, "config_on_disk", lambda *a, **k: None)
    assert _scan(tiny_suite, tmp_path / "c.zarr", "--window", "256") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dynamics scan: error: --window 256: the model's context is 32 tokens; expected at most 32"]
    assert listing(tmp_path) == []


def test_a_corpus_shorter_than_a_window_fails_then_the_corrected_run_works(tiny_suite, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("the cat sleeps\n")
    out = tmp_path / "runs" / "c.zarr"
    assert _scan(tiny_suite, out, "--corpus", str(short)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fewer than one window of 32" in err[0]
    assert listing(tmp_path) == ["short.txt"]  # neither the cube nor runs/ is left behind
    assert _scan(tiny_suite, out, "--corpus", str(tiny_suite / "heldout.txt")) == 0
    assert open_cube(out)["step"].values.tolist() == [8]


def test_a_cube_left_by_a_failed_run_takes_the_corrected_settings(tiny_suite, tmp_path, monkeypatch, capsys, caplog):
    out = tmp_path / "c.zarr"

    def interrupted(spec):  # (a reference step that fails to load leaves no cube: #21)
        raise KeyboardInterrupt

    monkeypatch.setattr(scan_driver, "prepare_reference", interrupted)
    assert _scan(tiny_suite, out, "--seed", "5") == 130  # Ctrl-C before the first step: the cube stays, nothing done
    assert open_cube(out, include_pending=True)["status"].values.tolist() == ["pending"]
    monkeypatch.undo()
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        assert _scan(tiny_suite, out, "--seed", "6") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        f"cube {out} has no done step and was made with analysis.seed=5: re-initialising it for "
        "this run's analysis.seed=6"
    ]
    ds = open_cube(out)
    assert ds["step"].values.tolist() == [8] and ds.attrs["identity"]["analysis"]["seed"] == 6


def _ablate(tiny_suite, out, *extra):
    return _run(
        [
            "ablate",
            "--model",
            str(tiny_suite),
            "--out",
            str(out),
            "--corpus",
            str(tiny_suite / "heldout.txt"),
            *ABLATE_FAST,
            *extra,
        ]
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--percents", "1e-9,1", "--match-percent", "1"],
            "--percents 1e-09 selects no neuron of this model (its layers "
            "have 64 MLP neurons each); expected at least 0.7813",
        ),
        (
            ["--layer-groups", "1", "--group-percent", "0.5"],
            "--group-percent 0.5 selects no neuron of this model (its layers have 64 MLP neurons each); expected at least 0.7813",
        ),
        (["--window", "64"], "--window 64: the model's context is 32 tokens; expected at most 32"),
    ],
)
def test_ablate_refuses_before_the_cube_exists(tiny_suite, tmp_path, capsys, extra, message):
    assert _ablate(tiny_suite, tmp_path / "s.zarr", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert listing(tmp_path) == []
