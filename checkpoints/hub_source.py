"""Checkpoints from a Hub repository's revisions, through the Hugging Face cache.

:class:`HubSource` offers the revisions named like a template (``step{N}``), fetched with
retries and evicted again by exactly what the run added; :class:`RevisionSource` is one
named revision offered as step 0; :func:`weight_files` picks what a fetch downloads.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkpoints import hub_status
from checkpoints.checkpoint import Checkpoint
from checkpoints.fingerprints import TOKENIZER_FILES, hub_lfs_sha256, is_weight_file, weight_fingerprints
from checkpoints.hub_cache import cache_entries, entries_of_snapshot, evict_added
from checkpoints.hub_errors import (
    HubUnreachableError,
    RetryPolicy,
    cache_only,
    explain_hub_error,
    is_permanent,
    offline,
    one_line,
    unreachable_message,
)
from checkpoints.names import ModelRef
from checkpoints.revisions import (
    DEFAULT_TEMPLATE,
    RevisionIndex,
    RevisionTemplate,
    cached_ref_names,
    hub_ref_names,
    index_revisions,
)
from checkpoints.steps import PYTHIA_STEPS
from checkpoints.transfer import hub_file_sizes, transfer_backend
from dynamics.errors import CheckpointError, UserInputError

__all__ = ["CONFIG_AND_TOKENIZER", "HubCalls", "HubSource", "RevisionSource", "weight_files"]

log = logging.getLogger(__name__)

CONFIG_AND_TOKENIZER = ["config.json", "generation_config.json", *TOKENIZER_FILES]


@dataclass(frozen=True)
class HubCalls:
    """The Hub requests a :class:`HubSource` makes, each replaceable (tests pass stand-ins); ``None``:
    the real client's.

    Attributes:
        download: ``snapshot_download(repo_id, revision=..., allow_patterns=..., ...)`` (huggingface_hub's).
        list_files: ``(repo_id, revision) -> file names`` of a revision (one ``model_info`` request).
        list_refs: ``repo_id -> names`` (or ``{name: commit}``) of the repository's branches and tags.
    """

    download: Callable[..., str] | None = None
    list_files: Callable[[str, str], list[str]] | None = None
    list_refs: Callable[[str], Sequence[str] | Mapping[str, str]] | None = None


class HubSource:
    """The revisions of a Hub repository (``step{N}``, or ``revision_template``), through the Hugging Face cache.

    The repository's refs are listed once (online ``list_repo_refs``, branches and tags;
    offline the cache's ``refs/`` folder) and matched against the template: they are the
    steps on offer (:meth:`revisions`). Only config, tokenizer and weights are downloaded (safetensors preferred, else
    ``pytorch_model*.bin``; sharded or not). ``release`` deletes from the cache what this
    run added to it; what was cached before the run (by commit and blob, whatever ref
    named it) is left alone.
    """

    def __init__(
        self,
        ref: ModelRef,
        cache_dir: str | Path | None = None,
        retry: RetryPolicy | None = None,
        keep: bool = False,
        revision_template: str = DEFAULT_TEMPLATE,
        revisions: Mapping[int, str] | None = None,
        calls: HubCalls = HubCalls(),
    ) -> None:
        from huggingface_hub import constants, snapshot_download

        self.ref = ref
        self.model_id = ref.location
        self.cache_dir = Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)
        self.retry = retry or RetryPolicy()
        self.keep = keep
        self._download = calls.download or snapshot_download
        self._list_files = calls.list_files or _list_repo_files
        self._added: set[str] = set()  # cache entries (relative to the repo folder) this run created
        self._cache_lock = threading.Lock()  # a prefetch thread fetches while the driver releases
        self._list_refs = calls.list_refs or hub_ref_names
        self._commits: dict[str, str] = {}  # revision -> commit, as the Hub's listing names them
        self._list_sizes: Callable[[str, str], dict[str, int]] = hub_file_sizes
        self.template = RevisionTemplate(revision_template)
        self._index: RevisionIndex | None = (
            RevisionIndex(self.template, dict(revisions), where="the run's listing") if revisions is not None else None
        )

    def revisions(self) -> RevisionIndex:
        """The repository's refs matched against the template, listed once per source.

        Online, the Hub's branches and tags (a repository the Hub does not have is refused at
        once; a Hub that answers badly now leaves the steps unverified, ``verified=False``:
        Pythia's published schedule, else none); offline, or when the Hub cannot be reached
        (the run's retries of connection failures spent), the cache's ``refs/`` folder, which
        holds exactly the revisions that can be loaded without the network (with nothing of a
        Pythia repo cached, its published schedule, unverified: :meth:`check_available` then
        stops the command in one line).
        """
        if self._index is None:
            names = None if cache_only() else self._hub_refs()
            where = "the Hub"
            if names is None and cache_only():
                names, where = self._cached_refs()
            verified = names is not None
            if names is None:
                why = ": the Hub cannot be reached" if hub_status.unreachable_reason() else ""
                where = (
                    f"Pythia's published schedule (unverified{why})"
                    if self.ref.is_pythia
                    else f"nowhere (unverified{why})"
                )
                schedule = self.ref.is_pythia and not self.template.needs_listing
                names = [self.template.format(s) for s in PYTHIA_STEPS] if schedule else []
            self._index = index_revisions(names, self.template, where, verified=verified)
        return self._index

    def _cached_refs(self) -> tuple[list[str] | None, str]:
        """The revisions the cache holds and where that is, for a run without the Hub; None when it holds
        none (a Pythia repo then goes by its schedule, and :meth:`check_available` says what is missing)."""
        refs = self._repo_dir / "refs"
        names = cached_ref_names(self._repo_dir) if refs.is_dir() else None
        if offline():
            return names, f"the offline cache {refs}"
        if not names:
            return None, ""
        log.warning(
            "cannot reach the Hugging Face Hub (%s): %s is read from the cache (%d revisions)",
            hub_status.unreachable_reason(),
            self.model_id,
            len(names),
        )
        return names, f"the cache {refs} (the Hub cannot be reached)"

    def available_steps(self) -> list[int] | None:
        """The steps whose revision exists (see :meth:`revisions`); None when no ref fits the template."""
        return self.revisions().steps or None

    def verified_steps(self) -> list[int] | None:
        """:meth:`available_steps`, where a listing that found no revision of the template is one clear error."""
        index = self.revisions()
        if not index.steps and index.verified:
            raise UserInputError(
                f"{self.model_id} has no revision named like {self.template.text!r} in {index.where}; "
                "choose --revision-template to match its branches"
                + (" (without the Hub only cached revisions can be used)" if cache_only() else "")
            )
        return index.steps or None

    def check_available(self) -> None:
        """Refuse at once, before any cube exists, a repository that cannot be had at all.

        Offline, or with the Hub unreachable, that is a repository with nothing in the cache
        (every step would fail the same way); online :meth:`revisions` already refuses one the
        Hub does not have.
        """
        if not offline() and cache_only() and not cached_ref_names(self._repo_dir):
            raise HubUnreachableError(unreachable_message(self.model_id, self.cache_dir))
        if offline() and not self._repo_dir.is_dir():
            raise UserInputError(
                f"{self.model_id} is not in the Hugging Face cache at {self.cache_dir}, and HF_HUB_OFFLINE=1 "
                "forbids downloading it: pass --cache-dir with the cache that holds it, use an alias such as "
                "pythia-70m or a local directory, or unset HF_HUB_OFFLINE"
            )

    def _hub_refs(self) -> list[str] | None:
        """The repository's branch and tag names (their commits kept for :meth:`listed_commit`); None
        when the Hub cannot be asked now (validation goes on; a dead network is noted for the run)."""
        try:
            refs, _ = self.retry.call(lambda: self._list_refs(self.model_id), f"listing the refs of {self.model_id}")
        except CheckpointError as failed:
            exc = failed.__cause__ or failed
            told = explain_hub_error(exc, self.model_id, None, self.cache_dir) if is_permanent(exc) else None
            if told:  # the repository does not exist (for us): say so now, not once per step
                raise UserInputError(told) from exc
            if hub_status.unreachable_reason() is None:  # else revisions() says it, once
                log.warning("could not list the refs of %s: %s", self.model_id, one_line(exc))
            return None
        if isinstance(refs, Mapping):
            self._commits = {str(name): str(commit) for name, commit in refs.items() if commit}
        return list(refs)

    def revision(self, step: int) -> str:
        known = self._index.revisions.get(step) if self._index is not None else None
        if known is not None:
            return known
        if self.template.needs_listing:
            listed = self.revisions().revisions.get(step)
            if listed is None:
                raise CheckpointError(
                    f"{self.model_id} has no revision for step {step} named like {self.template.text!r}"
                )
            return listed
        return self.template.format(step)

    def weight_fingerprint(self, step: int) -> dict[str, str] | None:
        """From the cached snapshot (blob names are the LFS sha256), else online from the Hub's file metadata."""
        revision = self.revision(step)
        snapshot = self._cached_snapshot(revision)
        if snapshot is not None:
            return weight_fingerprints(snapshot) or None
        if cache_only():
            log.debug("no weight fingerprint for %s@%s without the Hub", self.model_id, revision)
            return None
        try:
            files = self._list_files(self.model_id, revision)
            return hub_lfs_sha256(self.model_id, revision, weight_files(files)) or None
        except Exception as exc:  # a fingerprint is an optimisation: the step is then measured as it is
            if hub_status.is_connection_failure(exc):
                hub_status.note_failure(one_line(exc))
            if hub_status.unreachable_reason() is None:  # else the run says so once, not once per step
                log.warning("no weight fingerprint for %s@%s: %s", self.model_id, revision, one_line(exc))
            return None

    def weights_record(self, step: int, known: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """``step``'s commit and weight fingerprints now: when the revision still names ``known``'s commit,
        its recorded fingerprints (a commit names its files' content), else the cached snapshot's blob
        names or the Hub's file metadata; None when they cannot be had without a download."""
        commit = self.listed_commit(step)
        if known and commit is not None and known.get("commit") == commit and known.get("weights_sha256"):
            return {"commit": commit, "weights_sha256": dict(known["weights_sha256"])}
        prints = self.weight_fingerprint(step)
        return {"commit": commit, "weights_sha256": prints} if prints else None

    def listed_commit(self, step: int) -> str | None:
        """The commit ``step``'s revision names now, without a request: the Hub's listing when this run
        made one, else the cache's ``refs/`` (what a fetch without the network would load)."""
        revision = self.revision(step)
        listed = self._commits.get(revision)
        if listed is not None or not cache_only():
            return listed
        ref = self._repo_dir / "refs" / revision
        return ref.read_text().strip() if ref.is_file() else None

    def _cached_snapshot(self, revision: str) -> Path | None:
        """The cached snapshot of the commit the revision names now (the Hub's listing first: a cached ref
        may be older than the Hub's), or None."""
        commit = self._commits.get(revision)
        ref = self._repo_dir / "refs" / revision
        if commit is None and ref.is_file():
            commit = ref.read_text().strip()
        snapshot = self._repo_dir / "snapshots" / commit if commit else None
        return snapshot if snapshot is not None and snapshot.is_dir() else None

    def expected_bytes(self, step: int) -> int | None:
        """0 offline or when the revision's weights are cached, else the Hub's sizes of the files a fetch takes."""
        try:
            revision = self.revision(step)
            snapshot = self._cached_snapshot(revision)
            if cache_only() or (snapshot is not None and any(is_weight_file(f.name) for f in snapshot.iterdir())):
                return 0
            sizes = self._list_sizes(self.model_id, revision)
            return sum(sizes.get(name, 0) for name in CONFIG_AND_TOKENIZER + weight_files(list(sizes)))
        except Exception as exc:  # an estimate: the prefetcher then goes by the last step's size on disk
            if hub_status.is_connection_failure(exc):
                hub_status.note_failure(one_line(exc))
            log.debug("no download size for %s step %d: %s", self.model_id, step, one_line(exc))
            return None

    def fetch(self, step: int) -> Checkpoint:
        revision = self.revision(step)
        start = time.perf_counter()
        with self._cache_lock:
            before = cache_entries(self._repo_dir)
        try:
            path, attempts = self.retry.call(
                lambda: self._fetch_once(revision),
                f"{self.model_id}@{revision}",
                lambda exc: explain_hub_error(exc, self.model_id, revision, self.cache_dir),
            )
        except CheckpointError as exc:
            if hub_status.unreachable_reason() is not None and not offline() and not self._repo_dir.is_dir():
                raise HubUnreachableError(unreachable_message(self.model_id, self.cache_dir)) from exc
            raise
        path = Path(path)
        with self._cache_lock:
            added = entries_of_snapshot(self._repo_dir, path.name, cache_entries(self._repo_dir) - before)
            self._added |= added
        snapshot = f"snapshots/{path.name}"
        # Ours to evict only if this run put files there: a commit the user already had under
        # another ref (Pythia's main is step143000) is theirs, whatever the ref's name.
        downloaded = any(entry == snapshot or entry.startswith(snapshot + "/") for entry in added)
        return Checkpoint(
            step=step,
            revision=revision,
            path=path,
            commit=path.name,  # snapshots/<commit hash>/
            seconds=time.perf_counter() - start,
            downloaded=downloaded,
            attempts=attempts,
            transfer=str(transfer_backend()) if downloaded else None,
        )

    def _fetch_once(self, revision: str) -> str:
        common = {"revision": revision, "cache_dir": str(self.cache_dir)}
        if cache_only():  # offline, or the Hub could not be reached earlier in this run: no retry, no wait
            return self._download(self.model_id, local_files_only=True, **common)
        files = self._list_files(self.model_id, revision)
        return self._download(self.model_id, allow_patterns=CONFIG_AND_TOKENIZER + weight_files(files), **common)

    def release(self, checkpoint: Checkpoint) -> None:
        """Delete what this run added to the cache for ``checkpoint``, and nothing anyone else uses.

        The snapshot goes only if this run created it and no ref from before the run points
        to it; a blob goes only if this run created it and no remaining snapshot links to it.
        """
        if self.keep or not checkpoint.downloaded or not checkpoint.commit:
            return
        try:
            with self._cache_lock:
                self._added -= evict_added(self._repo_dir, checkpoint.commit, self._added)
        except OSError as exc:  # eviction is hygiene: never lose a stored step over it
            log.warning("could not delete %s@%s from the cache: %s", self.model_id, checkpoint.revision, exc)

    @property
    def _repo_dir(self) -> Path:
        return self.cache_dir / ("models--" + self.model_id.replace("/", "--"))


class RevisionSource(HubSource):
    """A Hub repository at one named revision (a branch, tag or commit), offered as step 0."""

    def __init__(self, ref: Any, revision: str, **options: Any) -> None:
        super().__init__(ref, **options)
        self._revision = revision

    def revision(self, step: int) -> str:
        return self._revision

    def available_steps(self) -> list[int]:
        return [0]


def weight_files(files: Sequence[str]) -> list[str]:
    """The weight files to download from a revision's file list: one format, all shards.

    safetensors is preferred over PyTorch pickles; an index file comes with its shards.
    """
    top = [f for f in files if "/" not in f]
    for pattern in (
        r"model(-\d+-of-\d+)?\.safetensors(\.index\.json)?",
        r"pytorch_model(-\d+-of-\d+)?\.bin(\.index\.json)?",
    ):
        chosen = sorted(f for f in top if re.fullmatch(pattern, f))
        if chosen:
            return chosen
    raise CheckpointError(
        "no weights in this revision: expected model.safetensors or pytorch_model.bin (sharded or not), "
        f"found {', '.join(sorted(top)) or 'no files'}"
    )


def _list_repo_files(repo_id: str, revision: str) -> list[str]:
    """A revision's file names, in one request (``model_info``: the client does not retry it by itself,
    unlike ``list_repo_files``, so a dead network costs this run's retry budget, not minutes per call)."""
    from huggingface_hub import HfApi

    return [sibling.rfilename for sibling in HfApi().model_info(repo_id, revision=revision).siblings or []]
