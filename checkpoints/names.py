"""Model names: Pythia aliases, Hub ids, local directories and GGUF files.

The architecture adapters, which say where a family's MLP pre-activation lives, are in
:mod:`checkpoints.adapters`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dynamics.errors import UserInputError

PYTHIA_SIZES = ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
#: PolyPythias (arXiv 2503.09543): sizes retrained with seeds 1 to 9 (``pythia-160m-seed3``; 160m also
#: ``-data-seed<N>`` and ``-weight-seed<N>``), the same checkpoint schedule as Pythia.
POLYPYTHIA_SIZES = ("14m", "31m", "70m", "160m", "410m")
POLYPYTHIA_SEEDS = range(1, 10)
_PYTHIA_ALIAS = re.compile(
    r"^pythia-(?P<size>[0-9.]+[mb])(?P<suffix>(-deduped)?(-v0)?)(?P<seed>-(data-|weight-)?seed(?P<number>\d+))?$"
)
_SEED_SUFFIX = re.compile(r"-(?:data-|weight-)?seed(\d+)$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

ModelKind = Literal["hub", "local_suite", "local_model", "gguf"]

TOY_ALIAS = "toy"  # the built-in model organism, built on first use (dynamics.toy.builtin)
CACHE_ENV = "DYNAMICS_CACHE_DIR"


def cache_dir() -> Path:
    """This tool's own cache: ``$DYNAMICS_CACHE_DIR``, else ``$XDG_CACHE_HOME/wasserstein-dynamics``
    (``~/.cache/wasserstein-dynamics``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "wasserstein-dynamics"


def toy_suite_dir() -> Path:
    """Where the ``toy`` alias's suite lives (it may not be built yet)."""
    return cache_dir() / "toy-suite"


@dataclass(frozen=True)
class ModelRef:
    """A resolved model name: where its checkpoints come from."""

    name: str  # what the user typed
    kind: ModelKind
    location: str  # a Hub repo id, or an absolute path

    @property
    def is_pythia(self) -> bool:
        """True for EleutherAI's Pythia suites, whose revisions are ``step{N}``."""
        return self.kind == "hub" and self.location.lower().startswith("eleutherai/pythia-")


def training_seed(ref: ModelRef) -> int | None:
    """The training seed a model's name or suite says (``-seed3`` of a PolyPythia run, a toy suite's
    ``suite.json``), or None."""
    if ref.kind == "hub":
        match = _SEED_SUFFIX.search(ref.location)
        return int(match.group(1)) if match else None
    manifest = Path(ref.location) / "suite.json"
    if ref.kind == "local_suite" and manifest.is_file():
        import json

        seed = json.loads(manifest.read_text(encoding="utf-8")).get("seed")
        return int(seed) if isinstance(seed, int) else None
    return None


def is_local_suite(path: Path) -> bool:
    """A directory with at least one ``step<N>`` sub-directory."""
    return path.is_dir() and any(child.is_dir() and re.fullmatch(r"step\d+", child.name) for child in path.iterdir())


def resolve_model(name: str) -> ModelRef:
    """Turn a ``--model`` value into a :class:`ModelRef`, without touching the network.

    Pythia aliases (``pythia-70m``, ``pythia-1.4b-deduped``) become ``EleutherAI/<name>``;
    an existing directory is a local suite (``step<N>/`` sub-directories) or one saved
    model; an existing ``.gguf`` file is one model; ``toy`` is the built-in model organism's
    suite in this tool's cache (:func:`toy_suite_dir`, built on first use by the commands);
    ``owner/name`` is any Hub id.
    """
    if not name or not name.strip():
        raise UserInputError(
            "--model is empty: give a Pythia alias such as pythia-70m, a Hub id, a directory or a .gguf file"
        )
    path = Path(name).expanduser()
    if path.exists():
        return _local_model(name, path)
    if name == TOY_ALIAS:  # no such file or directory here: the built-in suite in the cache
        return ModelRef(name, "local_suite", str(toy_suite_dir().resolve()))
    if name.lower().endswith(".gguf"):
        raise UserInputError(f"GGUF file {name!r} does not exist")
    match = _PYTHIA_ALIAS.match(name)
    if match:
        return _pythia_model(name, match)
    if _HUB_ID.match(name):
        return ModelRef(name, "hub", name)
    raise UserInputError(
        f"unknown model {name!r}: give a Pythia alias (pythia-70m ... pythia-12b, optionally -deduped), "
        "a Hub id (owner/name), toy (the built-in model organism), an existing directory or a .gguf file"
    )


def _local_model(name: str, path: Path) -> ModelRef:
    """An existing ``--model`` path: a .gguf file, a checkpoint suite or one saved model directory."""
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UserInputError(f"model file {name!r} is not a .gguf file; give a .gguf file, a directory or a Hub id")
        return ModelRef(name, "gguf", str(path.resolve()))
    if is_local_suite(path):
        return ModelRef(name, "local_suite", str(path.resolve()))
    if (path / "config.json").is_file() or any(path.glob("*.gguf")):
        return ModelRef(name, "local_model", str(path.resolve()))
    raise UserInputError(
        f"directory {name!r} is neither a checkpoint suite (step<N>/ sub-directories) "
        "nor a saved model (config.json or a .gguf file)"
    )


def _pythia_model(name: str, match: re.Match[str]) -> ModelRef:
    """A Pythia alias (``pythia-1.4b-deduped``, ``pythia-160m-seed3``) as its EleutherAI Hub id, its size
    and PolyPythia seed checked."""
    if match["size"] not in PYTHIA_SIZES:
        raise UserInputError(f"unknown Pythia size {match['size']!r} in {name!r}; sizes are {', '.join(PYTHIA_SIZES)}")
    if match["seed"] and (
        match["size"] not in POLYPYTHIA_SIZES or match["suffix"] or int(match["number"]) not in POLYPYTHIA_SEEDS
    ):
        raise UserInputError(
            f"no PolyPythia run {name!r}: seeds 1 to 9 exist for pythia-{{{','.join(POLYPYTHIA_SIZES)}}}-seed<N> "
            "(e.g. pythia-160m-seed3)"
        )
    return ModelRef(name, "hub", f"EleutherAI/{name}")
