"""Issue #21, the store's part: attacks on stored data, output paths and full disks.

One test (or parametrized case) per attack, named after it. Each drives the real CLI
(``dynamics.cli.main.main`` in this process, as tests/test_cli_fuzz.py does) on a copy of a
scanned cube or a fresh output path, and asserts the exit code, the one line on stderr (no
traceback) and what is on disk afterwards:

- damaged stored data (a step's ``wd`` chunk swapped for another step's, a reversed ``step``
  coordinate, a status of 'banana', a cohort mask set all true, ``cube_format`` 999): refused
  in one line (exit 2), or named by ``report --check`` (exit 1), never reported as numbers;
- paths: an ``--out`` 1,200 directories deep works (and one past the system's path limit is
  one line), ``--out`` inside another cube is refused, ``--out x.zarr/`` is the cube
  ``x.zarr``, ``plot A.zarr A.zarr`` and ``plot --formats ""`` are refused;
- a full disk (simulated: the Nth file write raises ``ENOSPC``) is exit 2, one line naming the
  path, and leaves nothing of that run: no cube, no lock, no figure, no TSE file.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

FAST = ["--wd-tokens", "64", "--ppl-tokens", "32", "--tse-per-case", "1"]


# -- running the CLI ----------------------------------------------------------------------------


def run_cli(argv: list[str]) -> tuple[int | None, str, str]:
    """``dynamics ARGV`` in this process: (exit code, stdout, stderr with log lines as the CLI prints them).

    An exception escaping ``main`` is what a user sees as a traceback: its code is None.
    """
    from dynamics.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("dynamics: %(message)s"))
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code: int | None = main([str(a) for a in argv])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException as exc:  # noqa: BLE001 - RecursionError included: the user's traceback
                code = None
                err.write(f"Traceback (most recent call last):\n  {type(exc).__name__}: {str(exc)[:200]}\n")
    finally:
        root.handlers = saved[0]
        root.setLevel(saved[1])
    return code, out.getvalue(), err.getvalue()


PROGRESS = re.compile(r"^[^:]+: +\d+%[ |]")  # a progress line (dynamics.execution.progress), live or logged


def lines(text: str) -> list[str]:
    """The lines of ``text``, without the progress lines (a scan that fails mid-way has drawn some)."""
    return [line for line in text.splitlines() if line.strip() and not PROGRESS.match(line)]


def one_line(err: str, command: str) -> str:
    """The one stderr line of a refused command (no traceback); returns it."""
    assert "Traceback" not in err, err[-2000:]
    assert len(lines(err)) == 1, err[-2000:]
    assert lines(err)[0].startswith(f"dynamics {command}: error: "), err
    return lines(err)[0]


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root``: (size, mtime) of files, (-1, 0) of directories and links."""
    seen: dict[str, tuple[int, int]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            stat = path.stat()
            seen[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
        else:
            seen[str(path.relative_to(root))] = (-1, 0)
    return seen


# -- the workspace ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scanned(tiny_suite, tmp_path_factory) -> Path:
    """A scan cube of steps 4 and 8 of the tiny suite (cohort_percent 1: one neuron of 64 per layer)."""
    cube = tmp_path_factory.mktemp("scanned") / "good.zarr"
    code, _, err = run_cli(["scan", "--model", tiny_suite, "--out", cube, "--steps", "4,8", *FAST])
    assert code == 0, err
    return cube


@pytest.fixture
def cube(scanned, tmp_path) -> Path:
    """A copy of the scanned cube to damage."""
    copy = tmp_path / "ws" / "c.zarr"
    shutil.copytree(scanned, copy)
    return copy


def chunk(cube: Path, variable: str, position: int) -> Path:
    """The chunk file of row ``position`` of a variable chunked (1, whole rest), as zarr v3 names it."""
    meta = json.loads((cube / variable / "zarr.json").read_text())
    return cube / variable / "c" / str(position) / Path(*["0"] * (len(meta["shape"]) - 1))


def edit_attrs(cube: Path, edit) -> None:
    meta = json.loads((cube / "zarr.json").read_text())
    edit(meta["attributes"])
    (cube / "zarr.json").write_text(json.dumps(meta))


def scan(suite: Path, out: str | Path, steps: str = "8") -> list[str]:
    return ["scan", "--model", suite, "--out", out, "--steps", steps, *FAST]


# -- item 1: stored data that changed -----------------------------------------------------------


def test_a_steps_wd_chunk_replaced_by_another_steps(cube):
    """Step 4's ``wd`` chunk replaced by step 8's: --check names step 4 and wd; report and plot refuse."""
    shutil.copyfile(chunk(cube, "wd", 1), chunk(cube, "wd", 0))
    before = listing(cube.parent)
    code, out, err = run_cli(["report", "--check", cube])
    assert code == 1, out + err
    assert "step 4: wd changed since it was written" in out, out
    assert "step 8" not in out, out  # the untouched step is not blamed
    assert one_line(err, "report").endswith(
        f"1 of 2 done steps of {cube} lost or changed data; re-run the command that made the cube to compute them again"
    )
    for argv in (["report", cube], ["plot", cube, "--out", cube.parent / "figs"]):
        code, out, err = run_cli(argv)
        assert code == 2, out + err
        assert "`dynamics report --check" in one_line(err, str(argv[0])), err
        assert out == ""  # no table of the wrong numbers
    assert listing(cube.parent) == before  # nothing written, nothing repaired behind the user's back


def test_a_reversed_step_coordinate(cube, tiny_suite):
    """The step labels reversed over their rows: every reader and the writer refuse in one line."""
    zarr.open_array(cube / "step", mode="r+")[:] = np.asarray([8, 4], dtype="int64")
    before = listing(cube.parent)
    for argv in (["report", cube], ["report", "--check", cube], scan(tiny_suite, cube, "4,8")):
        code, out, err = run_cli(argv)
        assert code == 2, out + err
        line = one_line(err, str(argv[0]))
        assert f"cube {str(cube)!r} is damaged: its step coordinate is not strictly increasing" in line, line
        assert "step 4 follows step 8 at row 1" in line, line
    assert listing(cube.parent) == before


def test_a_status_of_banana(cube, tiny_suite):
    edit_attrs(cube, lambda attrs: attrs["steps"]["4"].update(status="banana"))
    before = listing(cube.parent)
    for argv in (["report", cube], ["report", "--check", cube], scan(tiny_suite, cube, "4,8")):
        code, out, err = run_cli(argv)
        assert code == 2, out + err
        assert one_line(err, str(argv[0])).endswith(
            f'cube {str(cube)!r} is damaged: step 4 has status "banana" in its zarr.json, expected one of done, '
            "failed, pending; nothing was changed: restore the cube from a copy or choose another one"
        ), err
    assert listing(cube.parent) == before


def test_a_cohort_mask_set_all_true(cube):
    zarr.open_array(cube / "cohort", mode="r+")[:] = True
    before = listing(cube.parent)
    for argv in (["report", cube], ["report", "--check", cube], ["plot", cube, "--out", cube.parent / "figs"]):
        code, out, err = run_cli(argv)
        assert code == 2, out + err
        assert one_line(err, str(argv[0])).endswith(
            f"cube {str(cube)!r} is damaged: its cohort mask selects 64 neurons in layer 0, but cohort_percent=1.0 "
            "with cohort_scope=layer selects 1 of 64 per layer; nothing was changed: restore the cube from a copy, "
            "or scan again into a new --out"
        ), err
    assert listing(cube.parent) == before


def test_cube_format_999(cube, tiny_suite):
    edit_attrs(cube, lambda attrs: attrs.update(cube_format=999))
    before = listing(cube.parent)
    for argv in (["report", cube], ["report", "--check", cube], scan(tiny_suite, cube, "4,8")):
        code, out, err = run_cli(argv)
        assert code == 2, out + err
        assert one_line(err, str(argv[0])).endswith(
            f"cube {str(cube)!r} has cube_format 999; this version of dynamics reads cube_format 1: open it with "
            "the version that wrote it, or restore the cube from a copy (nothing was changed)"
        ), err
    assert listing(cube.parent) == before


# -- item 2: output paths -----------------------------------------------------------------------


def deep(root: Path, levels: int) -> Path:
    return root.joinpath(*["d"] * levels)


def remove_deep(root: Path) -> None:
    """Remove a tree made by :func:`deep` level by level: ``shutil.rmtree`` (and pytest's own clean-up
    of its temporary directories) recurses once per level and would end in a RecursionError."""
    chain = [root]
    while (chain[-1] / "d").is_dir():
        chain.append(chain[-1] / "d")
    for level in reversed(chain):
        for child in level.iterdir():
            if child.name == "d" and child.is_dir():
                continue  # already removed below, or the next level of the chain
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)  # a cube or a figures directory: a few levels
            else:
                child.unlink()
        if (level / "d").exists():
            (level / "d").rmdir()
    root.rmdir()


@pytest.mark.parametrize("command", ["scan", "plot", "tse export"])
def test_out_nested_1200_directories_deep(command, tiny_suite, scanned, tmp_path, request):
    """1,200 levels (about 2,400 bytes, within the system's path limit) just work: no RecursionError."""
    where = deep(tmp_path / "deep", 1200)
    request.addfinalizer(lambda: remove_deep(tmp_path / "deep") if (tmp_path / "deep").exists() else None)
    argv = {
        "scan": scan(tiny_suite, where / "x.zarr"),
        "plot": ["plot", scanned, "--out", where / "figs", "--formats", "png"],
        "tse export": ["tse", "export", where / "tse", "--format", "jsonl"],
    }[command]
    code, out, err = run_cli(argv)
    assert code == 0, err[-2000:]
    assert "Traceback" not in err
    if command == "scan":
        from store import open_cube

        assert open_cube(where / "x.zarr")["step"].values.tolist() == [8]
    elif command == "plot":
        assert sorted(p.name for p in (where / "figs").iterdir()) == [
            "claims.png",
            "cohort_wd.png",
            "drift.png",
            "tse_accuracy.png",
            "tse_cases_final.png",
            "wd_histograms.png",
        ]
    else:
        assert len(list((where / "tse").glob("*.jsonl"))) == 22


def test_out_past_the_systems_path_limit(tiny_suite, tmp_path, request):
    """2,100 levels (4,200 bytes) cannot hold a cube's files: one line naming the length, nothing made."""
    out = deep(tmp_path / "deep", 2100) / "x.zarr"
    request.addfinalizer(lambda: remove_deep(tmp_path / "deep") if (tmp_path / "deep").exists() else None)
    code, _, err = run_cli(scan(tiny_suite, out))
    assert code == 2, err[-2000:]
    line = one_line(err, "scan")
    assert "directories deep); the files written inside it need it under 3,840 bytes" in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["scan", "plot", "tse export"])
