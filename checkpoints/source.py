"""Checkpoint sources: Hub revisions, local suites, single models; fetch, load, evict.

A source turns a training step into a :class:`Checkpoint` on local disk (``fetch``) and
forgets it again (``release``). :class:`checkpoints.stream.Prefetcher` drives a source
with steps fetched ahead (the scan's worker holds one), bounded on disk by what each
fetch is expected to take (``expected_bytes``); nothing here knows what is computed from the weights.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from checkpoints.fingerprints import (
    TOKENIZER_FILES,
    hub_lfs_sha256,
    is_weight_file,
    tokenizer_fingerprint,
    weight_fingerprints,
)
from checkpoints.hub_cache import cache_entries, entries_of_snapshot, evict_added
from checkpoints.hub_errors import (
    RetryPolicy,
    explain_hub_error,
    is_permanent,
    offline,
    one_line,
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

__all__ = [
    "Checkpoint",
    "CheckpointSource",
    "HubSource",
    "LocalSuiteSource",
    "RetryPolicy",
    "RevisionSource",
    "SingleModelSource",
    "is_permanent",
    "one_line",
    "open_source",
    "weight_files",
]

log = logging.getLogger(__name__)

CONFIG_AND_TOKENIZER = ["config.json", "generation_config.json", *TOKENIZER_FILES]


@dataclass
class Checkpoint:
    """One training step's weights on local disk (or why they could not be had)."""

    step: int
    revision: str | None
    path: Path | None
    commit: str | None = None
    gguf_file: str | None = None
    error: str | None = None
    seconds: float = 0.0  # wall time of the fetch, retries included
    downloaded: bool = False  # fetched by this run (and so ours to evict)
    attempts: int = 1
    transfer: str | None = None  # the download backend (hf_xet, http), None when nothing was downloaded

    @property
    def ok(self) -> bool:
        return self.error is None

    def record(self) -> dict[str, Any]:
        """Provenance of this checkpoint for the cube's per-step record: revision, commit, path, and the
        fingerprints (sha256 of every weight file, one sha256 of the tokenizer files); call it before release."""
        path = self.path
        return {
            "revision": self.revision,
            "commit": self.commit,
            "path": str(path) if path else None,
            "weights_sha256": weight_fingerprints(path, self.gguf_file) if path else {},
            "tokenizer_sha256": tokenizer_fingerprint(path) if path else None,
            "transfer": self.transfer,
        }

    def load_model(self, device: str = "cpu", dtype: Any = None) -> Any:
        """The model, in eval mode, on ``device``; a corrupt checkpoint raises CheckpointError."""
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one bar per scan, not one per checkpoint
        kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        try:
            model = AutoModelForCausalLM.from_pretrained(self.path, **kwargs)
        except Exception as exc:  # transformers raises many types for a bad file
            raise CheckpointError(f"step {self.step}: cannot load the model from {self.path}: {one_line(exc)}") from exc
        model = model.to(device).eval()
        bad = first_non_finite_parameter(model)
        if bad is not None:
            raise CheckpointError(
                f"step {self.step}: the weights in {self.path} contain NaN or Inf (first in {bad}); "
                "the checkpoint is unusable"
            )
        return model

    def load_tokenizer(self) -> Any:
        """The tokenizer; one that cannot load, or that reduces text to almost nothing, raises CheckpointError."""
        from transformers import AutoTokenizer

        kwargs = {"gguf_file": self.gguf_file} if self.gguf_file else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.path, **kwargs)
        except Exception as exc:
            raise CheckpointError(
                f"step {self.step}: cannot load the tokenizer from {self.path}: {one_line(exc)}"
            ) from exc
        problem = tokenizer_problem(tokenizer)
        if problem:
            raise CheckpointError(f"step {self.step}: the tokenizer in {self.path} is unusable: {problem}")
        return tokenizer


#: A sentence in the TSE vocabulary (which every model this tool evaluates must read) that
#: any usable tokenizer splits into several distinct known tokens.
TOKENIZER_PROBE = "the authors that the guard likes laugh and the pilots swim near the old manager"


