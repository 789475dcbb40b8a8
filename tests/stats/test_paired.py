"""Paired statistics: each statistic against an independent computation, the bootstrap
against a slow loop, verdicts and planning by hand, calibration by simulation."""

from __future__ import annotations

import json
import math
import tracemalloc

import numpy as np
import pytest
from scipy import stats

from dynamics.errors import UserInputError
from dynamics.stats.paired import (
    Comparison,
    accuracy_difference,
    default_block_length,
    mcnemar_exact,
    mean_difference,
    paired_bootstrap_sums,
    perplexity_ratio,
    ratio_difference,
    relative_increase,
    spearman_block_bootstrap,
    trend,
)
from dynamics.stats.verdicts import (
    equivalence_verdict,
    items_for,
    items_needed,
    minimum_detectable_difference,
    precision_sentence,
    standard_error,
    verdict,
)

# --- references -----------------------------------------------------------------------


def _slow_stratified_sums(values: list[list[float]], strata: list[str], n_boot: int, seed: int) -> np.ndarray:
    """One resample at a time, item by item: the engine's documented contract spelled out.

    Each resample draws one uniform per item slot; slots run stratum by stratum in sorted
    label order, and a slot of stratum s picks member floor(u * n_s) of s (in input order).
    """
    rng = np.random.default_rng(seed)
    members = {label: [i for i, s in enumerate(strata) if s == label] for label in sorted(set(strata))}
    out = []
    for _ in range(n_boot):
        u = rng.random(len(values))
        totals = [0.0] * len(values[0])
        slot = 0
        for group in members.values():
            for _ in group:
                item = group[int(u[slot] * len(group))]
                totals = [t + v for t, v in zip(totals, values[item])]
                slot += 1
        out.append(totals)
    return np.array(out)


def _slow_block_spearman(x: np.ndarray, y: np.ndarray, block: int, n_boot: int, seed: int) -> np.ndarray:
    """Moving-block resamples one at a time: ceil(n / block) random starts, blocks joined, cut to n."""
    rng = np.random.default_rng(seed)
    n = len(x)
    out = []
    for _ in range(n_boot):
        starts = rng.integers(0, n - block + 1, size=math.ceil(n / block))
        picks = [s + k for s in starts for k in range(block)][:n]
        out.append(stats.spearmanr(x[picks], y[picks]).statistic)
    return np.array(out)


def _simulated_accuracies(rng: np.random.Generator, n_items: int, effect: float, n_strata: int = 20):
    """Paired correctness: a shared per-item ease (case effect + item effect), independent noise per condition."""
    strata = np.arange(n_items) % n_strata
    ease = rng.normal(0, 1, n_strata)[strata] + rng.normal(0, 1, n_items)
    p_b = 1 / (1 + np.exp(-ease))
    correct_b = rng.random(n_items) < p_b
    correct_a = rng.random(n_items) < np.clip(p_b + effect, 0, 1)
    return correct_a, correct_b, strata


# --- McNemar --------------------------------------------------------------------------


@pytest.mark.parametrize(("b", "c", "expected"), [(0, 5, 0.0625), (5, 0, 0.0625), (1, 9, 22 / 1024), (2, 0, 0.5)])
def test_mcnemar_hand_values(b, c, expected):
    # 2 * sum_{i <= min} C(n, i) / 2^n: (0, 5) -> 2/32, (1, 9) -> 2 * 11/1024, (2, 0) -> 2/4
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_without_discordance_or_with_balance_is_one():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(7, 7) == 1.0
    assert mcnemar_exact(0, 1) == 1.0


def test_mcnemar_matches_scipy_binomtest_on_a_grid():
    pairs = [(b, c) for b in range(0, 41, 3) for c in range(0, 41, 4)] + [(120, 95), (1000, 1100), (3, 60)]
    for b, c in pairs:
        expected = 1.0 if b + c == 0 else stats.binomtest(b, b + c, 0.5).pvalue
        assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300), (b, c)


def test_mcnemar_rejects_negative_or_fractional_counts():
    with pytest.raises(UserInputError, match="non-negative integers"):
        mcnemar_exact(-1, 3)
    with pytest.raises(UserInputError, match="non-negative integers"):
        mcnemar_exact(1.5, 3)  # type: ignore[arg-type]


