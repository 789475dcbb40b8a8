"""The one module that calls models: its paths reproduce a plain ``log_softmax(model(x).logits)``
on every family, and it falls back (visibly) where a capability is missing."""

from __future__ import annotations

import logging

import pytest
import torch
from fixtures.tiny_models import TINY_FAMILIES, VOCAB, tiny_config, tiny_input_ids, tiny_model
from transformers import AutoModelForCausalLM

from dynamics import modelcalls
from dynamics.modelcalls import capabilities, chunk_rows, kept_log_probs, sequence_log_probs
from dynamics.syntax.logprobs import token_log_probs

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
    two_pass = token_log_probs(model, rows, None, units=[[0, 1, 2]], progress=False)
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
    with caplog.at_level(logging.DEBUG, logger="dynamics.modelcalls"):
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
    with caplog.at_level(logging.DEBUG, logger="dynamics.modelcalls"):
        found = capabilities(model)
    assert found.decoder_head is True and found.cache_keyword is None
    assert "shared prefixes are recomputed" in caplog.text
    rows = [[5, 6, 7, 8, 9], [5, 6, 7, 8, 10]]
    scores = token_log_probs(model, rows, None, units=[[0, 1]], progress=False)
    for row, got in zip(rows, scores):
        assert abs(got - reference_log_probs(model, torch.tensor([row]))[0].numpy()).max() < 1e-4


def test_projection_is_chunked(monkeypatch):
    """A float32 Linear head is log-softmaxed in place, chunk by chunk into one buffer."""
    model = tiny_model("gpt_neox")
    capabilities(model)  # probed before counting
    seen = []
    original = modelcalls.log_softmax_picked_
    monkeypatch.setattr(
        modelcalls, "log_softmax_picked_", lambda logits, t: seen.append(logits.data_ptr()) or original(logits, t)
    )
    monkeypatch.setattr(modelcalls, "project", None)  # never called on this path
    monkeypatch.setattr(modelcalls, "LOGITS_CHUNK_BYTES", 3 * 4 * VOCAB * 7)  # 7 rows per chunk
    ids = tiny_input_ids(2, 11)
    with torch.no_grad():
        lp = sequence_log_probs(model, ids)
    assert chunk_rows(VOCAB, 3 * 4 * VOCAB * 7) == 7
    assert len(seen) == 3 and len(set(seen)) == 1  # 20 scored positions: 7, 7, 6 rows of one buffer
    torch.testing.assert_close(lp.double(), reference_log_probs(model, ids), atol=1e-4, rtol=0)


def test_a_hooked_head_is_projected_through_the_module_in_chunks(monkeypatch):
    model = tiny_model("gpt_neox")
    capabilities(model)
    calls = []
    model.get_output_embeddings().register_forward_hook(lambda m, a, out: calls.append(out.shape[0]))
    monkeypatch.setattr(modelcalls, "LOGITS_CHUNK_BYTES", 3 * 4 * VOCAB * 7)
    ids = tiny_input_ids(2, 11)
    with torch.no_grad():
        lp = sequence_log_probs(model, ids)
    assert calls == [7, 7, 6]
    torch.testing.assert_close(lp.double(), reference_log_probs(model, ids), atol=1e-4, rtol=0)


def test_in_place_log_softmax_matches_torch():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=generator) * 30
    logits[2, 7] = float("inf")
    logits[3] = float("-inf")
    logits[4, :10] = float("-inf")
    targets = torch.tensor([0, 49, 7, 3, 12, 25])
    expected = torch.log_softmax(logits.double(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    got = modelcalls.log_softmax_picked_(logits.clone(), targets)
    assert torch.isnan(got[2]) == torch.isnan(expected[2]) and torch.isnan(got[3]) == torch.isnan(expected[3])
    finite = torch.isfinite(expected)
    torch.testing.assert_close(got[finite].double(), expected[finite], atol=2e-5, rtol=0)


def test_a_head_with_bias_and_scaling_matches_the_module(monkeypatch):
    """The in-place path applies the bias, logit scale, divisor and soft-capping as project() does."""
    model = tiny_model("gpt_neox")
    head = model.get_output_embeddings()
    head.bias = torch.nn.Parameter(torch.randn(head.weight.shape[0], generator=torch.Generator().manual_seed(1)))
    model.config.logit_scale, model.config.logits_scaling, model.config.final_logit_softcapping = 3.0, 2.0, 0.5
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(9, head.weight.shape[1], generator=generator)
    targets = torch.randint(0, head.weight.shape[0], (9,), generator=generator)
    logits = torch.tanh((hidden @ head.weight.t() + head.bias) * 3.0 / 2.0 / 0.5) * 0.5
    expected = torch.log_softmax(logits.double(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    monkeypatch.setattr(modelcalls, "LOGITS_CHUNK_BYTES", 3 * 4 * head.weight.shape[0] * 4)
    with torch.no_grad():
        got = modelcalls.hidden_log_probs(model, hidden, targets)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


def test_log_probs_with_autograd_on_take_the_module_path():
    """Outside inference mode a head that requires grad cannot be written into a buffer: the
    module path runs, and gradients flow."""
    model = tiny_model("gpt_neox")
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(5, model.config.hidden_size, generator=generator, requires_grad=True)
    targets = torch.randint(0, VOCAB, (5,), generator=generator)
    got = modelcalls.hidden_log_probs(model, hidden, targets)
    got.sum().backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(got.detach(), modelcalls.hidden_log_probs(model, hidden, targets), atol=1e-5, rtol=0)


def test_the_cpu_logits_buffer_is_reused_per_thread(monkeypatch):
    import threading

    model = tiny_model("gpt_neox")
    seen = []
    original = modelcalls.log_softmax_picked_
    monkeypatch.setattr(
        modelcalls, "log_softmax_picked_", lambda x, t: seen.append(x.untyped_storage().data_ptr()) or original(x, t)
    )
    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn(12, model.config.hidden_size, generator=generator)
    targets = torch.randint(0, VOCAB, (12,), generator=generator)
    with torch.no_grad():
        first = modelcalls.hidden_log_probs(model, hidden, targets)
        second = modelcalls.hidden_log_probs(model, hidden[:5], targets[:5])
        other: list[torch.Tensor] = []

        def in_another_thread() -> None:
            with torch.no_grad():  # grad mode is per thread
                other.append(modelcalls.hidden_log_probs(model, hidden, targets))

        worker = threading.Thread(target=in_another_thread)
        worker.start()
        worker.join()
    assert seen[0] == seen[1] != seen[2]  # one buffer per thread, reused across calls
    assert torch.equal(first[:5], second) and torch.equal(first, other[0])
    expected = torch.log_softmax(modelcalls.project(model, hidden).double(), -1).gather(-1, targets[:, None])[:, 0]
    torch.testing.assert_close(first.double(), expected, atol=1e-5, rtol=0)
