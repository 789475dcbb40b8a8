"""Eviction takes back only what a run added to the Hugging Face cache, decided by commit and
blob, never by a ref's name (issue 12, item 2): Pythia's ``main`` and ``step143000`` are one
commit, and a user who holds ``main`` keeps it after a scan of step 143000."""

import hashlib

import pytest
from fixtures.hub import model_files, plant_hub_commit

from checkpoints.hub_errors import RetryPolicy
from checkpoints.hub_source import HubCalls, HubSource
from checkpoints.names import resolve_model

REPO = "EleutherAI/pythia-70m"
MAIN = "a" * 40
OTHER = "b" * 40


@pytest.fixture
def online(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)


def tree(root):
    """Every path under ``root`` with what it is: a link's target, a file's hash."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + str(path.readlink())
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        else:
            out[rel] = "dir"
    return out


def client_like_download(cache, commits: dict[str, str], files: dict[str, dict[str, bytes]]):
    """A snapshot_download stand-in that does what the real client does: resolve the revision
    to its commit, write ``refs/<revision>``, fetch the blobs the snapshot lacks, link them."""

    def download(repo_id, revision, cache_dir, **kwargs):
        commit = commits[revision]
        return str(plant_missing(cache, repo_id, commit, files[commit], revision))

    return download


def plant_missing(cache, repo, commit, files, ref):
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    missing = {name: data for name, data in files.items() if not (snapshot / name).exists()}
    plant_hub_commit(cache, repo, commit, missing, [ref])
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def source(cache, download):
    return HubSource(
        resolve_model("pythia-70m"),
        cache_dir=cache,
        retry=RetryPolicy(attempts=1),
        calls=HubCalls(download=download, list_files=lambda repo, rev: ["config.json", "model.safetensors"]),
    )


def test_a_users_main_survives_a_scan_of_the_same_commit_as_step143000(tmp_path, online):
    """The issue's case: the user holds main; a scan fetches step143000, which is the same commit."""
    cache = tmp_path / "hf"
    weights = {"config.json": b'{"model_type": "gpt_neox"}', "model.safetensors": b"W" * 1000}
    plant_hub_commit(cache, REPO, MAIN, weights, ["main"])
    repo = cache / "models--EleutherAI--pythia-70m"
    users = tree(repo)

    hub = source(cache, client_like_download(cache, {"step143000": MAIN}, {MAIN: weights}))
    checkpoint = hub.fetch(143000)
    assert checkpoint.commit == MAIN and not checkpoint.downloaded
    hub.release(checkpoint)

    after = tree(repo)
    assert {k: v for k, v in after.items() if k != "refs/step143000"} == users  # main: snapshot, blobs, ref
    assert (repo / "snapshots" / MAIN / "model.safetensors").read_bytes() == b"W" * 1000


def test_a_new_commit_goes_but_blobs_another_snapshot_links_to_stay(tmp_path, online):
    cache = tmp_path / "hf"
    shared_config = b'{"model_type": "gpt_neox"}'
    plant_hub_commit(cache, REPO, MAIN, {"config.json": shared_config, "model.safetensors": b"M" * 100}, ["main"])
    repo = cache / "models--EleutherAI--pythia-70m"
    users = tree(repo)
    new_files = {"config.json": shared_config, "model.safetensors": b"N" * 100}  # the config is the same blob

    hub = source(cache, client_like_download(cache, {"step1000": OTHER}, {OTHER: new_files}))
    checkpoint = hub.fetch(1000)
    assert checkpoint.downloaded and (repo / "snapshots" / OTHER / "model.safetensors").read_bytes() == b"N" * 100
    hub.release(checkpoint)
    assert tree(repo) == users  # the new snapshot, its ref and its own blob are gone; main's are all there