# --- the bootstrap engine -------------------------------------------------------------


def test_engine_equals_a_slow_loop_with_the_same_draws():
    rng = np.random.default_rng(5)
    strata = [["tse_b", "tse_a", "tse_c"][i % 3] if i < 30 else "tse_a" for i in range(37)]  # interleaved, unequal
    values = rng.normal(size=(37, 2))
    slow = _slow_stratified_sums(values.tolist(), strata, n_boot=60, seed=11)
    fast = paired_bootstrap_sums(values, strata, n_boot=60, seed=11)
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)
    # chunks of 3 resamples draw the same sequence as one chunk
    np.testing.assert_array_equal(paired_bootstrap_sums(values, strata, 60, 11, chunk_elements=3 * 37), fast)


def test_mean_difference_ci_is_the_percentile_of_the_slow_loop():
    rng = np.random.default_rng(6)
    strata = list("abcabcaab" * 5)
    a, b = rng.normal(size=45), rng.normal(size=45)
    slow_means = _slow_stratified_sums((a - b)[:, None].tolist(), strata, n_boot=400, seed=3)[:, 0] / 45
    result = mean_difference(a, b, strata, n_boot=400, seed=3)
    low, high = np.quantile(slow_means, [0.025, 0.975])
    assert result.low == pytest.approx(low, abs=1e-12) and result.high == pytest.approx(high, abs=1e-12)
    share = min(np.sum(slow_means <= 0), np.sum(slow_means >= 0))
    assert result.p_value == pytest.approx(min(1.0, 2 * (1 + share) / 401), abs=1e-12)


def test_resampling_keeps_every_stratum_its_own_size():
    strata = np.array(["x"] * 5 + ["y"] * 11 + ["z"] * 2)
    indicators = np.stack([strata == label for label in "xyz"], axis=1)
    sums = paired_bootstrap_sums(indicators, strata, n_boot=500, seed=0)
    assert (sums == [5, 11, 2]).all()


def test_a_difference_constant_within_strata_has_a_zero_width_stratified_ci():
    strata = np.repeat(["case1", "case2", "case3"], [40, 25, 35])
    values_a = np.repeat([0.5, -1.0, 2.0], [40, 25, 35])
    stratified = mean_difference(values_a, np.zeros(100), strata, n_boot=500)
    assert stratified.low == pytest.approx(stratified.estimate, abs=1e-12)
    assert stratified.high == pytest.approx(stratified.estimate, abs=1e-12)
    assert stratified.n_strata == 3
    assert mean_difference(values_a, np.zeros(100), None, n_boot=500).half_width > 0.1


def test_bootstrap_spread_matches_the_stratified_variance_of_a_mean():
    rng = np.random.default_rng(7)
    sizes, scales = [50, 150, 100], [0.5, 1.0, 3.0]
    strata = np.repeat([0, 1, 2], sizes)
    d = np.concatenate([rng.normal(0, s, n) for n, s in zip(sizes, scales)])
    n = len(d)
    # resampling n_s of n_s items: Var(mean) = sum_s (n_s / n)^2 var0_s / n_s, var0 with ddof=0
    expected = math.sqrt(sum((k / n) ** 2 * np.var(d[strata == s]) / k for s, k in enumerate(sizes)))
    spread = np.std(paired_bootstrap_sums(d, strata, n_boot=20_000, seed=1)[:, 0] / n)
    # the relative sampling error of an sd from 20,000 draws is about 1/sqrt(2 * 20,000) = 0.5%
    assert spread == pytest.approx(expected, rel=0.03)