def test_out_inside_another_cube(command, tiny_suite, cube):
    """``--out ref.zarr/inner.zarr`` (and figures or a TSE export inside a cube): refused, nothing written."""
    target = cube / {"scan": "inner.zarr", "plot": "figs", "tse export": "wd/tse"}[command]
    argv = {
        "scan": scan(tiny_suite, target),
        "plot": ["plot", cube, "--out", target],
        "tse export": ["tse", "export", target],
    }[command]
    before = listing(cube.parent)
    code, out, err = run_cli(argv)
    assert code == 2, out + err
    option = "DIR" if command == "tse export" else "--out"
    assert one_line(err, command).endswith(
        f"{option} {str(target)!r} is inside the cube {str(cube)!r}; choose a directory outside any cube"
    ), err
    assert listing(cube.parent) == before


def test_plot_a_cube_into_the_cube_itself(cube):
    before = listing(cube.parent)
    code, _, err = run_cli(["plot", cube, "--out", cube])
    assert code == 2
    assert one_line(err, "plot").endswith(
        f"--out {str(cube)!r} is the cube {str(cube)!r}; choose a directory outside any cube"
    )
    assert listing(cube.parent) == before


@pytest.mark.parametrize("second", ["{cube}", "{cube}/", "{ws}/./c.zarr", "{ws}/link.zarr"])
def test_plot_the_same_cube_twice(second, cube):
    (cube.parent / "link.zarr").symlink_to(cube)
    again = second.format(cube=cube, ws=cube.parent)
    before = listing(cube.parent)
    code, _, err = run_cli(["plot", cube, again, "--out", cube.parent / "figs"])
    assert code == 2, err
    line = one_line(err, "plot")
    assert f"CUBE {again!r} is given twice" in line and "give each seed's cube once" in line, line
    assert listing(cube.parent) == before


