"""A random-weight Pythia-shaped GPT-NeoX planted in an offline Hugging Face cache (for gpu_check.py).

The layout is the Hub client's own: ``models--EleutherAI--pythia-1.4b/refs/step143000``
holds a 40-hex commit hash, ``snapshots/<commit>/<file>`` is a relative symlink to
``blobs/<hash>`` (sha256 for the weights, as for LFS files; the git blob sha1 for small
files), and a blob shared by two revisions (tokenizer, config) is stored once. The files are
what Pythia revisions ship: ``config.json`` with Pythia's own (transformers 4.24) keys,
``model.safetensors`` in float16, ``tokenizer.json``, ``tokenizer_config.json`` and
``special_tokens_map.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Shape:
    """A GPT-NeoX shape, served as the Hub repository of the Pythia model ``alias``."""

    alias: str  # what `dynamics --model` is given
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int = 50304
    max_positions: int = 2048

    @property
    def repo(self) -> str:
        return f"EleutherAI/{self.alias}"

    def parameters(self) -> int:
        per_layer = 4 * self.hidden + 3 * self.hidden * self.hidden + 3 * self.hidden  # 2 norms, qkv
        per_layer += self.hidden * self.hidden + self.hidden  # attention output
        per_layer += 2 * self.hidden * self.intermediate + self.intermediate + self.hidden  # MLP
        return self.layers * per_layer + 2 * self.vocab * self.hidden + 2 * self.hidden  # embeddings, final norm


SHAPES = {
    "pythia-1.4b": Shape("pythia-1.4b", layers=24, hidden=2048, heads=16, intermediate=8192),
    "pythia-6.9b": Shape("pythia-6.9b", layers=32, hidden=4096, heads=32, intermediate=16384, vocab=50432),
    # CPU smoke test: the real tokenizer's vocabulary, two thin layers (served as pythia-14m).
    "tiny": Shape("pythia-14m", layers=2, hidden=64, heads=4, intermediate=256),
}
#: The shapes of the CPU benchmarks (scripts/bench_step.py, scripts/bench_eval.py), by Pythia size.
BENCH_SHAPES = {
    "pythia-14m": Shape("pythia-14m", layers=6, hidden=128, heads=4, intermediate=512),
    "pythia-70m": Shape("pythia-70m", layers=6, hidden=512, heads=8, intermediate=2048),
    "pythia-160m": Shape("pythia-160m", layers=12, hidden=768, heads=12, intermediate=3072),
    "pythia-1.4b": Shape("pythia-1.4b", layers=24, hidden=2048, heads=16, intermediate=8192),
}


def pythia_config(shape: Shape) -> dict:
    """config.json as EleutherAI's Pythia revisions ship it (keys of transformers 4.24)."""
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "bos_token_id": 0,
        "eos_token_id": 0,
        "hidden_act": "gelu",
        "hidden_size": shape.hidden,
        "initializer_range": 0.02,
        "intermediate_size": shape.intermediate,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": shape.max_positions,
        "model_type": "gpt_neox",
        "num_attention_heads": shape.heads,
        "num_hidden_layers": shape.layers,
        "rotary_emb_base": 10000,
        "rotary_pct": 0.25,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.24.0",
        "use_cache": True,
        "use_parallel_residual": True,
        "vocab_size": shape.vocab,
    }


TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": "<|endoftext|>",
    "eos_token": "<|endoftext|>",
    "name_or_path": "EleutherAI/gpt-neox-20b",
    "special_tokens_map_file": "/admin/home-hailey/.cache/huggingface/hub/"
    "models--EleutherAI--gpt-neox-20b/snapshots/4e49eadb5d14bd22f314ec3f45b69a87b88c7691/special_tokens_map.json",
    "tokenizer_class": "GPTNeoXTokenizer",
    "unk_token": "<|endoftext|>",
}
SPECIAL_TOKENS_MAP = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}


