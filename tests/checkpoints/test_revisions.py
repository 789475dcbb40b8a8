"""Revisions verified before any work: templates, the refs listed once, refusals naming the nearest steps."""

import hashlib

import pytest
from fixtures.hub import plant_hub_revision

from checkpoints.fingerprints import file_sha256, tokenizer_fingerprint, weight_fingerprints
from checkpoints.hub_source import HubCalls, HubSource
from checkpoints.names import resolve_model
from checkpoints.revisions import RevisionTemplate, index_revisions, tokens_of_steps
from dynamics.cli.main import main
from dynamics.errors import UserInputError

pytestmark = pytest.mark.models

OLMO = "stage1-step{step}-tokens{tokens}B"


def test_templates_parse_steps_and_tokens():
    assert RevisionTemplate().parse("step1000") == (1000, None)
    assert RevisionTemplate().parse("step1000-old") is None and RevisionTemplate().parse("main") is None
    olmo = RevisionTemplate(OLMO)
    assert olmo.parse("stage1-step1000-tokens4B") == (1000, 4_000_000_000)
    assert olmo.parse("stage2-step1000-tokens4B") is None
    assert RevisionTemplate("ckpt-{step}-{tokens}M").parse("ckpt-5-10M") == (5, 10_000_000)
    assert RevisionTemplate("step{step}").format(7) == "step7"
    for bad in ("checkpoint", "step{step}-{step}", "step{step}-{seed}"):
        with pytest.raises(UserInputError, match=r"--revision-template .*expected exactly one \{step\}"):
            RevisionTemplate(bad)


def test_index_keeps_only_matching_refs_and_their_tokens():
    index = index_revisions(
        ["main", "stage1-step0-tokens0B", "stage1-step1000-tokens4B", "step5"], RevisionTemplate(OLMO)
    )
    assert index.steps == [0, 1000]
    assert index.revisions[1000] == "stage1-step1000-tokens4B"
    assert index.tokens == {0: 0, 1000: 4_000_000_000}
    # tokens: named where the names carry them, else step x per step, else unknown
    assert tokens_of_steps([0, 1000, 2000], None, index.tokens) == {0: 0, 1000: 4_000_000_000, 2000: -1}
    assert tokens_of_steps([0, 3], 2_097_152) == {0: 0, 3: 6_291_456}


def test_offline_refs_are_the_cache_folder_and_other_templates_fetch(tmp_path):
    for step, tokens in ((0, 0), (1000, 4)):
        plant_hub_revision(tmp_path, "allenai/OLMo-tiny", step, revision=f"stage1-step{step}-tokens{tokens}B")
    source = HubSource(resolve_model("allenai/OLMo-tiny"), cache_dir=tmp_path, revision_template=OLMO)
    assert source.available_steps() == [0, 1000]
    assert source.revision(1000) == "stage1-step1000-tokens4B"
    checkpoint = source.fetch(1000)
    assert checkpoint.revision == "stage1-step1000-tokens4B" and checkpoint.load_model().config.model_type == "gpt_neox"
    plain = HubSource(resolve_model("allenai/OLMo-tiny"), cache_dir=tmp_path)
    assert plain.available_steps() is None
    with pytest.raises(UserInputError, match=r"no revision named like 'step\{step\}' in the offline cache"):
        plain.verified_steps()


def test_online_refs_are_listed_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    calls = []

    def list_refs(repo):
        calls.append(repo)
        return ["main", "step0", "step4", "step16"]

    source = HubSource(resolve_model("pythia-70m"), cache_dir=tmp_path, calls=HubCalls(list_refs=list_refs))
    assert source.available_steps() == [0, 4, 16]
    assert [source.revision(s) for s in (0, 4, 16)] == ["step0", "step4", "step16"]
    source.verified_steps()
    assert calls == ["EleutherAI/pythia-70m"]


def test_fingerprints_are_the_blob_names_and_equal_the_file_hashes(tmp_path):
    snapshot = plant_hub_revision(tmp_path, "EleutherAI/pythia-70m", 1)
    prints = weight_fingerprints(snapshot)
    weights = (snapshot / "model.safetensors").read_bytes()
    assert prints == {"model.safetensors": hashlib.sha256(weights).hexdigest()}
    assert (snapshot / "model.safetensors").resolve().name == prints["model.safetensors"]  # read from the link
    local = tmp_path / "copy.bin"
    local.write_bytes(b"abc")
    assert file_sha256(local) == hashlib.sha256(b"abc").hexdigest()  # no cache: the file is hashed
    assert tokenizer_fingerprint(snapshot) is None  # the tiny model has no tokenizer files
    record = HubSource(resolve_model("pythia-70m"), cache_dir=tmp_path).fetch(1).record()
    assert record["weights_sha256"] == prints and record["revision"] == "step1"


def test_steps_command_shows_what_exists(tmp_path, capsys):
    for step in (0, 4, 16):
        plant_hub_revision(tmp_path, "EleutherAI/pythia-70m", step)
    assert main(["steps", "all", "--model", "pythia-70m", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "3 steps: 0 4 16"
    assert out[1].startswith("EleutherAI/pythia-70m offers 3 steps (the offline cache ") and out[1].endswith(": 0 4 16")
    assert main(["steps", "8", "--model", "pythia-70m", "--cache-dir", str(tmp_path)]) == 2
    assert "step 8 has no checkpoint for EleutherAI/pythia-70m; nearest available: 4, 16" in capsys.readouterr().err


def test_online_fingerprints_come_from_the_hub_metadata_without_download(tmp_path, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    asked = []

    def paths_info(self, repo_id, paths, revision=None):
        asked.append((repo_id, list(paths), revision))
        return [SimpleNamespace(path=p, lfs=SimpleNamespace(sha256=f"{revision}-{p}")) for p in paths]

    monkeypatch.setattr("huggingface_hub.HfApi.get_paths_info", paths_info)
    downloads = []
    source = HubSource(
        resolve_model("pythia-70m"),
        cache_dir=tmp_path,
        calls=HubCalls(
            list_refs=lambda repo: ["step0", "step1"],
            list_files=lambda repo, rev: ["config.json", "model.safetensors", "README.md"],
            download=lambda *a, **k: downloads.append(k),
        ),
    )
    assert source.weight_fingerprint(1) == {"model.safetensors": "step1-model.safetensors"}
    assert asked == [("EleutherAI/pythia-70m", ["model.safetensors"], "step1")] and downloads == []
