"""The one place that runs a language model: final hidden states, log-probabilities, capture.

Every caller (scoring, perplexity, capture, ablated evaluation) goes through these
functions, so a change in the transformers API is met here once. Nothing is chosen by
version number or by the name of a keyword in a signature: what a model supports is found
by *behaviour*, once per model object, with a tiny probe (:func:`capabilities`):

- ``decoder_head``: the decoder (``model.base_model``) run to its final hidden states,
  then only the wanted positions projected through ``model.get_output_embeddings()``
  (with the family's final-logit soft-capping and logit scaling), reproduces
  ``model(...).logits``. Then no position that nobody reads is ever projected onto the
  vocabulary. Otherwise the full logits are computed and indexed (a debug line says so).
- ``cache_keyword``: the keyword through which the decoder continues from a prefix's
  key-value cache (``cache`` in recent transformers, ``past_key_values`` before), found by
  checking that a prefix pass plus a suffix pass on its cache gives the one-pass
  log-probabilities. ``None``: prefixes are not reused (a debug line says so).

Log-probabilities are projected in chunks of rows so that the ``rows x vocabulary``
logits stay under :data:`LOGITS_CHUNK_BYTES` (a float32 linear head: in tiles on the CPU,
:mod:`dynamics.models.linear_head`), and are always computed in float32.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from dynamics.models import linear_head

log = logging.getLogger(__name__)

#: Bytes of float32 logits materialised at once when projecting hidden states.
LOGITS_CHUNK_BYTES = 256 * 1024**2
#: Keywords tried, in order, for feeding a key-value cache back to the decoder.
CACHE_KEYWORDS: tuple[str, ...] = ("cache", "past_key_values")


@dataclass(frozen=True)
class Capabilities:
    """What a model was seen to support (see the module docstring)."""

    decoder_head: bool
    cache_keyword: str | None


_PROBED: weakref.WeakKeyDictionary[torch.nn.Module, Capabilities] = weakref.WeakKeyDictionary()


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode (no dropout) and no autograd, restoring the training flag on exit."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _decoder(model: torch.nn.Module) -> torch.nn.Module | None:
    decoder = getattr(model, "base_model", None)
    if not isinstance(decoder, torch.nn.Module) or decoder is model:
        return None
    return decoder


def _text_config(model: torch.nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        return config.get_text_config()
    return config


def sliding_window(model: torch.nn.Module) -> int | None:
    """The model's attention window in tokens, ``None`` for full attention."""
    return getattr(_text_config(model), "sliding_window", None)


def _find_cache(output: Any) -> Any:
    """The key-value cache object in a model output, whatever the field is called."""
    values = output.values() if hasattr(output, "values") else ()
    for value in values:
        if hasattr(value, "get_seq_length"):
            return value
    return None


def decoder_states(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    *,
    cache: Any = None,
    cache_keyword: str | None = None,
    use_cache: bool = False,
) -> tuple[torch.Tensor, Any]:
    """Final hidden states ``[batch, seq, d_model]`` of the decoder, and its cache if asked."""
    decoder = _decoder(model)
    if decoder is None:
        raise TypeError(f"{type(model).__name__} has no decoder (base_model) to run")
    kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": use_cache}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    if cache is not None:
        if cache_keyword is None:
            raise TypeError("a cache was given without the keyword that feeds it to the decoder")
        kwargs[cache_keyword] = cache
    output = decoder(**kwargs)
    hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
    return hidden, (_find_cache(output) if use_cache else None)


def _output_embedding(model: torch.nn.Module) -> Any:
    """The module that maps final hidden states to logits (``None`` if the model has none)."""
    method: Any = getattr(model, "get_output_embeddings", None)  # torch types module attributes as Tensors
    return method() if callable(method) else None


