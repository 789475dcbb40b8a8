"""Builders for offline checkpoint sources: a tiny Pythia-shaped model saved as a local
suite, or planted in a Hugging Face cache exactly as the Hub client leaves it
(``refs/step{N}`` holding a commit hash, files under ``snapshots/<hash>/``)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig


def tiny_pythia(seed: int = 0):
    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        vocab_size=64, max_position_embeddings=64,
    )
    return AutoModelForCausalLM.from_config(config)


def fake_commit(repo: str, step: int) -> str:
    return hashlib.sha1(f"{repo}@{step}".encode()).hexdigest()


def plant_hub_revision(
    cache: Path, repo: str, step: int, seed: int | None = None, weights: str = "safetensors", copy_from: Path | None = None
) -> Path:
    """Save a tiny model as revision ``step{step}`` of ``repo`` in the cache ``cache``.

    With ``copy_from`` (a saved model directory, e.g. a toy suite's step), its files are
    planted instead, tokenizer included.
    """
    commit = fake_commit(repo, step)
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    model = tiny_pythia(step if seed is None else seed)
    if copy_from is not None:
        shutil.copytree(copy_from, snapshot)
    elif weights == "safetensors":
        model.save_pretrained(snapshot)
    else:  # transformers 5 always saves safetensors; older Pythia revisions ship pickles
        snapshot.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(snapshot)
        torch.save(model.state_dict(), snapshot / "pytorch_model.bin")
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / f"step{step}").write_text(commit)
    return snapshot


def make_local_suite(root: Path, steps: list[int]) -> Path:
    for step in steps:
        tiny_pythia(step).save_pretrained(root / f"step{step}")
    return root


def plant_hub_commit(cache: Path, repo: str, commit: str, files: dict[str, bytes], refs: list[str]) -> Path:
    """Plant ``files`` as commit ``commit`` of ``repo`` the way the Hub client lays a cache out:
    content in ``blobs/<sha256>``, ``snapshots/<commit>/<name>`` a relative link to its blob,
    and each of ``refs`` (``main``, ``step143000``) a file holding the commit hash."""
    import os

    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return snapshot


def model_files(saved: Path) -> dict[str, bytes]:
    """The files of a saved model directory, by name (for :func:`plant_hub_commit`)."""
    return {p.name: p.read_bytes() for p in sorted(saved.iterdir()) if p.is_file()}
