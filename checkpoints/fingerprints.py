"""Weight fingerprints: the sha256 of every weight file of a checkpoint, without extra downloads.

- In a Hugging Face cache a snapshot's files are links to ``blobs/<id>``, and for files
  stored with Git LFS (every weight file on the Hub) the id *is* the file's sha256: the
  fingerprint is read from the link, nothing is hashed.
- Before a download, the Hub's file metadata carries the same sha256 (``lfs.sha256``).
- Elsewhere (a local suite, a saved model) the file is hashed, once per process and file
  version (path, size and mtime); a record keeps each such file's size and mtime
  (:func:`weight_stats`), so a later run that finds them unchanged takes the recorded sha256
  instead of reading the file again (``known`` of :func:`weight_fingerprints`).

Two checkpoints whose weight fingerprints are equal hold the same weights: the scan measures
one of them and copies its numbers to the other (see ``dynamics.scan.duplicates``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

WEIGHT_FILE = re.compile(r"(model(-\d+-of-\d+)?\.safetensors|pytorch_model(-\d+-of-\d+)?\.bin|[^/]*\.gguf)")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_weight_file(name: str) -> bool:
    return WEIGHT_FILE.fullmatch(name) is not None


def file_sha256(path: Path) -> str:
    """The sha256 of a file: its blob name in a Hugging Face cache, else hashed (cached per file version)."""
    if path.is_symlink():
        blob = Path(os.path.realpath(path)).name
        if _SHA256.fullmatch(blob):
            return blob
    stat = path.stat()
    return _hash_file(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=4096)
def _hash_file(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # part of the cache key: a rewritten file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_fingerprints(
    directory: Path, gguf_file: str | None = None, known: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """``{file name: sha256}`` of the weight files in a checkpoint directory (one .gguf if named).

    ``known``: an earlier record (``weights_sha256`` and ``weights_stat``); a file whose size
    and mtime are still the recorded ones keeps its recorded sha256 without being read.
    """
    hashes = dict((known or {}).get("weights_sha256") or {})
    stats = (known or {}).get("weights_stat") or {}
    prints = {}
    for name in _weight_names(directory, gguf_file):
        path = directory / name
        unchanged = name in hashes and not path.is_symlink() and stats.get(name) == _size_and_mtime(path)
        prints[name] = str(hashes[name]) if unchanged else file_sha256(path)
    return prints


def weight_stats(directory: Path, gguf_file: str | None = None) -> dict[str, list[int]]:
    """``{file name: [size, mtime in ns]}`` of the weight files that are not links into a Hugging Face cache
    (those are named by their sha256 already): what tells a later run that a file was not rewritten."""
    return {
        name: _size_and_mtime(directory / name)
        for name in _weight_names(directory, gguf_file)
        if not (directory / name).is_symlink()
    }


def _weight_names(directory: Path, gguf_file: str | None) -> list[str]:
    if not directory.is_dir():
        return []
    names = [gguf_file] if gguf_file else sorted(p.name for p in directory.iterdir() if is_weight_file(p.name))
    return [name for name in names if (directory / name).is_file()]


def _size_and_mtime(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def tokenizer_fingerprint(directory: Path) -> str | None:
    """One sha256 over the tokenizer files present (name and content hash of each), or None without any."""
    if not directory.is_dir():
        return None
    present = [name for name in TOKENIZER_FILES if (directory / name).is_file()]
    if not present:
        return None
    digest = hashlib.sha256()
    for name in present:
        digest.update(f"{name}:{file_sha256(directory / name)};".encode())
    return digest.hexdigest()


def weights_identity(fingerprints: Mapping[str, str] | None) -> str | None:
    """One id for a checkpoint's weights (None when unknown): equal ids, equal weight files."""
    if not fingerprints:
        return None
    return hashlib.sha256(";".join(f"{k}:{v}" for k, v in sorted(fingerprints.items())).encode()).hexdigest()


def hub_lfs_sha256(repo_id: str, revision: str, files: list[str]) -> dict[str, str]:
    """The LFS sha256 of ``files`` at ``revision`` from the Hub's file metadata (one request, no download)."""
    from huggingface_hub import HfApi

    infos = HfApi().get_paths_info(repo_id, files, revision=revision)
    return {info.path: info.lfs.sha256 for info in infos if getattr(info, "lfs", None) is not None}
