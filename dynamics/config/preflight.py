"""Checks of a request against the model and the corpus, before a cube is created.

The numbers a user gives can be in range and still make no sense for one model: a
``--window`` longer than its context, a percent that selects no neuron of its layers.
These are refused as one line naming the smallest (or largest) value that works:

- before anything is downloaded or written, from the checkpoint's ``config.json`` when it
  is on disk (a local suite or model, or a revision already in the Hugging Face cache):
  :func:`config_on_disk` and :func:`check_model_fit`;
- otherwise when the model is loaded, by the same checks (:func:`check_model_fit` on the
  loaded model's config): the scan's reference step, the study's model.

A corpus file is checked up front by :func:`dynamics.syntax.corpus.check_corpus_file`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from checkpoints.names import ModelRef
from dynamics.errors import UserInputError
from dynamics.stats.cohort import cohort_size

log = logging.getLogger(__name__)


def config_on_disk(
    ref: ModelRef, step: int | None = None, revision: str | None = None, cache_dir: str | None = None
) -> Any | None:
    """The transformers config of a checkpoint if it can be read without a download, else None.

    ``step``: a local suite's step; ``revision``: a Hub revision (looked up in the cache only).
    """
    from transformers import AutoConfig

    folder: Path | None = None
    if ref.kind == "local_suite" and step is not None:
        folder = Path(ref.location) / f"step{step}"
    elif ref.kind == "local_model":
        folder = Path(ref.location)
    elif ref.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(ref.location, "config.json", cache_dir=cache_dir, revision=revision or "main")
        folder = Path(found).parent if isinstance(found, str) else None
    if folder is None or not (folder / "config.json").is_file():
        return None
    try:
        return AutoConfig.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001 - a config transformers cannot read: loading the model says why
        log.debug("could not read %s/config.json up front: %s", folder, exc)
        return None


def context_length(config: Any) -> int | None:
    """The model's context in tokens (``max_position_embeddings``), if its config says."""
    context = getattr(config, "max_position_embeddings", None)
    return int(context) if isinstance(context, int) and context > 0 else None


def mlp_layout(config: Any) -> tuple[int, int] | None:
    """(layers, MLP neurons per layer) of a config, from its model built on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    from checkpoints.adapters import mlp_shape

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return mlp_shape(model)
    except Exception as exc:  # noqa: BLE001 - an unsupported family: the load refuses it in its own words
        log.debug("could not tell the MLP shape up front: %s", exc)
        return None


def smallest_percent(neurons: int) -> float:
    """The smallest percent (4 significant digits, rounded up) that selects one of ``neurons``."""
    exact = 50 / neurons  # round half up: p% of n is at least one neuron from p * n / 100 = 1/2 on
    step = 10.0 ** (math.floor(math.log10(exact)) - 3)
    percent = float(f"{math.ceil(exact / step) * step:.4g}")
    while cohort_size(percent, neurons) < 1:
        percent = float(f"{percent + step:.4g}")
    return percent


def check_percents(percents: Iterable[tuple[str, float]], layers: int, neurons: int, scope: str = "layer") -> None:
    """Refuse a percent that selects no neuron: at least one per layer (``scope="global"``: one in all)."""
    pool = neurons if scope == "layer" else layers * neurons
    has = f"its layers have {pool} MLP neurons each" if scope == "layer" else f"it has {pool} MLP neurons in all"
    for option, percent in percents:
        if cohort_size(percent, pool) < 1:
            raise UserInputError(
                f"{option} {percent:g} selects no neuron of this model ({has}); expected at least "
                f"{smallest_percent(pool):g} (one neuron{' per layer' if scope == 'layer' else ''})"
            )


def check_window(window: int | None, config: Any) -> None:
    """Refuse a ``--window`` longer than the model's context."""
    context = context_length(config)
    if window is not None and context is not None and window > context:
        raise UserInputError(f"--window {window}: the model's context is {context} tokens; expected at most {context}")


def check_model_fit(
    config: Any, window: int | None, percents: Iterable[tuple[str, float]], scope: str = "layer"
) -> None:
    """:func:`check_window` and :func:`check_percents` for one model config (skipped where it cannot tell)."""
    check_window(window, config)
    layout = mlp_layout(config)
    if layout is not None:
        check_percents(percents, *layout, scope=scope)


def check_loaded_model(
    model: Any, window: int | None, percents: Iterable[tuple[str, float]], scope: str = "layer"
) -> None:
    """The checks of :func:`check_model_fit` on a loaded model (where its config was not on disk up front)."""
    from checkpoints.adapters import mlp_shape

    check_window(window, model.config)
    check_percents(percents, *mlp_shape(model), scope=scope)
