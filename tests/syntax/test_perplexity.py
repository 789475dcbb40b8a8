"""Windowed perplexity against a manual loop and a model with uniform predictions."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig

from dynamics.errors import UserInputError
from dynamics.syntax.perplexity import perplexity, window_nll

# Calls models: also run against the lowest transformers the project declares (.ci/run).
pytestmark = pytest.mark.models

VOCAB = 97


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=VOCAB,
        initializer_range=0.3,
    )
    return AutoModelForCausalLM.from_config(config).eval()


def windows(n: int = 5, length: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(1))


def manual_perplexity(model, windows: torch.Tensor) -> float:
    """Token by token: -log p(x_t | x_<t) from a log_softmax, summed, in float64."""
    total, count = 0.0, 0
    with torch.no_grad():
        for window in windows:
            log_probs = torch.log_softmax(model(window[None]).logits[0].double(), dim=-1)
            for t in range(1, len(window)):
                total -= float(log_probs[t - 1, window[t]])
                count += 1
    return math.exp(total / count)


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_perplexity_matches_manual_loop(batch_size):
    model, w = tiny_model(), windows()
    expected = manual_perplexity(model, w)
    assert expected > 10.0  # a random model is far from perfect: the check is not trivial
    assert perplexity(model, w, batch_size=batch_size, progress=False) == pytest.approx(expected, rel=1e-5)


def test_window_nll_is_per_window():
    model, w = tiny_model(), windows(n=3)
    nll = window_nll(model, w, progress=False)
    assert nll.shape == (3,) and nll.dtype == torch.float64
    for i in range(3):
        one = perplexity(model, w[i : i + 1], progress=False)
        assert math.log(one) * (w.shape[1] - 1) == pytest.approx(float(nll[i]), rel=1e-6)


def test_uniform_logits_give_the_vocabulary_size():
    model = tiny_model()
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()  # every logit is 0: a uniform prediction
    assert perplexity(model, windows(), progress=False) == pytest.approx(VOCAB, rel=1e-6)


def test_bad_windows_are_rejected():
    model = tiny_model()
    with pytest.raises(UserInputError, match=r"shape \(4,\); expected \[n_windows >= 1, window >= 2\]"):
        perplexity(model, torch.zeros(4, dtype=torch.long), progress=False)
    with pytest.raises(UserInputError, match="batch_size=0"):
        perplexity(model, windows(), batch_size=0, progress=False)