def _logit_transforms(model: torch.nn.Module) -> tuple[float | None, float | None, float | None]:
    """The family's ``(logit_scale, logits_scaling, final_logit_softcapping)``, each ``None`` where unset."""
    config = _text_config(model)

    def number(name: str) -> float | None:
        value = getattr(config, name, None)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value else None

    return number("logit_scale"), number("logits_scaling"), number("final_logit_softcapping")


def project(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of hidden states ``[..., d_model]``: the output embedding, then the family's
    final-logit soft-capping (Gemma 2/3) and logit scaling (Cohere, Granite) where set."""
    logits = _output_embedding(model)(hidden)
    scale, divisor, cap = _logit_transforms(model)
    if scale is not None:
        logits = logits * scale
    if divisor is not None:
        logits = logits / divisor
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _vocab_size(model: torch.nn.Module) -> int:
    weight = getattr(_output_embedding(model), "weight", None)
    if isinstance(weight, torch.Tensor):
        return int(weight.shape[0])
    return int(getattr(_text_config(model), "vocab_size", 0) or 1)


def chunk_rows(vocab_size: int, chunk_bytes: int | None = None) -> int:
    """Rows whose float32 logits (and their log-softmax temporaries) fit ``chunk_bytes``
    (default :data:`LOGITS_CHUNK_BYTES`)."""
    budget = LOGITS_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    return max(1, budget // (3 * 4 * max(1, vocab_size)))


def log_probs_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[target]`` per row in float32 (gather minus logsumexp)."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def hidden_log_probs(model: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (float32, on the hidden states' device) of ``targets[i]`` given
    ``hidden[i]`` (``[rows, d_model]``), projected in chunks of rows.

    A float32 linear head goes to :mod:`dynamics.models.linear_head` (no ``rows x vocabulary``
    temporaries; on the CPU tile by vocabulary tile). Any other head takes :func:`project`."""
    step = chunk_rows(_vocab_size(model))
    head = _output_embedding(model)
    if linear_head.fits(head, hidden):
        return linear_head.linear_head_log_probs(model, head, hidden, targets, _logit_transforms(model), step)
    parts = [
        log_probs_of(project(model, hidden[start : start + step]), targets[start : start + step])
        for start in range(0, hidden.shape[0], step)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, device=hidden.device)


def kept_log_probs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    keep: torch.Tensor,
    targets: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    *,
    cache: Any = None,
    use_cache: bool = False,
) -> tuple[torch.Tensor, Any]:
    """Log-probabilities of ``targets`` (``[keep.sum()]``) at the ``keep`` positions only.

    ``keep`` is a boolean ``[batch, seq]`` mask; positions are taken in row-major order.
    Returns the float32 log-probabilities and the decoder's cache (when ``use_cache``).
    """
    found = capabilities(model)
    if found.decoder_head:
        hidden, new_cache = decoder_states(
            model,
            input_ids,
            attention_mask,
            position_ids,
            cache=cache,
            cache_keyword=found.cache_keyword,
            use_cache=use_cache,
        )
        return hidden_log_probs(model, hidden[keep], targets), new_cache
    if cache is not None or use_cache:
        raise TypeError("prefix caches need the decoder path, which this model does not support")
    kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": False}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    logits = model(**kwargs).logits
    return log_probs_of(logits[keep], targets), None


