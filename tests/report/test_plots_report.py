"""`dynamics plot` and `dynamics report` on a real (tiny) scan cube."""

import numpy as np
import pytest

from dynamics.cli.main import main
from dynamics.errors import UserInputError
from dynamics.report.scan_figures import histogram_steps, plot_cube
from dynamics.report.scan_text import report
from store import open_cube


@pytest.mark.slow
def test_plot_writes_every_figure(full_cube, tmp_path, capsys):
    assert main(["plot", str(full_cube), "--out", str(tmp_path / "figs")]) == 0
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    expected = ["claims", "cohort_wd", "drift", "tse_accuracy", "tse_cases_final", "wd_histograms"]
    assert names == sorted(f"{n}.{ext}" for n in expected for ext in ("pdf", "png"))
    assert all((tmp_path / "figs" / n).stat().st_size > 5000 for n in names)
    assert "wrote 12 files" in capsys.readouterr().out


def test_plot_rejects_bad_formats_and_empty_cubes(full_cube, tmp_path):
    ds = open_cube(full_cube)
    with pytest.raises(UserInputError, match="figure format 'gif' is not one of png, pdf, svg"):
        plot_cube(ds, tmp_path, ["gif"])
    with pytest.raises(UserInputError, match="no done steps"):
        plot_cube(ds.isel(step=[]), tmp_path)


def test_histogram_steps():
    assert histogram_steps([0, 1, 2, 4, 8]) == [0, 2, 8]
    assert histogram_steps([5]) == [5]


def test_report_matches_the_cube(full_cube):
    ds = open_cube(full_cube)
    text = report(ds)
    lines = text.splitlines()
    assert lines[0].startswith("model: ") and "reference step: 8" in lines[0] and "failed: none" in lines[0]
    assert "cohort: 6 neurons of 128 (4.69%)" in text
    assert (
        "protocol strict: TSE sum, BLiMP sum, prefix bos, NPI vs intrusive, random control from non-top "
        "neurons, BOS on every window(s)"
    ) in text  # the resolved choices, from the provenance
    row = next(line for line in lines if line.split()[:1] == ["8"])
    cells = row.split()
    assert float(cells[1]) == pytest.approx(float(ds["wd"].sel(step=8).median()), abs=1e-3)
    assert float(cells[2]) == pytest.approx(float(ds["wd"].sel(step=8).where(ds["cohort"]).mean()), abs=1e-3)
    clean = float(ds["tse_acc"].sel(step=8, condition="clean").mean())
    assert float(cells[3]) == pytest.approx(clean, abs=1e-3)
    case_line = next(line for line in lines if line.strip().startswith("prep_anim "))
    assert float(case_line.split()[1]) == pytest.approx(
        float(ds["tse_acc"].sel(step=8, condition="clean", tse_case="prep_anim")), abs=1e-3
    )
    assert np.isfinite(ds["ppl"].values).all()


def test_report_command(full_cube, capsys):
    assert main(["report", str(full_cube)]) == 0
    assert "TSE accuracy per case at step 8" in capsys.readouterr().out
