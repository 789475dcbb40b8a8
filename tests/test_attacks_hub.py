"""Issue #21's attacks on provenance and the first hour offline, each through the real CLI.

- Weights that changed under a cube: the reference step's or a done step's weight file
  replaced, then the cube extended; a study resumed on other weights. Refused in one line
  naming the step and both hashes (exit code 2), nothing written; ``--overwrite`` recomputes.
- A model that does not match its files (a config claiming 5 layers, weights for 2), and a
  checkpoint that cannot be loaded at all: exit code 1, one line, no cube left behind.
- A Hub that cannot be reached (connections to a closed local port are refused at once) with
  nothing cached: one line, no cube, and a bounded number of connections and waits, counted
  (``socket.create_connection`` and ``time.sleep`` are replaced by counters: nothing sleeps).
  ``HF_HUB_OFFLINE=1`` with nothing cached stays one line too.

Run on the base commit (``PYTHONPATH=<base checkout>``) these tests fail: that is the table
of the report.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli_fuzz import ABLATE_FAST, FAST, Attack, Outcome, run_attack

from checkpoints import hub_status
from store import open_cube

PYTHIA_ATTACK = ("scan", "--model", "pythia-1.4b", "--steps", "0:143000:1000", "--out", "{ws}/p.zarr")
STUDY_ATTACK = (
    "ablate",
    "--model",
    "EleutherAI/pythia-70m",
    "--out",
    "{ws}/s.zarr",
    "--blimp-per-paradigm",
    "0",
    "--tasks",
    "none",
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line(outcome: Outcome, code: int) -> str:
    """The one stderr line of an attack that must stop with ``code`` and no traceback."""
    assert not outcome.traceback, outcome.stderr
    assert outcome.code == code, outcome.stderr
    assert len(outcome.lines) == 1, outcome.stderr
    return outcome.lines[0]


# -- weights that changed under a cube ----------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tiny_suite, tmp_path_factory):
    """A copy of the tiny suite and a cube of its steps 4 and 8 (reference 8), and a backup of both."""
    from dynamics.cli.main import main

    ws = tmp_path_factory.mktemp("weights")
    shutil.copytree(tiny_suite, ws / "suite")
    argv = ["scan", "--model", str(ws / "suite"), "--out", str(ws / "cube.zarr"), "--steps", "4,8", *FAST]
    assert main(argv) == 0
    backup = tmp_path_factory.mktemp("weights_backup")
    shutil.copytree(ws, backup / "ws", symlinks=True)
    return ws, backup / "ws"


@pytest.fixture
def scanned(pristine):
    """The workspace of :func:`pristine` as it was made (the same paths: the cube names its suite)."""
    ws, backup = pristine
    shutil.rmtree(ws)
    shutil.copytree(backup, ws, symlinks=True)
    return {"ws": str(ws), "suite": str(ws / "suite"), "cube": str(ws / "cube.zarr")}


def extend(*extra: str) -> Attack:
    """The cube of :func:`pristine` extended by step 2."""
    return Attack("extend", ("scan", "--model", "{suite}", "--out", "{cube}", "--steps", "2,4,8", *FAST, *extra))


def test_reference_weights_replaced_then_cube_extended(scanned):
    suite = Path(scanned["suite"])
    stored, replacement = sha256(suite / "step8" / "model.safetensors"), sha256(suite / "step2" / "model.safetensors")
    shutil.copyfile(suite / "step2" / "model.safetensors", suite / "step8" / "model.safetensors")
    outcome = run_attack(extend(), scanned)
    line = one_line(outcome, 2)
    assert "the reference step 8, on which this cube's cohort was fixed, has other weights now" in line
    assert f"model.safetensors: stored sha256 {stored}, now {replacement}" in line
    assert "scan into another --out" in line
    assert not outcome.created and not outcome.changed  # nothing written: the cube is as it was


def test_reference_weights_replaced_is_refused_with_overwrite_too(scanned):
    suite = Path(scanned["suite"])
    shutil.copyfile(suite / "step2" / "model.safetensors", suite / "step8" / "model.safetensors")
    outcome = run_attack(extend("--overwrite"), scanned)
    assert "--overwrite recomputes steps but keeps the cohort" in one_line(outcome, 2)
    assert not outcome.created and not outcome.changed


def test_done_step_weights_replaced_then_cube_extended(scanned):
    suite = Path(scanned["suite"])
    stored, replacement = sha256(suite / "step4" / "model.safetensors"), sha256(suite / "step1" / "model.safetensors")
    shutil.copyfile(suite / "step1" / "model.safetensors", suite / "step4" / "model.safetensors")
    outcome = run_attack(extend(), scanned)
    line = one_line(outcome, 2)
    assert f"step 4 was measured on other weights than {suite} serves now" in line
    assert f"model.safetensors: stored sha256 {stored}, now {replacement}" in line
    assert "--overwrite recomputes every requested step (done ones included)" in line
    assert not outcome.created and not outcome.changed


def test_done_step_weights_replaced_then_overwrite_recomputes_them(scanned):
    suite = Path(scanned["suite"])
    shutil.copyfile(suite / "step1" / "model.safetensors", suite / "step4" / "model.safetensors")
    outcome = run_attack(extend("--overwrite"), scanned)
    assert outcome.code == 0, outcome.stderr
    records = open_cube(scanned["cube"]).attrs["steps"]
    assert records["4"]["weights_sha256"] == {"model.safetensors": sha256(suite / "step1" / "model.safetensors")}
    assert sorted(int(s) for s, r in records.items() if r["status"] == "done") == [2, 4, 8]


def test_a_touched_but_equal_weight_file_is_no_change(scanned):
    """Size and mtime changed: the file is hashed again, and an equal hash passes."""
    weights = Path(scanned["suite"]) / "step4" / "model.safetensors"
    os.utime(weights, ns=(time.time_ns(), time.time_ns()))
    outcome = run_attack(extend(), scanned)
    assert outcome.code == 0, outcome.stderr
    assert sorted(int(s) for s in open_cube(scanned["cube"])["step"].values) == [2, 4, 8]


# -- a model that does not match its files -------------------------------------------------------


def test_config_claiming_5_layers_with_weights_for_2(tiny_suite, tmp_path):
    model = tmp_path / "model5"
    shutil.copytree(tiny_suite / "step8", model)
    config = json.loads((model / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    (model / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 5}))
    argv = ("scan", "--model", str(model), "--out", "{ws}/m.zarr", "--corpus", str(tiny_suite / "heldout.txt"), *FAST)
    outcome = run_attack(Attack("5 layers", argv), {"ws": str(tmp_path)})
    line = one_line(outcome, 1)
    assert f"step 0: the weights in {model} do not match its config: " in line
    assert "missing from the files, which transformers would fill with random values" in line
    assert "layers 2, 3, 4)" in line
    assert outcome.created == [], outcome.created  # no cube, no lock


def test_a_checkpoint_that_fails_to_load_leaves_no_cube(tiny_suite, tmp_path):
    model = tmp_path / "corrupt"
    shutil.copytree(tiny_suite / "step8", model)
    (model / "model.safetensors").write_bytes(b"not a safetensors file" * 100)
    argv = ("scan", "--model", str(model), "--out", "{ws}/c/m.zarr", "--corpus", str(tiny_suite / "heldout.txt"), *FAST)
    outcome = run_attack(Attack("corrupt", argv), {"ws": str(tmp_path)})
    assert "cannot load the model" in one_line(outcome, 1)
    assert not (tmp_path / "c" / "m.zarr").exists()


# -- a Hub that cannot be reached ----------------------------------------------------------------


@pytest.fixture
def closed_port():
    """A local port bound but not listening: every connection to it is refused at once."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.fixture
