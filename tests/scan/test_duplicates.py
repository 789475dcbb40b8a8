"""Duplicate revisions on an offline Hub cache: flagged, not recomputed, copied, reported; tokens per step."""

import hashlib

import numpy as np
import pytest
from conftest import FAST_SCAN
from fixtures.hub import plant_hub_revision

from checkpoints.checkpoint import Checkpoint
from dynamics.cli.main import main
from dynamics.errors import UserInputError
from dynamics.report.scan_text import report
from dynamics.scan.config import ScanConfig
from dynamics.scan.driver import run_scan
from dynamics.scan.duplicates import find_duplicates
from store import open_cube

pytestmark = pytest.mark.models

REPO = "EleutherAI/pythia-70m"


def test_find_duplicates_points_at_the_earliest_equal_step():
    prints = {0: {"a": "1"}, 1: {"a": "2"}, 2: {"a": "1"}, 3: None, 4: {"a": "2"}, 5: {"a": "1", "b": "9"}}
    assert find_duplicates(prints) == {2: 0, 4: 1}


@pytest.fixture
def duplicated_cache(tiny_suite, tmp_path):
    """Revisions step1, step2 (the same weight files as step1, as Pythia's issue #195 reports) and step4."""
    cache = tmp_path / "hf"
    for step, source in ((1, 1), (2, 1), (4, 4)):
        plant_hub_revision(cache, REPO, step, copy_from=tiny_suite / f"step{source}")
    return cache


def counting_loads(monkeypatch):
    loads = []
    original = Checkpoint.load_model

    def load(self, *args, **kwargs):
        loads.append(self.step)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Checkpoint, "load_model", load)
    return loads


def scan_config(cache, tiny_suite, out, **kw):
    settings = {"steps": "1,2,4", **FAST_SCAN, **kw}
    return ScanConfig(
        model="pythia-70m",
        out=str(out),
        cache_dir=str(cache),
        retries=1,
        corpus=str(tiny_suite / "heldout.txt"),
        **settings,
    )


def test_a_duplicated_revision_is_flagged_copied_and_reported(
    duplicated_cache, tiny_suite, tmp_path, monkeypatch, capsys
):
    loads = counting_loads(monkeypatch)
    out = tmp_path / "dup.zarr"
    summary = run_scan(scan_config(duplicated_cache, tiny_suite, out))
    assert summary.done == [1, 2, 4] and summary.copied == {2: 1} and not summary.failed
    assert sorted(loads) == [1, 4, 4]  # the reference (4) once for the cohort, then steps 1 and 4; never step 2
    ds = open_cube(out)
    assert ds["duplicate_of"].values.tolist() == [-1, 1, -1]
    for name in ("tse_acc", "tse_margin", "ppl", "wd", "drift_ref", "cohort_weights"):
        np.testing.assert_array_equal(ds[name].sel(step=2).values, ds[name].sel(step=1).values, err_msg=name)
    assert float(ds["drift_prev"].sel(step=2).max()) == pytest.approx(0.0, abs=1e-6)  # the same weights as step 1
    assert (ds["seconds"].sel(step=2) == 0).all()
    records = ds.attrs["steps"]
    weights = (duplicated_cache / "models--EleutherAI--pythia-70m" / "snapshots").glob("*/model.safetensors")
    sha = {hashlib.sha256(p.read_bytes()).hexdigest() for p in weights}
    assert len(sha) == 2  # two distinct weight files among three revisions
    assert records["1"]["weights_sha256"] == records["2"]["weights_sha256"] != records["4"]["weights_sha256"]
    assert {records[s]["weights_sha256"]["model.safetensors"] for s in ("1", "4")} == sha
    assert records["2"]["duplicate_of"] == 1 and records["2"]["copied_from"] == 1
    tokenizer = tiny_suite / "step4" / "tokenizer.json"
    assert (
        records["4"]["tokenizer_sha256"]
        == hashlib.sha256(
            f"tokenizer.json:{hashlib.sha256(tokenizer.read_bytes()).hexdigest()};".encode()
            + b"".join(
                f"{n}:{hashlib.sha256((tiny_suite / 'step4' / n).read_bytes()).hexdigest()};".encode()
                for n in ("tokenizer_config.json", "special_tokens_map.json")
                if (tiny_suite / "step4" / n).is_file()
            )
        ).hexdigest()
    )
    text = report(ds)
    assert "step 2: duplicate_of=1 (same weight files as step 1; its numbers are copied from it)" in text
    assert main(["report", str(out)]) == 0
    assert "step 2: duplicate_of=1" in capsys.readouterr().out
    # tokens seen: Pythia's 2,097,152 per step, a coordinate along step
    assert "tokens" in ds.coords and ds["tokens"].values.tolist() == [2_097_152, 4_194_304, 8_388_608]


def test_recompute_duplicates_measures_them_and_still_flags_them(duplicated_cache, tiny_suite, tmp_path, monkeypatch):
    loads = counting_loads(monkeypatch)
    out = tmp_path / "again.zarr"
    summary = run_scan(scan_config(duplicated_cache, tiny_suite, out, recompute_duplicates=True))
    assert summary.done == [1, 2, 4] and summary.copied == {}
    assert sorted(loads) == [1, 2, 4, 4]
    ds = open_cube(out)
    assert ds["duplicate_of"].values.tolist() == [-1, 1, -1]
    assert "copied_from" not in ds.attrs["steps"]["2"] and ds.attrs["steps"]["2"]["duplicate_of"] == 1
    assert (ds["seconds"].sel(step=2, phase="load") > 0).all()
    np.testing.assert_allclose(ds["tse_acc"].sel(step=2), ds["tse_acc"].sel(step=1))  # same weights, same numbers
    assert "step 2: duplicate_of=1 (same weight files as step 1; measured anyway)" in report(ds)


def test_a_duplicate_of_a_step_done_by_an_earlier_run_is_copied_from_the_cube(
    duplicated_cache, tiny_suite, tmp_path, monkeypatch
):
    out = tmp_path / "resume.zarr"
    run_scan(scan_config(duplicated_cache, tiny_suite, out, steps="1,4"))
    loads = counting_loads(monkeypatch)
    summary = run_scan(scan_config(duplicated_cache, tiny_suite, out, steps="1,2,4"))
    assert summary.copied == {2: 1} and loads == []
    ds = open_cube(out)
    np.testing.assert_array_equal(ds["tse_acc"].sel(step=2), ds["tse_acc"].sel(step=1))


def test_a_step_without_a_ref_is_refused_before_the_cube_is_created(duplicated_cache, tiny_suite, tmp_path):
    out = tmp_path / "never.zarr"
    with pytest.raises(
        UserInputError, match=r"step 3 has no checkpoint for EleutherAI/pythia-70m; nearest available: 2, 4"
    ):
        run_scan(scan_config(duplicated_cache, tiny_suite, out, steps="1,3"))
    assert not out.exists()


def test_tokens_coordinate_for_a_toy_suite_and_an_explicit_rate(full_cube, tiny_suite, tmp_path):
    import json

    settings = json.loads((tiny_suite / "suite.json").read_text())["config"]
    ds = open_cube(full_cube)
    per_step = settings["batch_size"] * settings["context"]
    assert ds["tokens"].values.tolist() == [s * per_step for s in (0, 1, 2, 4, 8)]
    out = tmp_path / "rate.zarr"
    run_scan(ScanConfig(model=str(tiny_suite), steps="0,2", out=str(out), tokens_per_step=1000, **FAST_SCAN))
    assert open_cube(out)["tokens"].values.tolist() == [0, 2000]
