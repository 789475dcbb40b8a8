"""Differentiated pairs, their regions, POS enrichment and token-pair counts, each against an
independent computation (brute-force loops in NumPy float64, hand-made cases)."""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from dynamics.errors import UserInputError
from dynamics.stats import differentiation
from dynamics.stats.differentiation import (
    REGIONS,
    base_region_fractions,
    candidate_pairs,
    differentiated_pairs,
    nearest_neighbours,
    pair_regions,
    region_fractions,
)
from dynamics.stats.enrichment import enrichment_difference, pos_enrichment, tag_shares, token_pair_counts

# ---------------------------------------------------------------- brute-force references


def _brute_neighbours(x: np.ndarray, k: int) -> np.ndarray:
    """Double loop: cosine in float64 rounded to float32, sorted by (-cos, j); zero rows excluded."""
    x = x.astype(np.float64)
    norms = [math.sqrt(float(np.dot(row, row))) for row in x]
    out = np.full((len(x), k), -1, dtype=np.int64)
    for i in range(len(x)):
        if norms[i] == 0:
            continue
        scored = []
        for j in range(len(x)):
            if j != i and norms[j] > 0:
                scored.append((-float(np.float32(np.dot(x[i], x[j]) / (norms[i] * norms[j]))), j))
        scored.sort()
        chosen = [j for _, j in scored[:k]]
        out[i, : len(chosen)] = chosen
    return out


def _brute_differentiated(x: np.ndarray, pre: np.ndarray, k: int, top: int):
    """Per neuron: all kNN pairs with distinct inputs, sorted by (-ratio, i, j), the first ``top``."""
    nbrs = _brute_neighbours(x, k)
    pairs = sorted({(min(i, j), max(i, j)) for i in range(len(x)) for j in nbrs[i] if j >= 0})
    x64, pre64 = x.astype(np.float64), pre.astype(np.float64)
    dist = {(i, j): math.sqrt(float(np.sum((x64[i] - x64[j]) ** 2))) for i, j in pairs}
    pairs = [p for p in pairs if dist[p] > 0]
    result = []
    for n in range(pre.shape[1]):
        scored = sorted((-abs(pre64[i, n] - pre64[j, n]) / dist[(i, j)], i, j) for i, j in pairs)
        result.append([(i, j, -neg) for neg, i, j in scored[:top]])
    return pairs, result


def _random_case(seed: int, T: int = 60, d: int = 8, N: int = 5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, d)).astype(np.float32)
    x[5] = x[3]  # a duplicated row: similarity 1, distance 0
    x[7] = 2 * x[2]  # same direction: an exact cosine tie with anything compared to x[2]
    x[9] = x[2]  # three rows of one direction
    pre = rng.normal(size=(T, N)).astype(np.float32)
    return x, pre


