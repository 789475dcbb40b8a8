"""`dynamics ablate --target-ci`: the TSE and BLiMP samples sized from a pilot, stored, and reused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
from study.test_study import study_config

import dynamics.evaluate.sizing as sizing
from dynamics.evaluate.benchmarks import Benchmarks
from dynamics.evaluate.conditions import Condition
from dynamics.evaluate.planning import PassBudget
from dynamics.stats.paired import accuracy_difference
from dynamics.study.driver import run_study
from store import open_cube

pytestmark = pytest.mark.models


def test_the_sizes_follow_the_pilots_interval(monkeypatch):
    """A pilot whose neg_top loses pairs: the per-case size is n x (h / target)^2 spread over the cases."""
    rng = np.random.default_rng(0)
    cases = np.asarray([f"case{i % 4}" for i in range(80)], dtype=object)
    random = rng.normal(1.0, 1.0, 80)
    top = random - rng.normal(0.4, 0.8, 80)  # neg_top worse on many pairs
    pilot = xr.Dataset(
        {"tse_item_margin": (("condition", "tse_item"), np.stack([top, random]).astype(np.float32))},
        coords={"condition": ["neg_top", "neg_random"], "tse_item_case": ("tse_item", cases)},
    )
    monkeypatch.setattr(sizing, "evaluate", lambda *args, **kwargs: pilot)
    masks = np.zeros((2, 4), dtype=bool)
    pair = (Condition("neg_top", masks), Condition("neg_random", masks))
    sizes, record = sizing.pilot_sizes(None, Benchmarks(None), PassBudget(), pair, 5.0, seed=3)
    expected = accuracy_difference(random > 0, top > 0, cases, n_boot=2000, seed=3)
    needed = math.ceil(80 * (expected.half_width / 0.05) ** 2)
    assert record["pilot_tse_pairs"] == 80 and record["pilot_tse_half_width_points"] == 100 * expected.half_width
    assert record["pilot_comparison"] == "neg_random - neg_top"
    assert sizes.tse_per_case == math.ceil(needed / 4) > 20  # more than the pilot's 20 per case
    assert sizes.blimp_per_paradigm == 0  # no BLiMP in the pilot


def test_the_sizes_are_stored_and_a_resumed_study_reuses_them(study_data, tmp_path):
    config = study_config(
        study_data / "llama", tmp_path / "sized.zarr", study_data, target_ci=8.0, tse_per_case=2, layer_groups=0
    )
    assert not run_study(config).failed
    ds = open_cube(config.out)
    pilot = ds.attrs["provenance"]["target_ci"]
    assert pilot["pilot_tse_pairs"] == 44  # 2 per case, 22 cases
    half = pilot["pilot_tse_half_width_points"] / 100
    expected = math.ceil(max(44, math.ceil(44 * (half / 0.08) ** 2)) / 22) if half > 0 else 2
    assert int(ds["sized_tse_per_case"].values) == pilot["tse_per_case"] == expected
    assert ds.sizes["tse_item"] == 22 * expected and ds.attrs["provenance"]["tse_pairs"] == 22 * expected
    assert run_study(config).done == []  # resumed: the stored sizes, nothing left to do
