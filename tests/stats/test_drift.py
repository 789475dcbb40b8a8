"""Cosine drift of neuron weight vectors against scipy."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial import distance

from dynamics.errors import UserInputError
from dynamics.stats.drift import cosine_drift


def test_matches_scipy_cosine_per_neuron():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(50, 33, generator=gen)
    weights = ref + 0.3 * torch.randn(50, 33, generator=gen)
    weights[3] = -2 * ref[3]  # opposite direction: drift 2
    weights[4] = 5 * ref[4]  # same direction: drift 0
    got = cosine_drift(weights, ref)
    expected = [distance.cosine(w, r) for w, r in zip(weights.double().numpy(), ref.double().numpy())]
    assert got.dtype == torch.float32 and got.shape == (50,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-7)
    assert got[3].item() == pytest.approx(2.0) and got[4].item() == pytest.approx(0.0, abs=1e-7)


def test_layer_batches_and_half_precision():
    gen = torch.Generator().manual_seed(1)
    ref = torch.randn(3, 20, 16, generator=gen)
    weights = torch.randn(3, 20, 16, generator=gen)
    got = cosine_drift(weights.to(torch.bfloat16), ref.to(torch.bfloat16))
    assert got.shape == (3, 20) and got.dtype == torch.float32
    flat = cosine_drift(weights.to(torch.bfloat16).reshape(60, 16), ref.to(torch.bfloat16).reshape(60, 16))
    torch.testing.assert_close(got.reshape(-1), flat, rtol=0, atol=0)
    pairs = zip(weights.reshape(60, 16).double().numpy(), ref.reshape(60, 16).double().numpy())
    expected = [distance.cosine(w, r) for w, r in pairs]
    np.testing.assert_allclose(got.reshape(-1).numpy(), expected, atol=2e-2)  # bf16 weights


def test_zero_rows_are_nan():
    ref = torch.ones(3, 4)
    weights = torch.ones(3, 4)
    weights[1] = 0
    ref[2] = 0
    got = cosine_drift(weights, ref)
    assert got[0].item() == pytest.approx(0.0, abs=1e-7)
    assert math.isnan(got[1].item()) and math.isnan(got[2].item())


def test_shape_mismatch_is_one_line_error():
    with pytest.raises(UserInputError, match=r"same shape \[\.\.\., d\], got \(3, 4\) and \(3, 5\)"):
        cosine_drift(torch.ones(3, 4), torch.ones(3, 5))
