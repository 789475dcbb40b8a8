"""What a source says its weights are now, the cheapest way a stored record allows, and the comparison."""

from __future__ import annotations

import hashlib
import os
from types import SimpleNamespace

import pytest
from fixtures.hub import plant_hub_commit, plant_hub_revision

from checkpoints import hub_status
from checkpoints.fingerprints import weight_fingerprints, weight_stats
from checkpoints.hub_source import HubCalls, HubSource
from checkpoints.local_sources import SingleModelSource
from checkpoints.names import resolve_model
from checkpoints.weight_check import WeightChange, differing_file, weight_change

REPO = "EleutherAI/pythia-70m"
BOGUS = "f" * 64  # a recorded hash no file has: returned only when the file was not read


@pytest.fixture
def online(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)


def test_a_local_file_with_its_recorded_size_and_mtime_is_not_read_again(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    stats = weight_stats(tmp_path)
    assert stats == {"model.safetensors": [7, (tmp_path / "model.safetensors").stat().st_mtime_ns]}
    known = {"weights_sha256": {"model.safetensors": BOGUS}, "weights_stat": stats}
    assert weight_fingerprints(tmp_path, known=known) == {"model.safetensors": BOGUS}
    os.utime(tmp_path / "model.safetensors", ns=(1, 1))  # rewritten (here: touched): hashed again
    real = hashlib.sha256(b"weights").hexdigest()
    assert weight_fingerprints(tmp_path, known=known) == {"model.safetensors": real}


def test_a_local_model_replaced_is_a_change_naming_both_hashes(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"old")
    source = SingleModelSource(resolve_model(str(tmp_path)))
    stored = source.fetch(0).record()
    assert weight_change(source, 0, stored) is None
    (tmp_path / "model.safetensors").write_bytes(b"new weights")
    change = weight_change(source, 0, stored)
    old, new = hashlib.sha256(b"old").hexdigest(), hashlib.sha256(b"new weights").hexdigest()
    assert change == WeightChange(0, "model.safetensors", old, new)
    assert change.hashes() == f"model.safetensors: stored sha256 {old}, now {new}"


def test_files_that_appear_or_vanish_are_changes():
    stored = {"weights_sha256": {"model.safetensors": "a"}}
    now = {"weights_sha256": {"pytorch_model.bin": "b"}}
    assert differing_file(3, stored, now) == WeightChange(3, "model.safetensors", "a", None)
    assert differing_file(3, stored, None) is None  # unknown now: not compared
    assert differing_file(3, {"weights_sha256": {}}, now) is None  # nothing recorded


def test_a_hub_revision_that_still_names_the_recorded_commit_costs_no_request(tmp_path, online):
    commit = "c" * 40
    source = HubSource(
        resolve_model("pythia-70m"),
        cache_dir=tmp_path,
        calls=HubCalls(
            list_refs=lambda repo: {"step1": commit}, list_files=lambda repo, rev: pytest.fail("no request may be made")
        ),
    )
    source.revisions()
    stored = {"commit": commit, "weights_sha256": {"model.safetensors": BOGUS}}
    assert source.weights_record(1, stored) == {"commit": commit, "weights_sha256": {"model.safetensors": BOGUS}}
    assert weight_change(source, 1, stored) is None


def test_a_moved_hub_ref_is_compared_by_the_cached_blobs_or_the_hub_metadata(tmp_path, online, monkeypatch):
    snapshot = plant_hub_revision(tmp_path, REPO, 1)
    planted = weight_fingerprints(snapshot)
    moved = "d" * 40
    plant_hub_commit(tmp_path, REPO, moved, {"model.safetensors": b"other weights"}, refs=[])
    asked = []

    def paths_info(self, repo_id, paths, revision=None):
        asked.append(revision)
        return [SimpleNamespace(path=p, lfs=SimpleNamespace(sha256="e" * 64)) for p in paths]

    monkeypatch.setattr("huggingface_hub.HfApi.get_paths_info", paths_info)
    stored = {"commit": snapshot.name, "weights_sha256": planted}
    cached = HubSource(
        resolve_model("pythia-70m"), cache_dir=tmp_path, calls=HubCalls(list_refs=lambda repo: {"step1": moved})
    )
    cached.revisions()
    change = weight_change(cached, 1, stored)  # the new commit is cached: its blob name, no request
    assert change == WeightChange(1, "model.safetensors", planted["model.safetensors"], _sha(b"other weights"))
    assert asked == []
    elsewhere = HubSource(
        resolve_model("pythia-70m"),
        cache_dir=tmp_path,
        calls=HubCalls(list_refs=lambda repo: {"step1": "9" * 40}, list_files=lambda repo, rev: ["model.safetensors"]),
    )
    elsewhere.revisions()
    assert weight_change(elsewhere, 1, stored).now == "e" * 64  # one metadata request, no download
    assert asked == ["step1"]


def test_without_the_hub_an_uncached_revision_is_not_compared(tmp_path, online):
    hub_status.note_unreachable("Connection refused")
    source = HubSource(
        resolve_model("pythia-70m"),
        cache_dir=tmp_path,
        calls=HubCalls(list_files=lambda repo, rev: pytest.fail("no Hub request once it is unreachable")),
    )
    assert weight_change(source, 5, {"commit": "a" * 40, "weights_sha256": {"model.safetensors": "x"}}) is None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
