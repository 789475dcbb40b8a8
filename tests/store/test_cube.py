"""The cube: region writes, done markers, resume, extension, overwrite, lock, crash safety."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr
import zarr

from dynamics.errors import CubeError, CubeLockedError, PathError
from store import open_cube
from store.cube import CubeWriter

ID = {"model": "fake/model", "analysis": "v1"}


def result(step: int) -> xr.Dataset:
    wd = np.arange(6, dtype="float32").reshape(1, 2, 3) + step
    return xr.Dataset(
        {"wd": (("step", "layer", "neuron"), wd), "seconds": (("step", "phase"), [[0.5, 1.5]])},
        coords={"step": [step], "layer": [0, 1], "phase": ["download", "load"]},
    )


def test_write_open_and_provenance(tmp_path):
    path = tmp_path / "c.zarr"
    static = xr.Dataset({"cohort": (("layer", "neuron"), np.array([[True, False, False], [False, True, False]]))})
    with CubeWriter(path, [0, 10, 20], ID, {"seed": 3, "config": {"tokens": 64}}, static=static) as cube:
        assert cube.todo() == [0, 10, 20]
        cube.write_step(result(10), {"revision": "step10", "commit": "abc"})
        cube.write_step(result(0))
    ds = open_cube(path)
    assert ds["step"].values.tolist() == [0, 10]
    assert ds["wd"].shape == (2, 2, 3)
    np.testing.assert_array_equal(ds["wd"].sel(step=10).values, result(10)["wd"].values[0])
    assert ds["cohort"].values.sum() == 2 and "step" not in ds["cohort"].dims
    assert ds.attrs["steps"]["10"]["commit"] == "abc" and ds.attrs["steps"]["10"]["status"] == "done"
    assert ds.attrs["identity"] == ID and ds.attrs["runs"][0]["seed"] == 3
    everything = open_cube(path, include_pending=True)
    assert everything["status"].values.tolist() == ["done", "done", "pending"]
    assert np.isnan(everything["wd"].sel(step=20).values).all()
    assert everything["wd"].encoding["chunks"][0] == 1


def test_a_rerun_with_nothing_to_do_keeps_what_earlier_runs_recorded(tmp_path):
    """A run's provenance is merged into the cube's: a later run that records nothing new (every step
    done) must not wipe the corpus hash and budgets an earlier run recorded."""
    path = tmp_path / "c.zarr"
    with CubeWriter(path, [0], ID, {"seed": 3}) as cube:
        cube.record_provenance({"corpus_hash": "abc", "tse_pairs": 2200})
        cube.write_step(result(0))
    with CubeWriter(path, [0], ID, {"seed": 3, "host": "other"}) as cube:
        assert cube.todo() == []
    provenance = open_cube(path).attrs["provenance"]
    assert provenance["corpus_hash"] == "abc" and provenance["tse_pairs"] == 2200 and provenance["host"] == "other"


def test_rerun_skips_done_steps_and_extends(tmp_path):
    path = tmp_path / "c.zarr"
    with CubeWriter(path, [0, 10], ID) as cube:
        cube.write_step(result(0))
    with CubeWriter(path, [0, 10, 20, 5], ID) as cube:
        assert cube.todo() == [5, 10, 20]
        for step in cube.todo():
            cube.write_step(result(step))
    ds = open_cube(path)
    assert ds["step"].values.tolist() == [0, 5, 10, 20]
    assert ds["wd"].sel(step=5, layer=1).values.tolist() == [8.0, 9.0, 10.0]
    assert len(ds.attrs["runs"]) == 2


def test_done_steps_need_overwrite(tmp_path):
    path = tmp_path / "c.zarr"
    with CubeWriter(path, [0], ID) as cube:
        cube.write_step(result(0))
        with pytest.raises(CubeError, match="step 0 is already done .* pass --overwrite"):
            cube.write_step(result(0))
    with CubeWriter(path, [0], ID, overwrite=True) as cube:
        assert cube.todo() == [0]
        changed = result(0)
        changed["wd"] += 100
        cube.write_step(changed)
    assert open_cube(path)["wd"].values.min() == 100


def test_failed_steps_are_recorded_and_retried(tmp_path):
    path = tmp_path / "c.zarr"
    with CubeWriter(path, [0, 1], ID) as cube:
        cube.write_step(result(0))
        cube.mark_failed(1, "step 1: download failed")
    assert open_cube(path)["step"].values.tolist() == [0]
    assert open_cube(path).attrs["steps"]["1"] == {
        "status": "failed",
        "error": "step 1: download failed",
        "written": open_cube(path).attrs["steps"]["1"]["written"],
    }
    with CubeWriter(path, [0, 1], ID) as cube:
        assert cube.todo() == [1]


def test_a_different_model_is_refused(tmp_path):
    path = tmp_path / "c.zarr"
    with CubeWriter(path, [0], ID):
        pass
    with pytest.raises(CubeError, match=r'made with model="fake/model", this run has model="other/model"'):
        with CubeWriter(path, [0], {**ID, "model": "other/model"}):
            pass


def test_step_written_but_not_marked_is_not_done(tmp_path, monkeypatch):
    """A crash between the region write and the marker: the step stays pending."""
    path = tmp_path / "c.zarr"
    with CubeWriter(path, [0, 1], ID) as cube:
        cube.write_step(result(0))
        original = cube._set_record

        def crash_on_done(step, record):
            if record.get("status") == "done":
                raise KeyboardInterrupt
            original(step, record)

        monkeypatch.setattr(cube, "_set_record", crash_on_done)
        with pytest.raises(KeyboardInterrupt):
            cube.write_step(result(1))
    assert open_cube(path)["step"].values.tolist() == [0]
    with CubeWriter(path, [0, 1], ID) as cube:
        assert cube.todo() == [1]


def test_second_writer_fails_at_once(tmp_path):
    path = tmp_path / "c.zarr"
    with CubeWriter(path, [0], ID) as cube:
        cube.write_step(result(0))
        with pytest.raises(CubeLockedError, match=r"is being written by another process \(pid \d+\)"):
            with CubeWriter(path, [0, 1], ID):
                pass
        # a second writer in another process fails too, and the first keeps working
        code = f"from store.cube import CubeWriter\nwith CubeWriter({str(path)!r}, [0], {ID!r}): pass"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode != 0 and "is being written by another process" in proc.stderr
    assert open_cube(path)["step"].values.tolist() == [0]
    with CubeWriter(path, [0, 1], ID) as cube:  # the lock died with its holder
        cube.write_step(result(1))


def test_interrupted_extension_is_rolled_back(tmp_path):
    path = tmp_path / "c.zarr"
    with CubeWriter(path, [0, 1], ID) as cube:
        cube.write_step(result(0))
    # simulate a crash in the middle of an append: journal set, one array already longer
    group = zarr.open_group(path, mode="r+")
    group.attrs["extending"] = {"from": 2}
    group["wd"].resize((4, 2, 3))
    ds = open_cube(path)
    assert ds["step"].values.tolist() == [0]
    assert zarr.open_group(path)["wd"].shape == (2, 2, 3)
    with CubeWriter(path, [0, 1, 2], ID) as cube:
        assert cube.todo() == [1, 2]


def test_kill_9_mid_step_keeps_every_done_step(tmp_path):
    path = tmp_path / "c.zarr"
    flag = tmp_path / "in-step-2"
    script = textwrap.dedent(f"""
        import time, pathlib, sys
        sys.path.insert(0, {str(tmp_path)!r})
        import numpy as np, xarray as xr
        from store.cube import CubeWriter
        def result(step):
            return xr.Dataset({{"wd": (("step", "n"), np.full((1, 4), step, "float32"))}}, coords={{"step": [step]}})
        with CubeWriter({str(path)!r}, [0, 1, 2, 3], {ID!r}) as cube:
            for step in cube.todo():
                if step == 2:
                    part = result(2)
                    part.drop_vars("step").to_zarr({str(path)!r}, region={{"step": slice(2, 3)}}, mode="r+")
                    pathlib.Path({str(flag)!r}).touch()
                    time.sleep(60)
                cube.write_step(result(step))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(600):
            if flag.exists():
                break
            proc.poll()
            assert proc.returncode is None, "writer died early"
            import time

            time.sleep(0.05)
        assert flag.exists()
    finally:
        proc.kill()
        proc.wait()
    ds = open_cube(path)
    assert ds["step"].values.tolist() == [0, 1]
    with CubeWriter(path, [0, 1, 2, 3], ID) as cube:
        assert cube.todo() == [2, 3]


