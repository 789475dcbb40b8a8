"""The ``toy`` model alias: the built-in suite, trained on first use into this tool's cache.

``dynamics scan --model toy ...`` (and ``ablate``, ``steps``) resolve ``toy`` to
:func:`checkpoints.names.toy_suite_dir`; :func:`ensure_toy_suite` builds the suite there with
the default :class:`~dynamics.toy.suite.ToyConfig` (bitwise deterministic for its seed) when
it is missing or incomplete, and reuses it afterwards. A build goes to a temporary
directory first and is renamed into place, so an interrupted or concurrent build never
leaves a half-written suite behind the alias.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

from checkpoints.names import TOY_ALIAS, ModelRef, toy_suite_dir
from dynamics.config.options import config_dict
from dynamics.errors import UserInputError
from dynamics.toy.config import SUITE_FILE, ToyConfig

log = logging.getLogger(__name__)

BUILTIN_TOY = ToyConfig()  # what the alias trains (the defaults of `dynamics toy`)


def is_toy_alias(ref: ModelRef) -> bool:
    """True when ``ref`` is the ``toy`` alias (not a directory of that name)."""
    return ref.name == TOY_ALIAS and Path(ref.location) == toy_suite_dir().resolve()


def _built_with(path: Path) -> dict | None:
    """The config a complete suite at ``path`` was built with (None: absent or unfinished)."""
    manifest = path / SUITE_FILE  # written last by build_toy_suite
    try:
        return dict(json.loads(manifest.read_text(encoding="utf-8"))["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _is_current(path: Path, config: ToyConfig) -> bool:
    """A complete suite at ``path`` built with ``config`` (where it was written and how it showed progress aside)."""
    built = _built_with(path)
    wanted = {k: v for k, v in config_dict(config).items() if k not in ("out", "overwrite", "progress")}
    return built is not None and {k: built.get(k) for k in wanted} == wanted


def build_toy_suite(out: Path, config: ToyConfig) -> Path:
    """Train a suite into ``out`` (:func:`dynamics.toy.suite.build_toy_suite`, imported only
    when a suite is trained: it brings torch and transformers)."""
    from dynamics.toy.suite import build_toy_suite as train

    return train(out, config)


def ensure_toy_suite(ref: ModelRef, config: ToyConfig | None = None) -> Path:
    """Build the alias's suite unless a complete one built with ``config`` is already there."""
    config = config or BUILTIN_TOY
    target = Path(ref.location)
    if _is_current(target, config):
        return target
    log.warning("building the built-in toy suite into %s (once; about a minute and a half on 2 CPU cores)", target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(
            f"--model {TOY_ALIAS}: cannot create the cache directory {target.parent} ({exc}); "
            "set DYNAMICS_CACHE_DIR to a writable directory"
        ) from None
    partial = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        build_toy_suite(partial, replace(config, out=str(partial), overwrite=False))
        if target.exists():  # an unfinished or outdated suite (another process may have just finished one)
            if _is_current(target, config):
                return target
            shutil.rmtree(target)
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