def test_engine_memory_is_bounded_by_its_chunks():
    rng = np.random.default_rng(0)
    d = rng.integers(-1, 2, 3350).astype(float)
    tracemalloc.start()
    try:
        sums = paired_bootstrap_sums(d, np.arange(3350) % 67, n_boot=10_000, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sums.shape == (10_000, 1)
    assert peak < 64 * 2**20, (
        f"peak {peak / 2**20:.0f} MiB; all indices at once would be {10_000 * 3350 * 8 / 2**20:.0f}"
    )


# --- estimates --------------------------------------------------------------------------


def test_accuracy_difference_estimate_counts_and_p():
    rng = np.random.default_rng(1)
    a, b = rng.random(300) < 0.7, rng.random(300) < 0.6
    result = accuracy_difference(a, b, n_boot=200)
    assert result.estimate == np.mean(a) - np.mean(b)
    assert (result.value_a, result.value_b) == (np.mean(a), np.mean(b))
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    assert (result.only_a, result.only_b, result.n) == (only_a, only_b, 300)
    assert result.p_value == pytest.approx(stats.binomtest(only_a, only_a + only_b).pvalue, rel=1e-9)
    assert result.p_method == "exact McNemar" and result.statistic == "accuracy_difference"
    assert result.low < result.estimate < result.high


def test_missing_outcomes_are_dropped_before_resampling():
    rng = np.random.default_rng(2)
    a, b = (rng.random(200) < 0.6).astype(float), (rng.random(200) < 0.5).astype(float)
    strata = np.arange(200) % 4
    a[[3, 50]], b[[50, 120, 199]] = np.nan, np.nan
    keep = ~(np.isnan(a) | np.isnan(b))
    result = accuracy_difference(a, b, strata, n_boot=300, seed=4)
    clean = accuracy_difference(a[keep].astype(bool), b[keep].astype(bool), strata[keep], n_boot=300, seed=4)
    assert (result.n, result.n_dropped) == (196, 4)
    assert (result.estimate, result.low, result.high, result.p_value) == (
        clean.estimate,
        clean.low,
        clean.high,
        clean.p_value,
    )


def test_mean_difference_estimate_is_the_mean_of_the_differences():
    rng = np.random.default_rng(3)
    a, b = rng.normal(1, 2, 250), rng.normal(0.8, 2, 250)
    result = mean_difference(a, b, n_boot=200)
    assert result.estimate == np.mean(a - b)
    assert (result.value_a, result.value_b) == (np.mean(a), np.mean(b))
    assert result.p_method == "bootstrap percentile"


def test_perplexity_ratio_by_hand_and_its_relative_increase():
    nll_a, tokens_a = [300.0, 420.0, 250.0], [100, 120, 90]
    nll_b, tokens_b = [280.0, 400.0, 240.0], [100, 120, 90]
    result = perplexity_ratio(nll_a, tokens_a, nll_b, tokens_b, n_boot=200)
    ppl_a, ppl_b = math.exp(970 / 310), math.exp(920 / 310)
    assert result.value_a == pytest.approx(ppl_a, rel=1e-14) and result.value_b == pytest.approx(ppl_b, rel=1e-14)
    assert result.estimate == pytest.approx(ppl_a / ppl_b, rel=1e-14)
    increase = relative_increase(result)
    assert increase.statistic == "perplexity_increase"
    assert increase.estimate == pytest.approx(ppl_a / ppl_b - 1, rel=1e-12)
    assert (increase.low, increase.high) == pytest.approx((result.low - 1, result.high - 1))
    assert verdict(result, +1, null=1.0) == verdict(increase, +1)


def test_perplexity_of_identical_conditions_is_a_ratio_of_one_with_p_one():
    rng = np.random.default_rng(4)
    nll, tokens = rng.gamma(5, 60, 50), np.full(50, 127)
    result = perplexity_ratio(nll, tokens, nll, tokens, n_boot=300)
    assert (result.estimate, result.low, result.high, result.p_value) == (1.0, 1.0, 1.0, 1.0)


def test_trend_is_the_least_squares_slope_of_the_group_means():
    rng = np.random.default_rng(5)
    harm = np.stack([rng.normal(0.2 - 0.03 * g, 0.3, 120) for g in range(6)])
    result = trend(harm, np.arange(120) % 6, n_boot=500)
    assert result.estimate == pytest.approx(np.polyfit(np.arange(6), harm.mean(axis=1), 1)[0], abs=1e-14)
    assert result.statistic == "slope" and result.n == 120
    assert verdict(result, -1) == "supported"


def test_trend_drops_items_missing_in_any_group():
    harm = np.array([[1.0, 2.0, np.nan, 4.0], [0.0, 1.0, 5.0, 2.0], [0.0, 1.0, 1.0, 1.0]])
    result = trend(harm, n_boot=100)
    kept = harm[:, [0, 1, 3]]
    assert (result.n, result.n_dropped) == (3, 1)
    assert result.estimate == pytest.approx(np.polyfit(np.arange(3), kept.mean(axis=1), 1)[0], abs=1e-14)


def test_spearman_estimate_is_scipys_and_nan_steps_are_dropped_pairwise():
    rng = np.random.default_rng(6)
    x = np.cumsum(rng.normal(size=60))
    y = x + rng.normal(0, 2, 60)
    x[5], y[17] = np.nan, np.nan
    result = spearman_block_bootstrap(x, y, n_boot=300)
    keep = ~(np.isnan(x) | np.isnan(y))
    assert result.estimate == stats.spearmanr(x[keep], y[keep]).statistic
    assert (result.n, result.n_dropped, result.block) == (58, 2, default_block_length(58))


def test_spearman_ci_is_the_percentile_of_a_slow_moving_block_loop():
    rng = np.random.default_rng(7)
    x = np.cumsum(rng.normal(size=40))
    y = x + rng.normal(0, 3, 40)
    slow = _slow_block_spearman(x, y, block=4, n_boot=300, seed=9)
    result = spearman_block_bootstrap(x, y, block=4, n_boot=300, seed=9)
    low, high = np.quantile(slow, [0.025, 0.975])
    assert (result.low, result.high) == pytest.approx((low, high), abs=1e-12)


def test_spearman_with_one_block_of_all_steps_resamples_the_series_itself():
    x = np.arange(12.0)
    y = np.array([1, 3, 2, 5, 4, 6, 8, 7, 9, 12, 10, 11.0])
    result = spearman_block_bootstrap(x, y, block=12, n_boot=50)
    assert result.low == pytest.approx(result.estimate) and result.high == pytest.approx(result.estimate)


def test_default_block_length():
    assert [default_block_length(n) for n in (3, 8, 27, 143, 1000)] == [2, 2, 3, 5, 10]


def test_a_constant_series_has_no_correlation():
    result = spearman_block_bootstrap(np.ones(20), np.arange(20.0), n_boot=50)
    assert math.isnan(result.estimate) and result.p_value is None
    assert result.to_dict()["estimate"] is None and result.to_dict()["low"] is None


# --- determinism and results ------------------------------------------------------------


def test_same_seed_same_ci_different_seed_different_ci():
    rng = np.random.default_rng(8)
    a, b, strata = _simulated_accuracies(rng, 400, 0.05)
    first = accuracy_difference(a, b, strata, n_boot=500, seed=1)
    assert accuracy_difference(a, b, strata, n_boot=500, seed=1) == first
    other = accuracy_difference(a, b, strata, n_boot=500, seed=2)
    assert (other.low, other.high) != (first.low, first.high)
    x = np.cumsum(rng.normal(size=50))
    assert spearman_block_bootstrap(x, x**2, n_boot=200, seed=1) == spearman_block_bootstrap(
        x, x**2, n_boot=200, seed=1
    )


def test_to_dict_is_json_ready():
    result = mean_difference([1.0, 2.0, 3.0], [0.0, 2.5, 1.0], n_boot=np.int64(100), seed=3)
    fields = result.to_dict()
    assert json.loads(json.dumps(fields)) == fields
    assert fields["half_width"] == pytest.approx((result.high - result.low) / 2)
    assert fields["only_a"] is None and fields["n_boot"] == 100 and type(fields["n_boot"]) is int
    assert set(fields) >= {"statistic", "estimate", "low", "high", "level", "n", "p_value", "p_method"}


def test_all_equal_items_give_a_zero_width_ci_and_p_one():
    correct = np.array([True, False, True, True, False] * 10)
    accuracy = accuracy_difference(correct, correct, n_boot=200)
    assert (accuracy.estimate, accuracy.low, accuracy.high, accuracy.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert (accuracy.only_a, accuracy.only_b) == (0, 0)
    margins = np.linspace(-1, 1, 30)
    same = mean_difference(margins, margins, n_boot=200)
    assert (same.estimate, same.half_width, same.p_value) == (0.0, 0.0, 1.0)


# --- input errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: accuracy_difference([], []), "correct_a is empty"),
        (lambda: mean_difference([1.0, 2.0], []), "values_b is empty"),
        (lambda: accuracy_difference([True, False], [True]), "lengths"),
        (lambda: mean_difference([1.0, 2.0], [1.0, 2.0], strata=["a"]), "strata"),
        (lambda: mean_difference([[1.0, 2.0]], [[1.0, 2.0]]), "1-D"),
        (lambda: mean_difference([np.nan, 1.0], [1.0, np.nan]), "every item has a NaN"),
        (lambda: accuracy_difference([0.0, 2.0], [1.0, 0.0]), "booleans"),
        (lambda: mean_difference([1.0], [2.0], level=1.0), "level"),
        (lambda: mean_difference([1.0], [2.0], n_boot=0), "n_boot"),
        (lambda: trend([[1.0, 2.0]]), "2\\+ groups"),
        (lambda: spearman_block_bootstrap([1.0, 2.0], [2.0, 1.0]), "at least 3 steps"),
        (lambda: spearman_block_bootstrap([1.0, 2.0, 3.0], [2.0, 1.0, 3.0], block=4), "block"),
        (lambda: perplexity_ratio([1.0], [-1], [1.0], [1]), "tokens"),
        (lambda: verdict((0.1, 0.2), 0), "expected_sign"),
        (lambda: equivalence_verdict(-0.1, 0.1, 0.0), "margin"),
        (lambda: items_needed([1.0, -1.0], None, 0.0), "half_width"),
        (lambda: minimum_detectable_difference(0.01, power=1.0), "power"),
    ],
)
def test_bad_input_is_a_user_error_naming_the_problem(call, message):
    with pytest.raises(UserInputError, match=message):
        call()


