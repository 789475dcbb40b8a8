"""Several toy-suite scans trained with different seeds, read as one dataset with a seed dimension."""

import numpy as np
import pytest
from conftest import FAST_SCAN

from checkpoints.names import resolve_model, training_seed
from dynamics.cli.main import main
from dynamics.errors import CubeError, UserInputError
from dynamics.scan.config import ScanConfig
from dynamics.scan.driver import run_scan
from store import open_cube, open_cubes

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def seed_cubes(tiny_suite, tmp_path_factory):
    """The tiny suite (seed 0) and the same recipe trained with seed 1, each scanned at every step."""
    from fixtures.toy import build_tiny_suite

    root = tmp_path_factory.mktemp("seeds")
    other = root / "tiny-seed1"
    build_tiny_suite(other, seed=1)
    cubes = []
    for suite, name in ((tiny_suite, "seed0.zarr"), (other, "seed1.zarr")):
        run_scan(ScanConfig(model=str(suite), out=str(root / name), steps="all", **FAST_SCAN))
        cubes.append(root / name)
    return cubes


def test_two_seeds_open_as_one_dataset_with_a_seed_dimension(seed_cubes):
    ds = open_cubes(seed_cubes, dim="seed")
    assert ds["seed"].values.tolist() == [0, 1]  # the seeds the suites were trained with
    assert ds["tse_acc"].dims == ("seed", "step", "condition", "tse_case")
    assert ds["step"].values.tolist() == [0, 1, 2, 4, 8]
    for i, path in enumerate(seed_cubes):
        one = open_cube(path)
        np.testing.assert_array_equal(ds["wd"].isel(seed=i).values, one["wd"].values)
        np.testing.assert_array_equal(ds["cohort"].isel(seed=i).values, one["cohort"].values)  # each run's own cohort
        np.testing.assert_allclose(ds["drift_prev"].isel(seed=i).values, one["drift_prev"].values)
    assert not np.array_equal(ds["wd"].isel(seed=0).values, ds["wd"].isel(seed=1).values)  # two different runs
    assert ds["tokens"].dims == ("step",)  # the same schedule: one tokens coordinate
    assert ds.attrs["stacked_along"] == "seed" and len(ds.attrs["models"]) == 2


def test_unaligned_cubes_are_refused_in_one_line(seed_cubes, tiny_suite, tmp_path):
    fewer = tmp_path / "fewer.zarr"
    run_scan(ScanConfig(model=str(tiny_suite), out=str(fewer), steps="0,8", reference_step=8, **FAST_SCAN))
    with pytest.raises(CubeError, match=r"has done steps 0, 8, .* has 0, 1, 2, 4, 8 \(they differ at 1, 2, 4\)"):
        open_cubes([seed_cubes[0], fewer])
    other_rule = tmp_path / "rule.zarr"
    run_scan(
        ScanConfig(model=str(tiny_suite), out=str(other_rule), steps="all", **{**FAST_SCAN, "cohort_percent": 10.0})
    )
    with pytest.raises(CubeError, match=r"was made with cohort_percent=10.0, .* with cohort_percent=5.0"):
        open_cubes([seed_cubes[0], other_rule])


def test_plot_draws_mean_and_band_across_seeds(seed_cubes, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["plot", *map(str, seed_cubes), "-o", str(out), "--formats", "png", "--x", "tokens"]) == 0
    assert "wrote 5 files" in capsys.readouterr().out
    from dynamics.report.scan_figures import _pyplot, tse_figure

    plt, sns = _pyplot()
    ds = open_cubes(seed_cubes)
    fig = tse_figure(ds, plt, sns, x="tokens")
    ax = fig.axes[0]
    assert "mean of 2 seeds" in ax.get_title() and ax.get_xlabel() == "tokens seen (symlog scale)"
    clean = next(line for line in ax.lines if line.get_label() == "clean")
    np.testing.assert_allclose(clean.get_ydata(), ds["tse_acc"].sel(condition="clean").mean(("tse_case", "seed")))
    np.testing.assert_array_equal(clean.get_xdata(), ds["tokens"].values)
    assert len(ax.collections) >= 3  # one band per condition
    plt.close(fig)


def test_polypythia_aliases_and_training_seeds(tiny_suite):
    ref = resolve_model("pythia-160m-seed3")
    assert (ref.location, ref.is_pythia, training_seed(ref)) == ("EleutherAI/pythia-160m-seed3", True, 3)
    assert resolve_model("pythia-160m-weight-seed2").location == "EleutherAI/pythia-160m-weight-seed2"
    assert training_seed(resolve_model("pythia-160m")) is None
    assert training_seed(resolve_model(str(tiny_suite))) == 0
    for bad in ("pythia-1b-seed3", "pythia-160m-seed0", "pythia-160m-seed10"):
        with pytest.raises(UserInputError, match=f"no PolyPythia run '{bad}': seeds 1 to 9"):
            resolve_model(bad)
