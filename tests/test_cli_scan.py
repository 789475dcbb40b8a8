"""`dynamics` end to end from the command line, offline."""

import os
import subprocess
import sys

import pytest

from dynamics.cli import build_parser, main
from dynamics.scan import ScanConfig, run_scan
from hub_fixtures import fake_commit, make_local_suite, plant_hub_revision
from store import open_cube


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return make_local_suite(tmp_path_factory.mktemp("suite") / "toy", [0, 1, 2, 4, 8])


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "dynamics.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_help_lists_every_option_with_its_default():
    for command, cls in [("scan", ScanConfig)]:
        text = build_parser()._subparsers._group_actions[0].choices[command].format_help()
        for name in cls.__dataclass_fields__:
            assert f"--{name.replace('_', '-')}" in text, name
        assert "(default: final)" in text and "(default: skip)" in text and "(default: off)" in text
    top = cli("--help")
    assert top.returncode == 0 and "scan" in top.stdout and "steps" in top.stdout


def test_scan_a_local_suite_then_resume(suite, tmp_path):
    out = tmp_path / "toy.zarr"
    assert main(["scan", "--model", str(suite), "--steps", "0:4:2", "--out", str(out)]) == 0
    ds = open_cube(out)
    assert ds["step"].values.tolist() == [0, 2, 4]
    assert (ds["n_parameters"].values > 0).all() and ds["n_parameters"].values[0] == ds["n_parameters"].values[-1]
    assert ds["weight_norm"].values[0] != ds["weight_norm"].values[1]  # different checkpoints
    assert ds["seconds"].sel(phase="load").values.min() > 0
    proc = cli("scan", "--model", str(suite), "--steps", "all", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "2 steps computed, 3 already done, 0 failed" in proc.stdout
    assert open_cube(out)["step"].values.tolist() == [0, 1, 2, 4, 8]


def test_scan_from_an_offline_hub_cache(tmp_path):
    cache = tmp_path / "hf"
    for step in (1000, 2000):
        plant_hub_revision(cache, "EleutherAI/pythia-70m", step)
    out = tmp_path / "p70.zarr"
    proc = cli("scan", "-m", "pythia-70m", "--steps", "1000:3000:1000", "--cache-dir", str(cache), "-o", str(out),
               "--retries", "1", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1
    assert "2 steps computed, 0 already done, 1 failed (3000)" in proc.stdout
    ds = open_cube(out, include_pending=True)
    assert ds["status"].values.tolist() == ["done", "done", "failed"]
    assert ds.attrs["steps"]["1000"]["commit"] == fake_commit("EleutherAI/pythia-70m", 1000)
    assert ds.attrs["steps"]["2000"]["revision"] == "step2000"
    assert "step3000" in ds.attrs["steps"]["3000"]["error"]
    assert (cache / "models--EleutherAI--pythia-70m" / "refs" / "step1000").exists()  # cached before: kept


def test_on_error_stop_stops_and_keeps_done_steps(tmp_path):
    cache = tmp_path / "hf"
    plant_hub_revision(cache, "EleutherAI/pythia-70m", 1000)
    plant_hub_revision(cache, "EleutherAI/pythia-70m", 3000)
    out = tmp_path / "p.zarr"
    config = ScanConfig(model="pythia-70m", out=str(out), steps="1000,2000,3000", on_error="stop", retries=1,
                        cache_dir=str(cache))
    with pytest.raises(Exception, match="stopping: --on-error stop"):
        run_scan(config)
    assert open_cube(out)["step"].values.tolist() == [1000]


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


def test_errors_in_a_real_process_are_one_line_without_traceback(tmp_path):
    proc = cli("scan", "-m", "pythia-70m", "--steps", "1500", "-o", str(tmp_path / "x.zarr"), env={"HF_HUB_OFFLINE": "1"})
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
