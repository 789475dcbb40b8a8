"""The one module that calls models: its paths reproduce a plain ``log_softmax(model(x).logits)``
on every family, and it falls back (visibly) where a capability is missing."""

from __future__ import annotations

import logging

import pytest
import torch
from fixtures.tiny_models import TINY_FAMILIES, VOCAB, tiny_config, tiny_input_ids, tiny_model
from transformers import AutoModelForCausalLM

from dynamics.models import modelcalls
from dynamics.models.modelcalls import capabilities, chunk_rows, kept_log_probs, sequence_log_probs
from dynamics.syntax.logprobs import token_log_probs
from dynamics.syntax.settings import Batching

# Calls models: also run against the lowest transformers the project declares (.ci/run).
pytestmark = pytest.mark.models


def reference_log_probs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """log p(x_t | x_<t), t >= 1, from the model's own full logits, in float64."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits.double()
    return torch.log_softmax(logits, dim=-1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_family_uses_the_decoder_path_and_a_cache(family):
    model = tiny_model(family)
    found = capabilities(model)
    assert found.decoder_head is True
    assert found.cache_keyword in modelcalls.CACHE_KEYWORDS
    ids = tiny_input_ids(3, 11)
    with torch.no_grad():
        ours = sequence_log_probs(model, ids)
    torch.testing.assert_close(ours.double(), reference_log_probs(model, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_shared_prefix_scores_equal_one_pass_scores(family):
    model = tiny_model(family)
    rows = [[5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 11], [5, 6, 12, 13, 14, 15, 16]]
    two_pass = token_log_probs(model, rows, None, Batching(progress=False), units=[[0, 1, 2]])
    for row, got in zip(rows, two_pass):
        expected = reference_log_probs(model, torch.tensor([row]))[0].numpy()
        assert got.shape == expected.shape
        assert abs(got - expected).max() < 1e-4


def test_soft_capping_is_applied_like_the_model():
    config = tiny_config("gemma2")
    config.final_logit_softcapping = 0.5  # small enough that capping changes every logit
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert capabilities(model).decoder_head is True
    ids = tiny_input_ids(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(
            sequence_log_probs(model, ids).double(), reference_log_probs(model, ids), atol=1e-5, rtol=0
        )


class LogitsOnly(torch.nn.Module):
    """A model that only returns logits: no decoder to run, no cache to reuse."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


def test_a_model_without_a_decoder_falls_back_to_full_logits(caplog):
    inner = tiny_model("gpt_neox")
    model = LogitsOnly(inner)
    with caplog.at_level(logging.DEBUG, logger="dynamics.models.modelcalls"):
        found = capabilities(model)
    assert found == modelcalls.Capabilities(decoder_head=False, cache_keyword=None)
    assert "projecting the full logits" in caplog.text
    ids = tiny_input_ids(2, 10)
    keep = torch.ones_like(ids, dtype=torch.bool)
    keep[:, -1] = False
    with torch.no_grad():
        lp, cache = kept_log_probs(model, ids, keep, ids[:, 1:].reshape(-1))
    assert cache is None
    torch.testing.assert_close(lp.reshape(2, 9).double(), reference_log_probs(inner, ids), atol=1e-5, rtol=0)


def test_a_decoder_that_ignores_the_cache_turns_prefix_reuse_off(monkeypatch, caplog):
    # A keyword the decoder swallows without using: the probe sees wrong continuations.
    monkeypatch.setattr(modelcalls, "CACHE_KEYWORDS", ("not_a_cache",))
    model = tiny_model("llama")
    with caplog.at_level(logging.DEBUG, logger="dynamics.models.modelcalls"):
        found = capabilities(model)
    assert found.decoder_head is True and found.cache_keyword is None
    assert "shared prefixes are recomputed" in caplog.text
    rows = [[5, 6, 7, 8, 9], [5, 6, 7, 8, 10]]
    scores = token_log_probs(model, rows, None, Batching(progress=False), units=[[0, 1]])
    for row, got in zip(rows, scores):
        assert abs(got - reference_log_probs(model, torch.tensor([row]))[0].numpy()).max() < 1e-4


def test_a_hooked_head_is_projected_through_the_module_in_chunks(monkeypatch):
    model = tiny_model("gpt_neox")
    capabilities(model)
    calls = []
    model.get_output_embeddings().register_forward_hook(lambda m, a, out: calls.append(out.shape[0]))
    monkeypatch.setattr(modelcalls, "LOGITS_CHUNK_BYTES", 3 * 4 * VOCAB * 7)
    ids = tiny_input_ids(2, 11)
    with torch.no_grad():
        lp = sequence_log_probs(model, ids)
    assert chunk_rows(VOCAB, 3 * 4 * VOCAB * 7) == 7
    assert calls == [7, 7, 6]
    torch.testing.assert_close(lp.double(), reference_log_probs(model, ids), atol=1e-4, rtol=0)