def counted(monkeypatch):
    """Every TCP connection attempted and every sleep asked for, counted (and no sleep taken)."""
    seen: dict[str, list] = {"connections": [], "sleeps": []}
    connect = socket.create_connection

    def counting_connect(address, *args, **kwargs):
        seen["connections"].append(address)
        return connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counting_connect)
    monkeypatch.setattr(time, "sleep", seen["sleeps"].append)
    try:  # huggingface_hub >= 2 looks AI-agent names up once per process: not a call of this tool, not counted
        from huggingface_hub.utils import _detect_agent

        monkeypatch.setattr(_detect_agent, "_registry", _detect_agent._EMPTY_REGISTRY)
    except (ImportError, AttributeError):
        pass
    return seen


@pytest.fixture
def hub_mode(request, monkeypatch, closed_port, tmp_path):
    """``unreachable``: HF_HUB_OFFLINE unset, the endpoint a closed local port; ``offline``: HF_HUB_OFFLINE=1.
    Either way the Hugging Face cache is an empty directory."""
    from huggingface_hub import constants

    offline = request.param == "offline"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return request.param


@pytest.mark.parametrize("hub_mode", ["unreachable", "offline"], indirect=True)
def test_pythia_scan_without_the_hub_and_nothing_cached(hub_mode, counted, tmp_path):
    outcome = run_attack(Attack("pythia offline", PYTHIA_ATTACK), {"ws": str(tmp_path)})
    line = one_line(outcome, 2)
    assert "EleutherAI/pythia-1.4b" in line and "HF_HUB_OFFLINE" in line
    assert not (tmp_path / "p.zarr").exists() and not (tmp_path / "p.zarr.lock").exists()
    if hub_mode == "unreachable":
        assert line.startswith("dynamics scan: error: cannot reach the Hugging Face Hub at http://127.0.0.1:")
        assert "--model toy" in line
        # the refs listed once, retried from the run's budget: 3 connections, 2 waits, then nothing
        assert len(counted["connections"]) == 1 + hub_status.CONNECTION_RETRIES
        assert counted["sleeps"] == [2.0, 4.0]
    else:
        assert "not in the Hugging Face cache" in line and counted["connections"] == []


