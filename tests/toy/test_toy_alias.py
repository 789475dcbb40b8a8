"""`--model toy`: the built-in suite, trained on first use into the cache and reused after."""

import pytest
from conftest import FAST_SCAN
from fixtures.toy import TINY_TOY

from checkpoints.names import resolve_model
from dynamics.scan.config import ScanConfig
from dynamics.scan.driver import run_scan
from dynamics.toy import builtin
from dynamics.toy.suite import SUITE_FILE, ToyConfig
from store import open_cube

TINY = ToyConfig(**TINY_TOY)


def test_the_alias_names_the_suite_in_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DYNAMICS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    ref = resolve_model("toy")
    assert (ref.kind, ref.location) == ("local_suite", str((tmp_path / "cache" / "toy-suite").resolve()))
    assert builtin.is_toy_alias(ref)
    (tmp_path / "toy" / "step0").mkdir(parents=True)  # a directory named toy here wins over the alias
    assert resolve_model("toy").location == str((tmp_path / "toy").resolve())
    assert not builtin.is_toy_alias(resolve_model("toy"))


def test_the_cache_follows_xdg_when_not_set(monkeypatch, tmp_path):
    monkeypatch.delenv("DYNAMICS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert resolve_model("toy").location == str((tmp_path / "wasserstein-dynamics" / "toy-suite").resolve())


@pytest.mark.slow
def test_scan_model_toy_builds_once_then_reuses(monkeypatch, tmp_path):
    monkeypatch.setenv("DYNAMICS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(builtin, "BUILTIN_TOY", TINY)
    builds = []
    real_build = builtin.build_toy_suite
    monkeypatch.setattr(builtin, "build_toy_suite", lambda out, config: builds.append(out) or real_build(out, config))

    first = run_scan(ScanConfig(model="toy", out=str(tmp_path / "a.zarr"), steps="all", **FAST_SCAN))
    assert first.done == [0, 1, 2, 4, 8] and len(builds) == 1
    suite = tmp_path / "cache" / "toy-suite"
    assert (suite / SUITE_FILE).is_file() and (suite / "heldout.txt").is_file()
    assert not [p.name for p in suite.parent.iterdir() if p.name != "toy-suite"]  # no partial build left
    assert open_cube(tmp_path / "a.zarr").attrs["identity"]["corpus"] == str(suite.resolve() / "heldout.txt")

    second = run_scan(ScanConfig(model="toy", out=str(tmp_path / "b.zarr"), steps="0,8", **FAST_SCAN))
    assert second.done == [0, 8] and len(builds) == 1  # reused

    (suite / SUITE_FILE).unlink()  # an unfinished suite is built again
    builtin.ensure_toy_suite(resolve_model("toy"), TINY)
    assert len(builds) == 2 and (suite / SUITE_FILE).is_file()