def tokenizer_problem(tokenizer: Any) -> str | None:
    """Why ``tokenizer`` cannot be used for evaluation, or ``None``.

    A missing ``tokenizer.json`` can still load (as a vocabulary of a few special tokens)
    and maps any text to unknown tokens: TSE and perplexity would then be meaningless.
    """
    try:
        ids = list(tokenizer(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"])
    except Exception as exc:  # a tokenizer that cannot even encode
        return f"it cannot encode text ({one_line(exc)})"
    unknown = getattr(tokenizer, "unk_token_id", None)
    known = [i for i in ids if i != unknown]
    words = len(TOKENIZER_PROBE.split())
    if len(set(known)) < words // 2:
        return (
            f"it maps a {words}-word sentence to {len(ids)} tokens, {len(set(known))} distinct known ones "
            f"(vocabulary of {len(tokenizer)}); is tokenizer.json missing?"
        )
    return None


def first_non_finite_parameter(model: Any) -> str | None:
    """The name of the first parameter holding NaN or Inf, or ``None``."""
    import torch

    for name, parameter in model.named_parameters():
        if parameter.is_floating_point() and not bool(torch.isfinite(parameter).all()):
            return name
    return None


class CheckpointSource(Protocol):
    """Where a model's checkpoints come from."""

    model_id: str

    def available_steps(self) -> list[int] | None:
        """The steps this source offers, or None when it cannot tell without the network."""

    def check_available(self) -> None:
        """Raise a UserInputError now when no step could be fetched at all (the model cannot be had)."""

    def weight_fingerprint(self, step: int) -> dict[str, str] | None:
        """``{weight file: sha256}`` of ``step`` without downloading it, or None when it cannot be had."""

    def expected_bytes(self, step: int) -> int | None:
        """Bytes a fetch of ``step`` adds to local disk (0: nothing to download), or None when unknown."""

    def fetch(self, step: int) -> Checkpoint:
        """Make ``step`` available on local disk; raises on failure."""

    def release(self, checkpoint: Checkpoint) -> None:
        """Free what ``fetch`` took (disk space), if it is ours to free."""


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
        download: Callable[..., str] | None = None,
        list_files: Callable[[str, str], list[str]] | None = None,
        revision_template: str = DEFAULT_TEMPLATE,
        revisions: Mapping[int, str] | None = None,
        list_refs: Callable[[str], list[str]] | None = None,
    ) -> None:
        from huggingface_hub import constants, snapshot_download

        self.ref = ref
        self.model_id = ref.location
        self.cache_dir = Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)
        self.retry = retry or RetryPolicy()
        self.keep = keep
        self._download = download or snapshot_download
        self._list_files = list_files or _list_repo_files
        self._added: set[str] = set()  # cache entries (relative to the repo folder) this run created
        self._cache_lock = threading.Lock()  # a prefetch thread fetches while the driver releases
        self._unreachable = False  # a fetch used up its retries on transient errors: later ones try once
        self._list_refs = list_refs or hub_ref_names
        self._list_sizes: Callable[[str, str], dict[str, int]] = hub_file_sizes
        self.template = RevisionTemplate(revision_template)
        self._index: RevisionIndex | None = (
            RevisionIndex(self.template, dict(revisions), where="the run's listing") if revisions is not None else None
        )

    def revisions(self) -> RevisionIndex:
        """The repository's refs matched against the template, listed once per source.

        Online, the Hub's branches and tags (a repository the Hub does not have is refused at
        once; a Hub that cannot be asked now leaves the steps unverified, ``verified=False``:
        Pythia's published schedule, else none); offline, the cache's ``refs/`` folder, which
        holds exactly the revisions that can be loaded without the network (with nothing of a
        Pythia repo cached, its published schedule, unverified).
        """
        if self._index is None:
            names: list[str] | None
            if offline():
                names = cached_ref_names(self._repo_dir) if (self._repo_dir / "refs").is_dir() else None
                where = f"the offline cache {self._repo_dir / 'refs'}"
            else:
                names, where = self._hub_refs(), "the Hub"
            verified = names is not None
            if names is None:
                where = "Pythia's published schedule (unverified)" if self.ref.is_pythia else "nowhere (unverified)"
                schedule = self.ref.is_pythia and not self.template.needs_listing
                names = [self.template.format(s) for s in PYTHIA_STEPS] if schedule else []
            self._index = index_revisions(names, self.template, where, verified=verified)
        return self._index

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
                + (" (offline: only cached revisions can be used)" if offline() else "")
            )
        return index.steps or None

    def check_available(self) -> None:
        """Refuse at once, before any cube exists, a repository that cannot be had at all.

        Offline that is a repository with nothing in the cache (every step would fail the
        same way); online :meth:`revisions` already refuses one the Hub does not have.
        """
        if offline() and not self._repo_dir.is_dir():
            raise UserInputError(
                f"{self.model_id} is not in the Hugging Face cache at {self.cache_dir}, and HF_HUB_OFFLINE=1 "
                "forbids downloading it: pass --cache-dir with the cache that holds it, use an alias such as "
                "pythia-70m or a local directory, or unset HF_HUB_OFFLINE"
            )

    def _hub_refs(self) -> list[str] | None:
        """The repository's branch and tag names; None when the Hub cannot be asked now (validation goes on)."""
        try:
            return self._list_refs(self.model_id)
        except Exception as exc:
            told = explain_hub_error(exc, self.model_id, None, self.cache_dir) if is_permanent(exc) else None
            if told:  # the repository does not exist (for us): say so now, not once per step
                raise UserInputError(told) from exc
            log.warning("could not list the refs of %s: %s", self.model_id, one_line(exc))
            return None

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
        if offline():
            return None
        try:
            files = self._list_files(self.model_id, revision)
            return hub_lfs_sha256(self.model_id, revision, weight_files(files)) or None
        except Exception as exc:  # a fingerprint is an optimisation: the step is then measured as it is
            log.warning("no weight fingerprint for %s@%s: %s", self.model_id, revision, one_line(exc))
            return None

    def _cached_snapshot(self, revision: str) -> Path | None:
        ref = self._repo_dir / "refs" / revision
        if not ref.is_file():
            return None
        snapshot = self._repo_dir / "snapshots" / ref.read_text().strip()
        return snapshot if snapshot.is_dir() else None

    def expected_bytes(self, step: int) -> int | None:
        """0 offline or when the revision's weights are cached, else the Hub's sizes of the files a fetch takes."""
        try:
            revision = self.revision(step)
            snapshot = self._cached_snapshot(revision)
            if offline() or (snapshot is not None and any(is_weight_file(f.name) for f in snapshot.iterdir())):
                return 0
            sizes = self._list_sizes(self.model_id, revision)
            return sum(sizes.get(name, 0) for name in CONFIG_AND_TOKENIZER + weight_files(list(sizes)))
        except Exception as exc:  # an estimate: the prefetcher then goes by the last step's size on disk
            log.debug("no download size for %s step %d: %s", self.model_id, step, one_line(exc))
            return None

    def fetch(self, step: int) -> Checkpoint:
        revision = self.revision(step)
        start = time.perf_counter()
        with self._cache_lock:
            before = cache_entries(self._repo_dir)
        # Once one fetch has used up its retries on a Hub that cannot be reached, the next ones try
        # once each (one line each, no backoff) until one arrives: a dead network costs one wait.
        retry = replace(self.retry, attempts=1) if self._unreachable else self.retry
        try:
            path, attempts = retry.call(
                lambda: self._fetch_once(revision),
                f"{self.model_id}@{revision}",
                lambda exc: explain_hub_error(exc, self.model_id, revision, self.cache_dir),
            )
        except CheckpointError as exc:
            if not self._unreachable and retry.attempts > 1 and not is_permanent(exc.__cause__ or exc):
                self._unreachable = True
                log.warning(
                    "the Hugging Face Hub did not answer for %s after %d attempts; the next checkpoints "
                    "are tried once each until one arrives",
                    self.model_id,
                    retry.attempts,
                )
            raise
        self._unreachable = False
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
        if offline():
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


