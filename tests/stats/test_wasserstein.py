"""Exact W1 to N(0, 1), its split at raw zero, the sampled variant and mapping difficulty."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from dynamics.errors import UserInputError
from dynamics.stats.mapping_difficulty import mapping_difficulty
from dynamics.stats.wasserstein import wasserstein_split, wasserstein_to_gaussian
from dynamics.stats.wasserstein_sampled import wasserstein_to_gaussian_sampled


def _quad_w1(column: np.ndarray, upto: float = 1.0) -> float:
    """W1 by numerical integration of |F^{-1}_sample(u) - Phi^{-1}(u)| over u in [0, upto]."""
    z = np.sort((column - column.mean()) / column.std())
    n, total = len(z), 0.0
    for i in range(n):
        lo, hi = i / n, min((i + 1) / n, upto)
        if hi <= lo:
            break
        kink = special.ndtr(z[i])
        points = [kink] if lo < kink < hi else None
        with warnings.catch_warnings():  # asking for 1e-13 near u = 0 or 1 may warn; the result is fine
            warnings.simplefilter("ignore", integrate.IntegrationWarning)
            value, _ = integrate.quad(
                lambda u: abs(z[i] - special.ndtri(u)), lo, hi, points=points, epsabs=1e-13, epsrel=1e-12, limit=200
            )
        total += value
    return total


def _columns(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gauss = rng.normal(size=n)
    return np.stack(
        [
            gauss,
            rng.standard_t(2, size=n) * 3 + 1,  # heavy tails
            np.where(gauss > 0, gauss, 0.05 * gauss) - 0.3,  # shifted, ReLU-like
            rng.exponential(size=n),
            np.round(rng.normal(size=n), 1),  # ties
            stats.norm.ppf((np.arange(n) + 0.5) / n),  # Gaussian midpoint quantiles
        ],
        axis=1,
    )


@pytest.mark.parametrize(("n", "seed"), [(2, 0), (7, 1), (40, 2)])
def test_exact_matches_numerical_integration(n, seed):
    x = _columns(n, seed)
    got = wasserstein_to_gaussian(torch.from_numpy(x))
    expected = [_quad_w1(x[:, j]) for j in range(x.shape[1])]
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-7)


def test_two_point_sample_has_known_closed_form():
    # z = {-1, 1}: twice int_0^inf |1 - t| phi(t) dt = 2 (2 Phi(1) - 3/2 - phi(0) + 2 phi(1)).
    phi = stats.norm.pdf
    expected = 2 * (2 * stats.norm.cdf(1) - 1.5 - phi(0) + 2 * phi(1))
    got = wasserstein_to_gaussian(torch.tensor([[3.0], [5.0]], dtype=torch.float64))
    assert got.item() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.535378, abs=1e-6)


def test_gaussian_quantile_sample_is_nearly_zero():
    n = 1000
    q = torch.from_numpy(stats.norm.ppf((np.arange(n) + 0.5) / n))[:, None]
    t = torch.from_numpy(np.random.default_rng(0).standard_t(3, size=n))[:, None]
    wd = wasserstein_to_gaussian(torch.cat([q, t], dim=1))
    assert 0 < wd[0].item() < 3 / n
    assert wd[1].item() > 50 * wd[0].item()


def test_agrees_with_scipy_against_a_large_normal_sample():
    rng = np.random.default_rng(3)
    x = _columns(3000, 4)[:, :4]
    wd = wasserstein_to_gaussian(torch.from_numpy(x)).numpy()
    reference = rng.normal(size=1_000_000)
    for j in range(x.shape[1]):
        z = (x[:, j] - x[:, j].mean()) / x[:, j].std()
        assert wd[j] == pytest.approx(stats.wasserstein_distance(z, reference), abs=4e-3)


def test_invariant_to_shift_scale_and_reflection():
    x = torch.from_numpy(_columns(500, 5))
    wd = wasserstein_to_gaussian(x)
    torch.testing.assert_close(wasserstein_to_gaussian(3.5 * x - 20.0), wd, rtol=0, atol=1e-9)
    torch.testing.assert_close(wasserstein_to_gaussian(-x), wd, rtol=0, atol=1e-9)


def test_split_sums_exactly_and_matches_integration_below_zero():
    x = _columns(30, 6)
    wd, neg, pos = wasserstein_split(torch.from_numpy(x))
    assert torch.equal(neg + pos, wd)
    torch.testing.assert_close(wd, wasserstein_to_gaussian(torch.from_numpy(x)), rtol=0, atol=0)
    for j in range(x.shape[1]):
        below = np.count_nonzero(x[:, j] < 0) / len(x)
        assert neg[j].item() == pytest.approx(_quad_w1(x[:, j], upto=below), abs=1e-7)


def test_split_of_one_signed_columns():
    rng = np.random.default_rng(7)
    positive = rng.exponential(size=(200, 2)) + np.array([0.0, 1.0])
    positive[0, 0] = 0.0  # exactly zero counts as "at/above"
    x = torch.from_numpy(np.concatenate([positive, -positive - 0.5, -positive[:, :1]], axis=1))
    wd, neg, pos = wasserstein_split(x)
    assert neg[:2].tolist() == [0.0, 0.0] and pos[2:4].tolist() == [0.0, 0.0]
    assert torch.all(wd > 0.1)
    torch.testing.assert_close(pos[:2], wd[:2], rtol=0, atol=0)
    # -0.0 is at/above zero too: the last column's top cell (its -0.0) is its positive part.
    assert 0 < pos[4].item() < wd[4].item() and neg[4].item() + pos[4].item() == wd[4].item()


def test_float32_path_matches_float64():
    rng = np.random.default_rng(8)
    x = np.concatenate(
        [
            rng.normal(50.0, 0.1, size=(5000, 3)),  # |mean| >> std
            rng.standard_t(2, size=(5000, 3)) * 0.01 - 3.0,
            rng.exponential(size=(5000, 3)) * 100 + 1e4,
            rng.normal(size=(5000, 3)),
        ],
        axis=1,
    ).astype(np.float32)
    wd32, neg32, _ = wasserstein_split(torch.from_numpy(x))
    wd64, neg64, _ = wasserstein_split(torch.from_numpy(x.astype(np.float64)))
    assert wd32.dtype == torch.float32
    torch.testing.assert_close(wd32.double(), wd64, rtol=0, atol=3e-7)
    torch.testing.assert_close(neg32.double(), neg64, rtol=0, atol=3e-7)
    half = wasserstein_to_gaussian(torch.from_numpy(x[:, 9:]).to(torch.bfloat16))
    assert half.dtype == torch.float32 and half.shape == (3,)


def test_column_slices_give_the_same_values_and_runs_are_deterministic():
    # 20 000 columns of 300 tokens span several chunks and both worker threads.
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(300, 20_000, generator=gen) ** 3 + torch.rand(1, 20_000, generator=gen)
    threads = torch.get_num_threads()
    wd = wasserstein_to_gaussian(x)
    assert torch.get_num_threads() == threads  # the engine's one-thread setting is undone
    assert torch.equal(wd, wasserstein_to_gaussian(x))
    parts = torch.cat([wasserstein_to_gaussian(x[:, :7]), wasserstein_to_gaussian(x[:, 7:])])
    torch.testing.assert_close(parts, wd, rtol=0, atol=1e-6)
    picks = [0, 4095, 4096, 12_345, 19_999]
    expected = [_quad_w1(x[:, j].double().numpy()) for j in picks[:2]]
    np.testing.assert_allclose(wd[picks[:2]].numpy(), expected, atol=1e-6)
    torch.testing.assert_close(wd[picks].double(), wasserstein_to_gaussian(x[:, picks].double()), rtol=0, atol=3e-7)


def test_constant_and_non_finite_columns_are_nan():
    x = torch.randn(50, 4, dtype=torch.float64)
    x[:, 1] = 2.0
    x[3, 2] = math.nan
    x[5, 3] = math.inf
    wd, neg, pos = wasserstein_split(x)
    assert [math.isnan(v) for v in wd.tolist()] == [False, True, True, True]
    assert math.isnan(neg[1].item()) and math.isnan(pos[1].item())
    assert math.isnan(wasserstein_to_gaussian(torch.ones(1, 3)).tolist()[0])


@pytest.mark.parametrize("bad", [torch.randn(10), torch.ones(3, 2, dtype=torch.int64), torch.empty(0, 3)])
def test_bad_input_is_one_line_error(bad):
    with pytest.raises(UserInputError, match=r"^x must .*\[tokens, neurons\]|^x must hold at least one token"):
        wasserstein_to_gaussian(bad)


def test_generic_path_used_on_gpu_matches_cpu_path():
    # The accelerator path (torch.sort, torch.nonzero, masked sums) run on CPU tensors.
    from dynamics.stats.wasserstein import _exact_chunk, _exact_columns

    gen = torch.Generator().manual_seed(13)
    x = torch.randn(2000, 40, generator=gen) ** 3 - 0.2
    x[:, 5] = 1.0
    for data, atol in ((x, 1e-7), (x.double(), 1e-12)):  # float32 sums differ in order only
        neg, pos, undefined = _exact_chunk(data, slice(0, 40), None)
        ref_neg, ref_pos, ref_undefined = _exact_columns(data)
        assert undefined.tolist() == ref_undefined.tolist() == [j == 5 for j in range(40)]
        keep = ~undefined
        torch.testing.assert_close(neg[keep], ref_neg[keep], rtol=0, atol=atol)
        torch.testing.assert_close(pos[keep], ref_pos[keep], rtol=0, atol=atol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    x = torch.randn(4096, 300) ** 3
    wd, neg, pos = wasserstein_split(x.cuda())
    assert wd.device.type == "cuda"
    ref = wasserstein_split(x)
    for got, want in zip((wd, neg, pos), ref):
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n_samples", [None, 77, 900])
def test_sampled_variant_matches_scipy_loop(n_samples):
    x = _columns(300, 10)
    got = wasserstein_to_gaussian_sampled(torch.from_numpy(x), n_samples=n_samples, seed=3)
    sample = torch.randn(n_samples or 300, generator=torch.Generator().manual_seed(3), dtype=torch.float64).numpy()
    expected = [stats.wasserstein_distance((c - c.mean()) / c.std(), sample) for c in x.T]
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)


def test_sampled_variant_is_seeded_and_close_to_exact():
    x = torch.from_numpy(_columns(5000, 11)[:, :4]).float()
    a = wasserstein_to_gaussian_sampled(x, seed=1)
    assert torch.equal(a, wasserstein_to_gaussian_sampled(x, seed=1))
    assert not torch.equal(a, wasserstein_to_gaussian_sampled(x, seed=2))
    torch.testing.assert_close(a, wasserstein_to_gaussian(x), rtol=0, atol=0.05)
    with pytest.raises(UserInputError, match="n_samples"):
        wasserstein_to_gaussian_sampled(x, n_samples=0)


def _md_loop(inputs: np.ndarray, outputs: np.ndarray, n_pairs: int, seed: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(len(inputs), (n_pairs,), generator=gen).tolist()
    second = torch.randint(len(inputs), (n_pairs,), generator=gen).tolist()
    pairs = [(i, j) for i, j in zip(first, second) if np.linalg.norm(inputs[i] - inputs[j]) > 0]
    dx = np.array([np.linalg.norm(inputs[i] - inputs[j]) for i, j in pairs])
    result = []
    for k in range(outputs.shape[1]):
        dy = np.array([abs(outputs[i, k] - outputs[j, k]) for i, j in pairs])
        n_y = np.median(dy)
        result.append(np.mean((dy / n_y) / (dx / dx.max())) if n_y > 0 else np.nan)
    return np.array(result)


def test_mapping_difficulty_matches_slow_loop():
    rng = np.random.default_rng(12)
    inputs = rng.normal(size=(40, 6))
    inputs[1] = inputs[0]  # a duplicate token: its pairs have dx == 0 and are dropped
    outputs = np.stack([inputs @ rng.normal(size=6), np.tanh(inputs[:, 0] * 4), rng.normal(size=40), np.zeros(40)], 1)
    got = mapping_difficulty(torch.from_numpy(inputs), torch.from_numpy(outputs), n_pairs=501, seed=4)
    expected = _md_loop(inputs, outputs, 501, 4)
    assert got.dtype == torch.float32 and math.isnan(got[3].item())
    np.testing.assert_allclose(got[:3].numpy(), expected[:3], rtol=1e-6)
    assert not torch.equal(got[:3], mapping_difficulty(torch.from_numpy(inputs), torch.from_numpy(outputs), 501, 5)[:3])


def test_mapping_difficulty_over_several_neuron_chunks():
    gen = torch.Generator().manual_seed(14)
    inputs = torch.randn(64, 5, generator=gen)
    outputs = torch.randn(64, 9000, generator=gen) * torch.rand(1, 9000, generator=gen)
    got = mapping_difficulty(inputs, outputs, n_pairs=600, seed=1)  # ~590 pairs: two neuron chunks
    picks = [0, 7000, 7200, 8999]
    expected = _md_loop(inputs.double().numpy(), outputs[:, picks].double().numpy(), 600, 1)
    np.testing.assert_allclose(got[picks].numpy(), expected, rtol=2e-6)


def test_mapping_difficulty_errors():
    with pytest.raises(UserInputError, match="share the token axis"):
        mapping_difficulty(torch.randn(5, 2), torch.randn(6, 3))
    with pytest.raises(UserInputError, match="distinct inputs"):
        mapping_difficulty(torch.ones(5, 2), torch.randn(5, 3))
    with pytest.raises(UserInputError, match="n_pairs"):
        mapping_difficulty(torch.randn(5, 2), torch.randn(5, 3), n_pairs=0)
