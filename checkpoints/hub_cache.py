"""What a run added to a Hugging Face cache, and taking exactly that back out.

The cache keeps a repository as ``refs/<name>`` (a commit hash), ``snapshots/<commit>/``
(links to ``blobs/<hash>``) and ``blobs/``. Whether a checkpoint is "ours to evict" is
decided by what this run created there (commit folders, files, blobs), never by a ref's
name: Pythia's ``main`` and ``step143000`` are one commit, and a user holding ``main``
must keep it after a scan of step 143000.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def cache_entries(repo: Path) -> set[str]:
    """Every file, link and folder under a cached repo's snapshots/, blobs/ and refs/ (relative paths)."""
    entries: set[str] = set()
    for part in ("snapshots", "blobs", "refs"):
        root = repo / part
        if not root.is_dir():
            continue
        for folder, dirs, files in os.walk(root):  # os.walk does not follow links to folders
            entries.update(os.path.relpath(os.path.join(folder, name), repo) for name in [*dirs, *files])
    return entries


def entries_of_snapshot(repo: Path, commit: str, entries: set[str]) -> set[str]:
    """The ``entries`` that belong to snapshot ``commit``: its folder and files, the refs naming it, the blobs it links to.

    Downloads ahead run concurrently: what appeared in the cache while one ran may be another's
    (a blob still being written, ``blobs/<id>.incomplete``), and must not be evicted with this one.
    """
    snapshot = f"snapshots/{commit}"
    linked = {f"blobs/{name}" for name in _linked_blobs(repo, snapshot)}
    refs = set(_refs_to(repo, commit))
    return {e for e in entries if e == snapshot or e.startswith(snapshot + "/") or e in linked or e in refs}


def _refs_to(repo: Path, commit: str) -> list[str]:
    """The refs (``refs/main``, ``refs/step1000``...) that name ``commit``."""
    refs = repo / "refs"
    found = []
    for folder, _, files in os.walk(refs) if refs.is_dir() else []:
        for name in files:
            path = Path(folder) / name
            if path.read_text(errors="replace").strip() == commit:
                found.append(str(path.relative_to(repo)))
    return found


def _linked_blobs(repo: Path, snapshots: str = "snapshots") -> set[str]:
    """Names of the blobs some snapshot file (under ``snapshots``, relative to ``repo``) links to."""
    linked = set()
    for folder, _, files in os.walk(repo / snapshots):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                linked.add(os.path.basename(os.readlink(path)))
    return linked


def evict_added(repo: Path, commit: str, added: set[str]) -> set[str]:
    """Delete what this run ``added`` (paths relative to ``repo``) for ``commit``; returns what went.

    The snapshot goes only if this run created it and no ref from before the run names
    it (else only the files this run added to it); a blob goes only if this run created it
    and no remaining snapshot links to it.
    """
    snapshot = f"snapshots/{commit}"
    users_refs = [ref for ref in _refs_to(repo, commit) if ref not in added]
    ours = {e for e in added if e == snapshot or e.startswith(snapshot + "/")}
    if snapshot in added and not users_refs:
        shutil.rmtree(repo / snapshot, ignore_errors=True)
        gone = ours | {ref for ref in _refs_to(repo, commit) if ref in added}
        for ref in gone - ours:
            (repo / ref).unlink(missing_ok=True)
    else:  # the user's snapshot: take back only the files this run added to it
        gone = ours - {snapshot}
        for entry in sorted(gone, reverse=True):  # deepest first
            target = repo / entry
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.is_dir() and not any(target.iterdir()):
                target.rmdir()
    linked = _linked_blobs(repo)
    for blob in sorted(e for e in added if e.startswith("blobs/") and e.removeprefix("blobs/") not in linked):
        (repo / blob).unlink(missing_ok=True)
        gone.add(blob)
    return gone
