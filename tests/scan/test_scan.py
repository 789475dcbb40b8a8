"""The scan pipeline end to end on a tiny local suite: what lands in the cube, and resume."""

import numpy as np
import pytest
import torch
from conftest import FAST_SCAN as FAST

from checkpoints.local_sources import LocalSuiteSource
from checkpoints.names import resolve_model
from dynamics.errors import UserInputError
from dynamics.scan.config import ScanConfig
from dynamics.scan.driver import run_scan
from dynamics.scan.plan import plan_scan
from dynamics.stats.neurons import neuron_wasserstein
from dynamics.syntax.corpus import CorpusSpec, load_token_windows
from store import open_cube

# Calls models: also run against the lowest transformers the project declares (.ci/run).
pytestmark = pytest.mark.models


def scan(suite, out, steps="all", **kw):
    return run_scan(ScanConfig(model=str(suite), out=str(out), steps=steps, **{**FAST, **kw}))


def test_full_scan_summary(full_cube):
    assert open_cube(full_cube)["step"].values.tolist() == [0, 1, 2, 4, 8]


def test_cube_holds_every_measure(full_cube, tiny_suite):
    ds = open_cube(full_cube)
    assert ds["step"].values.tolist() == [0, 1, 2, 4, 8]
    assert ds["wd"].shape == (5, 2, 64) and ds["wd_neg"].shape == ds["wd_pos"].shape == (5, 2, 64)
    np.testing.assert_allclose(ds["wd_neg"] + ds["wd_pos"], ds["wd"], rtol=1e-5)
    assert ds["tse_acc"].dims == ("step", "condition", "tse_case") and ds.sizes["tse_case"] == 22
    assert ds["condition"].values.tolist() == ["clean", "neg_cohort", "neg_random", "neg_stepwise"]
    assert ((ds["tse_acc"] >= 0) & (ds["tse_acc"] <= 1)).all()
    assert (ds["ppl"] > 1).all()
    # cohort: round(5% of 64) = 3 neurons per layer, the top WD at the reference step (the last)
    assert ds["cohort"].sum("neuron").values.tolist() == [3, 3]
    assert ds["random_control"].sum("neuron").values.tolist() == [3, 3]
    assert not (ds["cohort"] & ds["random_control"]).any()
    ref_wd = ds["reference_wd"].values
    for layer in range(2):
        top = np.argsort(-ref_wd[layer], kind="stable")[:3]
        assert set(np.flatnonzero(ds["cohort"].values[layer])) == set(top)
    np.testing.assert_allclose(ds["wd"].sel(step=8).values, ref_wd, rtol=1e-6)
    # drift against the reference is 0 at the reference itself, and the chain of previous steps
    assert np.abs(ds["drift_ref"].sel(step=8).values).max() < 1e-6
    assert ds["drift_prev_from"].values.tolist() == [-1, 0, 1, 2, 4]
    assert ds["drift_prev"].dims == ("step", "member") and ds.sizes["member"] == 12  # 3 + 3 per layer, 2 layers
    assert np.isnan(ds["drift_prev"].sel(step=0)).all() and (ds["drift_prev"].sel(step=8) > 0).all()
    assert (ds["seconds"].sel(phase="statistics") > 0).all()
    assert ds.attrs["provenance"]["corpus"]["source"].endswith("heldout.txt")
    assert ds.attrs["provenance"]["wd_tokens"] == 512


def test_wd_in_the_cube_is_the_engine_on_the_same_tokens(full_cube, tiny_suite):
    ckpt = LocalSuiteSource(resolve_model(str(tiny_suite))).fetch(2)
    model, tokenizer = ckpt.load_model(), ckpt.load_tokenizer()
    windows = load_token_windows(
        CorpusSpec(source=str(tiny_suite / "heldout.txt"), window=32, token_budget=65536), tokenizer
    )
    with torch.inference_mode():
        direct = neuron_wasserstein(model, windows[:16], memory_budget=2**30, batch_size=3)
    np.testing.assert_allclose(open_cube(full_cube)["wd"].sel(step=2).values, direct["wd"].values, rtol=1e-5)


