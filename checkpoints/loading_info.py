"""Whether a loaded model holds its checkpoint's own weights, from transformers' loading info.

``from_pretrained(..., output_loading_info=True)`` reports the weights the files lacked
(``missing_keys``: transformers fills them with random values), held beyond the model
(``unexpected_keys``), held in another shape (``mismatched_keys``) and other errors. A
model whose ``config.json`` claims 5 layers and whose files hold 2 loads without an error;
measuring it would store statistics of random weights. :func:`weights_problem` says why
such a model is unusable, and lets pass what is legitimately absent or extra, judged by
behaviour rather than by a list of names:

- a missing key that is no parameter of the model (a buffer such as rotary ``inv_freq`` or
  an attention mask, which the model re-creates), or a parameter that shares its storage
  with a loaded one (tied embeddings: ``lm_head.weight`` is the input embedding);
- an unexpected key that does not name a parameter the model's layers have (old
  checkpoints carry buffers such as ``attn.masked_bias`` or per-layer ``inv_freq``); one
  that does (``layers.7.mlp...`` in a 2-layer model) means the config and files disagree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["weights_problem"]

_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def weights_problem(model: Any, info: Mapping[str, Any]) -> str | None:
    """Why ``model`` does not hold its files' weights (one phrase), or None when it does."""
    parameters = dict(model.named_parameters(remove_duplicate=False))
    problems = [
        _missing(parameters, set(info.get("missing_keys") or ())),
        _unexpected(parameters, set(info.get("unexpected_keys") or ()), getattr(model, "base_model_prefix", "")),
        _mismatched(info.get("mismatched_keys") or ()),
    ]
    errors = [str(e) for e in info.get("error_msgs") or ()]
    if errors:
        problems.append(f"transformers reported {len(errors)} loading error(s): {' '.join(errors[0].split())[:200]}")
    found = [p for p in problems if p]
    return "; ".join(found) if found else None


def _missing(parameters: Mapping[str, Any], missing: set[str]) -> str | None:
    """Parameters the files lacked that are not tied to a loaded one (buffers are re-created, not loaded)."""
    loaded = {p.data_ptr() for name, p in parameters.items() if name not in missing}
    absent = sorted(k for k in missing if k in parameters and parameters[k].data_ptr() not in loaded)
    if not absent:
        return None
    return (
        f"{len(absent)} weight(s) of the model are missing from the files, which transformers would fill with "
        f"random values (first {absent[0]}{_layers(absent)})"
    )


def _unexpected(parameters: Mapping[str, Any], unexpected: set[str], prefix: str) -> str | None:
    """Keys in the files shaped like the model's own parameters that it has no place for (more layers)."""
    kinds = {_kind(name, prefix) for name in parameters}
    extra = sorted(k for k in unexpected if _kind(k, prefix) in kinds)
    if not extra:
        return None
    return f"the files hold {len(extra)} weight(s) the model has no place for (first {extra[0]}{_layers(extra)})"


def _mismatched(mismatched: Iterable[Any]) -> str | None:
    """Weights of another shape in the files than in the model: ``(key, shape in the files, shape in the model)``."""
    entries = sorted(mismatched, key=lambda entry: str(entry[0] if isinstance(entry, tuple) else entry))
    if not entries:
        return None
    first = entries[0]
    if isinstance(first, tuple) and len(first) == 3:
        key, in_files, in_model = first
        detail = f"{key} is {list(in_files)} in the files, {list(in_model)} in the model"
    else:
        detail = str(first)
    return f"{len(entries)} weight(s) have another shape than config.json gives them (first {detail})"


def _kind(name: str, prefix: str) -> str:
    """A parameter name without its layer index and the base model's prefix: what kind of weight it is."""
    if prefix and name.startswith(prefix + "."):
        name = name[len(prefix) + 1 :]
    return _LAYER_INDEX.sub(".N.", name)


def _layers(names: list[str]) -> str:
    """``; layers 2, 3, 4`` for names inside numbered layers, else nothing."""
    layers = sorted({int(m.group(1)) for name in names if (m := _LAYER_INDEX.search(name))})
    return f"; layers {', '.join(map(str, layers))}" if layers else ""
