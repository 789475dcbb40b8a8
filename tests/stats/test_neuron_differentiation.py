"""Differentiated pairs of a model's neuron sets: the members, their membership and their pairs equal
differentiated_pairs on activations captured independently (plain forward hooks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures.study import char_tokenizer
from fixtures.tiny_models import tiny_input_ids, tiny_model

from checkpoints.adapters import mlp_shape, pre_activation_modules
from dynamics.stats.differentiation import differentiated_pairs, region_fractions
from dynamics.stats.neuron_differentiation import analysed_windows, set_differentiation

pytestmark = pytest.mark.models


def _hooked_layer(model, windows, layer):
    """(MLP input, pre-activation) of ``layer`` for every token, by a forward hook on its module."""
    seen = {}

    def hook(module, args, output):
        seen["x"], seen["pre"] = (
            args[0].detach().reshape(-1, args[0].shape[-1]),
            output.detach().reshape(-1, output.shape[-1]),
        )

    handle = pre_activation_modules(model)[layer].register_forward_hook(hook)
    try:
        with torch.inference_mode():
            model(input_ids=windows)
    finally:
        handle.remove()
    return seen["x"].float(), seen["pre"].float()


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
def test_pairs_of_every_member_equal_the_search_on_hooked_activations(family):
    model, tokenizer = tiny_model(family), char_tokenizer()
    shape = mlp_shape(model)
    generator = torch.Generator().manual_seed(2)
    top = (torch.rand(shape, generator=generator) < 0.08).numpy()
    random = (torch.rand(shape, generator=generator) < 0.08).numpy()
    windows = tiny_input_ids(batch=3, length=24, seed=4)
    ds = set_differentiation(model, windows, {"top": top, "random": random}, tokenizer, k=4, top=5)
    layers, neurons = ds["diff_member_layer"].values, ds["diff_member_neuron"].values
    expected = sorted(zip(*np.nonzero(top | random)))
    assert list(zip(layers.tolist(), neurons.tolist())) == [(int(a), int(b)) for a, b in expected]
    np.testing.assert_array_equal(ds["diff_member_in_top"].values, top[layers, neurons])
    np.testing.assert_array_equal(ds["diff_member_in_random"].values, random[layers, neurons])
    for layer in sorted(set(layers.tolist())):
        x, pre = _hooked_layer(model, windows, layer)
        rows = np.flatnonzero(layers == layer)
        found = differentiated_pairs(x, pre, neurons[rows].tolist(), k=4, top=5)
        np.testing.assert_array_equal(ds["diff_pair_token"].values[rows], found.pairs.numpy())
        np.testing.assert_allclose(ds["diff_pair_ratio"].values[rows], found.ratio.numpy(), rtol=1e-5)
        np.testing.assert_allclose(ds["diff_region_frac"].values[rows], region_fractions(found.pre).numpy())
    assert ds["diff_token_id"].values.tolist() == windows.reshape(-1).tolist()
    assert ds["diff_token_text"].values.tolist() == [tokenizer.decode([t]) for t in windows.reshape(-1).tolist()]
    assert ds["diff_token_window"].values.tolist() == [t // 24 for t in range(72)]


def test_the_analysed_windows_hold_the_token_budget():
    windows = torch.zeros((10, 64), dtype=torch.long)
    assert analysed_windows(windows, 100).shape == (2, 64)
    assert analysed_windows(windows, 64).shape == (1, 64)
    assert analysed_windows(windows, 10**6).shape == (10, 64)
