"""Checkpoint sources, offline: a pre-populated Hugging Face cache and HF_HUB_OFFLINE=1."""

import pytest
import torch
from fixtures.hub import fake_commit, make_local_suite, plant_hub_revision, tiny_pythia

from checkpoints.hub_errors import RetryPolicy
from checkpoints.hub_source import HubCalls, HubSource, weight_files
from checkpoints.local_sources import LocalSuiteSource, SingleModelSource
from checkpoints.names import resolve_model
from dynamics.errors import CheckpointError

# Calls models: also run against the lowest transformers the project declares (.ci/run).
pytestmark = pytest.mark.models

REPO = "EleutherAI/pythia-70m"


def no_sleep_policy(attempts=3, waits=None):
    return RetryPolicy(attempts=attempts, backoff=0.5, sleep=(waits.append if waits is not None else lambda s: None))


def test_hub_revision_from_offline_cache(tmp_path):
    snapshot = plant_hub_revision(tmp_path, REPO, 1000)
    source = HubSource(resolve_model("pythia-70m"), cache_dir=tmp_path, retry=no_sleep_policy())
    ckpt = source.fetch(1000)
    assert ckpt.revision == "step1000"
    assert ckpt.commit == fake_commit(REPO, 1000)
    assert ckpt.path == snapshot and not ckpt.downloaded
    model = ckpt.load_model()
    reference = tiny_pythia(1000)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(p, q), name


def test_pytorch_bin_checkpoints_load_too(tmp_path):
    plant_hub_revision(tmp_path, REPO, 2000, weights="bin")
    ckpt = HubSource(resolve_model("pythia-70m"), cache_dir=tmp_path).fetch(2000)
    assert any(p.name == "pytorch_model.bin" for p in ckpt.path.iterdir())
    assert ckpt.load_model().config.model_type == "gpt_neox"


def test_uncached_revision_offline_fails_without_retrying(tmp_path):
    waits = []
    source = HubSource(resolve_model("pythia-70m"), cache_dir=tmp_path, retry=no_sleep_policy(4, waits))
    with pytest.raises(CheckpointError, match=r"EleutherAI/pythia-70m@step3000: .*after 1 attempt"):
        source.fetch(3000)
    assert waits == []


def test_transient_errors_are_retried_with_backoff(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    calls, waits = [], []
    snapshot = tmp_path / "snap"

    def flaky_download(repo_id, **kwargs):
        calls.append(kwargs)
        if len(calls) < 3:
            raise ConnectionError("connection reset by peer")
        return str(snapshot)

    source = HubSource(
        resolve_model("pythia-70m"),
        cache_dir=tmp_path,
        retry=no_sleep_policy(4, waits),
        calls=HubCalls(
            download=flaky_download,
            list_files=lambda repo, rev: ["config.json", "model.safetensors", "pytorch_model.bin", "README.md"],
        ),
    )
    ckpt = source.fetch(5000)
    assert ckpt.attempts == 3 and waits == [0.5, 1.0]
    assert calls[0]["revision"] == "step5000"
    assert "model.safetensors" in calls[0]["allow_patterns"] and "pytorch_model.bin" not in calls[0]["allow_patterns"]
    assert "README.md" not in calls[0]["allow_patterns"]


def test_persistent_transient_errors_give_up(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def down(repo_id, **kwargs):
        raise RuntimeError("HTTP 503 Service Unavailable")  # the Hub answers, badly: not a dead network

    source = HubSource(
        resolve_model("pythia-70m"),
        cache_dir=tmp_path,
        retry=no_sleep_policy(3),
        calls=HubCalls(download=down, list_files=lambda r, v: ["model.safetensors"]),
    )
    with pytest.raises(CheckpointError, match="503 Service Unavailable .after 3 attempt"):
        source.fetch(1000)


def test_weight_file_choice():
    assert weight_files(["config.json", "model.safetensors", "pytorch_model.bin"]) == ["model.safetensors"]
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    assert weight_files(shards + ["pytorch_model.bin"]) == sorted(shards)
    bins = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json"]
    assert weight_files(bins + ["tokenizer.json"]) == sorted(bins)
    assert weight_files(["pytorch_model.bin", "sub/model.safetensors"]) == ["pytorch_model.bin"]
    with pytest.raises(CheckpointError, match="no weights in this revision"):
        weight_files(["config.json", "flax_model.msgpack"])


def test_release_deletes_only_what_this_run_downloaded(tmp_path, monkeypatch):
    """A 'download' that plants the revision in the cache, as the real client would."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    plant_hub_revision(tmp_path, REPO, 0)  # the user's, cached before the run

    def download(repo_id, revision, cache_dir, **kwargs):
        step = int(revision.removeprefix("step"))
        return str(plant_hub_revision(tmp_path, repo_id, step))

    lister = lambda r, v: ["config.json", "model.safetensors"]
    source = HubSource(
        resolve_model("pythia-70m"),
        cache_dir=tmp_path,
        retry=no_sleep_policy(),
        calls=HubCalls(download=download, list_files=lister),
    )
    old, new = source.fetch(0), source.fetch(1000)
    assert not old.downloaded and new.downloaded
    source.release(old)
    source.release(new)
    assert old.path.is_dir()
    assert not new.path.exists()
    refs = tmp_path / "models--EleutherAI--pythia-70m" / "refs"
    assert sorted(p.name for p in refs.iterdir()) == ["step0"]

    keeping = HubSource(
        resolve_model("pythia-70m"),
        cache_dir=tmp_path,
        retry=no_sleep_policy(),
        keep=True,
        calls=HubCalls(download=download, list_files=lister),
    )
    kept = keeping.fetch(2000)
    keeping.release(kept)
    assert kept.downloaded and kept.path.is_dir()


def test_local_suite_lists_and_never_deletes(tmp_path):
    make_local_suite(tmp_path / "suite", [0, 4, 16])
    (tmp_path / "suite" / "notes").mkdir()
    source = LocalSuiteSource(resolve_model(str(tmp_path / "suite")))
    assert source.available_steps() == [0, 4, 16]
    ckpt = source.fetch(4)
    source.release(ckpt)
    assert ckpt.path.is_dir() and ckpt.commit.startswith("local-")
    with pytest.raises(CheckpointError, match="no step5/ directory"):
        source.fetch(5)


def test_single_model_directory_is_step_zero(tmp_path):
    tiny_pythia().save_pretrained(tmp_path / "m")
    source = SingleModelSource(resolve_model(str(tmp_path / "m")))
    assert source.available_steps() == [0]
    assert source.fetch(0).load_model().config.num_hidden_layers == 2


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    snapshot = plant_hub_revision(tmp_path, REPO, 1000)
    (snapshot / "model.safetensors").write_bytes(b"not a safetensors file")
    ckpt = HubSource(resolve_model("pythia-70m"), cache_dir=tmp_path).fetch(1000)
    with pytest.raises(CheckpointError, match="step 1000: cannot load the model"):
        ckpt.load_model()


def test_other_hub_repos_offer_their_cached_step_branches(tmp_path):
    for step in (10, 30):
        plant_hub_revision(tmp_path, "someone/my-run", step)
    source = HubSource(resolve_model("someone/my-run"), cache_dir=tmp_path)
    assert source.available_steps() == [10, 30]
    assert HubSource(resolve_model("someone/other"), cache_dir=tmp_path).available_steps() is None
