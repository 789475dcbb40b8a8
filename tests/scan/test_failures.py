"""Failures that tell the truth: a bug stops the run loudly, a bad checkpoint is recorded.

- an exception from our own computation stops the scan (or study) at once with the
  traceback's last frames, one line naming the unit and phase, exit code 1; every done
  step stays, and the failure is stored (type, message, frames) and reported;
- a checkpoint whose weights hold NaN, or whose tokenizer reduces text to nothing, is a
  checkpoint error (one clear line), never a "done" step with meaningless numbers.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import dynamics.scan.worker
import dynamics.study.worker
from dynamics.cli.main import main
from dynamics.execution.executor import ExecutorSettings, SerialExecutor
from dynamics.report.scan_text import report
from store import open_cube

pytestmark = pytest.mark.models

FAST_ARGS = ["--wd-tokens", "512", "--ppl-tokens", "64", "--tse-per-case", "1"]


def _fail_at_step(monkeypatch, step: int) -> None:
    original = dynamics.scan.worker.evaluate
    calls = {"n": 0}

    def broken(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise IndexError("too many indices for tensor of dimension 3")
        return original(*args, **kwargs)

    monkeypatch.setattr(dynamics.scan.worker, "evaluate", broken)


def test_a_bug_stops_the_scan_with_its_traceback_and_keeps_done_steps(tiny_suite, tmp_path, monkeypatch, capsys):
    _fail_at_step(monkeypatch, 2)  # the first step measures fine, the second raises
    out = tmp_path / "bug.zarr"
    code = main(
        [
            "scan",
            "--model",
            str(tiny_suite),
            "--steps",
            "0,2,4",
            "--reference-step",
            "8",
            "--out",
            str(out),
            "--task-retries",
            "3",
            *FAST_ARGS,
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback (most recent call last" in err and "in broken" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("dynamics scan: error: bug in dynamics at step 2 (phase evaluation): IndexError: too many")
    ds = open_cube(out, include_pending=True)
    assert ds["status"].values.tolist() == ["done", "failed", "pending"]  # stopped at once: step 4 never ran
    record = ds.attrs["steps"]["2"]
    assert record["error_type"] == "IndexError" and record["kind"] == "bug" and record["phase"] == "evaluation"
    assert record["task_attempts"] == 1  # a bug is not retried
    assert "in broken" in record["traceback"] and "IndexError: too many indices" in record["traceback"]
    assert "  failed step 2 [bug/evaluation]: IndexError: too many indices" in report(open_cube(out))
    # The bug fixed, the same command finishes the cube and keeps step 0 as it was.
    monkeypatch.undo()
    before = open_cube(out)["wd"].sel(step=0).values
    assert (
        main(
            [
                "scan",
                "--model",
                str(tiny_suite),
                "--steps",
                "0,2,4",
                "--reference-step",
                "8",
                "--out",
                str(out),
                *FAST_ARGS,
            ]
        )
        == 0
    )
    after = open_cube(out)
    assert after["step"].values.tolist() == [0, 2, 4]
    assert (after["wd"].sel(step=0).values == before).all()


def test_verbose_shows_the_whole_traceback(tiny_suite, tmp_path, monkeypatch, capsys):
    _fail_at_step(monkeypatch, 1)
    out = tmp_path / "bug.zarr"
    assert (
        main(
            [
                "-v",
                "scan",
                "--model",
                str(tiny_suite),
                "--steps",
                "0",
                "--reference-step",
                "8",
                "--out",
                str(out),
                *FAST_ARGS,
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err and "in measure_step" in err  # frames the short form leaves out


def test_checkpoint_problems_are_retried_and_bugs_are_not():
    calls = {"bug": 0, "checkpoint": 0}

    def unit(kind: str) -> None:
        calls[kind] += 1
        if kind == "bug":
            raise ZeroDivisionError("division by zero")
        from dynamics.errors import CheckpointError

        raise CheckpointError("step 3: cannot load the model")

    done = list(SerialExecutor(ExecutorSettings(task_retries=2)).map(unit, ["bug", "checkpoint"]))
    assert [d.kind for d in done] == ["bug", "checkpoint"]
    assert calls == {"bug": 1, "checkpoint": 3}
    assert done[0].error == "ZeroDivisionError: division by zero" and done[0].error_type == "ZeroDivisionError"
    assert done[1].error == "step 3: cannot load the model" and done[1].attempts == 3


def _poison(suite, step: int) -> None:
    path = suite / f"step{step}" / "model.safetensors"
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, path, metadata={"format": "pt"})


def test_nan_weights_are_a_checkpoint_error_not_a_done_step(tiny_suite, tmp_path):
    suite = tmp_path / "suite"
    shutil.copytree(tiny_suite, suite)
    _poison(suite, 2)
    out = tmp_path / "nan.zarr"
    assert (
        main(
            [
                "scan",
                "--model",
                str(suite),
                "--steps",
                "0,2,4",
                "--reference-step",
                "8",
                "--out",
                str(out),
                "--task-retries",
                "0",
                *FAST_ARGS,
            ]
        )
        == 1
    )  # the scan goes on; exit 1 says a step is missing
    ds = open_cube(out, include_pending=True)
    assert ds["status"].values.tolist() == ["done", "failed", "done"]
    record = ds.attrs["steps"]["2"]
    assert record["kind"] == "checkpoint" and record["phase"] == "load"
    assert "the weights in" in record["error"] and "contain NaN or Inf" in record["error"]


def test_a_tokenizer_that_maps_text_to_nothing_is_refused(tiny_suite, tmp_path, capsys):
    suite = tmp_path / "suite"
    shutil.copytree(tiny_suite, suite)
    # What a missing tokenizer.json leaves: a vocabulary of special tokens only.
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    empty = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1}, unk_token="<unk>")),
        unk_token="<unk>",
        eos_token="<eos>",
    )
    for step_dir in suite.glob("step*"):
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (step_dir / name).unlink(missing_ok=True)
        empty.save_pretrained(step_dir)
    out = tmp_path / "tok.zarr"
    assert (
        main(["scan", "--model", str(suite), "--steps", "0", "--reference-step", "8", "--out", str(out), *FAST_ARGS])
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "the tokenizer in" in err[0] and "is unusable" in err[0] and "tokenizer.json missing?" in err[0]


def test_a_bug_in_a_study_condition_stops_the_study(tmp_path, monkeypatch, capsys):
    from fixtures.study import BLIMP_TINY, save_tiny_model, write_blimp, write_corpus

    model_dir = save_tiny_model("gpt_neox", tmp_path / "model")
    corpus = write_corpus(tmp_path)
    blimp = write_blimp(tmp_path / "blimp")
    original = dynamics.study.worker.measure_unit
    seen = []

    def broken(model, number, unit, *args, **kwargs):
        seen.append(unit.name)
        if len(seen) == 2:
            raise RuntimeError("shape mismatch in our own code")
        return original(model, number, unit, *args, **kwargs)

    monkeypatch.setattr(dynamics.study.worker, "measure_unit", broken)
    out = tmp_path / "study.zarr"
    code = main(
        [
            "ablate",
            "--model",
            str(model_dir),
            "--out",
            str(out),
            "--corpus",
            str(corpus),
            "--window",
            "64",
            "--wd-tokens",
            "512",
            "--ppl-tokens",
            "256",
            "--percents",
            "10",
            "--match-percent",
            "10",
            "--match-iterations",
            "2",
            "--tse-per-case",
            "1",
            "--blimp",
            str(blimp),
            "--blimp-per-paradigm",
            "2",
            "--blimp-paradigms",
            ",".join(BLIMP_TINY),
            "--tasks",
            "none",
            "--layer-groups",
            "0",
            "--pos",
            "off",
            "--threads",
            "1",
            "--task-retries",
            "2",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1, err
    assert len(seen) == 2  # stopped at once, not retried
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"dynamics ablate: error: bug in dynamics at condition {seen[1]}: RuntimeError: shape mismatch")
    )
    steps = open_cube(out, include_pending=True).attrs["steps"]
    statuses = [record["status"] for record in steps.values()]
    assert statuses.count("done") == 1 and statuses.count("failed") == 1
    failed = next(record for record in steps.values() if record["status"] == "failed")
    assert failed["error_type"] == "RuntimeError" and "in broken" in failed["traceback"]
