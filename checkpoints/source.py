"""Checkpoint sources: Hub revisions, local suites, single models; fetch, load, evict.

A source turns a training step into a :class:`Checkpoint` on local disk (``fetch``) and
forgets it again (``release``). :class:`checkpoints.stream.Prefetcher` drives a source
with one step of prefetch (the scan's worker holds one); nothing here knows what is computed from the weights.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from checkpoints.fingerprints import tokenizer_fingerprint, weight_fingerprints
from checkpoints.names import ModelRef
from checkpoints.revisions import DEFAULT_TEMPLATE, RevisionIndex, RevisionTemplate, index_revisions
from checkpoints.steps import PYTHIA_STEPS
from dynamics.errors import CheckpointError, DynamicsError, UserInputError

log = logging.getLogger(__name__)

CONFIG_AND_TOKENIZER = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
]


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

    @property
    def ok(self) -> bool:
        return self.error is None

    def record(self) -> dict[str, Any]:
        """Provenance of this checkpoint for the cube's per-step record: revision, commit, path, and the
        fingerprints (sha256 of every weight file, one sha256 of the tokenizer files); call it before release."""
        path = self.path
        return {"revision": self.revision, "commit": self.commit, "path": str(path) if path else None,
                "weights_sha256": weight_fingerprints(path, self.gguf_file) if path else {},
                "tokenizer_sha256": tokenizer_fingerprint(path) if path else None}

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
            raise CheckpointError(f"step {self.step}: the weights in {self.path} contain NaN or Inf (first in {bad}); "
                                  "the checkpoint is unusable")
        return model

    def load_tokenizer(self) -> Any:
        """The tokenizer; one that cannot load, or that reduces text to almost nothing, raises CheckpointError."""
        from transformers import AutoTokenizer

        kwargs = {"gguf_file": self.gguf_file} if self.gguf_file else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.path, **kwargs)
        except Exception as exc:
            raise CheckpointError(f"step {self.step}: cannot load the tokenizer from {self.path}: {one_line(exc)}") from exc
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
        return (f"it maps a {words}-word sentence to {len(ids)} tokens, {len(set(known))} distinct known ones "
                f"(vocabulary of {len(tokenizer)}); is tokenizer.json missing?")
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

    def weight_fingerprint(self, step: int) -> dict[str, str] | None:
        """``{weight file: sha256}`` of ``step`` without downloading it, or None when it cannot be had."""

    def fetch(self, step: int) -> Checkpoint:
        """Make ``step`` available on local disk; raises on failure."""

    def release(self, checkpoint: Checkpoint) -> None:
        """Free what ``fetch`` took (disk space), if it is ours to free."""


@dataclass
class RetryPolicy:
    """Transient failures are retried ``attempts - 1`` times, waiting backoff * 2**k."""

    attempts: int = 4
    backoff: float = 2.0
    max_wait: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def call(self, fn: Callable[[], Any], what: str) -> tuple[Any, int]:
        for attempt in range(1, self.attempts + 1):
            try:
                return fn(), attempt
            except Exception as exc:
                if is_permanent(exc) or attempt == self.attempts:
                    raise CheckpointError(f"{what}: {one_line(exc)} (after {attempt} attempt(s))") from exc
                wait = min(self.backoff * 2 ** (attempt - 1), self.max_wait)
                log.warning("%s failed (%s); retrying in %.1fs", what, one_line(exc), wait)
                self.sleep(wait)
        raise AssertionError("unreachable")


def is_permanent(exc: BaseException) -> bool:
    """Errors that retrying cannot fix: missing repos, revisions or files, no network allowed."""
    from huggingface_hub import errors

    permanent = (
        errors.RepositoryNotFoundError,
        errors.RevisionNotFoundError,
        errors.EntryNotFoundError,  # includes LocalEntryNotFoundError (offline and not cached)
        errors.GatedRepoError,
        DynamicsError,
    )
    return isinstance(exc, permanent)


class HubSource:
    """The revisions of a Hub repository (``step{N}``, or ``revision_template``), through the Hugging Face cache.

    The repository's refs are listed once (online ``list_repo_refs``; offline the cache's
    ``refs/`` folder) and matched against the template: they are the steps on offer. Only config, tokenizer and weights are downloaded (safetensors preferred, else
    ``pytorch_model*.bin``; sharded or not). ``release`` deletes a revision from the cache
    if this run downloaded it; revisions that were cached before the run are left alone.
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
        self._list_refs = list_refs or _list_repo_refs
        self.template = RevisionTemplate(revision_template)
        self._index: RevisionIndex | None = (
            RevisionIndex(self.template, dict(revisions), where="the run's listing") if revisions is not None else None)

    @property
    def _repo_dir(self) -> Path:
        return self.cache_dir / ("models--" + self.model_id.replace("/", "--"))

    def revisions(self) -> RevisionIndex:
        """The repository's refs matched against the template, listed once per source.

        Online, the Hub's branches and tags (retried like a download); offline, the cache's
        ``refs/`` folder, which holds exactly the revisions that can be loaded without the network.
        """
        if self._index is None:
            if _offline() and self.ref.is_pythia and not (self._repo_dir / "refs").is_dir():
                # nothing of it cached to check against: Pythia's published schedule (the fetch will tell)
                where = "Pythia's published schedule (offline, nothing cached)"
                names = [self.template.format(s) for s in PYTHIA_STEPS] if not self.template.needs_listing else []
            elif _offline():
                where = f"the offline cache {self._repo_dir / 'refs'}"
                names = cached_ref_names(self._repo_dir)
            else:
                where = "the Hub"
                names, _ = self.retry.call(lambda: self._list_refs(self.model_id), f"listing the refs of {self.model_id}")
            self._index = index_revisions(names, self.template, where)
        return self._index

    def available_steps(self) -> list[int] | None:
        """The steps whose revision exists (see :meth:`revisions`); None when no ref fits the template."""
        return self.revisions().steps or None

    def verified_steps(self) -> list[int]:
        """:meth:`available_steps`, where none at all is one clear error (for commands that need steps)."""
        index = self.revisions()
        if not index.steps:
            raise UserInputError(f"{self.model_id} has no revision named like {self.template.text!r} in {index.where}; "
                                 "choose --revision-template to match its branches" +
                                 (" (offline: only cached revisions can be used)" if _offline() else ""))
        return index.steps

    def revision(self, step: int) -> str:
        known = self._index.revisions.get(step) if self._index is not None else None
        if known is not None:
            return known
        if self.template.needs_listing:
            listed = self.revisions().revisions.get(step)
            if listed is None:
                raise CheckpointError(f"{self.model_id} has no revision for step {step} named like {self.template.text!r}")
            return listed
        return self.template.format(step)

    def weight_fingerprint(self, step: int) -> dict[str, str] | None:
        """From the cached snapshot (blob names are the LFS sha256), else online from the Hub's file metadata."""
        revision = self.revision(step)
        snapshot = self._cached_snapshot(revision)
        if snapshot is not None:
            return weight_fingerprints(snapshot) or None
        if _offline():
            return None
        try:
            files = self._list_files(self.model_id, revision)
            return _lfs_sha256(self.model_id, revision, weight_files(files)) or None
        except Exception as exc:  # a fingerprint is an optimisation: the step is then measured as it is
            log.warning("no weight fingerprint for %s@%s: %s", self.model_id, revision, one_line(exc))
            return None

    def fetch(self, step: int) -> Checkpoint:
        revision = self.revision(step)
        cached_before = self._cached_snapshot(revision) is not None
        start = time.perf_counter()
        path, attempts = self.retry.call(lambda: self._fetch_once(revision), f"{self.model_id}@{revision}")
        path = Path(path)
        return Checkpoint(
            step=step,
            revision=revision,
            path=path,
            commit=path.name,  # snapshots/<commit hash>/
            seconds=time.perf_counter() - start,
            downloaded=not cached_before,
            attempts=attempts,
        )

    def _fetch_once(self, revision: str) -> str:
        common = {"revision": revision, "cache_dir": str(self.cache_dir)}
        if _offline():
            return self._download(self.model_id, local_files_only=True, **common)
        files = self._list_files(self.model_id, revision)
        return self._download(self.model_id, allow_patterns=CONFIG_AND_TOKENIZER + weight_files(files), **common)

    def _cached_snapshot(self, revision: str) -> Path | None:
        repo = self._repo_dir
        ref = repo / "refs" / revision
        if not ref.is_file():
            return None
        snapshot = repo / "snapshots" / ref.read_text().strip()
        return snapshot if snapshot.is_dir() else None

    def release(self, checkpoint: Checkpoint) -> None:
        if self.keep or not checkpoint.downloaded or not checkpoint.commit:
            return
        from huggingface_hub import scan_cache_dir

        try:
            scan_cache_dir(self.cache_dir).delete_revisions(checkpoint.commit).execute()
        except Exception as exc:  # eviction is hygiene: never lose a stored step over it
            log.warning("could not delete %s@%s from the cache: %s", self.model_id, checkpoint.revision, exc)


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
    for pattern in (r"model(-\d+-of-\d+)?\.safetensors(\.index\.json)?", r"pytorch_model(-\d+-of-\d+)?\.bin(\.index\.json)?"):
        chosen = sorted(f for f in top if re.fullmatch(pattern, f))
        if chosen:
            return chosen
    raise CheckpointError(
        "no weights in this revision: expected model.safetensors or pytorch_model.bin (sharded or not), "
        f"found {', '.join(sorted(top)) or 'no files'}"
    )


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def cached_ref_names(repo_dir: Path) -> list[str]:
    """The revision names a Hugging Face cache holds for a repository (``refs/<name>``, nested names too)."""
    refs = repo_dir / "refs"
    if not refs.is_dir():
        return []
    return sorted(str(p.relative_to(refs)) for p in refs.rglob("*") if p.is_file())


def _list_repo_refs(repo_id: str) -> list[str]:
    from huggingface_hub import HfApi

    refs = HfApi().list_repo_refs(repo_id)
    return [r.name for r in [*refs.branches, *refs.tags]]


def _lfs_sha256(repo_id: str, revision: str, files: list[str]) -> dict[str, str]:
    """The LFS sha256 of ``files`` at ``revision`` from the Hub's metadata (no download)."""
    from huggingface_hub import HfApi

    infos = HfApi().get_paths_info(repo_id, files, revision=revision)
    return {info.path: info.lfs.sha256 for info in infos if getattr(info, "lfs", None) is not None}


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


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
