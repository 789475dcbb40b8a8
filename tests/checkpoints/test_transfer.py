"""The download backend (hf_xet when it imports, else plain HTTP) and what a Hub fetch is expected to take; no network."""

import logging
import os
import sys
import types

import pytest
from fixtures.hub import plant_hub_revision

from checkpoints.hub_errors import RetryPolicy
from checkpoints.hub_source import HubCalls, HubSource
from checkpoints.local_sources import LocalSuiteSource
from checkpoints.names import resolve_model
from checkpoints.stream import checkpoint_bytes
from checkpoints.transfer import HIGH_PERFORMANCE, TransferBackend, transfer_backend, use_fast_transfer

REPO = "EleutherAI/pythia-70m"


@pytest.fixture
def xet_installed(monkeypatch):
    """An importable hf_xet (whatever is installed here), the hub allowed to use it, no performance choice made."""
    monkeypatch.setitem(sys.modules, "hf_xet", types.ModuleType("hf_xet"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_XET", False)
    monkeypatch.setenv(HIGH_PERFORMANCE, "set")  # recorded, so that what a test sets is undone after it
    monkeypatch.delenv(HIGH_PERFORMANCE)


def test_hf_xet_is_the_backend_when_it_imports(xet_installed):
    assert transfer_backend() == TransferBackend("hf_xet", high_performance=False)
    assert str(transfer_backend()) == "hf_xet"


def test_plain_http_when_hf_xet_does_not_import(xet_installed, monkeypatch):
    monkeypatch.setitem(sys.modules, "hf_xet", None)  # import hf_xet raises ImportError
    assert transfer_backend() == TransferBackend("http")


def test_plain_http_when_the_hub_is_told_not_to_use_xet(xet_installed, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_XET", True)
    assert str(transfer_backend()) == "http"


def test_a_cuda_scan_turns_on_high_performance_and_says_so(xet_installed, caplog):
    with caplog.at_level(logging.INFO, logger="checkpoints.transfer"):
        backend = use_fast_transfer("cuda:0")
    assert backend == TransferBackend("hf_xet", high_performance=True)
    assert os.environ[HIGH_PERFORMANCE] == "1"
    assert caplog.messages == [
        "checkpoint downloads use hf_xet (high performance) (HF_XET_HIGH_PERFORMANCE=1, set for a CUDA scan)"
    ]


def test_a_cpu_scan_leaves_the_cores_to_the_measurement(xet_installed, caplog):
    with caplog.at_level(logging.INFO, logger="checkpoints.transfer"):
        assert use_fast_transfer("cpu") == TransferBackend("hf_xet")
    assert HIGH_PERFORMANCE not in os.environ
    assert caplog.messages == ["checkpoint downloads use hf_xet"]


def test_the_users_choice_stands(xet_installed, monkeypatch):
    monkeypatch.setenv(HIGH_PERFORMANCE, "0")
    assert use_fast_transfer("cuda") == TransferBackend("hf_xet", high_performance=False)
    assert os.environ[HIGH_PERFORMANCE] == "0"


def test_without_hf_xet_nothing_is_turned_on(xet_installed, monkeypatch):
    monkeypatch.setitem(sys.modules, "hf_xet", None)
    assert use_fast_transfer("cuda") == TransferBackend("http")
    assert HIGH_PERFORMANCE not in os.environ


@pytest.fixture
def online(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")


def hub_source(tmp_path, **options):
    def download(repo_id, revision, cache_dir, **kwargs):  # plants the revision, as the real client would
        return str(plant_hub_revision(tmp_path, repo_id, int(revision.removeprefix("step"))))

    return HubSource(
        resolve_model("pythia-70m"),
        cache_dir=tmp_path,
        retry=RetryPolicy(attempts=1),
        calls=HubCalls(download=download, list_files=lambda repo, revision: ["config.json", "model.safetensors"]),
        **options,
    )


def test_a_downloaded_step_records_its_backend_and_a_cached_one_none(tmp_path, online, xet_installed, monkeypatch):
    plant_hub_revision(tmp_path, REPO, 0)  # the user's, cached before the run
    monkeypatch.setenv(HIGH_PERFORMANCE, "1")
    source = hub_source(tmp_path)
    new, cached = source.fetch(1000), source.fetch(0)
    assert new.downloaded and new.record()["transfer"] == "hf_xet (high performance)"
    assert not cached.downloaded and cached.record()["transfer"] is None
    # the bytes the prefetcher counts for a downloaded step: its snapshot's blobs, measured independently
    blobs = {os.path.realpath(p) for p in new.path.iterdir()}
    assert checkpoint_bytes(new) == sum(os.path.getsize(b) for b in blobs) > 0
    assert checkpoint_bytes(cached) == 0


def test_expected_bytes_are_the_hubs_sizes_of_what_a_fetch_takes(tmp_path, online):
    source = hub_source(tmp_path)
    listings = []

    def sizes(repo, revision):
        listings.append((repo, revision))
        return {
            "config.json": 700,
            "tokenizer.json": 2_000,
            "model-00001-of-00002.safetensors": 10_000,
            "model-00002-of-00002.safetensors": 5_000,
            "model.safetensors.index.json": 300,
            "pytorch_model.bin": 99_999,  # not taken: safetensors are
            "README.md": 50,  # not taken
        }

    source._list_sizes = sizes
    assert source.expected_bytes(3000) == 700 + 2_000 + 10_000 + 5_000 + 300
    assert listings == [(REPO, "step3000")]


def test_expected_bytes_are_zero_for_what_needs_no_download(tmp_path, online, monkeypatch):
    plant_hub_revision(tmp_path, REPO, 1000)
    source = hub_source(tmp_path)
    source._list_sizes = lambda repo, revision: pytest.fail("a cached revision needs no listing")
    assert source.expected_bytes(1000) == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert source.expected_bytes(5000) == 0  # offline: only the cache is read
    suite = tmp_path / "suite"
    (suite / "step0").mkdir(parents=True)
    assert LocalSuiteSource(resolve_model(str(suite))).expected_bytes(0) == 0


def test_expected_bytes_are_unknown_when_the_hub_cannot_tell(tmp_path, online):
    source = hub_source(tmp_path)

    def unreachable(repo, revision):
        raise ConnectionError("no route to host")

    source._list_sizes = unreachable
    assert source.expected_bytes(3000) is None
