"""The cube keeps its data safe: one writer per real directory, duplicated steps repaired,
a cube with no done step opens, lost chunks are found and redone (issue 12, items 1, 4, 5)."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from dynamics.cli.main import main
from dynamics.errors import CubeLockedError
from store import open_cube
from store.cube import CubeWriter
from store.verify import lost_data

ID = {"model": "fake/model", "analysis": "v1"}
DERIVED_ID = {**ID, "derived": {"drift_prev": {"cosine_to_previous_step": "weights", "over": "d_model"}}}


def result(step: int) -> xr.Dataset:
    wd = np.arange(6, dtype="float32").reshape(1, 2, 3) + step
    return xr.Dataset(
        {"wd": (("step", "layer", "neuron"), wd), "seconds": (("step", "phase"), [[0.5, 1.5]])},
        coords={"step": [step], "layer": [0, 1], "phase": ["download", "load"]},
    )


def weights_result(step: int) -> xr.Dataset:
    rng = np.random.default_rng(step)
    return xr.Dataset(
        {"weights": (("step", "neuron", "d_model"), rng.normal(size=(1, 3, 4)).astype("float32"))},
        coords={"step": [step]},
    )


def chunk_file(cube: Path, variable: str, position: int) -> Path:
    """The chunk file of row ``position`` of a variable chunked (1, whole rest), as zarr v3 names it."""
    meta = json.loads((cube / variable / "zarr.json").read_text())
    return cube / variable / "c" / str(position) / Path(*["0"] * (len(meta["shape"]) - 1))


# -- item 1: the lock is keyed on the real directory -------------------------------------


def test_a_second_writer_through_a_symlink_is_refused_with_one_line(tmp_path):
    path = tmp_path / "f.zarr"
    alias = tmp_path / "alias.zarr"
    with CubeWriter(path, [0], ID) as cube:
        cube.write_step(result(0))
    alias.symlink_to(path)
    with CubeWriter(path, [0, 1], ID), pytest.raises(CubeLockedError) as caught:
        with CubeWriter(alias, [0, 2], ID):
            pass
    message = str(caught.value)
    assert "\n" not in message
    assert "is being written by another process" in message and str(alias) in message and str(path) in message
    assert open_cube(path)["step"].values.tolist() == [0]
    assert zarr.open_array(path / "step", mode="r")[:].tolist() == [0, 1]  # only the first writer extended it
    assert not (tmp_path / "alias.zarr.lock").exists()


def test_a_writer_through_a_symlinked_parent_shares_the_lock(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    with CubeWriter(tmp_path / "real" / "c.zarr", [0], ID):
        with pytest.raises(CubeLockedError):
            CubeWriter(tmp_path / "linked" / "c.zarr", [0], ID).__enter__()


def duplicated_cube(path: Path) -> None:
    """What two writers that both got a lock made of a cube: steps 400, 440, 480 appended twice.

    The first writer computed 400 and 440 into the first copies; the second, which slipped
    past the old lock, computed 480 into the second copy.
    """
    with CubeWriter(path, [520, 560, 600], ID) as cube:
        for step in (520, 560, 600):
            cube.write_step(result(step))
    with CubeWriter(path, [400, 440, 480, 520, 560, 600], ID) as cube:
        cube.write_step(result(400))
        cube.write_step(result(440))
    second = xr.concat([result(s) for s in (400, 440, 480)], dim="step").drop_vars(["layer", "phase"])
    second["wd"][:2] = np.nan
    second["seconds"][:2] = np.nan
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]
    attrs["steps"]["480"] = {"status": "done", "variables": ["seconds", "wd"]}
    second.attrs = attrs
    second.to_zarr(path, mode="a", append_dim="step", consolidated=True)
    assert zarr.open_array(path / "step", mode="r")[:].tolist() == [520, 560, 600, 400, 440, 480, 400, 440, 480]


def test_open_cube_reads_a_cube_with_duplicated_steps_and_the_next_writer_repairs_it(tmp_path, caplog):
    path = tmp_path / "f.zarr"
    duplicated_cube(path)
    with caplog.at_level(logging.WARNING):
        ds = open_cube(path).load()  # loaded: the repair below rewrites the store under a lazy dataset
    assert ds["step"].values.tolist() == [400, 440, 480, 520, 560, 600]
    for step in (400, 440, 480, 520, 560, 600):
        np.testing.assert_array_equal(ds["wd"].sel(step=step).values, result(step)["wd"].values[0])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "400, 440, 480 twice" in warnings[0] and "\n" not in warnings[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        with CubeWriter(path, [400, 440, 480, 520, 560, 600], ID) as cube:
            assert cube.todo() == []
            assert cube.stored_steps() == [520, 560, 600, 400, 440, 480]
    assert any("stored twice" in r.getMessage() for r in caplog.records)
    assert "compacting" not in json.loads((path / "zarr.json").read_text())["attributes"]
    for name in ("wd", "seconds", "step"):
        assert zarr.open_array(path / name, mode="r").shape[0] == 6
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        repaired = open_cube(path)
    assert not caplog.records
    xr.testing.assert_identical(repaired.drop_attrs(), ds.drop_attrs())
    assert main(["report", str(path)]) == 0


# -- item 4: a kill during the first step's write ------------------------------------------


def crash_before_the_first_marker(path: Path, identity: dict, step_result: xr.Dataset, monkeypatch) -> None:
    with CubeWriter(path, [0, 1], identity) as cube:
        original = cube._set_record

        def crash_on_done(step, record):
            if record.get("status") == "done":
                raise KeyboardInterrupt  # as kill -9 would: the region is written, no marker
            original(step, record)

        monkeypatch.setattr(cube, "_set_record", crash_on_done)
        with pytest.raises(KeyboardInterrupt):
            cube.write_step(step_result)


def test_a_cube_without_done_steps_opens_and_report_and_plot_say_so(tmp_path, monkeypatch, capsys):
    path = tmp_path / "c.zarr"
    crash_before_the_first_marker(path, DERIVED_ID, weights_result(0), monkeypatch)
    assert "weights" in zarr.open_group(path, mode="r")  # the variable exists, with no done step
    ds = open_cube(path)
    assert ds.sizes["step"] == 0 and ds["drift_prev"].shape == (0, 3)
    assert open_cube(path, include_pending=True)["drift_prev"].shape == (2, 3)
    capsys.readouterr()
    for command in (["report", str(path)], ["plot", str(path), "--out", str(tmp_path / "figures")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no done steps" in err and "Traceback" not in err
    assert not (tmp_path / "figures").exists()
    with CubeWriter(path, [0, 1], DERIVED_ID) as cube:  # the resume computes both steps
        assert cube.todo() == [0, 1]
        cube.write_step(weights_result(0))
    assert open_cube(path)["drift_prev"].shape == (1, 3)


# -- item 5: lost chunks ---------------------------------------------------------------------


def test_a_deleted_chunk_or_variable_makes_its_steps_pending_again(tmp_path, caplog):
    path = tmp_path / "c.zarr"
    with CubeWriter(path, [0, 10, 20], ID) as cube:
        for step in cube.todo():
            cube.write_step(result(step))
    before = open_cube(path).load()
    assert lost_data(path) == {}
    chunk_file(path, "wd", 1).unlink()  # step 10's chunk of wd
    assert lost_data(path) == {10: ["wd"]}
    with caplog.at_level(logging.WARNING):
        with CubeWriter(path, [0, 10, 20], ID) as cube:
            assert cube.todo() == [10]
            cube.write_step(result(10))
    assert any("step 10 was done but its wd is missing" in r.getMessage() for r in caplog.records)
    xr.testing.assert_identical(open_cube(path).drop_attrs(), before.drop_attrs())

    shutil.rmtree(path / "seconds")  # a whole variable folder
    assert lost_data(path) == {0: ["seconds"], 10: ["seconds"], 20: ["seconds"]}
    with CubeWriter(path, [0, 10, 20], ID) as cube:
        assert cube.todo() == [0, 10, 20]
        for step in cube.todo():
            cube.write_step(result(step))
    xr.testing.assert_identical(open_cube(path).drop_attrs(), before.drop_attrs())


def test_an_all_nan_row_is_stored_so_it_is_not_taken_for_a_lost_one(tmp_path):
    path = tmp_path / "c.zarr"
    nan_row = result(0)
    nan_row["wd"][:] = np.nan
    with CubeWriter(path, [0], ID) as cube:
        cube.write_step(nan_row)
    assert chunk_file(path, "wd", 0).is_file()
    assert lost_data(path) == {}


def test_a_corrupt_chunk_counts_as_lost(tmp_path):
    path = tmp_path / "c.zarr"
    with CubeWriter(path, [0, 10], ID) as cube:
        for step in cube.todo():
            cube.write_step(result(step))
    chunk_file(path, "wd", 0).write_bytes(b"not a zstd frame")
    assert lost_data(path) == {0: ["wd"]}


def test_report_check_names_lost_steps(tmp_path, capsys):
    path = tmp_path / "c.zarr"
    with CubeWriter(path, [0, 10], ID) as cube:
        for step in cube.todo():
            cube.write_step(result(step))
    assert main(["report", str(path), "--check"]) == 0
    assert "2 done steps: every stored variable is present and readable" in capsys.readouterr().out
    chunk_file(path, "seconds", 1).unlink()
    assert main(["report", str(path), "--check"]) == 1
    captured = capsys.readouterr()
    assert "step 10: seconds missing or unreadable" in captured.out
    assert "re-run the command that made the cube" in captured.err and captured.err.count("\n") == 1


def test_a_scan_resume_recomputes_a_step_whose_chunk_was_deleted(tiny_suite, tmp_path):
    from dynamics.scan.config import ScanConfig
    from dynamics.scan.driver import run_scan

    out = tmp_path / "s.zarr"
    config = ScanConfig(
        model=str(tiny_suite),
        out=str(out),
        steps="0,4",
        wd_tokens=512,
        ppl_tokens=64,
        tse_per_case=2,
        cohort_percent=5.0,
    )
    assert run_scan(config).done == [0, 4]
    before = open_cube(out).load()
    position = zarr.open_array(out / "step", mode="r")[:].tolist().index(0)
    chunk_file(out, "wd", position).unlink()
    summary = run_scan(config)
    assert summary.done == [0] and summary.skipped == [4]
    after = open_cube(out).load()
    measured = [name for name in before.data_vars if name != "seconds"]  # seconds: wall time of each phase
    assert "wd" in measured and len(measured) > 5
    for name in measured:
        xr.testing.assert_allclose(after[name], before[name], rtol=1e-6)
    assert after["seconds"].sel(step=0).values.sum() > 0


def test_an_interrupted_repair_is_finished_by_the_next_open(tmp_path, monkeypatch):
    import store.integrity

    path = tmp_path / "f.zarr"
    duplicated_cube(path)
    expected = open_cube(path).load()
    moves = []
    original = store.integrity._move_row

    def crash_after_one_array(path, name, source, target):
        moves.append((name, source, target))
        if len(moves) == 2:
            raise KeyboardInterrupt  # as kill -9 would: one array's row moved, the others' not
        original(path, name, source, target)

    monkeypatch.setattr(store.integrity, "_move_row", crash_after_one_array)
    with pytest.raises(KeyboardInterrupt):
        CubeWriter(path, [400], ID).__enter__()
    monkeypatch.setattr(store.integrity, "_move_row", original)
    assert moves[0][1:] == (8, 5)  # the one row to move: step 480's second copy into the first's place
    assert "compacting" in json.loads((path / "zarr.json").read_text())["attributes"]
    repaired = open_cube(path)  # finishes the journaled compaction under the lock
    assert "compacting" not in json.loads((path / "zarr.json").read_text())["attributes"]
    assert zarr.open_array(path / "step", mode="r")[:].tolist() == [520, 560, 600, 400, 440, 480]
    xr.testing.assert_identical(repaired.drop_attrs(), expected.drop_attrs())


def test_a_study_cube_redoes_a_condition_whose_chunk_was_lost(tmp_path):
    """Units cubes (dynamics ablate) carry different variables per unit: each record lists its own."""
    path = tmp_path / "s.zarr"
    units = [
        xr.Dataset({"acc": (("step", "case"), [[0.5, 0.7]])}, coords={"step": [0], "case": ["a", "b"]}),
        xr.Dataset({"ppl": (("step",), [12.5])}, coords={"step": [1]}),
    ]
    with CubeWriter(path, [0, 1], {"model": "m"}, unit="condition") as cube:
        for unit in units:
            cube.write_step(unit)
    assert lost_data(path, units_cube=True) == {}
    chunk_file(path, "ppl", 1).unlink()
    assert lost_data(path, units_cube=True) == {1: ["ppl"]}
    with CubeWriter(path, [0, 1], {"model": "m"}, unit="condition") as cube:
        assert cube.todo() == [1]