def _integer_case(seed: int, T: int = 30, d: int = 3, N: int = 4):
    """Small integers: many exact ties of cosines and of ratios, duplicates, maybe zero rows."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(T, d)).astype(np.float32)
    x[4] = 0  # a zero row
    pre = rng.integers(-4, 5, size=(T, N)).astype(np.float32)
    return x, pre


# ---------------------------------------------------------------- nearest neighbours


@pytest.mark.parametrize("case", [_random_case(0)[0], _integer_case(1)[0], _integer_case(2)[0]])
def test_nearest_neighbours_equal_a_brute_force_double_loop_with_ties(case):
    expected = _brute_neighbours(case, 4)
    got = nearest_neighbours(torch.from_numpy(case), 4)
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), expected)


def test_nearest_neighbours_planted_ties_go_to_the_lower_index():
    x, _ = _random_case(0)
    got = nearest_neighbours(torch.from_numpy(x), 4)
    # rows 2, 7 and 9 share a direction: each one's first neighbours are the other two, lower first
    assert got[2, :2].tolist() == [7, 9]
    assert got[7, :2].tolist() == [2, 9]
    assert got[9, :2].tolist() == [2, 7]
    assert got[3, 0] == 5 and got[5, 0] == 3


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 59, 200])
def test_nearest_neighbours_do_not_depend_on_the_chunk(chunk_rows):
    x = torch.from_numpy(_integer_case(3, T=60, d=4)[0])
    assert torch.equal(nearest_neighbours(x, 5, chunk_rows=chunk_rows), nearest_neighbours(x, 5))


def test_zero_rows_have_no_neighbours_and_are_nobodys_neighbour():
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 1.0]])
    got = nearest_neighbours(x, 3)
    assert got[1].tolist() == [-1, -1, -1] and got[3].tolist() == [-1, -1, -1]
    assert got[0].tolist() == [2, 4, -1]  # only two tokens with a direction besides itself
    assert got[2].tolist() == [0, 4, -1]  # equal cosines 1/sqrt(2): lower index first
    assert not bool(((got == 1) | (got == 3)).any())


def test_candidate_pairs_are_the_unique_unordered_pairs_in_order():
    neighbours = torch.tensor([[1, 2], [0, 2], [3, -1], [0, 1]])
    first, second = candidate_pairs(neighbours)
    assert list(zip(first.tolist(), second.tolist())) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


# ---------------------------------------------------------------- differentiated pairs


def _assert_matches_brute(result, x, pre, k, top):
    pairs, expected = _brute_differentiated(x, pre, k, top)
    assert list(zip(result.first.tolist(), result.second.tolist())) == pairs
    for n, rows in enumerate(expected):
        assert result.pairs[n, : len(rows)].tolist() == [[i, j] for i, j, _ in rows]
        np.testing.assert_allclose(result.ratio[n, : len(rows)].numpy(), [r for *_, r in rows], rtol=1e-13)
        np.testing.assert_array_equal(result.pre[n, : len(rows)].numpy(), [[pre[i, n], pre[j, n]] for i, j, _ in rows])


def test_differentiated_pairs_equal_a_brute_force_loop_over_all_knn_pairs():
    x, pre = _random_case(4)
    result = differentiated_pairs(torch.from_numpy(x), torch.from_numpy(pre), k=4, top=6)
    assert result.pairs.shape == (5, 6, 2) and result.ratio.shape == (5, 6) and result.pre.shape == (5, 6, 2)
    assert result.ratio.dtype == torch.float64 and result.pre.dtype == torch.float32
    assert bool((result.pairs[..., 0] < result.pairs[..., 1]).all())
    assert (3, 5) not in set(zip(result.first.tolist(), result.second.tolist()))  # duplicated inputs dropped
    _assert_matches_brute(result, x, pre, 4, 6)


@pytest.mark.parametrize("seed", [5, 6])
def test_differentiated_pairs_break_exact_ratio_ties_by_the_smaller_pair(seed):
    x, pre = _integer_case(seed)
    result = differentiated_pairs(torch.from_numpy(x), torch.from_numpy(pre), k=4, top=8)
    ratios = result.ratio.numpy()
    assert any(len(set(row)) < len(row) for row in ratios)  # the case really has ties
    _assert_matches_brute(result, x, pre, 4, 8)


def test_ranking_uses_the_exact_float64_ratio_where_float32_ties():
    # k = T - 1: every pair is a candidate. Pair (0, 1) is 1 + 2**-27 apart, pair (2, 3) exactly 1:
    # in float32 both ratios round to 1.0 and the tie rule would put (0, 1) first; exactly, (2, 3) wins.
    x = torch.tensor([[5.0, 0.0, 0.0], [5.0, 1.0, 2**-13], [5.0, 0.0, 3.0], [5.0, 1.0, 3.0]])
    pre = torch.tensor([[0.0], [1.0], [0.0], [1.0]])
    result = differentiated_pairs(x, pre, k=3, top=2)
    assert result.pairs[0].tolist() == [[2, 3], [0, 1]]
    assert result.ratio[0].tolist() == [1.0, 1.0 / math.sqrt(1.0 + 2.0**-26)]


def test_neuron_chunking_and_neuron_choice_do_not_change_results(monkeypatch):
    x, pre = (torch.from_numpy(a) for a in _random_case(7))
    whole = differentiated_pairs(x, pre, k=4, top=6)
    monkeypatch.setattr(differentiation, "_CPU_BYTES", 4096)  # one or two neurons per chunk
    chunked = differentiated_pairs(x, pre, k=4, top=6)
    chosen = differentiated_pairs(x, pre, neurons=np.array([3, 1]), k=4, top=6)
    for name in ("pairs", "ratio", "pre", "first", "second"):
        assert torch.equal(getattr(chunked, name), getattr(whole, name))
        if name not in ("first", "second"):
            assert torch.equal(getattr(chosen, name), getattr(whole, name)[[3, 1]])
    assert chosen.neurons.tolist() == [3, 1]


def test_fewer_candidate_pairs_than_top_are_padded():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    pre = torch.tensor([[-1.0], [-3.0], [2.0], [5.0]])
    result = differentiated_pairs(x, pre, k=1, top=4)
    assert result.pairs[0].tolist() == [[2, 3], [0, 1], [-1, -1], [-1, -1]]
    np.testing.assert_allclose(result.ratio[0, :2].numpy(), [3 / 0.1, 2 / 0.1], rtol=1e-6)
    assert bool(result.ratio[0, 2:].isnan().all()) and bool(result.pre[0, 2:].isnan().all())
    assert region_fractions(result.pre).tolist() == [[0.5, 0.5, 0.0]]


# ---------------------------------------------------------------- regions


def test_pair_regions_by_hand():
    pre_pairs = torch.tensor([[-1.0, -2.0], [0.0, 3.0], [-0.0, 1.0], [-1.0, 0.0], [2.0, -3.0], [math.nan, math.nan]])
    assert pair_regions(pre_pairs).tolist() == [0, 1, 1, 2, 2, -1]
    assert REGIONS == ("negative", "positive", "straddling")


def test_region_fractions_by_hand_ignore_padding():
    nan = math.nan
    pre_pairs = torch.tensor(
        [
            [[-1.0, -2.0], [-3.0, -1.0], [nan, nan]],  # both real pairs below zero
            [[1.0, 2.0], [-1.0, 1.0], [0.0, 0.0]],
            [[nan, nan], [nan, nan], [nan, nan]],
        ]
    )
    got = region_fractions(pre_pairs)
    assert got[:2].tolist() == [[1.0, 0.0, 0.0], [0.0, 2 / 3, 1 / 3]]
    assert bool(got[2].isnan().all())


def test_base_region_fractions_by_hand():
    pre = torch.tensor([[-1.0, 1.0], [-2.0, 1.0], [3.0, -1.0], [0.0, 2.0]])
    first, second = torch.tensor([0, 0, 1, 2]), torch.tensor([1, 2, 3, 3])
    # neuron 0: (0,1) negative, (0,2) and (1,3) straddling, (2,3) positive
    # neuron 1: (0,1), (1,3) positive; (0,2), (2,3) straddling
    got = base_region_fractions(pre, first, second)
    assert got.tolist() == [[0.25, 0.25, 0.5], [0.0, 0.5, 0.5]]
    assert base_region_fractions(pre, first, second, neurons=[1]).tolist() == [[0.0, 0.5, 0.5]]


def test_planted_negative_and_positive_differentiation_end_to_end():
    rng = np.random.default_rng(8)
    T, d, planted = 200, 16, 10
    x = rng.normal(size=(T, d))
    x[1 : 2 * planted : 2] = x[0 : 2 * planted : 2] + 1e-3 * rng.normal(size=(planted, d))  # close partners
    pre = rng.normal(size=(T, 3)) * 0.5
    for m in range(planted):
        a, b = 2 * m, 2 * m + 1
        pre[a, 0], pre[b, 0] = -6.0 - 0.1 * m, -1.0  # far apart, both negative
        pre[a, 1], pre[b, 1] = 1.0, 6.0 + 0.1 * m  # far apart, both positive
        pre[a, 2], pre[b, 2] = -3.0, 3.0  # across zero
    result = differentiated_pairs(torch.tensor(x, dtype=torch.float32), torch.tensor(pre, dtype=torch.float32), k=5)
    planted_pairs = {(2 * m, 2 * m + 1) for m in range(planted)}
    for n in range(3):
        assert set(map(tuple, result.pairs[n, :planted].tolist())) == planted_pairs
    fractions = region_fractions(result.pre[:, :planted])
    assert fractions.tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    base = base_region_fractions(torch.tensor(pre, dtype=torch.float32), result.first, result.second)
    assert bool((base[0, 0] < 0.6) & (base[1, 1] < 0.6))  # the planted regions stand out against the base rate


# ---------------------------------------------------------------- POS enrichment and token pairs


def test_pos_enrichment_by_hand_on_two_neurons_and_three_tags():
    tags = np.array([0, 0, 1, 2, 1, 0])
    pair_tokens = np.array([[[0, 1], [2, 3]], [[2, 4], [-1, -1]]])
    np.testing.assert_allclose(tag_shares(pair_tokens, tags, 3), [[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]])
    got = pos_enrichment(pair_tokens, tags, 3, n_boot=50)
    np.testing.assert_allclose(got.mean_share, [0.25, 0.625, 0.125])
    np.testing.assert_allclose(got.base_share, [0.5, 1 / 3, 1 / 6])
    np.testing.assert_allclose(got.enrichment, [0.5, 1.875, 0.75])
    assert got.attrs["n_neurons"] == 2
    # two neurons: every resample mean lies between the two neurons' shares
    assert bool((got.mean_share_low >= [0.0, 0.25, 0.0]).all() & (got.mean_share_high <= [0.5, 1.0, 0.25]).all())


def _random_pairs(rng, n_neurons, T, top=4):
    tokens = rng.integers(0, T, size=(n_neurons, top, 2))
    tokens[0, -1] = -1  # some padding
    return tokens


def test_bootstrap_intervals_equal_a_slow_loop_with_the_same_seed():
    rng = np.random.default_rng(9)
    T, n_tags, n_boot, seed, level = 40, 4, 300, 11, 0.9
    tags = rng.integers(0, n_tags, size=T)
    set_a, set_b = _random_pairs(rng, 15, T), _random_pairs(rng, 9, T)

    def shares_of(pair_tokens):
        out = []
        for neuron in pair_tokens:
            tokens = [t for pair in neuron for t in pair if t >= 0]
            out.append([sum(tags[t] == g for t in tokens) / len(tokens) for g in range(n_tags)])
        return np.array(out)

    def boot(shares, draw_rng):
        draws = draw_rng.integers(0, len(shares), size=(n_boot, len(shares)))
        return np.array([shares[row].mean(axis=0) for row in draws])

    quantiles = [(1 - level) / 2, (1 + level) / 2]
    shares_a, shares_b = shares_of(set_a), shares_of(set_b)
    base = np.array([np.mean(tags == g) for g in range(n_tags)])
    low, high = np.quantile(boot(shares_a, np.random.default_rng(seed)), quantiles, axis=0)
    got = pos_enrichment(set_a, tags, n_tags, n_boot=n_boot, seed=seed, level=level)
    np.testing.assert_allclose(got.mean_share_low, low, rtol=1e-12)
    np.testing.assert_allclose(got.mean_share_high, high, rtol=1e-12)
    np.testing.assert_allclose(got.enrichment_low, low / base, rtol=1e-12)
    np.testing.assert_allclose(got.enrichment_high, high / base, rtol=1e-12)

    draw_rng = np.random.default_rng(seed)
    diff = boot(shares_a, draw_rng) - boot(shares_b, draw_rng)
    low, high = np.quantile(diff, quantiles, axis=0)
    got = enrichment_difference(set_a, set_b, tags, n_tags, n_boot=n_boot, seed=seed, level=level)
    np.testing.assert_allclose(got.difference, shares_a.mean(0) - shares_b.mean(0), rtol=1e-12)
    np.testing.assert_allclose(got.difference_low, low, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.difference_high, high, rtol=1e-12, atol=1e-15)
    assert (got.attrs["n_a"], got.attrs["n_b"]) == (15, 9)


def test_enrichment_difference_has_the_planted_sign():
    rng = np.random.default_rng(10)
    tags = np.array([0] * 20 + [1] * 20)
    set_a = rng.integers(0, 20, size=(30, 5, 2))  # tag-0 tokens mostly
    set_a[:, 0] = rng.integers(20, 40, size=(30, 2))
    set_b = rng.integers(20, 40, size=(30, 5, 2))  # tag-1 tokens only
    got = enrichment_difference(set_a, set_b, tags, 2, n_boot=200)
    np.testing.assert_allclose(got.difference, [0.8, -0.8])
    assert float(got.difference_low[0]) > 0 and float(got.difference_high[1]) < 0


def test_token_pair_counts_by_hand():
    token_ids = np.array([50, 7, 50, 9, 7])
    pair_tokens = np.array([[[0, 1], [2, 4], [-1, -1]], [[1, 2], [0, 3], [3, 4]]])
    expected = Counter({(7, 50): 3, (9, 50): 1, (7, 9): 1})
    assert token_pair_counts(pair_tokens, token_ids) == expected
    assert token_pair_counts(torch.from_numpy(pair_tokens), torch.from_numpy(token_ids)).most_common(1) == [
        ((7, 50), 3)
    ]


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_user_errors_naming_the_value():
    x, pre = (torch.from_numpy(a) for a in _random_case(0))
    with pytest.raises(UserInputError, match="60 and 59 tokens"):
        differentiated_pairs(x, pre[:59])
    with pytest.raises(UserInputError, match="k=60"):
        differentiated_pairs(x, pre, k=60)
    with pytest.raises(UserInputError, match="k=0"):
        nearest_neighbours(x, 0)
    with pytest.raises(UserInputError, match="top=0"):
        differentiated_pairs(x, pre, top=0)
    with pytest.raises(UserInputError, match="neuron 5 is out of range"):
        differentiated_pairs(x, pre, neurons=[0, 5])
    with pytest.raises(UserInputError, match="chunk_rows"):
        nearest_neighbours(x, 3, chunk_rows=0)
    bad = pre.clone()
    bad[3, 2] = math.nan
    with pytest.raises(UserInputError, match="neuron 2"):
        differentiated_pairs(x, bad, k=4)
    with pytest.raises(UserInputError, match="token 6"):
        pos_enrichment(np.array([[[0, 6]]]), np.array([0, 1, 0]), 2)
    with pytest.raises(UserInputError, match="level"):
        pos_enrichment(np.array([[[0, 1]]]), np.array([0, 1, 0]), 2, level=1.5)
