"""Top/bottom p% masks, random controls and the mask <-> index conversions."""

import math

import pytest
import torch

from dynamics.errors import UserInputError
from dynamics.stats.cohort import (
    bottom_percent_mask,
    cohort_size,
    indices_to_mask,
    mask_to_indices,
    random_control_mask,
    top_percent_mask,
)


def _slow_top(scores: list[float], count: int, descending: bool = True) -> set[int]:
    """Reference ranking: NaN last, then by score, ties by lower index."""
    key = [(math.isnan(s), -s if descending else s, i) for i, s in enumerate(scores)]
    return {i for *_, i in sorted(key)[:count]}


@pytest.mark.parametrize(
    ("percent", "n", "expected"),
    [(1.0, 8192, 82), (1.0, 50, 1), (0.5, 300, 2), (2.5, 100, 3), (100, 7, 7), (1, 10, 0), (5, 10, 1)],
)
def test_cohort_size_rounds_half_up(percent, n, expected):
    assert cohort_size(percent, n) == expected


def test_top_and_bottom_per_layer_match_a_sort():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 400, generator=gen).double()
    top, bottom = top_percent_mask(scores, 2.0), bottom_percent_mask(scores, 2.0)
    assert top.shape == (3, 400) and top.dtype == torch.bool
    assert top.sum(dim=1).tolist() == [8, 8, 8]
    for layer in range(3):
        row = scores[layer].tolist()
        assert set(torch.nonzero(top[layer]).view(-1).tolist()) == _slow_top(row, 8)
        assert set(torch.nonzero(bottom[layer]).view(-1).tolist()) == _slow_top(row, 8, descending=False)


def test_ties_and_nan_are_broken_by_lower_index():
    scores = torch.tensor([[1.0, 5.0, 5.0, 5.0, math.nan, 0.0, 0.0, 0.0, 2.0, 3.0]])
    assert mask_to_indices(top_percent_mask(scores, 20.0)) == [[1, 2]]
    assert mask_to_indices(bottom_percent_mask(scores, 20.0)) == [[5, 6]]
    assert mask_to_indices(top_percent_mask(scores, 100.0)) == [list(range(10))]
    assert mask_to_indices(top_percent_mask(scores, 90.0))[0] == [0, 1, 2, 3, 5, 6, 7, 8, 9]  # NaN picked last
    assert mask_to_indices(bottom_percent_mask(scores, 90.0))[0] == [0, 1, 2, 3, 5, 6, 7, 8, 9]


def test_global_scope_counts_over_all_layers_with_flat_index_ties():
    scores = torch.tensor([[0.0, 9.0, 1.0, 1.0], [9.0, 2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 9.0]])
    top = top_percent_mask(scores, 50.0, scope="global")  # 6 of 12
    # three 9s, then 2, then the first two 1s in flat order (layer 0 before layer 2).
    assert mask_to_indices(top) == [[1, 2, 3], [0, 1], [3]]
    assert mask_to_indices(bottom_percent_mask(scores, 25.0, scope="global")) == [[0], [2, 3], []]
    gen = torch.Generator().manual_seed(1)
    big = torch.randn(4, 1000, generator=gen)
    mask = top_percent_mask(big, 1.0, scope="global")
    assert int(mask.sum()) == 40
    assert big[mask].min() > big[~mask].max()


def test_random_control_is_disjoint_sized_per_layer_and_seeded():
    gen = torch.Generator().manual_seed(2)
    scores = torch.randn(4, 500, generator=gen)
    cohort = top_percent_mask(scores, 3.0)
    cohort[2] = False  # a layer without cohort gets no control either
    control = random_control_mask(cohort, seed=7)
    assert not (control & cohort).any()
    assert control.sum(dim=1).tolist() == cohort.sum(dim=1).tolist() == [15, 15, 0, 15]
    assert torch.equal(control, random_control_mask(cohort, seed=7))
    assert not torch.equal(control, random_control_mask(cohort, seed=8))


