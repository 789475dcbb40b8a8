"""No write follows a link planted at a temporary or final name (issue 12, item 3):
`dynamics tse export`, `dynamics plot` and `dynamics toy` write through fresh temporary
files made with O_EXCL in the target directory, then rename them into place."""

import os
from pathlib import Path

import pytest

from dynamics.cli.main import main
from dynamics.syntax.tse_io import export_tse
from store.safe_files import atomic_write_bytes

SECRET = b"the user's file outside the export directory\n"


def outside_file(tmp_path: Path) -> Path:
    target = tmp_path / "elsewhere" / "precious.txt"
    target.parent.mkdir()
    target.write_bytes(SECRET)
    return target


def test_tse_export_never_follows_a_link_planted_at_the_temporary_name(tmp_path, capsys):
    target = outside_file(tmp_path)
    out = tmp_path / "tse"
    out.mkdir()
    for case in ("simple_agrmt", "npi_across_anim"):
        for fmt in ("jsonl", "pickle"):
            (out / f"{case}.{fmt}.tmp").symlink_to(target)
    assert main(["tse", "export", str(out), "--format", "jsonl"]) == 0
    assert main(["tse", "export", str(out), "--format", "pickle"]) == 0
    assert target.read_bytes() == SECRET
    written = out / "simple_agrmt.jsonl"
    assert not written.is_symlink() and len(written.read_text().splitlines()) == 140
    assert (out / "simple_agrmt.pickle").stat().st_size > 0
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]
    assert leftovers == []
    assert "wrote 22 files" in capsys.readouterr().out


def test_tse_export_overwrite_replaces_a_link_at_the_final_name_instead_of_writing_through_it(tmp_path):
    target = outside_file(tmp_path)
    out = tmp_path / "tse"
    out.mkdir()
    (out / "simple_agrmt.jsonl").symlink_to(target)
    export_tse(out, format="jsonl", overwrite=True, cases=["simple_agrmt"])
    assert target.read_bytes() == SECRET
    assert not (out / "simple_agrmt.jsonl").is_symlink()
    assert (out / "simple_agrmt.jsonl").read_text().count("\n") == 140


def test_atomic_write_leaves_nothing_behind_when_it_fails(tmp_path, monkeypatch):
    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(tmp_path / "a.txt", b"data")
    assert list(tmp_path.iterdir()) == []


def test_plot_never_writes_through_a_link_at_a_figure_name(full_cube, tmp_path):
    figures = tmp_path / "figs"
    assert main(["plot", str(full_cube), "--out", str(figures), "--formats", "png"]) == 0
    names = sorted(p.name for p in figures.iterdir())
    target = outside_file(tmp_path)
    (figures / names[0]).unlink()
    (figures / names[0]).symlink_to(target)
    assert main(["plot", str(full_cube), "--out", str(figures), "--formats", "png"]) == 0
    assert target.read_bytes() == SECRET
    assert sorted(p.name for p in figures.iterdir()) == names
    assert (figures / names[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_toy_overwrite_removes_a_planted_partial_link_not_what_it_points_to(tmp_path):
    from dynamics.toy.suite import ToyConfig, build_toy_suite

    target = outside_file(tmp_path)
    out = tmp_path / "toy"
    out.mkdir()
    (out / ".step0.partial").symlink_to(target.parent, target_is_directory=True)
    config = ToyConfig(
        out=str(out),
        sentences=300,
        heldout_sentences=50,
        hidden_size=16,
        layers=1,
        heads=2,
        context=16,
        batch_size=4,
        steps=2,
        checkpoint_every=2,
        warmup_steps=1,
        progress=False,
        overwrite=True,
    )
    build_toy_suite(out, config)
    assert target.read_bytes() == SECRET and sorted(os.listdir(target.parent)) == ["precious.txt"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("step")) == ["step0", "step1", "step2"]
    assert not any(p.name.startswith(".") for p in out.iterdir())


def test_files_and_directories_get_the_usual_permissions(tmp_path):
    from store.safe_files import fresh_directory

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.txt", b"x")
        made = fresh_directory(tmp_path, ".d.")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert made.stat().st_mode & 0o777 == 0o755


def test_a_link_planted_at_the_lock_name_is_refused_and_its_target_untouched(tmp_path):
    from dynamics.errors import CubeError
    from store.cube import CubeWriter

    target = outside_file(tmp_path)
    (tmp_path / "c.zarr.lock").symlink_to(target)
    with pytest.raises(
        CubeError, match=r"lock file .*c\.zarr\.lock is a symbolic link; remove it or choose another --out"
    ):
        CubeWriter(tmp_path / "c.zarr", [0], {"model": "m"}).__enter__()
    assert target.read_bytes() == SECRET and not (tmp_path / "c.zarr").exists()


# -- all or none (issue #21: a full disk leaves no partial output) --------------------------------


def test_make_directories_goes_one_level_at_a_time(tmp_path):
    from store.safe_files import make_directories, remove_directories

    deep = tmp_path.joinpath(*["d"] * 1200)  # Path.mkdir(parents=True) would recurse 1,200 times
    made = make_directories(deep)
    assert deep.is_dir() and len(made) == 1200 and made[0] == deep and made[-1] == tmp_path / "d"
    assert make_directories(deep) == []  # nothing new to make
    remove_directories(made)  # deepest first, each only if empty
    assert list(tmp_path.iterdir()) == []


def full_at(monkeypatch, n: int) -> None:
    """The ``n``-th file opened for writing fills the disk (ENOSPC on write, as a real full disk does)."""
    import errno

    real, seen = os.fdopen, [0]

    class Full:
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
        if "w" in mode:
            seen[0] += 1
            if seen[0] == n:
                return Full(f)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)


def test_write_files_together_changes_nothing_when_the_disk_fills_up(tmp_path, monkeypatch):
    from dynamics.errors import PathError
    from store.safe_files import write_files_together

    (tmp_path / "a.txt").write_bytes(b"old a\n")
    files = {tmp_path / "a.txt": b"new a\n", tmp_path / "new" / "deeper" / "b.txt": b"b\n", tmp_path / "c.txt": b"c\n"}
    full_at(monkeypatch, 3)
    with pytest.raises(PathError) as caught:
        write_files_together(files)
    assert str(caught.value) == (
        f"no space left on the device writing {tmp_path}/c.txt; free space or choose another directory "
        "(nothing of this run was kept there)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary file, no new/ directory
    assert (tmp_path / "a.txt").read_bytes() == b"old a\n"
    monkeypatch.undo()
    write_files_together(files)
    assert {p: p.read_bytes() for p in files} == files


def test_files_into_moves_every_file_or_none(tmp_path):
    from store.safe_files import files_into

    out = tmp_path / "figs" / "run1"
    with pytest.raises(RuntimeError), files_into(out) as staging:
        (staging / "a.png").write_bytes(b"a")
        raise RuntimeError("a figure failed")
    assert list(tmp_path.iterdir()) == []  # the staging directory and the directories made for it: gone
    out.mkdir(parents=True)
    (out / "keep.txt").write_bytes(b"mine")
    with files_into(out) as staging:
        (staging / "a.png").write_bytes(b"a")
        (staging / "b.pdf").write_bytes(b"b")
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.pdf", "keep.txt"]
