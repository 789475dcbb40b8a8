"""Nothing left behind, nothing refused for nothing: cubes of runs that failed before their
first step, damaged cubes, a full disk at creation, a lock path that is a directory."""

import errno
import json
import logging

import numpy as np
import pytest
import xarray as xr

from dynamics.errors import CubeError, CubeInputError, DamagedCubeError, PathError, UserInputError
from store import open_cube
from store.cube import CubeWriter

ID = {"model": "fake/model", "analysis": {"seed": 0}}


def result(step: int) -> xr.Dataset:
    return xr.Dataset({"wd": (("step", "neuron"), np.arange(3, dtype="float32")[None] + step)}, coords={"step": [step]})


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_bad_input_found_after_creation_removes_the_new_cube_and_its_new_parents(tmp_path):
    path = tmp_path / "new" / "deeper" / "c.zarr"
    with pytest.raises(UserInputError, match="--window 256"):
        with CubeWriter(path, [0, 1], ID):
            raise UserInputError("--window 256: the model's context is 64 tokens; expected at most 64")
    assert listing(tmp_path) == []  # the cube, its lock file and the two directories made for it


def test_other_failures_keep_the_new_cube_for_the_re_run(tmp_path):
    path = tmp_path / "c.zarr"
    with pytest.raises(KeyboardInterrupt), CubeWriter(path, [0, 1], ID):
        raise KeyboardInterrupt
    assert open_cube(path, include_pending=True)["status"].values.tolist() == ["pending", "pending"]


def test_bad_input_never_removes_a_cube_it_did_not_create(tmp_path):
    path = tmp_path / "c.zarr"
    with CubeWriter(path, [0, 1], ID):
        pass
    with pytest.raises(UserInputError), CubeWriter(path, [0, 1], ID):
        raise UserInputError("bad")
    assert (path / "zarr.json").is_file()


def test_a_cube_no_run_finished_is_re_initialised_for_other_settings(tmp_path, caplog):
    path = tmp_path / "c.zarr"
    with pytest.raises(KeyboardInterrupt), CubeWriter(path, [0, 1], ID):
        raise KeyboardInterrupt  # e.g. the reference step could not be fetched
    corrected = {**ID, "analysis": {"seed": 1}}
    with caplog.at_level(logging.WARNING), CubeWriter(path, [0, 2], corrected) as cube:
        cube.write_step(result(2))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"cube {path} has no done step and was made with analysis.seed=0: re-initialising it for this run's "
        "analysis.seed=1"
    ]
    ds = open_cube(path, include_pending=True)
    assert ds["step"].values.tolist() == [0, 2] and ds["status"].values.tolist() == ["pending", "done"]
    assert ds.attrs["identity"]["analysis"] == {"seed": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.zarr"]  # the old one is gone, nothing set aside remains


def test_a_cube_with_a_done_step_is_never_re_initialised(tmp_path):
    path = tmp_path / "c.zarr"
    with pytest.raises(KeyboardInterrupt), CubeWriter(path, [0, 1], ID) as cube:
        cube.write_step(result(0))
        raise KeyboardInterrupt
    with pytest.raises(CubeError, match=r"was made with analysis.seed=0, this run has analysis.seed=1") as caught:
        with CubeWriter(path, [0, 1], {**ID, "analysis": {"seed": 1}}):
            pass
    assert caught.value.exit_code == 2  # the user's settings to fix
    assert open_cube(path)["step"].values.tolist() == [0]


def _damage(path, how: str) -> None:
    if how == "json":
        (path / "zarr.json").write_text('{"zarr_format": 3, "attri')
        return
    meta = json.loads((path / "zarr.json").read_text())
    if how == "record":
        meta["attributes"]["steps"]["1"] = "done"
    else:
        del meta["attributes"]["steps"]
    (path / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("json", r"its zarr.json is not valid JSON \(Unterminated string"),
        ("record", r'the record of step 1 in its zarr.json is "done", not a step record'),
        ("no-records", r"the attributes of its zarr.json are not a cube's \(no step records\)"),
    ],
)
def test_a_damaged_cube_is_one_line_for_readers_and_writers_and_stays_untouched(tmp_path, how, message):
    path = tmp_path / "c.zarr"
    with CubeWriter(path, [0, 1], ID) as cube:
        cube.write_step(result(0))
    _damage(path, how)
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    with pytest.raises(DamagedCubeError, match=rf"cube '{path}' is damaged: {message}") as caught:
        open_cube(path)
    assert caught.value.exit_code == 2
    with pytest.raises(DamagedCubeError, match=message), CubeWriter(path, [0, 1], ID):
        pass
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "c.zarr.lock").exists()


def test_a_full_disk_at_creation_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(xr.Dataset, "to_zarr", full)
    path = tmp_path / "new" / "c.zarr"
    with pytest.raises(
        PathError, match=f"cannot create cube '{path}': no space left on the device; free space or choose another --out"
    ) as caught:
        with CubeWriter(path, [0], ID):
            pass
    assert caught.value.exit_code == 2
    assert listing(tmp_path) == []


def test_a_lock_path_that_is_a_directory_is_the_users_to_fix(tmp_path):
    (tmp_path / "c.zarr.lock").mkdir()
    with pytest.raises(
        CubeInputError,
        match=r"its lock file .*c\.zarr\.lock cannot be opened \(Is a directory\); "
        "remove it or choose another --out",
    ) as caught:
        with CubeWriter(tmp_path / "c.zarr", [0], ID):
            pass
    assert caught.value.exit_code == 2
    assert listing(tmp_path) == ["c.zarr.lock"]


def test_a_missing_cube_is_the_users_to_fix(tmp_path):
    with pytest.raises(CubeInputError, match="no cube at") as caught:
        open_cube(tmp_path / "nope.zarr")
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("metadata", r"the metadata of its variable wd \(wd/zarr.json\) is not valid JSON"),
        ("step", r"its step coordinate cannot be read \("),
    ],
)
def test_damaged_arrays_are_one_line_on_open_and_resume(tmp_path, damage, message):
    path = tmp_path / "c.zarr"
    with CubeWriter(path, [0, 1], ID) as cube:
        cube.write_step(result(0))
    if damage == "metadata":
        (path / "wd" / "zarr.json").write_text("{not json")
    else:
        for chunk in (path / "step" / "c").rglob("*"):
            chunk.write_bytes(b"not a zstd frame")
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    with pytest.raises(DamagedCubeError, match=message):
        open_cube(path)
    with pytest.raises(DamagedCubeError, match=message), CubeWriter(path, [0, 1], ID):
        pass
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before


def test_report_and_plot_refuse_a_cube_whose_done_steps_lost_data(tmp_path, capsys):
    from dynamics.cli.main import main

    path = tmp_path / "c.zarr"
    with CubeWriter(path, [0, 1], ID) as cube:
        cube.write_step(result(0))
        cube.write_step(result(1))
    for chunk in (path / "wd" / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(b"not a zstd frame")
    for argv in (["report", str(path)], ["plot", str(path), "--out", str(tmp_path / "figs")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == (
            f"dynamics {argv[0]}: error: 2 of 2 done steps of {path} lost or changed data; re-run the command "
            f"that made the cube to compute them again (`dynamics report --check {path}` names what is lost or "
            "changed)\n"
        )
    assert not (tmp_path / "figs").exists()