# --- verdicts and planning --------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high", "sign", "expected"),
    [
        (0.01, 0.05, 1, "supported"),
        (0.0, 0.05, 1, "inconclusive"),  # the CI must exclude 0 strictly
        (-0.05, -0.01, 1, "contradicted"),
        (-0.05, -0.01, -1, "supported"),
        (0.01, 0.05, -1, "contradicted"),
        (-0.01, 0.05, -1, "inconclusive"),
        (math.nan, 0.05, 1, "inconclusive"),
    ],
)
def test_verdict(low, high, sign, expected):
    assert verdict((low, high), sign) == expected


def test_verdict_reads_a_comparison():
    result = Comparison("mean_difference", 0.3, 0.1, 0.5, 0.95, 10, None, "", 100, 0)
    assert verdict(result, 1) == "supported" and verdict(result, 1, null=0.2) == "inconclusive"


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (-0.02, 0.03, "supported"),
        (-0.05, 0.05, "supported"),  # the band is closed
        (-0.02, 0.08, "inconclusive"),
        (0.06, 0.09, "contradicted"),
        (-0.2, -0.051, "contradicted"),
        (-0.1, 0.1, "inconclusive"),
    ],
)
def test_equivalence_verdict(low, high, expected):
    assert equivalence_verdict(low, high, 0.05) == expected


