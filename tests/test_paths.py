"""User-given paths: checked up front (nothing created), OS errors on them one line with exit code 2."""

import errno
import os

import pytest

from dynamics.cli.main import main
from dynamics.config.paths import check_output_dir, explain_os_error, is_under
from dynamics.errors import PathError


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_new_directory_in_a_writable_place_passes_and_nothing_is_created(tmp_path):
    assert check_output_dir(str(tmp_path / "a" / "b" / "c.zarr"), "--out") == tmp_path / "a" / "b" / "c.zarr"
    assert check_output_dir(str(tmp_path), "--out") == tmp_path  # an existing directory (a cube to resume)
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    ("make", "typed", "message"),
    [
        (lambda t: (t / "f").write_text("x"), "f/sub/c.zarr", "{t}/f is a file, not a directory"),
        (lambda t: (t / "f").write_text("x"), "f", "exists and is a file, not a directory"),
        (lambda t: None, "/proc/c.zarr", r"cannot write in /proc \(No such file or directory\); choose a writable"),
        (lambda t: None, "x" * 300, "is longer than 255 bytes"),
        (lambda t: None, "a\0b", "contains a NUL character"),
        (lambda t: None, "", "--out is empty"),
    ],
)
def test_unusable_output_paths_are_one_line(tmp_path, make, typed, message):
    make(tmp_path)
    before = listing(tmp_path)
    path = typed if typed.startswith("/") or not typed else str(tmp_path / typed)
    with pytest.raises(PathError, match=message.format(t=tmp_path)) as caught:
        check_output_dir(path, "--out")
    assert caught.value.exit_code == 2
    assert listing(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_refused(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(PathError, match=r"cannot write in .*ro \(Permission denied\)"):
        check_output_dir(str(tmp_path / "ro" / "c.zarr"), "--out")


def test_a_link_to_a_place_under_a_file_is_judged_where_it_points(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "link.zarr").symlink_to(tmp_path / "f" / "c.zarr")
    with pytest.raises(PathError, match="is a file, not a directory"):
        check_output_dir(str(tmp_path / "link.zarr"), "--out")


def test_os_errors_are_the_users_only_on_the_users_paths(tmp_path):
    out = str(tmp_path / "figs")
    assert is_under(tmp_path / "figs" / "a.png", [out]) and is_under(tmp_path, [out])
    assert not is_under("/etc/passwd", [out])
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "figs" / "a.png"))
    assert (
        explain_os_error(full, [out])
        == f"no space left writing {tmp_path}/figs/a.png: free space or choose another path"
    )
    denied = OSError(errno.EACCES, "Permission denied", str(tmp_path / "figs"))
    assert explain_os_error(denied, [out]) == f"cannot use {tmp_path}/figs: Permission denied"
    assert explain_os_error(OSError(errno.EACCES, "Permission denied", "/etc/shadow"), [out]) is None
    assert explain_os_error(OSError(errno.EIO, "Input/output error", out), [out]) is None  # the disk, not the input


def test_the_cli_turns_an_os_error_on_an_output_path_into_one_line_exit_2(tmp_path, monkeypatch, capsys, full_cube):
    # The figures directory is fine up front but the disk fills up while the figures are written.
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "figs" / "cohort_wd.png"))

    import dynamics.report.scan_figures as figures

    monkeypatch.setattr(figures, "_save", full)
    assert main(["plot", str(full_cube), "--out", str(tmp_path / "figs")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"dynamics plot: error: no space left on the device writing {tmp_path}/figs/cohort_wd.png; free space "
        "or choose another directory (nothing of this run was kept there)\n"
    )
    assert not (tmp_path / "figs").exists()  # made by this run, and nothing of it kept


def test_the_cli_keeps_exit_1_for_os_errors_elsewhere(tmp_path, monkeypatch, capsys, full_cube):
    def elsewhere(*args, **kwargs):
        raise OSError(errno.EACCES, "Permission denied", "/usr/share/fonts/x.ttf")

    import dynamics.report.scan_figures as figures

    monkeypatch.setattr(figures, "_save", elsewhere)
    assert main(["plot", str(full_cube), "--out", str(tmp_path / "figs")]) == 1
    err = capsys.readouterr().err
    assert err == "dynamics plot: error: PermissionError: [Errno 13] Permission denied: '/usr/share/fonts/x.ttf'\n"


def test_a_path_inside_a_cube_is_refused_and_a_cube_itself_where_it_must_not_be_one(tmp_path):
    from dynamics.config.paths import check_cube_out

    cube = tmp_path / "ref.zarr"
    (cube / "wd").mkdir(parents=True)
    (cube / "zarr.json").write_text("{}")
    (cube / "wd" / "zarr.json").write_text("{}")
    for inner in (cube / "inner.zarr", cube / "wd" / "x" / "y.zarr"):
        with pytest.raises(PathError) as caught:
            check_cube_out(str(inner))
        assert str(caught.value) == (
            f"--out {str(inner)!r} is inside the cube {str(cube)!r}; choose a directory outside any cube"
        )  # the outermost store is named, not its variable's folder
    assert check_cube_out(str(cube)) == cube  # a cube's own --out: resumed
    assert check_output_dir(str(cube), "--out") == cube
    with pytest.raises(PathError, match=f"--out {str(cube)!r} is the cube {str(cube)!r}"):
        check_output_dir(str(cube), "--out", not_a_cube=True)
    assert listing(tmp_path) == ["ref.zarr", "ref.zarr/wd", "ref.zarr/wd/zarr.json", "ref.zarr/zarr.json"]


def test_a_cube_out_is_named_zarr_and_a_trailing_slash_is_the_same_directory(tmp_path):
    from dynamics.config.paths import check_cube_out

    assert check_cube_out(f"{tmp_path}/x.zarr/") == tmp_path / "x.zarr"
    assert check_cube_out(f"{tmp_path}/x.zarr//") == tmp_path / "x.zarr"
    for bad in (f"{tmp_path}/x", f"{tmp_path}/.zarr", f"{tmp_path}/x.zarr/.."):
        with pytest.raises(PathError, match="a cube is a directory whose name ends in .zarr"):
            check_cube_out(bad)
    assert listing(tmp_path) == []


def test_a_path_too_long_for_the_files_inside_it_is_one_line(tmp_path):
    deep = tmp_path.joinpath(*["d"] * 2000) / "x.zarr"  # 4,000 bytes and more: a chunk path inside passes 4,096
    with pytest.raises(PathError) as caught:
        check_output_dir(str(deep), "--out")
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400
    assert "directories deep); the files written inside it need it under 3,840 bytes (the system's limit" in message
    assert listing(tmp_path) == []