def test_files_added_to_a_users_snapshot_are_taken_back_but_the_snapshot_stays(tmp_path, online):
    """The user had main's config only; the scan fetched its weights too (same commit)."""
    cache = tmp_path / "hf"
    plant_hub_commit(cache, REPO, MAIN, {"config.json": b"{}"}, ["main"])
    repo = cache / "models--EleutherAI--pythia-70m"
    users = tree(repo)
    hub = source(
        cache,
        client_like_download(
            cache, {"step143000": MAIN}, {MAIN: {"config.json": b"{}", "model.safetensors": b"W" * 10}}
        ),
    )
    checkpoint = hub.fetch(143000)
    assert checkpoint.downloaded
    hub.release(checkpoint)
    assert {k: v for k, v in tree(repo).items() if k != "refs/step143000"} == users


def test_keep_checkpoints_evicts_nothing(tmp_path, online):
    cache = tmp_path / "hf"
    files = {"config.json": b"{}", "model.safetensors": b"N" * 10}
    hub = HubSource(
        resolve_model("pythia-70m"),
        cache_dir=cache,
        retry=RetryPolicy(attempts=1),
        keep=True,
        calls=HubCalls(
            download=client_like_download(cache, {"step1000": OTHER}, {OTHER: files}),
            list_files=lambda repo, rev: list(files),
        ),
    )
    checkpoint = hub.fetch(1000)
    hub.release(checkpoint)
    assert (
        cache / "models--EleutherAI--pythia-70m" / "snapshots" / OTHER / "model.safetensors"
    ).read_bytes() == b"N" * 10


def test_a_scan_of_step143000_keeps_the_users_main(tiny_suite, tmp_path, online, monkeypatch):
    """End to end: `dynamics scan` of step 143000 with eviction on, main being that commit."""
    from dynamics.scan.config import ScanConfig
    from dynamics.scan.driver import run_scan
    from store import open_cube

    cache = tmp_path / "hf"
    files = model_files(tiny_suite / "step8")
    plant_hub_commit(cache, REPO, MAIN, files, ["main"])
    repo = cache / "models--EleutherAI--pythia-70m"
    users = tree(repo)
    monkeypatch.setattr(
        "huggingface_hub.snapshot_download", client_like_download(cache, {"step143000": MAIN}, {MAIN: files})
    )
    monkeypatch.setattr("checkpoints.hub_source._list_repo_files", lambda repo_id, revision: sorted(files))
    monkeypatch.setattr(
        "huggingface_hub.HfApi.list_repo_refs", lambda self, repo_id, **kw: type("R", (), {"branches": []})()
    )
    out = tmp_path / "p.zarr"
    summary = run_scan(
        ScanConfig(
            model="pythia-70m",
            out=str(out),
            steps="143000",
            cache_dir=str(cache),
            retries=1,
            corpus=str(tiny_suite / "heldout.txt"),
            wd_tokens=512,
            ppl_tokens=64,
            tse_per_case=1,
        )
    )
    assert summary.done == [143000]
    assert open_cube(out).attrs["steps"]["143000"]["commit"] == MAIN
    assert {k: v for k, v in tree(repo).items() if k != "refs/step143000"} == users


def test_a_download_running_alongside_is_not_evicted_with_this_one(tmp_path, online):
    """Depth 2 fetches two steps at once: what the other download wrote meanwhile is not this step's."""
    from fixtures.hub import plant_hub_revision

    repo = tmp_path / "models--EleutherAI--pythia-70m"
    other = repo / "blobs" / ("c" * 64 + ".incomplete")

    def download(repo_id, revision, cache_dir, **kwargs):
        snapshot = plant_hub_revision(tmp_path, repo_id, int(revision.removeprefix("step")))
        other.write_bytes(b"half of another step's weights")  # the concurrent download, still writing
        return str(snapshot)

    source = HubSource(
        resolve_model("pythia-70m"),
        cache_dir=tmp_path,
        retry=RetryPolicy(attempts=1),
        calls=HubCalls(download=download, list_files=lambda repo_id, revision: ["config.json", "model.safetensors"]),
    )
    checkpoint = source.fetch(1000)
    source.release(checkpoint)
    assert not checkpoint.path.exists() and not (repo / "refs" / "step1000").exists()
    assert other.read_bytes() == b"half of another step's weights"
    assert sorted(p.name for p in (repo / "blobs").iterdir()) == [other.name]  # step 1000's blobs are gone