def test_random_control_needs_enough_other_neurons():
    with pytest.raises(UserInputError, match="layer 0 has 3 cohort neurons but only 1 others"):
        random_control_mask(torch.tensor([[True, True, True, False]]), seed=0)


def test_mask_indices_round_trip_and_errors():
    indices = [[0, 5], [], [9]]
    mask = indices_to_mask(indices, 10)
    assert mask.shape == (3, 10) and int(mask.sum()) == 3
    assert mask_to_indices(mask) == indices
    with pytest.raises(UserInputError, match="layer 1: neuron index 10 is outside"):
        indices_to_mask([[1], [10]], 10)


@pytest.mark.parametrize("percent", [0, -1, 100.5, math.nan, "a lot"])
def test_bad_percent_is_one_line_error(percent):
    with pytest.raises(UserInputError, match=r"^percent must be a number in \(0, 100\], got"):
        top_percent_mask(torch.rand(2, 10), percent)


def test_bad_scope_and_shape():
    with pytest.raises(UserInputError, match="scope must be one of layer, global, got 'model'"):
        bottom_percent_mask(torch.rand(2, 10), 1.0, scope="model")
    with pytest.raises(UserInputError, match=r"2-D tensor \[layers, neurons\]"):
        top_percent_mask(torch.rand(10), 1.0)


# ------------------------------------------------- the matched control's search (tolerance vs clean)
def test_a_trial_below_clean_never_matches_a_top_set_above_clean():
    from dynamics.stats.cohort import bisect_to_target

    # The case: clean 43.70, the top set +1.5%; the first trial (m = 0.1%) lies below clean. With the old
    # 2% of the absolute perplexity it "matched" at once; relative to the increase it cannot.
    clean, target = 43.70, 43.70 * 1.015
    values = {0.1: 43.60, 90.0: 60.0}
    f = lambda m: values.get(m, clean + (m - 0.1) / 89.9 * (60.0 - clean))  # noqa: E731
    old = bisect_to_target(f, target, 0.1, 90.0, tolerance=0.02)
    assert old.converged and old.argument == 0.1  # the defect this change removes
    new = bisect_to_target(f, target, 0.1, 90.0, tolerance=0.05, max_iterations=30, baseline=clean)
    assert new.converged and new.value > clean
    assert abs(new.value - target) <= 0.05 * (target - clean) and new.band == pytest.approx(0.05 * (target - clean))
    assert all(abs(v - target) > new.band for m, v in new.trials[:-1])


def test_non_monotone_perplexity_is_refined_inside_the_bracket():
    from dynamics.stats.cohort import bisect_to_target

    # The values: 1.5% -> 44.12, 2.21% -> 44.00, 2.73% -> 44.55; the target 44.30 lies between.
    table = {
        0.1: 43.5,
        90.0: 80.0,
        45.05: 50.0,
        22.575: 47.0,
        11.3375: 45.0,
        5.71875: 44.9,
        2.909375: 44.55,
        1.5046875: 44.12,
    }

    def f(m: float) -> float:
        if m in table:
            return table[m]
        return 44.0 if m < 2.5 else 44.32  # dips below the target, then crosses it near 2.7%

    result = bisect_to_target(f, 44.30, 0.1, 90.0, tolerance=0.05, max_iterations=12, baseline=43.7)
    assert result.converged and abs(result.value - 44.30) <= 0.05 * 0.6
    low, high = result.bracket
    assert f(low) < 44.30 < f(high) and low < result.argument < high  # the kept bracket straddles the target


def test_a_top_set_that_does_not_raise_perplexity_has_nothing_to_match():
    from dynamics.stats.cohort import bisect_to_target

    result = bisect_to_target(lambda m: 40.0 + m, 39.9, 0.1, 90.0, tolerance=0.05, baseline=40.0)
    assert not result.converged and "not above clean" in result.reason and len(result.trials) == 1