def sequence_log_probs(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """``log p(x_t | x_<t)`` for ``t = 1..L-1`` of each row of ``input_ids`` ``[batch, L]``
    (no padding), float32 ``[batch, L - 1]``."""
    keep = torch.ones_like(input_ids, dtype=torch.bool)
    keep[:, -1] = False
    lp, _ = kept_log_probs(model, input_ids, keep, input_ids[:, 1:].reshape(-1))
    return lp.reshape(input_ids.shape[0], input_ids.shape[1] - 1)


def run_for_hooks(model: torch.nn.Module, input_ids: torch.Tensor) -> None:
    """Run the decoder over ``input_ids`` for what its hooks record (no logits, no cache)."""
    decoder = _decoder(model)
    (decoder if decoder is not None else model)(input_ids=input_ids, use_cache=False)


def capabilities(model: torch.nn.Module) -> Capabilities:
    """What ``model`` supports, probed once per model object (see the module docstring)."""
    found = _PROBED.get(model)
    if found is None:
        found = _probe(model)
        _PROBED[model] = found
    return found


def _probe_ids(model: torch.nn.Module) -> torch.Tensor:
    vocab = _vocab_size(model)
    rows = [
        [(3 + 7 * i) % vocab for i in range(8)],
        [(3 + 7 * i) % vocab for i in range(5)] + [(5 + 11 * i) % vocab for i in range(3)],
    ]
    return torch.tensor(rows, dtype=torch.long, device=model_device(model))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.float(), b.float()
    scale = float(b.abs().max()) if b.numel() else 1.0
    tolerance = (1e-4 if b.dtype == torch.float32 and a.dtype == torch.float32 else 2e-2) * max(1.0, scale)
    return a.shape == b.shape and bool(torch.isfinite(a).all()) and float((a - b).abs().max()) <= tolerance


def _probe(model: torch.nn.Module) -> Capabilities:
    ids = _probe_ids(model)
    with eval_mode(model):
        full = model(input_ids=ids, use_cache=False).logits
        decoder_head = False
        if _decoder(model) is not None and _output_embedding(model) is not None:
            try:
                hidden, _ = decoder_states(model, ids)
                decoder_head = _close(project(model, hidden), full)
            except Exception as exc:  # a probe: any failure means "not supported"
                log.debug("decoder + output embedding not usable for %s: %s", type(model).__name__, exc)
        if not decoder_head:
            log.debug("%s: projecting the full logits (the decoder path does not reproduce them)", type(model).__name__)
            return Capabilities(decoder_head=False, cache_keyword=None)
        keyword = _probe_cache_keyword(model, ids, full)
    if keyword is None:
        log.debug("%s: no usable key-value cache; shared prefixes are recomputed per sentence", type(model).__name__)
    return Capabilities(decoder_head=True, cache_keyword=keyword)


def _probe_cache_keyword(model: torch.nn.Module, ids: torch.Tensor, full: torch.Tensor) -> str | None:
    """The keyword with which a 5-token prefix's cache, selected per row, continues both
    rows exactly as the one-pass forward does."""
    n = 5
    for keyword in CACHE_KEYWORDS:
        try:
            _, cache = decoder_states(model, ids[:1, :n], use_cache=True)
            if cache is None or cache.get_seq_length() != n:
                return None
            select_rows(cache, torch.zeros(2, dtype=torch.long, device=ids.device))
            positions = torch.arange(n, ids.shape[1], device=ids.device)[None].expand(2, -1)
            mask = torch.ones_like(ids)
            hidden, _ = decoder_states(
                model, ids[:, n:], mask, positions, cache=cache, cache_keyword=keyword, use_cache=True
            )
        except Exception as exc:  # a probe: any failure means "not this keyword"
            log.debug("%s: continuing from a cache via %r failed: %s", type(model).__name__, keyword, exc)
            continue
        if _close(project(model, hidden), full[:, n:]):
            return keyword
    return None


def replicate_rows(tensor: torch.Tensor, copies: int) -> torch.Tensor:
    """``copies`` blocks of ``tensor``'s rows one after the other (dimension 0): one block per
    ablation condition of :func:`dynamics.ablation.hooks.ablate_rows`."""
    return tensor if copies == 1 else tensor.repeat(copies, *([1] * (tensor.ndim - 1)))


def select_rows(cache: Any, rows: torch.Tensor) -> None:
    """Make row ``i`` of ``cache`` a copy of its old row ``rows[i]`` (in place)."""
    cache.batch_select_indices(rows)


def logits_finite(model: torch.nn.Module) -> bool:
    """Whether a short forward pass gives finite logits (float16 weights may overflow)."""
    with eval_mode(model):
        logits = model(input_ids=_probe_ids(model), use_cache=False).logits
    return bool(torch.isfinite(logits).all())