@pytest.mark.parametrize("hub_mode", ["unreachable", "offline"], indirect=True)
def test_pythia_study_without_the_hub_and_nothing_cached(hub_mode, counted, tmp_path):
    outcome = run_attack(Attack("study offline", STUDY_ATTACK), {"ws": str(tmp_path)})
    line = one_line(outcome, 2)
    assert "EleutherAI/pythia-70m" in line
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "s.zarr.lock").exists()
    if hub_mode == "unreachable":
        assert "cannot reach the Hugging Face Hub" in line
        assert len(counted["connections"]) == 1 + hub_status.CONNECTION_RETRIES
        assert counted["sleeps"] == [2.0, 4.0]
    else:
        assert counted["connections"] == []


@pytest.mark.slow
def test_pythia_scan_with_the_hub_unreachable_through_the_real_entry_point(closed_port, tmp_path):
    """``python -m dynamics.cli`` with HF_HUB_OFFLINE unset, HF_ENDPOINT a closed port, HF_HOME empty."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed_port}", HF_HOME=str(tmp_path / "hf"), TRANSFORMERS_OFFLINE="0")
    argv = [part.format(ws=tmp_path) for part in PYTHIA_ATTACK]
    try:  # a guard against the old behaviour (retries per step for hours), not a measure of speed
        done = subprocess.run(
            [sys.executable, "-m", "dynamics.cli", *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=240,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"still retrying after 240 s; stderr so far: {(exc.stderr or b'')[-500:]!r}")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("dynamics scan: error: cannot reach the Hugging Face Hub"), lines[0]
    assert not (tmp_path / "p.zarr").exists() and not (tmp_path / "p.zarr.lock").exists()


# -- a study resumed on other weights -----------------------------------------------------------


def test_study_resumed_after_its_weights_changed(tiny_suite, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_suite / "step8", model)
    places = {"ws": str(tmp_path)}
    argv = (
        "ablate",
        "--model",
        str(model),
        "--out",
        "{ws}/study.zarr",
        "--corpus",
        str(tiny_suite / "heldout.txt"),
        *ABLATE_FAST,
    )
    first = run_attack(Attack("study", argv), places)
    assert first.code == 0, first.stderr
    stored = sha256(model / "model.safetensors")
    shutil.copyfile(tiny_suite / "step4" / "model.safetensors", model / "model.safetensors")
    outcome = run_attack(Attack("study resumed", argv), places)
    line = one_line(outcome, 2)
    assert "this study was measured on other weights than" in line
    assert f"model.safetensors: stored sha256 {stored}, now {sha256(model / 'model.safetensors')}" in line
    assert not outcome.created and not outcome.changed
