"""Permanent Hub errors are one line at once, in the tool's words; only transient ones are
retried, one log line per retry; no line is printed twice (issue 12, item 7)."""

import logging
import os
import subprocess
import sys

import pytest
from huggingface_hub import errors

from checkpoints.hub_errors import RetryPolicy
from checkpoints.hub_source import HubCalls, HubSource
from checkpoints.names import resolve_model
from dynamics.cli.main import main
from dynamics.errors import CheckpointError

TYPO = "someone/pythia-70n"


@pytest.fixture
def online(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)


def hub_response(status: int):
    try:
        import httpx2 as http
    except ImportError:  # older huggingface_hub releases use httpx or requests
        import httpx as http
    return http.Response(status, request=http.Request("GET", f"https://huggingface.co/api/models/{TYPO}"))


PERMANENT = [
    (
        lambda: errors.RepositoryNotFoundError("Repository Not Found for url", response=hub_response(404)),
        f"no model '{TYPO}' on the Hugging Face Hub",
    ),
    (lambda: errors.GatedRepoError("Access to model is restricted", response=hub_response(403)), "is a gated model"),
    (
        lambda: errors.RevisionNotFoundError("Revision Not Found", response=hub_response(404)),
        "has no revision 'step1000'",
    ),
    (lambda: errors.EntryNotFoundError("404 Client Error: Entry Not Found"), "a file this revision lists is missing"),
    (lambda: errors.HfHubHTTPError("401 Unauthorized", response=hub_response(401)), "refused access (HTTP 401)"),
]


@pytest.mark.parametrize("make_error, words", PERMANENT)
def test_permanent_errors_are_one_line_at_once(tmp_path, online, make_error, words, caplog):
    calls, waits = [], []

    def download(repo_id, **kwargs):
        calls.append(kwargs["revision"])
        raise make_error()

    source = HubSource(
        resolve_model(TYPO),
        cache_dir=tmp_path,
        retry=RetryPolicy(attempts=4, sleep=waits.append),
        calls=HubCalls(download=download, list_files=lambda r, v: ["model.safetensors"]),
    )
    with caplog.at_level(logging.WARNING), pytest.raises(CheckpointError) as caught:
        source.fetch(1000)
    message = str(caught.value)
    assert words in message and TYPO in message and "\n" not in message
    assert "local_files_only" not in message
    assert calls == ["step1000"] and waits == [] and not caplog.records  # no retry, no retry line
    assert caught.value.exit_code == 2  # the user's input to fix, when it stops a command


def test_a_repository_that_does_not_exist_says_what_to_do(tmp_path, online):
    def download(repo_id, **kwargs):
        raise errors.RepositoryNotFoundError("Repository Not Found", response=hub_response(401))

    source = HubSource(
        resolve_model(TYPO),
        cache_dir=tmp_path,
        calls=HubCalls(download=download, list_files=lambda r, v: ["model.safetensors"]),
    )
    with pytest.raises(CheckpointError, match=r"use an alias such as pythia-70m .*--cache-dir"):
        source.fetch(0)


def test_transient_errors_are_retried_one_log_line_each(tmp_path, online, caplog):
    waits = []

    def down(repo_id, **kwargs):
        raise ConnectionError("Connection reset by peer\n(while reading the response)")

    source = HubSource(
        resolve_model(TYPO),
        cache_dir=tmp_path,
        retry=RetryPolicy(attempts=3, backoff=0.5, sleep=waits.append),
        calls=HubCalls(download=down, list_files=lambda r, v: ["model.safetensors"]),
    )
    with caplog.at_level(logging.WARNING), pytest.raises(CheckpointError, match="after 3 attempt"):
        source.fetch(10)
    lines = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert waits == [0.5, 1.0] and len(lines) == 2 and len(caplog.records) == 2
    assert all("\n" not in line and f"{TYPO}@step10 failed (Connection reset" in line for line in lines)
    assert "attempt 2 of 3" in lines[0] and "attempt 3 of 3" in lines[1]