def repo_dir(cache: Path, repo: str) -> Path:
    return cache / ("models--" + repo.replace("/", "--"))


def cached_steps(cache: Path, repo: str) -> list[int]:
    """Steps whose ref and snapshot (with weights) are in the cache."""
    root = repo_dir(cache, repo)
    steps = []
    for ref in sorted((root / "refs").glob("step*")):
        snapshot = root / "snapshots" / ref.read_text().strip()
        if (snapshot / "model.safetensors").exists() and ref.name[4:].isdigit():
            steps.append(int(ref.name[4:]))
    return steps


def commit_hash(repo: str, step: int, shape: Shape, seed: int) -> str:
    return hashlib.sha1(f"{repo}@step{step}:{shape}:{seed}".encode()).hexdigest()


def random_state_dict(shape: Shape, revision: int, device: str, seed: int) -> dict:
    """float16 weights on the CPU: a seeded base plus a small revision-specific change.

    Every revision shares the base (generated again from the same seeds, so one revision is
    in memory at a time); revision k adds k times a noise of 5% of the weights' scale, so
    two steps are close but not equal. Norm weights start at 1, everything else at N(0, 0.02).
    """
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    with torch.device("meta"):
        skeleton = GPTNeoXForCausalLM(GPTNeoXConfig.from_dict(pythia_config(shape)))
    tensors = {}
    with torch.no_grad():
        for index, (name, meta) in enumerate(sorted(skeleton.state_dict().items())):
            base_gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + index)
            value = torch.randn(meta.shape, generator=base_gen, device=device, dtype=torch.float32) * 0.02
            if meta.ndim == 1 and name.endswith("weight"):  # LayerNorm gains
                value += 1.0
            if revision:
                delta_gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + index + 7_919 * revision)
                value += revision * 0.001 * torch.randn(meta.shape, generator=delta_gen, device=device)
            tensors[name] = value.to(torch.float16).cpu().contiguous()
    return tensors


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def link_blob(root: Path, snapshot: Path, name: str, blob: str) -> None:
    link = snapshot / name
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(root / "blobs" / blob, link.parent), link)


def plant_small_file(root: Path, snapshot: Path, name: str, data: bytes) -> None:
    blob = git_blob_sha1(data)
    path = root / "blobs" / blob
    if not path.exists():
        path.write_bytes(data)
    link_blob(root, snapshot, name, blob)


def build_hub_cache(
    cache: Path, shape: Shape, tokenizer: Path, steps: tuple[int, ...], device: str, seed: int = 0
) -> float:
    """Plant ``steps`` of ``shape.repo`` in ``cache`` (replacing what was there); the seconds taken."""
    from safetensors.torch import save_file

    start = time.perf_counter()
    root = repo_dir(cache, shape.repo)
    shutil.rmtree(root, ignore_errors=True)
    (root / "blobs").mkdir(parents=True)
    (root / "refs").mkdir()
    config = (json.dumps(pythia_config(shape), indent=2, sort_keys=True) + "\n").encode()
    small = {
        "config.json": config,
        "tokenizer.json": tokenizer.read_bytes(),
        "tokenizer_config.json": (json.dumps(TOKENIZER_CONFIG, indent=2) + "\n").encode(),
        "special_tokens_map.json": (json.dumps(SPECIAL_TOKENS_MAP) + "\n").encode(),
    }
    for revision, step in enumerate(steps):
        commit = commit_hash(shape.repo, step, shape, seed)
        snapshot = root / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for name, data in small.items():
            plant_small_file(root, snapshot, name, data)
        weights = root / "blobs" / f"incoming-{commit}"
        save_file(random_state_dict(shape, revision, device, seed), str(weights), metadata={"format": "pt"})
        blob = file_sha256(weights)
        weights.rename(root / "blobs" / blob)
        link_blob(root, snapshot, "model.safetensors", blob)
        (root / "refs" / f"step{step}").write_text(commit)  # last: a ref only points at a complete snapshot
    return time.perf_counter() - start