def test_standard_error_by_hand():
    d = [1.0, -1.0, 1.0, -1.0]  # var (ddof=1) = 4/3
    assert standard_error(d) == pytest.approx(math.sqrt(4 / 3 / 4))
    assert standard_error(d) == pytest.approx(np.std(d, ddof=1) / 2)
    # strata {0, 2} (var 2) and {1, 1, 4, 4} (var 3): (2/6)^2 * 2/2 + (4/6)^2 * 3/4 = 1/9 + 1/3
    assert standard_error([0.0, 2.0, 1.0, 1.0, 4.0, 4.0], ["s", "s", "t", "t", "t", "t"]) == pytest.approx(
        math.sqrt(4 / 9)
    )


def test_minimum_detectable_difference_by_hand():
    # z_0.975 = 1.959964, z_0.8 = 0.841621
    assert minimum_detectable_difference(0.01) == pytest.approx((1.959964 + 0.841621) * 0.01, rel=1e-6)
    assert minimum_detectable_difference(0.02, level=0.9, power=0.5) == pytest.approx(1.644854 * 0.02, rel=1e-6)


def test_items_needed_by_hand():
    d = [1.0, -1.0, 1.0, -1.0]  # sigma^2 = 4/3
    assert items_needed(d, None, 0.1) == math.ceil(1.959964**2 * (4 / 3) / 0.01)  # 513
    # per-item stratified variance: (2/6) * 2 + (4/6) * 3 = 8/3
    assert items_needed([0.0, 2.0, 1.0, 1.0, 4.0, 4.0], list("sstttt"), half_width=0.5) == math.ceil(
        1.959964**2 * (8 / 3) / 0.25
    )
    assert items_needed(d, None, 5.0) == 4  # already reached: the current n