def test_offline_and_not_cached_names_the_id_and_the_cache_not_the_librarys_advice(tmp_path):
    source = HubSource(
        resolve_model("pythia-70m"), cache_dir=tmp_path, retry=RetryPolicy(attempts=4, sleep=pytest.fail)
    )
    with pytest.raises(CheckpointError) as caught:
        source.fetch(3000)
    message = str(caught.value)
    assert message.startswith(f"EleutherAI/pythia-70m@step3000: not in the Hugging Face cache at {tmp_path}")
    assert "--cache-dir" in message and "local_files_only" not in message and "\n" not in message


@pytest.mark.parametrize("model", [TYPO, "pythia-70m"])
def test_a_scan_of_a_model_missing_from_an_offline_cache_is_refused_before_the_cube(tmp_path, model):
    empty = tmp_path / "hf"
    empty.mkdir()
    out = tmp_path / "c.zarr"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dynamics.cli",
            "scan",
            "-m",
            model,
            "--steps",
            "1000",
            "--cache-dir",
            str(empty),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    location = resolve_model(model).location
    assert f"{location} is not in the Hugging Face cache at {empty}" in proc.stderr and "--cache-dir" in proc.stderr
    assert "local_files_only" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob("*.lock"))


def test_a_mistyped_hub_id_online_is_refused_at_once(tmp_path, online, monkeypatch, capsys):
    asked = []

    def no_such_repo(self, repo_id, **kwargs):
        asked.append(repo_id)
        raise errors.RepositoryNotFoundError("Repository Not Found", response=hub_response(404))

    def never(*args, **kwargs):
        raise AssertionError("nothing may be downloaded")

    monkeypatch.setattr("huggingface_hub.HfApi.list_repo_refs", no_such_repo)
    monkeypatch.setattr("huggingface_hub.snapshot_download", never)
    out = tmp_path / "c.zarr"
    assert main(["scan", "-m", TYPO, "--steps", "0:3000:1000", "-o", str(out), "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no model '{TYPO}' on the Hugging Face Hub" in err
    assert asked == [TYPO] and not out.exists()


def test_huggingface_hub_log_lines_are_printed_once(tmp_path):
    code = (
        "from dynamics.cli.main import main; main(['steps', 'log']); "
        "from huggingface_hub.utils import logging; "  # as the scan imports it, adding the hub's own handler
        "logging.get_logger('huggingface_hub.file_download').warning('the hub says hi')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("the hub says hi") == 1
    assert "dynamics: the hub says hi" in proc.stderr


def test_a_dead_network_costs_one_round_of_retries_not_one_per_step(tmp_path, online, caplog):
    """The run's retry budget is spent once; later fetches read the cache only, without waiting."""
    waits, calls = [], []

    def down(repo_id, revision, local_files_only=False, **kwargs):
        calls.append((revision, "cache" if local_files_only else "hub"))
        if local_files_only:
            if revision == "step4000":
                return str(tmp_path / "snap")
            raise errors.LocalEntryNotFoundError("not in the cache")
        raise ConnectionError("[Errno -2] Name or service not known")

    source = HubSource(
        resolve_model(TYPO),
        cache_dir=tmp_path,
        retry=RetryPolicy(attempts=4, backoff=1.0, sleep=waits.append),
        calls=HubCalls(download=down, list_files=lambda r, v: ["model.safetensors"]),
    )
    with caplog.at_level(logging.WARNING):
        with pytest.raises(CheckpointError, match="cannot reach the Hugging Face Hub .*Name or service not known"):
            source.fetch(1000)
        for step in (2000, 3000):
            with pytest.raises(CheckpointError, match="nothing of someone/pythia-70n is in the Hugging Face cache"):
                source.fetch(step)
        assert source.fetch(4000).attempts == 1  # what the cache holds still loads
    assert calls == [("step1000", "hub")] * 3 + [("step2000", "cache"), ("step3000", "cache"), ("step4000", "cache")]
    assert waits == [1.0, 2.0]  # hub_status.CONNECTION_RETRIES, once for the whole run
    assert not caplog.records  # the retries of a dead network are details (-v); the error says it once