@pytest.mark.parametrize("formats", ["", ",", " , "])
def test_plot_formats_empty(formats, cube):
    before = listing(cube.parent)
    code, _, err = run_cli(["plot", cube, "--out", cube.parent / "figs", "--formats", formats])
    assert code == 2, err
    assert one_line(err, "plot").endswith(
        f"--formats {formats!r} names no format; give one or more of png, pdf, svg, e.g. png,pdf"
    )
    assert listing(cube.parent) == before


@pytest.mark.parametrize("formats", ["png,bmp", "PNG", "png;pdf"])
def test_plot_formats_not_accepted(formats, cube):
    before = listing(cube.parent)
    code, _, err = run_cli(["plot", cube, "--out", cube.parent / "figs", "--formats", formats])
    assert code == 2, err
    line = one_line(err, "plot")
    assert f"--formats {formats!r}: " in line and "expected some of png, pdf, svg" in line, line
    assert listing(cube.parent) == before


def test_out_with_a_trailing_slash_is_the_same_cube(tiny_suite, tmp_path):
    from store import open_cube

    code, out, err = run_cli(scan(tiny_suite, f"{tmp_path}/x.zarr/"))
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.zarr"]
    assert open_cube(tmp_path / "x.zarr")["step"].values.tolist() == [8]
    code, out, err = run_cli(scan(tiny_suite, f"{tmp_path}/x.zarr", "4,8"))  # the same cube, without the slash
    assert code == 0, err
    assert "1 steps computed" in out and "1 already done" in out, out


