"""Digests of stored values (issue #21): recorded by the writer, recomputed by resume and
``report --check``; the step order the writer stored; cubes from before digests existed."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from dynamics.cli.main import main
from dynamics.errors import DamagedCubeError
from store import open_cube
from store.cube import CubeWriter
from store.digests import row_digest, static_digests
from store.integrity import compact_steps
from store.verify import check_cube

ID = {"model": "fake/model", "analysis": "v1"}


def result(step: int) -> xr.Dataset:
    """One step of every dtype a cube stores per step: float32, float64, int64, bool (a NaN included)."""
    wd = np.arange(6, dtype="float32").reshape(1, 2, 3) + step
    wd[0, 1, 2] = np.nan
    return xr.Dataset(
        {
            "wd": (("step", "layer", "neuron"), wd),
            "seconds": (("step", "phase"), [[0.5 + step, 1.5]]),
            "count": (("step", "layer"), np.asarray([[step, -1]], dtype="int64")),
            "flag": (("step", "layer"), np.asarray([[True, step % 2 == 0]])),
        },
        coords={"step": [step], "layer": [0, 1], "phase": ["download", "load"]},
    )


def static() -> xr.Dataset:
    mask = np.zeros((2, 3), dtype=bool)
    mask[:, 0] = True
    return xr.Dataset(
        {"cohort": (("layer", "neuron"), mask), "reference_wd": (("layer", "neuron"), np.ones((2, 3), "float32"))}
    )


def attrs_of(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]


def set_attrs(path: Path, edit) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    edit(meta["attributes"])
    (path / "zarr.json").write_text(json.dumps(meta))


def written(path: Path, steps=(0, 10, 20)) -> Path:
    with CubeWriter(path, list(steps), ID, static=static()) as cube:
        for step in steps:
            cube.write_step(result(step), {"revision": f"step{step}"})
    return path


def make_old(path: Path) -> None:
    """What a cube written before digests (and the step-order record) looks like."""

    def strip(attrs):
        for record in attrs["steps"].values():
            record.pop("digests", None)
        attrs.pop("static_digests", None)
        attrs.pop("appended_at", None)

    set_attrs(path, strip)


def test_each_done_record_holds_the_digest_of_each_variables_stored_row(tmp_path):
    path = written(tmp_path / "c.zarr")
    attrs = attrs_of(path)
    for position, step in enumerate((0, 10, 20)):
        digests = attrs["steps"][str(step)]["digests"]
        assert sorted(digests) == ["count", "flag", "seconds", "wd"] == attrs["steps"][str(step)]["variables"]
        for name, digest in digests.items():  # what the writer hashed is what the store holds
            stored = zarr.open_array(path / name, mode="r")[position]
            assert digest == row_digest(stored)
            assert digest == row_digest(result(step)[name].values[0].astype(stored.dtype))
    assert attrs["static_digests"] == static_digests(static())
    assert attrs["appended_at"] == [0]
    found = check_cube(path)
    assert (found.done, found.lost, found.changed, found.unverified, found.static_changed) == (3, {}, {}, [], [])


def test_the_digest_covers_dtype_shape_and_bytes():
    values = np.arange(6, dtype="float32")
    assert row_digest(values) == row_digest(values.copy())
    assert row_digest(values) != row_digest(values.astype("float64"))  # same numbers, other dtype
    assert row_digest(values) != row_digest(values.reshape(2, 3))  # same bytes, other shape
    changed = values.copy()
    changed[3] = np.nextafter(changed[3], np.float32(9))
    assert row_digest(values) != row_digest(changed)  # one ulp
    assert row_digest(values.astype(">f4")) == row_digest(values)  # the byte order of the machine does not count
    assert row_digest(values[::2]) == row_digest(np.ascontiguousarray(values[::2]))


def test_report_check_names_each_changed_step_and_variable(tmp_path, capsys):
    path = written(tmp_path / "c.zarr")
    array = zarr.open_array(path / "seconds", mode="r+")
    array[1] = array[1] + 1e-9  # step 10: a value off by a nanosecond
    shutil.copyfile(path / "wd" / "c" / "0" / "0" / "0", path / "wd" / "c" / "2" / "0" / "0")  # step 20 := step 0
    assert main(["report", "--check", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "step 10: seconds changed since it was written (the stored values do not match the digest recorded "
        "when the step was done)",
        "step 20: wd changed since it was written (the stored values do not match the digest recorded when "
        "the step was done)",
    ]
    assert captured.err == (
        f"dynamics report: error: 2 of 3 done steps of {path} lost or changed data; re-run the command that made "
        "the cube to compute them again\n"
    )


def test_a_resume_computes_a_changed_step_again(tmp_path, caplog):
    path = written(tmp_path / "c.zarr")
    shutil.copyfile(path / "wd" / "c" / "0" / "0" / "0", path / "wd" / "c" / "1" / "0" / "0")
    with caplog.at_level(logging.WARNING), CubeWriter(path, [0, 10, 20], ID, static=static()) as cube:
        assert cube.todo() == [10]
        assert attrs_of(path)["steps"]["10"] == {"status": "pending", "changed": ["wd"]}
        cube.write_step(result(10))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "step 10 was done but its wd changed since it was written (digest differs): it will be computed again"
    ]
    np.testing.assert_array_equal(open_cube(path)["wd"].sel(step=10).values, result(10)["wd"].values[0])
    assert check_cube(path).changed == {}


def test_a_changed_static_variable_is_named_by_check_and_refused_by_resume(tmp_path, capsys):
    path = written(tmp_path / "c.zarr")
    mask = zarr.open_array(path / "cohort", mode="r+")
    moved = np.zeros((2, 3), dtype=bool)
    moved[:, 1] = True  # the same count per layer, other neurons: only the digest can tell
    mask[:] = moved
    assert main(["report", "--check", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["static variable cohort: changed since the cube was made"]
    assert captured.err == (
        f"dynamics report: error: the static variables cohort of {path} changed since the cube was made; "
        "restore the cube from a copy\n"
    )
    before = (path / "zarr.json").read_bytes()
    with pytest.raises(DamagedCubeError, match="its static variable\\(s\\) cohort changed since the cube was made"):
        CubeWriter(path, [0, 10, 20], ID).__enter__()
    assert (path / "zarr.json").read_bytes() == before


def test_a_cube_written_before_digests_opens_resumes_and_check_says_so_in_one_line(tmp_path, capsys):
    path = written(tmp_path / "c.zarr")
    make_old(path)
    assert open_cube(path)["step"].values.tolist() == [0, 10, 20]
    assert main(["report", "--check", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{path}: 3 done steps: every stored variable is present and readable",
        "3 done steps (0, 10, 20) were written before digests were recorded: their values cannot be verified",
    ]
    with CubeWriter(path, [0, 5, 10, 20, 30], ID) as cube:  # resumed and extended: new steps get digests
        assert cube.todo() == [5, 30]
        cube.write_step(result(5))
        cube.write_step(result(30))
    attrs = attrs_of(path)
    assert "appended_at" not in attrs  # not started half way: its earlier blocks are unknown
    assert "digests" not in attrs["steps"]["10"] and "digests" in attrs["steps"]["5"]
    assert open_cube(path)["step"].values.tolist() == [0, 5, 10, 20, 30]
    assert main(["report", "--check", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        "3 done steps (0, 10, 20) were written before digests were recorded: their values cannot be verified"
    )


def test_steps_added_below_the_stored_ones_open_and_a_reversed_block_is_refused(tmp_path):
    path = written(tmp_path / "c.zarr", steps=(10, 20))
    with CubeWriter(path, [0, 5, 10, 20], ID) as cube:  # e.g. `--steps pythia` after 0:143000:1000
        cube.write_step(result(0))
    assert zarr.open_array(path / "step", mode="r")[:].tolist() == [10, 20, 0, 5]
    assert attrs_of(path)["appended_at"] == [0, 2]
    assert open_cube(path)["step"].values.tolist() == [0, 10, 20]
    zarr.open_array(path / "step", mode="r+")[2:] = [5, 0]  # the second block reversed
    with pytest.raises(DamagedCubeError, match=r"step 0 follows step 5 at row 3"):
        open_cube(path)
    with pytest.raises(DamagedCubeError, match=r"step 0 follows step 5 at row 3"):
        CubeWriter(path, [0, 5, 10, 20], ID).__enter__()


def test_an_interrupted_extension_rolls_back_its_block_too(tmp_path):
    path = written(tmp_path / "c.zarr", steps=(10, 20))
    set_attrs(path, lambda attrs: attrs.update(extending={"from": 2}, appended_at=[0, 2]))
    with CubeWriter(path, [10, 20], ID):
        pass
    assert attrs_of(path)["appended_at"] == [0]


def test_compaction_keeps_the_blocks_on_the_rows_kept(tmp_path):
    path = written(tmp_path / "c.zarr", steps=(0, 10))
    with CubeWriter(path, [0, 10, 20, 30], ID):
        pass
    with CubeWriter(path, [0, 10, 20, 30, 40], ID):
        pass
    assert attrs_of(path)["appended_at"] == [0, 2, 4]
    compact_steps(path, [0, 1, 3, 4])  # row 2 (step 20) goes: the last block now starts at row 3
    assert zarr.open_array(path / "step", mode="r")[:].tolist() == [0, 10, 30, 40]
    assert attrs_of(path)["appended_at"] == [0, 2, 3]
    compact_steps(path, [0, 1])  # both later blocks gone entirely
    assert attrs_of(path)["appended_at"] == [0]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: a.update(cube_format=2), "has cube_format 2; this version of dynamics reads cube_format 1"),
        (lambda a: a.pop("cube_format"), "has no cube_format; this version of dynamics reads cube_format 1"),
        (lambda a: a["steps"]["10"].update(status="DONE"), 'step 10 has status "DONE" in its zarr.json'),
        (lambda a: a.update(appended_at="0"), 'its appended_at attribute is "0", not a list of row numbers'),
    ],
)
def test_metadata_a_reader_cannot_trust_is_one_line(tmp_path, edit, message):
    path = written(tmp_path / "c.zarr")
    set_attrs(path, edit)
    before = (path / "zarr.json").read_bytes()
    with pytest.raises(DamagedCubeError, match=message) as caught:
        open_cube(path)
    assert "\n" not in str(caught.value) and caught.value.exit_code == 2
    assert (path / "zarr.json").read_bytes() == before


@pytest.mark.slow
def test_a_study_cube_records_digests_and_check_names_a_changed_condition(tiny_suite, tmp_path, capsys):
    out = tmp_path / "study.zarr"
    argv = ["ablate", "--model", str(tiny_suite), "--out", str(out), "--corpus", str(tiny_suite / "heldout.txt")]
    argv += ["--percents", "1", "--match-percent", "1", "--tasks", "none", "--blimp-per-paradigm", "0"]
    argv += ["--pos", "off", "--layer-groups", "0", "--wd-tokens", "64", "--ppl-tokens", "32", "--tse-per-case", "1"]
    assert main(argv) == 0
    attrs = attrs_of(out)
    done = [r for r in attrs["steps"].values() if r["status"] == "done"]
    assert done and all(sorted(r["digests"]) == sorted(r["variables"]) for r in done)
    assert {"top_mask", "random_mask", "wd"} <= set(attrs["static_digests"])
    capsys.readouterr()
    assert main(["report", "--check", str(out)]) == 0
    assert "the values of" in capsys.readouterr().out
    ppl = zarr.open_array(out / "ppl", mode="r+")
    ppl[1] = ppl[1] * 2  # condition 1's perplexity doubled
    assert main(["report", "--check", str(out)]) == 1
    captured = capsys.readouterr()
    assert "condition 1: ppl changed since it was written" in captured.out
    assert "1 of" in captured.err and "done conditions" in captured.err