@pytest.mark.parametrize(("reference", "captures"), [(None, 2), (2, 3)])
def test_the_reference_steps_statistics_are_computed_once(tiny_suite, tmp_path, monkeypatch, reference, captures):
    """The statistics computed to fix the cohort serve the reference step's measurement (steps 4
    and 8, reference 8: two captures); a reference outside the scanned steps adds its own. The
    stored WD is the engine's on that step either way, and its seconds count the capture."""
    import dynamics.stats.neurons as neurons

    calls: list[int] = []
    real = neurons.iter_layer_captures
    monkeypatch.setattr(neurons, "iter_layer_captures", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / "ref.zarr"
    summary = scan(tiny_suite, out, steps="4,8", reference_step=reference, tse_per_case=0, ppl_tokens=0)
    assert summary.done == [4, 8] and len(calls) == captures
    ds = open_cube(out)
    checkpoint = LocalSuiteSource(resolve_model(str(tiny_suite))).fetch(8)
    windows = load_token_windows(
        CorpusSpec(source=str(tiny_suite / "heldout.txt"), window=32, token_budget=512), checkpoint.load_tokenizer()
    )
    with torch.inference_mode():
        direct = neuron_wasserstein(checkpoint.load_model(), windows, memory_budget=2**30, batch_size=3)
    for name in ("wd", "wd_neg", "wd_pos"):
        np.testing.assert_allclose(ds[name].sel(step=8).values, direct[name].values, rtol=1e-6)
    assert (ds["seconds"].sel(phase="statistics") > 0).all()


def test_cohort_weights_and_drift_prev_against_the_checkpoints(full_cube, tiny_suite):
    """Each member's stored row is its input weights; drift_prev is scipy's cosine distance to the step before."""
    from scipy.spatial.distance import cosine

    ds = open_cube(full_cube)
    members = list(zip(ds["member_layer"].values, ds["member_neuron"].values, ds["member_set"].values))
    expected = {(layer, n, "cohort") for layer, n in zip(*np.nonzero(ds["cohort"].values))}
    expected |= {(layer, n, "random_control") for layer, n in zip(*np.nonzero(ds["random_control"].values))}
    assert set(members) == expected and len(members) == len(expected)
    source = LocalSuiteSource(resolve_model(str(tiny_suite)))
    rows = {}
    for step in (2, 4):
        model = source.fetch(step).load_model()
        fc = [layer.mlp.dense_h_to_4h.weight.detach().numpy() for layer in model.gpt_neox.layers]
        rows[step] = np.stack([fc[layer][n] for layer, n, _ in members])
        np.testing.assert_array_equal(ds["cohort_weights"].sel(step=step).values, rows[step])
    want = [cosine(a.astype(np.float64), b.astype(np.float64)) for a, b in zip(rows[4], rows[2])]
    np.testing.assert_allclose(ds["drift_prev"].sel(step=4).values, want, rtol=1e-5, atol=1e-7)
    pending = open_cube(full_cube, include_pending=True)
    np.testing.assert_array_equal(pending["drift_prev"].values, ds["drift_prev"].values)


def test_drift_prev_skips_steps_that_are_not_done(full_cube, tiny_suite, tmp_path):
    """Derived from the done steps only: a failed step in the middle is not a link of the chain."""
    import shutil

    import zarr

    from store.cube import _read_attrs

    out = tmp_path / "gap.zarr"
    shutil.copytree(full_cube, out)
    group = zarr.open_group(out, mode="r+", zarr_format=3)
    steps = dict(_read_attrs(out)["steps"])
    steps["2"] = {"status": "failed", "error": "test"}
    group.attrs["steps"] = steps
    ds = open_cube(out)
    assert ds["drift_prev_from"].values.tolist() == [-1, 0, 1, 4]
    a, b = (
        ds["cohort_weights"].sel(step=4).values.astype(np.float64),
        ds["cohort_weights"].sel(step=1).values.astype(np.float64),
    )
    want = 1 - (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(ds["drift_prev"].sel(step=4).values, want, rtol=1e-5, atol=1e-7)
    pending = open_cube(out, include_pending=True)
    assert pending["drift_prev_from"].values.tolist() == [-1, 0, -1, 1, 4]
    assert np.isnan(pending["drift_prev"].sel(step=2)).all()


@pytest.mark.slow
def test_a_resumed_scan_gives_the_same_cube(full_cube, tiny_suite, tmp_path):
    out = tmp_path / "resumed.zarr"
    scan(tiny_suite, out, steps="0,1", reference_step=8, stepwise=True)
    summary = scan(tiny_suite, out, stepwise=True)  # extends to all steps, keeps the reference
    assert summary.skipped == [0, 1] and summary.done == [2, 4, 8]
    a, b = open_cube(full_cube), open_cube(out)
    for name in (
        "wd",
        "drift_ref",
        "drift_prev",
        "drift_prev_from",
        "cohort_weights",
        "tse_acc",
        "ppl",
        "cohort",
        "random_control",
    ):
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-5, err_msg=name)
    assert scan(tiny_suite, out, stepwise=True).done == []


def test_plan_rejects_bad_values_before_anything_runs(tiny_suite, tmp_path):
    with pytest.raises(UserInputError, match=r"--cohort-percent 0.0: expected a percent in \(0, 100\]"):
        plan_scan(ScanConfig(model=str(tiny_suite), out=str(tmp_path / "x.zarr"), cohort_percent=0.0))
    with pytest.raises(
        UserInputError, match="--corpus 'nope.txt' is neither wikitext2, auto nor an existing text file"
    ):
        plan_scan(ScanConfig(model=str(tiny_suite), out=str(tmp_path / "x.zarr"), corpus="nope.txt"))
    with pytest.raises(UserInputError, match="step 3 has no checkpoint .* nearest available: 2, 4"):
        plan_scan(ScanConfig(model=str(tiny_suite), out=str(tmp_path / "x.zarr"), reference_step=3))
    assert not (tmp_path / "x.zarr").exists()


def test_a_cube_of_the_earlier_layout_is_refused_not_mixed(full_cube, tiny_suite, tmp_path):
    """Cubes that stored drift_prev per step (before it was derived) cannot be extended by this version."""
    import shutil

    import zarr

    from dynamics.errors import CubeError
    from store.cube import _read_attrs

    out = tmp_path / "old.zarr"
    shutil.copytree(full_cube, out)
    identity = dict(_read_attrs(out)["identity"])
    del identity["derived"]
    zarr.open_group(out, mode="r+", zarr_format=3).attrs["identity"] = identity
    with pytest.raises(CubeError, match=r"was made with derived=null, this run has derived=\{\"drift_prev\""):
        scan(tiny_suite, out, stepwise=True)


def test_matched_control_matches_the_cohorts_perplexity_at_the_reference_step(tiny_suite, tmp_path):
    """--matched: the bottom-m% mask per layer, and its perplexity recomputed by hand."""
    from dynamics.ablation.hooks import ablate
    from dynamics.stats.cohort import bottom_percent_mask
    from dynamics.syntax.perplexity import perplexity

    out = tmp_path / "matched.zarr"
    summary = scan(tiny_suite, out, steps="4,8", matched=True, ppl_tokens=256, tse_per_case=0)
    assert summary.done == [4, 8]
    ds = open_cube(out)
    assert ds["condition"].values.tolist() == ["clean", "neg_cohort", "neg_random", "neg_matched"]
    m = float(ds["matched_percent"])
    assert 0.1 <= m <= 90.0
    expected = bottom_percent_mask(torch.from_numpy(ds["reference_wd"].values.astype(np.float64)), m).numpy()
    np.testing.assert_array_equal(ds["matched_control"].values, expected)
    # Independently: load the reference step, ablate the stored mask, compute perplexity on the same windows.
    source = LocalSuiteSource(resolve_model(str(tiny_suite)))
    checkpoint = source.fetch(8)
    model = checkpoint.load_model(device="cpu", dtype=torch.float32)
    window = min(2048, model.config.max_position_embeddings)
    windows = load_token_windows(
        CorpusSpec(source=str(tiny_suite / "heldout.txt"), window=window, token_budget=FAST["wd_tokens"] + 256),
        checkpoint.load_tokenizer(),
    )
    wd_windows = FAST["wd_tokens"] // window
    ppl_windows = windows[wd_windows : wd_windows + 256 // window]  # one file: perplexity after the WD windows
    with torch.inference_mode(), ablate(model, torch.from_numpy(ds["matched_control"].values), mode="negative"):
        by_hand = perplexity(model, ppl_windows, progress=False)
    np.testing.assert_allclose(float(ds["matched_ppl"]), by_hand, rtol=1e-5)
    at_reference = ds["ppl"].sel(step=8)
    np.testing.assert_allclose(at_reference.sel(condition="neg_matched"), by_hand, rtol=1e-5)
    np.testing.assert_allclose(at_reference.sel(condition="neg_cohort"), float(ds["matched_target_ppl"]), rtol=1e-5)
    if bool(ds["matched_converged"]):  # the increase over clean within 5% of the cohort's
        clean = float(ds["matched_clean_ppl"])
        with torch.inference_mode():
            assert clean == pytest.approx(perplexity(model, ppl_windows, progress=False), rel=1e-6)
        assert abs(by_hand - float(ds["matched_target_ppl"])) <= 0.05 * (float(ds["matched_target_ppl"]) - clean)
    assert "matched" in ds.attrs["identity"]["analysis"]


def test_mapping_difficulty_is_stored_and_reported(tiny_suite, tmp_path):
    """--mapping-difficulty: MD per neuron equals the official formula on the WD tokens; the report gives the
    WD-MD Spearman correlation per layer."""
    from scipy.stats import spearmanr

    from checkpoints.adapters import pre_activation_modules
    from dynamics.report.scan_text import report

    out = tmp_path / "md.zarr"
    scan(tiny_suite, out, steps="8", mapping_difficulty=True, tse_per_case=0, ppl_tokens=0)
    ds = open_cube(out)
    assert ds["md"].dims == ("step", "layer", "neuron")
    checkpoint = LocalSuiteSource(resolve_model(str(tiny_suite))).fetch(8)
    model = checkpoint.load_model(device="cpu", dtype=torch.float32)
    windows = load_token_windows(
        CorpusSpec(source=str(tiny_suite / "heldout.txt"), window=32, token_budget=512), checkpoint.load_tokenizer()
    )
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = [
        m.register_forward_hook(lambda mod, a, o, i=i: seen.__setitem__(i, (a[0], o)))
        for i, m in enumerate(pre_activation_modules(model))
    ]
    try:
        with torch.inference_mode():
            model(input_ids=windows)
    finally:
        for handle in handles:
            handle.remove()
    for layer, (x, y) in seen.items():
        x, y = x.reshape(-1, x.shape[-1]).double().numpy(), y.reshape(-1, y.shape[-1]).double().numpy()
        generator = torch.Generator().manual_seed(FAST.get("seed", 0) + layer)  # the tool's documented pair draw
        first = torch.randint(len(x), (10_000,), generator=generator).numpy()
        second = torch.randint(len(x), (10_000,), generator=generator).numpy()
        dx = np.linalg.norm(x[first] - x[second], axis=1)  # utils/metrics.py calculate_MD, pairs with dx = 0 dropped
        keep = dx > 0
        dx, first, second = dx[keep], first[keep], second[keep]
        dy = np.abs(y[first] - y[second])
        md = np.mean((dy / np.median(dy, axis=0)) / (dx / dx.max())[:, None], axis=0)
        np.testing.assert_allclose(ds["md"].sel(step=8, layer=layer).values, md, rtol=2e-4)
    text = report(ds)
    assert "WD-MD Spearman correlation per layer (step 8):" in text
    lines = text.splitlines()
    start = lines.index("WD-MD Spearman correlation per layer (step 8):")
    for layer in range(2):
        expected = spearmanr(ds["wd"].sel(step=8, layer=layer), ds["md"].sel(step=8, layer=layer)).statistic
        assert lines[start + 3 + layer].split() == [str(layer), f"{expected:.3f}"]