# -- item 2: a full disk ------------------------------------------------------------------------


@pytest.fixture
def disk_full_at_chunk(monkeypatch):
    """zarr's file writes raise ENOSPC (as ``write`` does, no file name) from the first chunk of ``wd``."""
    import zarr.storage._local as local

    real = local._put
    failed: list[str] = []

    def put(path, value, exclusive=False):
        if f"{os.sep}wd{os.sep}c{os.sep}" in str(path) or failed:
            failed.append(str(path))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, value, exclusive=exclusive)

    monkeypatch.setattr(local, "_put", put)
    return failed


def test_full_disk_on_out_of_a_new_cube(tiny_suite, tmp_path, disk_full_at_chunk):
    out = tmp_path / "runs" / "x.zarr"
    code, _, err = run_cli(scan(tiny_suite, out))
    assert disk_full_at_chunk  # the simulated disk did fill up
    assert code == 2, err
    assert one_line(err, "scan").endswith(
        f"no space left on the device while writing step 8 to cube {str(out)!r}; free space or choose another "
        "--out, then re-run the same command (the steps already done are kept)"
    )
    assert list(tmp_path.iterdir()) == []  # no cube, no lock, not even the runs/ directory this run made


def test_full_disk_on_out_while_resuming(tiny_suite, cube, disk_full_at_chunk, monkeypatch):
    from store import open_cube

    kept = open_cube(cube).load()
    code, _, err = run_cli(scan(tiny_suite, cube, "2,4,8"))
    assert code == 2, err
    assert one_line(err, "scan").startswith(
        f"dynamics scan: error: no space left on the device while writing step 2 to cube {str(cube)!r}"
    )
    monkeypatch.undo()
    again = open_cube(cube, include_pending=True)
    assert again["status"].values.tolist() == ["pending", "done", "done"]  # steps 2, 4, 8
    np.testing.assert_array_equal(again["wd"].sel(step=[4, 8]).values, kept["wd"].values)  # done steps kept
    position = zarr.open_array(cube / "step", mode="r")[:].tolist().index(2)
    assert not any(chunk(cube, name, position).exists() for name in ("wd", "wd_neg", "cohort_weights", "ppl"))
    assert not (cube.parent / "c.zarr.lock").exists()


@pytest.fixture
def disk_full_at_file(monkeypatch):
    """Writing the ``n``-th file under a directory raises ENOSPC (set ``state["under"]``, ``state["n"]``)."""
    real = os.fdopen
    state = {"under": None, "n": 1, "seen": 0}

    class FullFile:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real(fd, mode, *args, **kwargs)
        target = os.readlink(f"/proc/self/fd/{fd}")
        if "w" in mode and state["under"] and target.startswith(str(state["under"])):
            state["seen"] += 1
            if state["seen"] >= state["n"]:
                return FullFile(f)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    return state


def test_full_disk_in_tse_export(tmp_path, disk_full_at_file):
    disk_full_at_file.update(under=tmp_path, n=7)  # 6 files written, the 7th fills the disk
    code, _, err = run_cli(["tse", "export", tmp_path / "tse"])
    assert disk_full_at_file["seen"] >= 7
    assert code == 2, err
    line = one_line(err, "tse export")
    assert f"no space left on the device writing {tmp_path}/tse/" in line, line
    assert list(tmp_path.iterdir()) == []  # none of the 22 files, and not the directory this run made


def test_full_disk_in_tse_export_into_an_existing_directory(tmp_path, disk_full_at_file):
    (tmp_path / "tse").mkdir()
    (tmp_path / "tse" / "notes.txt").write_text("mine\n")
    before = listing(tmp_path)
    disk_full_at_file.update(under=tmp_path, n=7)
    code, _, err = run_cli(["tse", "export", tmp_path / "tse"])
    assert code == 2, err
    one_line(err, "tse export")
    assert listing(tmp_path) == before  # what was there stays, nothing of this run is added


def test_full_disk_in_plot(cube, disk_full_at_file):
    disk_full_at_file.update(under=cube.parent / "figs", n=3)  # two figures written, the third fills the disk
    code, _, err = run_cli(["plot", cube, "--out", cube.parent / "figs"])
    assert disk_full_at_file["seen"] >= 3
    assert code == 2, err
    assert "no space left on the device writing " in one_line(err, "plot")
    assert not (cube.parent / "figs").exists()
