"""`dynamics` end to end from the command line, offline."""

import hashlib
import os
import shutil
import subprocess
import sys

import pytest
from fixtures.hub import fake_commit, plant_hub_revision

from dynamics.cli.main import build_parser, main
from dynamics.scan.config import ScanConfig
from dynamics.scan.driver import run_scan
from store import open_cube


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "dynamics.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_help_lists_every_option_with_its_default():
    for command, cls in [("scan", ScanConfig)]:
        text = build_parser()._subparsers._group_actions[0].choices[command].format_help()
        for name in cls.__dataclass_fields__:
            assert f"--{name.replace('_', '-')}" in text, name
        assert "(default: final)" in text and "(default: skip)" in text and "(default: off)" in text
    top = cli("--help")
    assert top.returncode == 0 and "scan" in top.stdout and "steps" in top.stdout


FAST_ARGS = ["--wd-tokens", "512", "--ppl-tokens", "64", "--tse-per-case", "1"]


@pytest.mark.slow
def test_scan_a_local_suite_then_resume(tiny_suite, tmp_path):
    out = tmp_path / "toy.zarr"
    assert main(["scan", "--model", str(tiny_suite), "--steps", "0:4:2", "--out", str(out), *FAST_ARGS]) == 0
    ds = open_cube(out)
    assert ds["step"].values.tolist() == [0, 2, 4]
    assert ds.attrs["identity"]["reference_step"] == 4
    proc = cli("scan", "--model", str(tiny_suite), "--steps", "all", "--out", str(out), *FAST_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert "2 steps computed, 3 already done, 0 failed" in proc.stdout
    assert open_cube(out)["step"].values.tolist() == [0, 1, 2, 4, 8]
    assert open_cube(out).attrs["identity"]["reference_step"] == 4  # an extended cube keeps its cohort


def plant_suite(cache, suite, steps):
    for step in steps:
        plant_hub_revision(cache, "EleutherAI/pythia-70m", step, copy_from=suite / f"step{step}")


def plant_lost_revision(cache, step):
    """A revision the cache lists (its ref) but cannot load offline (its snapshot is gone): it passes the
    up-front check of the refs and fails when fetched."""
    snapshot = plant_hub_revision(cache, "EleutherAI/pythia-70m", step)
    shutil.rmtree(snapshot)


@pytest.mark.slow
def test_scan_from_an_offline_hub_cache(tiny_suite, tmp_path):
    cache = tmp_path / "hf"
    plant_suite(cache, tiny_suite, [1, 2])
    plant_lost_revision(cache, 4)
    out = tmp_path / "p70.zarr"
    proc = cli(
        "scan",
        "-m",
        "pythia-70m",
        "--steps",
        "1,2,4",
        "--reference-step",
        "2",
        "--cache-dir",
        str(cache),
        "-o",
        str(out),
        "--retries",
        "1",
        "--corpus",
        str(tiny_suite / "heldout.txt"),
        *FAST_ARGS,
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 1, proc.stderr
    assert "2 steps computed, 0 already done, 1 failed (4)" in proc.stdout
    ds = open_cube(out, include_pending=True)
    assert ds["status"].values.tolist() == ["done", "done", "failed"]
    assert ds.attrs["steps"]["1"]["commit"] == fake_commit("EleutherAI/pythia-70m", 1)
    assert ds.attrs["steps"]["2"]["revision"] == "step2"
    assert "step4" in ds.attrs["steps"]["4"]["error"]
    assert (cache / "models--EleutherAI--pythia-70m" / "refs" / "step1").exists()  # cached before: kept


@pytest.mark.slow
def test_a_missing_reference_step_stops_and_leaves_no_cube(tiny_suite, tmp_path):
    cache = tmp_path / "hf"
    plant_suite(cache, tiny_suite, [1])
    plant_lost_revision(cache, 2)
    proc = cli(
        "scan",
        "-m",
        "pythia-70m",
        "--steps",
        "1,2",
        "--cache-dir",
        str(cache),
        "-o",
        str(tmp_path / "r.zarr"),
        "--retries",
        "1",
        "--corpus",
        str(tiny_suite / "heldout.txt"),
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(
        "dynamics scan: error: the reference step 2 is needed first and could not be fetched"
    )
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # nothing was measured: no cube, no lock


def test_on_error_stop_stops_and_keeps_done_steps(tiny_suite, tmp_path):
    cache = tmp_path / "hf"
    plant_suite(cache, tiny_suite, [1, 4])
    plant_lost_revision(cache, 2)
    out = tmp_path / "p.zarr"
    config = ScanConfig(
        model="pythia-70m",
        out=str(out),
        steps="1,2,4",
        on_error="stop",
        retries=1,
        cache_dir=str(cache),
        corpus=str(tiny_suite / "heldout.txt"),
        wd_tokens=512,
        ppl_tokens=64,
        tse_per_case=1,
    )
    with pytest.raises(Exception, match="stopping: --on-error stop"):
        run_scan(config)
    assert open_cube(out)["step"].values.tolist() == [1]
    assert open_cube(out, include_pending=True)["status"].values.tolist() == ["done", "failed", "pending"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "1500"], "step 1500 has no checkpoint for EleutherAI/pythia-70m; nearest available: 1000, 2000"),
        (["--steps", "0:abc"], "cannot parse step spec '0:abc'"),
        (["--steps", "0:100:0"], "STEP 0"),
        (["--model", "pythia-7b"], "unknown Pythia size '7b'"),
        (["--dtype", "int8"], "invalid choice: 'int8'"),
        (["--on-error", "retry"], "invalid choice: 'retry'"),
        (["--device", "tpu"], "--device 'tpu' is not one of auto, cpu, cuda, cuda:N"),
        (["--prefetch-depth", "-1"], "--prefetch-depth -1: expected 0 (no prefetch) to 16 steps ahead"),
        (["--prefetch-depth", "17"], "--prefetch-depth 17: expected 0 (no prefetch) to 16 steps ahead"),
        (
            ["--max-disk-gib", "-2"],
            "--max-disk-gib -2.0: expected 0 (auto: half the free space of the cache's filesystem) "
            "or a positive, finite number of GiB",
        ),
        (["--max-disk-gib", "inf"], "argument --max-disk-gib: invalid finite number value: 'inf'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_anything_is_written(tmp_path, args, message, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "never.zarr"
    base = {"--model": "pythia-70m", "--steps": "1000", "--out": str(out)}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    try:
        code = main(["scan", *[x for kv in base.items() for x in kv]])
    except SystemExit as exit_:  # argparse rejects bad choices itself
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_errors_in_a_real_process_are_one_line_without_traceback(tmp_path):
    proc = cli(
        "scan", "-m", "pythia-70m", "--steps", "1500", "-o", str(tmp_path / "x.zarr"), env={"HF_HUB_OFFLINE": "1"}
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "dynamics scan: error: step 1500 has no checkpoint for EleutherAI/pythia-70m; nearest available: 1000, 2000"
    )


def test_steps_command(capsys):
    assert main(["steps", "log"]) == 0
    assert capsys.readouterr().out.startswith("20 steps: 0 1 2 4 8")
    assert main(["steps", "1500", "--model", "pythia-160m"]) == 2
    assert "nearest available: 1000, 2000" in capsys.readouterr().err


def test_tse_export_command(tmp_path, capsys):
    assert main(["tse", "export", str(tmp_path / "tse"), "--format", "jsonl"]) == 0
    assert "wrote 22 files" in capsys.readouterr().out
    lines = (tmp_path / "tse" / "simple_agrmt.jsonl").read_text().splitlines()
    assert len(lines) == 140
    (tmp_path / "tse" / "simple_agrmt.jsonl").write_text("changed\n")
    assert main(["tse", "export", str(tmp_path / "tse"), "--format", "jsonl"]) == 2
    assert "simple_agrmt.jsonl already exists with different content" in capsys.readouterr().err


def test_a_corrupt_checkpoint_is_recorded_and_the_scan_goes_on(tiny_suite, tmp_path):
    cache = tmp_path / "hf"
    plant_suite(cache, tiny_suite, [1, 2, 4])
    snapshot = cache / "models--EleutherAI--pythia-70m" / "snapshots" / fake_commit("EleutherAI/pythia-70m", 2)
    (snapshot / "model.safetensors").write_bytes(b"truncated download")
    out = tmp_path / "c.zarr"
    summary = run_scan(
        ScanConfig(
            model="pythia-70m",
            out=str(out),
            steps="1,2,4",
            retries=1,
            cache_dir=str(cache),
            corpus=str(tiny_suite / "heldout.txt"),
            wd_tokens=512,
            ppl_tokens=64,
            tse_per_case=1,
        )
    )
    assert summary.done == [1, 4] and summary.failed == [2]
    ds = open_cube(out, include_pending=True)
    assert ds["status"].values.tolist() == ["done", "failed", "done"]
    assert "step 2: cannot load the model" in ds.attrs["steps"]["2"]["error"]


@pytest.mark.slow
def test_ctrl_c_keeps_every_completed_step(tiny_suite, tmp_path):
    import json
    import signal
    import time

    out = tmp_path / "int.zarr"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dynamics.cli",
            "scan",
            "-m",
            str(tiny_suite),
            "--steps",
            "all",
            "-o",
            str(out),
            "--wd-tokens",
            "512",
            "--ppl-tokens",
            "64",
            "--tse-per-case",
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            steps = json.loads((out / "zarr.json").read_text())["attributes"].get("steps", {})
        except (FileNotFoundError, json.JSONDecodeError):
            steps = {}
        if any(r.get("status") == "done" for r in steps.values()):
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    done = open_cube(out)["step"].values.tolist()
    if proc.returncode == 0:  # the scan finished before the signal landed
        assert done == [0, 1, 2, 4, 8]
        return
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == (
        "dynamics scan: interrupted; every completed step is kept, re-run the same command to resume"
    )
    assert 1 <= len(done) < 5
    assert (
        run_scan(
            ScanConfig(model=str(tiny_suite), out=str(out), steps="all", wd_tokens=512, ppl_tokens=64, tse_per_case=5)
        ).skipped
        == done
    )


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_keeps_the_done_steps(tiny_suite, tmp_path, monkeypatch, capsys):
    """ENOSPC raised by the store itself while the third step's arrays are written."""
    import errno

    import zarr.storage

    from store.cube import CubeWriter

    out = tmp_path / "full_disk.zarr"
    calls = {"write_step": 0}
    real_write_step, real_set = CubeWriter.write_step, zarr.storage.LocalStore.set

    def counting_write_step(self, result, record=None):
        calls["write_step"] += 1
        return real_write_step(self, result, record)

    async def set_or_fail(self, key, value):
        if calls["write_step"] >= 3 and "/c/" in key:  # a chunk of the third step result
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real_set(self, key, value)

    monkeypatch.setattr(CubeWriter, "write_step", counting_write_step)
    monkeypatch.setattr(zarr.storage.LocalStore, "set", set_or_fail)
    code = main(["scan", "--model", str(tiny_suite), "--steps", "all", "--out", str(out), *FAST_ARGS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2  # the user's to fix (issue #21), and the message names the cube
    assert err[-1] == (
        f"dynamics scan: error: no space left on the device while writing step 2 to cube {str(out)!r}; free space "
        "or choose another --out, then re-run the same command (the steps already done are kept)"
    )
    monkeypatch.undo()
    assert open_cube(out)["step"].values.tolist() == [0, 1]
    assert open_cube(out, include_pending=True)["status"].values.tolist() == [
        "done",
        "done",
        "pending",
        "pending",
        "pending",
    ]
    # Space is back: the same command finishes the cube without recomputing the done steps.
    assert main(["scan", "--model", str(tiny_suite), "--steps", "all", "--out", str(out), *FAST_ARGS]) == 0
    assert open_cube(out)["step"].values.tolist() == [0, 1, 2, 4, 8]


def test_a_hub_ref_moved_to_other_weights_is_refused_on_resume(tiny_suite, tmp_path, monkeypatch, capsys):
    """Offline, from the cache: the ref step1 now names another commit (other weight blobs)."""
    from fixtures.hub import model_files, plant_hub_commit

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hf"
    plant_suite(cache, tiny_suite, [1, 2])
    out = tmp_path / "p.zarr"
    argv = ["scan", "-m", "pythia-70m", "--steps", "1,2", "--cache-dir", str(cache), "-o", str(out)]
    argv += ["--corpus", str(tiny_suite / "heldout.txt"), *FAST_ARGS]
    assert main(argv) == 0
    stored = open_cube(out).attrs["steps"]["1"]["weights_sha256"]["model.safetensors"]
    moved = plant_hub_commit(cache, "EleutherAI/pythia-70m", "e" * 40, model_files(tiny_suite / "step4"), ["step1"])
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    now = (moved / "model.safetensors").resolve().name
    assert err.count("\n") == 0 and "step 1 was measured on other weights than EleutherAI/pythia-70m serves now" in err
    assert f"model.safetensors: stored sha256 {stored}, now {now}" in err


def test_a_reference_step_outside_the_steps_is_checked_from_the_runs_record(tiny_suite, tmp_path, capsys):
    suite = tmp_path / "suite"
    shutil.copytree(tiny_suite, suite)
    out = tmp_path / "r.zarr"
    argv = ["scan", "-m", str(suite), "--steps", "1,2", "--reference-step", "4", "-o", str(out), *FAST_ARGS]
    assert main(argv) == 0
    recorded = open_cube(out).attrs["runs"][-1]["reference_weights"]["weights_sha256"]
    assert recorded == {
        "model.safetensors": hashlib.sha256((suite / "step4/model.safetensors").read_bytes()).hexdigest()
    }
    shutil.copyfile(suite / "step8" / "model.safetensors", suite / "step4" / "model.safetensors")
    capsys.readouterr()
    assert main([*argv[:4], "1,2,8", *argv[5:]]) == 2
    err = capsys.readouterr().err
    assert "the reference step 4, on which this cube's cohort was fixed, has other weights now" in err
    assert sorted(open_cube(out)["step"].values.tolist()) == [1, 2]  # not extended