class LocalSuiteSource:
    """A directory with one saved model per step: ``step0/``, ``step1000/``, ..."""

    def __init__(self, ref: ModelRef) -> None:
        self.ref = ref
        self.model_id = ref.location
        self.root = Path(ref.location)

    def available_steps(self) -> list[int]:
        return sorted(
            int(m.group(1))
            for child in self.root.iterdir()
            if child.is_dir() and (m := re.fullmatch(r"step(\d+)", child.name))
        )

    def fetch(self, step: int) -> Checkpoint:
        path = self.root / f"step{step}"
        if not path.is_dir():
            raise CheckpointError(f"{self.root} has no step{step}/ directory")
        return Checkpoint(step=step, revision=f"step{step}", path=path, commit=_suite_fingerprint(path))

    def weight_fingerprint(self, step: int) -> dict[str, str] | None:
        return weight_fingerprints(self.root / f"step{step}") or None

    def expected_bytes(self, step: int) -> int:
        """Nothing is downloaded: the suite is on disk already."""
        return 0

    def check_available(self) -> None:
        """A local suite that resolved is there."""

    def release(self, checkpoint: Checkpoint) -> None:
        """Local suites belong to the user: nothing is ever deleted."""


class SingleModelSource:
    """One saved model (a directory or a ``.gguf`` file), offered as step 0."""

    def __init__(self, ref: ModelRef) -> None:
        self.ref = ref
        self.model_id = ref.location
        location = Path(ref.location)
        self.gguf_file: str | None
        if ref.kind == "gguf":
            self.path, self.gguf_file = location.parent, location.name
        else:
            ggufs = sorted(location.glob("*.gguf"))
            has_config = (location / "config.json").is_file()
            self.path, self.gguf_file = location, (ggufs[0].name if ggufs and not has_config else None)

    def available_steps(self) -> list[int]:
        return [0]

    def fetch(self, step: int) -> Checkpoint:
        if step != 0:
            raise CheckpointError(f"{self.model_id} is a single model: its only step is 0")
        return Checkpoint(step=0, revision=None, path=self.path, gguf_file=self.gguf_file)

    def weight_fingerprint(self, step: int) -> dict[str, str] | None:
        return weight_fingerprints(self.path, self.gguf_file) or None

    def expected_bytes(self, step: int) -> int:
        """Nothing is downloaded: the model is on disk already."""
        return 0

    def check_available(self) -> None:
        """A local model that resolved is there."""

    def release(self, checkpoint: Checkpoint) -> None:
        """A single local model belongs to the user: nothing is deleted."""


def open_source(ref: ModelRef, **hub_options: Any) -> CheckpointSource:
    """The source for a resolved model name; ``hub_options`` go to :class:`HubSource`."""
    if ref.kind == "hub":
        return HubSource(ref, **hub_options)
    if ref.kind == "local_suite":
        return LocalSuiteSource(ref)
    return SingleModelSource(ref)


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
    from huggingface_hub import HfApi

    return HfApi().list_repo_files(repo_id, revision=revision)


def _suite_fingerprint(path: Path) -> str:
    """A cheap identity of a local checkpoint: names, sizes and mtimes of its weight files."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return "local-" + h.hexdigest()[:16]