def test_formula_half_width_matches_the_bootstrap_on_2000_items():
    rng = np.random.default_rng(9)
    a, b, strata = _simulated_accuracies(rng, 2000, 0.03)
    d = a.astype(float) - b
    formula = stats.norm.ppf(0.975) * standard_error(d, strata)
    bootstrap = accuracy_difference(a, b, strata, n_boot=4000, seed=1).half_width
    assert formula == pytest.approx(bootstrap, rel=0.1)
    needed = items_needed(d, strata, half_width=formula / 2)
    assert needed == pytest.approx(4 * 2000, rel=0.001)  # half the width takes four times the items


def test_items_for_scales_the_ci_by_root_n():
    result = Comparison("slope", -0.02, -0.03, -0.01, 0.95, 880, 0.01, "bootstrap percentile", 100, 0)
    assert items_for(result, 0.005) == 880 * 4
    assert items_for(result, 0.02) == 880


def test_precision_sentence():
    assert (
        precision_sentence(880, 0.029, 6951, 0.01) == "880 pairs give +/-2.9 points; about 7,000 pairs would give +/-1"
    )
    assert precision_sentence(880, 0.029, 6893, 0.01).endswith("about 6,900 pairs would give +/-1")  # 2 figures, up
    assert precision_sentence(880, 0.008, 880, 0.01) == "880 pairs give +/-0.8 points, within the +/-1 target"
    assert (
        precision_sentence(143, 0.12, 1234, 0.05, unit="", scale=1.0, items="steps")
        == "143 steps give +/-0.12; about 1,300 steps would give +/-0.05"
    )
    assert precision_sentence(40, 0.5, 95, 0.2, unit="nats", scale=1.0) == (
        "40 pairs give +/-0.5 nats; about 95 pairs would give +/-0.2"
    )


# --- calibration ------------------------------------------------------------------------


def test_no_effect_is_rarely_supported_and_a_planted_effect_nearly_always():
    rng = np.random.default_rng(2026)
    null_studies = (_simulated_accuracies(rng, 400, 0.0) for _ in range(200))
    false_calls = [verdict(accuracy_difference(*study, n_boot=1000, seed=s), 1) for s, study in enumerate(null_studies)]
    rate = false_calls.count("supported") / 200
    assert rate <= 0.08, f"no effect called supported in {rate:.1%} of 200 studies (expected about 2.5%)"
    effect_studies = (_simulated_accuracies(rng, 1000, 0.10) for _ in range(50))
    hits = [verdict(accuracy_difference(*study, n_boot=1000, seed=s), 1) for s, study in enumerate(effect_studies)]
    power = hits.count("supported") / 50
    assert power >= 0.95, f"a 10-point effect over 1,000 items called supported in only {power:.0%} of 50 studies"


def test_ratio_difference_equals_the_ratios_by_hand_and_a_slow_resampling_loop():
    rng = np.random.default_rng(5)
    num_a, den_a = rng.normal(2.0, 1.0, 40), rng.integers(1, 30, 40).astype(float)
    num_b, den_b = rng.normal(0.5, 1.0, 40), rng.integers(1, 30, 40).astype(float)
    result = ratio_difference(num_a, den_a, num_b, den_b, n_boot=400, seed=3)
    assert result.estimate == num_a.sum() / den_a.sum() - num_b.sum() / den_b.sum()
    assert (result.value_a, result.value_b, result.n) == (num_a.sum() / den_a.sum(), num_b.sum() / den_b.sum(), 40)
    # the same resamples by the engine's documented rule, computed slowly
    sums = paired_bootstrap_sums(np.column_stack([num_a, den_a, num_b, den_b]), None, 400, 3)
    slow = [s[0] / s[1] - s[2] / s[3] for s in sums]
    assert result.low == pytest.approx(np.percentile(slow, 2.5)) and result.high == pytest.approx(
        np.percentile(slow, 97.5)
    )
    with pytest.raises(UserInputError, match="positive total"):
        ratio_difference([1.0], [0.0], [1.0], [1.0], n_boot=10)
