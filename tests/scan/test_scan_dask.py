"""The Dask executor: the same cube as the serial one, worker deaths, failing steps, bad options."""

import logging
import os
import shutil
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
from conftest import FAST_SCAN as FAST
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from dynamics.cli.main import main
from dynamics.scan.config import ScanConfig
from dynamics.scan.driver import run_scan
from store import open_cube

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module

TIMING_FIELDS = {"written", "host", "seconds"}


class KillFirstStepWorker(WorkerPlugin):
    """Kill the worker process that starts the first task named ``prefix`` (once per marker file)."""

    def __init__(self, marker: str, prefix: str = "step-") -> None:
        self.marker = marker
        self.prefix = prefix

    def transition(self, key, start, finish, **kwargs):  # noqa: ANN001 - dask's hook signature
        if finish == "executing" and str(key).startswith(self.prefix):
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
            os._exit(1)  # mid-task, like a node that disappears


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes, one thread each; a task is retried once after its worker dies."""
    import dask

    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 1}),
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
        ) as local,
        Client(local) as client,
    ):
        yield client


def markers(path: Path) -> dict[str, dict]:
    steps = open_cube(path, include_pending=True).attrs["steps"]
    return {s: _untimed({k: v for k, v in r.items() if k not in TIMING_FIELDS}) for s, r in steps.items()}


def _untimed(record: dict) -> dict:
    """The digest of the ``seconds`` variable differs as the timings do: every other digest must agree."""
    if "digests" in record:
        record["digests"] = {k: v for k, v in record["digests"].items() if k not in TIMING_FIELDS}
    return record


def assert_same_cube(a: Path, b: Path) -> None:
    x, y = open_cube(a), open_cube(b)
    names = sorted(set(x.data_vars) - {"seconds"})
    assert names == sorted(set(y.data_vars) - {"seconds"})
    assert "drift_prev" in names and "cohort_weights" in names
    for name in names:
        np.testing.assert_array_equal(x[name].values, y[name].values, err_msg=name)
    for name in x.coords:
        np.testing.assert_array_equal(x[name].values, y[name].values, err_msg=name)


@pytest.mark.slow
def test_dask_cube_equals_the_serial_cube_with_a_worker_killed_mid_run(cluster, full_cube, tiny_suite, tmp_path):
    marker = tmp_path / "killed"
    cluster.register_plugin(KillFirstStepWorker(str(marker)), name="kill-first-step")
    before = set(cluster.scheduler_info()["workers"])
    out = tmp_path / "dask.zarr"
    try:
        summary = run_scan(
            ScanConfig(
                model=str(tiny_suite),
                out=str(out),
                steps="all",
                stepwise=True,
                executor="dask",
                scheduler=cluster.scheduler.address,
                **FAST,
            )
        )
    finally:
        cluster.unregister_worker_plugin("kill-first-step")
    assert marker.exists()
    assert before - set(cluster.scheduler_info()["workers"])  # that worker is gone (its nanny started a new one)
    assert summary.done == [0, 1, 2, 4, 8] and not summary.failed
    assert_same_cube(full_cube, out)
    assert markers(full_cube) == markers(out)


@pytest.mark.slow
def test_target_ci_samples_on_dask_equal_the_serial_ones(cluster, tiny_suite, tmp_path):
    """--target-ci: the pilot runs on a worker, and every step, on whichever worker, scores the sized samples."""
    options = dict(model=str(tiny_suite), steps="0,4,8", target_ci=1.0, **FAST)
    serial, dask = tmp_path / "serial.zarr", tmp_path / "dask.zarr"
    run_scan(ScanConfig(out=str(serial), **options))
    summary = run_scan(ScanConfig(out=str(dask), executor="dask", scheduler=cluster.scheduler.address, **options))
    assert summary.done == [0, 4, 8] and not summary.failed
    x, y = open_cube(serial), open_cube(dask)
    assert int(y["sized_tse_per_case"]) == int(x["sized_tse_per_case"]) > FAST["tse_per_case"]
    assert y.attrs["provenance"]["target_ci"] == x.attrs["provenance"]["target_ci"]
    np.testing.assert_array_equal(x["tse_item_uid"].values, y["tse_item_uid"].values)
    np.testing.assert_array_equal(x["tse_item_margin"].values, y["tse_item_margin"].values)
    assert y.sizes["tse_item"] > 22 * FAST["tse_per_case"] and np.isfinite(y["tse_item_margin"].values).all()


@pytest.mark.slow
def test_a_step_that_always_fails_is_retried_then_recorded(cluster, full_cube, tiny_suite, tmp_path):
    suite = tmp_path / "suite"
    shutil.copytree(tiny_suite, suite)
    (suite / "step4" / "model.safetensors").write_bytes(b"truncated")
    out = tmp_path / "failing.zarr"
    summary = run_scan(
        ScanConfig(
            model=str(suite),
            out=str(out),
            steps="all",
            stepwise=True,
            executor="dask",
            scheduler=cluster.scheduler.address,
            task_retries=2,
            **FAST,
        )
    )
    assert summary.done == [0, 1, 2, 8] and summary.failed == [4]
    record = open_cube(out, include_pending=True).attrs["steps"]["4"]
    assert record["status"] == "failed" and record["task_attempts"] == 3
    assert record["error"].startswith("step 4: cannot load the model from")
    done = open_cube(out)
    np.testing.assert_array_equal(done["wd"].values, open_cube(full_cube)["wd"].sel(step=[0, 1, 2, 8]).values)
    assert done["drift_prev_from"].values.tolist() == [-1, 0, 1, 2]


def test_serial_retries_a_failing_step_the_same_way(full_cube, tiny_suite, tmp_path):
    suite = tmp_path / "suite"
    shutil.copytree(tiny_suite, suite)
    (suite / "step1" / "model.safetensors").write_bytes(b"truncated")
    out = tmp_path / "failing.zarr"
    summary = run_scan(
        ScanConfig(model=str(suite), out=str(out), steps="0,1,2", reference_step=8, task_retries=1, **FAST)
    )
    assert summary.done == [0, 2] and summary.failed == [1]
    assert open_cube(out, include_pending=True).attrs["steps"]["1"]["task_attempts"] == 2


@pytest.mark.slow
def test_scheduler_local_starts_its_own_cluster(full_cube, tiny_suite, tmp_path):
    out = tmp_path / "local.zarr"
    summary = run_scan(
        ScanConfig(
            model=str(tiny_suite),
            out=str(out),
            steps="0,4,8",
            stepwise=True,
            executor="dask",
            scheduler="local",
            workers=1,
            **FAST,
        )
    )
    assert summary.done == [0, 4, 8]
    x, y = open_cube(full_cube).sel(step=[0, 4, 8]), open_cube(out)
    for name in ("wd", "drift_ref", "cohort_weights", "tse_acc", "ppl"):
        np.testing.assert_array_equal(x[name].values, y[name].values, err_msg=name)
    assert y["drift_prev_from"].values.tolist() == [-1, 0, 4]


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--scheduler", "not an address"],
            "--scheduler 'not an address' is neither local, an address like tcp://host:8786",
        ),
        (["--workers", "-1"], "--workers -1: expected 0 (auto) or a positive number of workers"),
        (["--task-retries", "-2"], "--task-retries -2: expected 0 or more"),
        (["--resources", "GPU"], "--resources 'GPU': expected NAME=AMOUNT[,NAME=AMOUNT] with positive amounts"),
        (["--executor", "ray"], "invalid choice: 'ray'"),
        (["--scheduler", "tcp://127.0.0.1:9"], "--scheduler 'tcp://127.0.0.1:9': no Dask scheduler answered"),
    ],
)
def test_bad_executor_options_are_one_line_before_anything_is_written(
    tiny_suite, tmp_path, args, message, capsys, monkeypatch
):
    monkeypatch.setattr("dynamics.execution.executor.CONNECT_TIMEOUT", "1s")
    out = tmp_path / "never.zarr"
    try:
        code = main(["scan", "-m", str(tiny_suite), "-o", str(out), "--executor", "dask", *args])
    except SystemExit as exit_:  # argparse rejects bad choices itself
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def flaky_square(marker_dir: str, unit: int) -> int:
    """Unit 3 always fails (a bad checkpoint: retried, then reported); unit 2 fails on its first run only
    (a transient I/O error). A bug would not be retried (tests/test_failures.py)."""
    if unit == 3:
        from dynamics.errors import CheckpointError

        raise CheckpointError("unit 3 is broken")
    if unit == 2:
        try:
            os.close(os.open(os.path.join(marker_dir, "ran-2"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return unit * unit
        raise OSError("transient")
    return unit * unit


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["serial", "dask"])
def test_map_yields_every_unit_with_its_attempts(cluster, tmp_path, executor):
    """The generic hook other commands use: results in completion order, retries counted, errors reported."""
    from functools import partial

    from dynamics.execution.executor import ExecutorSettings, open_executor

    settings = ExecutorSettings(executor=executor, scheduler=cluster.scheduler.address, task_retries=2)
    with open_executor(settings) as pool:
        done = {c.unit: c for c in pool.map(partial(flaky_square, str(tmp_path)), range(5), name="square")}
    assert sorted(done) == [0, 1, 2, 3, 4]
    assert {u: c.result for u, c in done.items() if c.ok} == {0: 0, 1: 1, 2: 4, 4: 16}
    assert {u: c.attempts for u, c in done.items()} == {0: 1, 1: 1, 2: 2, 3: 3, 4: 1}
    assert done[3].error == "unit 3 is broken" and done[2].error is None
    assert done[3].kind == "checkpoint" and done[3].error_type == "CheckpointError"


@pytest.mark.slow
def test_workers_forget_the_run_after_a_scan_on_a_running_cluster(cluster, tiny_suite, tmp_path):
    """The reference weights are cached per worker during a run and freed after it."""
    from dynamics.scan import worker as scan_worker

    out = tmp_path / "forget.zarr"
    run_scan(
        ScanConfig(
            model=str(tiny_suite),
            out=str(out),
            steps="0,1",
            reference_step=8,
            executor="dask",
            scheduler=cluster.scheduler.address,
            **FAST,
        )
    )
    assert set(cluster.run(lambda: len(scan_worker._CONTEXT)).values()) == {0}
    run_scan(ScanConfig(model=str(tiny_suite), out=str(tmp_path / "serial.zarr"), steps="0", reference_step=8, **FAST))
    assert scan_worker._CONTEXT == {}


@pytest.mark.slow
def test_a_scheduler_file_and_waiting_for_workers(cluster, full_cube, tiny_suite, tmp_path):
    """`dask scheduler --scheduler-file F` writes the address there; --workers N waits for N workers."""
    import json

    scheduler_file = tmp_path / "scheduler.json"
    scheduler_file.write_text(json.dumps({"type": "Scheduler", "address": cluster.scheduler.address}))
    out = tmp_path / "file.zarr"
    summary = run_scan(
        ScanConfig(
            model=str(tiny_suite),
            out=str(out),
            steps="1",
            reference_step=8,
            stepwise=True,
            executor="dask",
            scheduler=str(scheduler_file),
            workers=2,
            **FAST,
        )
    )
    assert summary.done == [1]
    np.testing.assert_array_equal(open_cube(out)["wd"].values, open_cube(full_cube)["wd"].sel(step=[1]).values)


@pytest.mark.slow
def test_ctrl_c_cancels_the_dask_scan_and_keeps_done_steps(tiny_suite, tmp_path):
    import json
    import signal
    import subprocess
    import time

    out = tmp_path / "int.zarr"
    err = tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
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
                "20",
                "--executor",
                "dask",
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                steps = json.loads((out / "zarr.json").read_text())["attributes"].get("steps", {})
            except (FileNotFoundError, json.JSONDecodeError):
                steps = {}
            if any(r.get("status") == "done" for r in steps.values()):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)  # a scan that does not stop on Ctrl-C fails here
    done = open_cube(out)["step"].values.tolist()
    if proc.returncode == 0:  # the scan finished before the signal landed
        assert done == [0, 1, 2, 4, 8]
        return
    assert proc.returncode == 130
    assert err.read_text().strip().splitlines()[-1] == (
        "dynamics scan: interrupted; every completed step is kept, re-run the same command to resume"
    )
    assert 1 <= len(done) < 5


@pytest.mark.slow
def test_a_local_gpu_cluster_gives_each_worker_its_own_gpu():
    """Without dask-cuda, one worker per GPU through CUDA_VISIBLE_DEVICES, each with the GPU resource."""
    from dynamics.execution.executor import _gpu_cluster

    with _gpu_cluster(3, 2, {"GPU": 1}) as local, Client(local) as client:
        client.wait_for_workers(3)
        visible = sorted(client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"]).values())
        assert visible == ["0", "0", "1"]
        assert [w["resources"] for w in client.scheduler_info()["workers"].values()] == [{"GPU": 1}] * 3


@pytest.mark.slow
def test_a_study_on_dask_equals_the_serial_study_with_a_worker_killed(cluster, tmp_path):
    """`dynamics ablate --executor dask`: conditions fan out; same cube as the serial run."""
    from fixtures.study import save_tiny_model, write_blimp, write_corpus
    from study.test_study import study_config  # by its path under tests/, so this test also runs alone

    from dynamics.study.driver import run_study

    data = tmp_path / "data"
    data.mkdir()
    write_corpus(data)
    write_blimp(data / "blimp")
    model = save_tiny_model("llama", tmp_path / "llama")
    serial = study_config(model, tmp_path / "serial.zarr", data)
    assert not run_study(serial).failed
    marker = tmp_path / "killed"
    cluster.register_plugin(KillFirstStepWorker(str(marker), prefix="condition-"), name="kill-first-condition")
    try:
        config = study_config(model, tmp_path / "dask.zarr", data, executor="dask", scheduler=cluster.scheduler.address)
        summary = run_study(config)
    finally:
        cluster.unregister_worker_plugin("kill-first-condition")
    assert marker.exists()
    assert summary.done == list(range(summary.units)) and not summary.failed
    a, b = open_cube(serial.out), open_cube(config.out)
    names = sorted(set(a.data_vars) - {"seconds", "group_seconds"})
    assert names == sorted(set(b.data_vars) - {"seconds", "group_seconds"}) and "tse_acc" in names
    for name in names:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