def test_open_cube_errors(tmp_path):
    with pytest.raises(CubeError, match="no cube at"):
        open_cube(tmp_path / "missing.zarr")
    (tmp_path / "file.zarr").mkdir()
    with pytest.raises(CubeError, match="exists but is not a cube"):
        with CubeWriter(tmp_path / "file.zarr", [0], ID):
            pass


def test_markers_live_in_root_attributes(tmp_path):
    path = tmp_path / "c.zarr"
    with CubeWriter(path, [3], ID) as cube:
        cube.write_step(result(3), {"commit": "deadbeef"})
    meta = json.loads((path / "zarr.json").read_text())
    assert meta["attributes"]["steps"]["3"]["status"] == "done"
    assert meta["consolidated_metadata"] is not None


def test_a_full_disk_names_the_unit_and_keeps_what_is_done(tmp_path, monkeypatch):
    import errno

    out = tmp_path / "c.zarr"
    with CubeWriter(out, [0, 1], ID, unit="condition") as cube:
        cube.write_step(result(0))

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(xr.Dataset, "to_zarr", full)
        with pytest.raises(PathError) as caught:
            cube.write_step(result(1))
    assert caught.value.exit_code == 2
    assert str(caught.value) == (
        f"no space left on the device while writing condition 1 to cube {str(out)!r}; free space or choose "
        "another --out, then re-run the same command (the conditions already done are kept)"
    )
    monkeypatch.undo()
    assert open_cube(out)["step"].values.tolist() == [0]
