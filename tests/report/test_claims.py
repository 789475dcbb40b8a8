"""The claims table: each row's statistic against an independent computation on a synthetic study,
calibrated verdicts (a planted effect is supported; no effect is supported in about 5% of seeds), and
the JSON document against its schema."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from scipy.stats import binomtest

from dynamics.report.claims import ClaimSettings, study_claims
from dynamics.report.claims_format import claims_json, claims_markdown, claims_text
from dynamics.report.scan_claims import scan_claims
from dynamics.stats.paired import accuracy_difference

ROOT = Path(__file__).resolve().parents[2]
CONDITIONS = ["clean", "neg_top", "pos_top", "both_top", "neg_random", "neg_matched"]
CASES = ["simple_agrmt", "prep_anim", "subj_rel", "vp_coord"]


def synthetic_study(seed: int, effect: float = 0.0, items: int = 800, windows: int = 40) -> xr.Dataset:
    """A study cube's view with the per-item variables: neg_top loses ``effect`` of TSE accuracy against
    neg_random and neg_matched (which behave alike), on the same items."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(1.0, 1.0, items)  # shared by every condition: the pairing
    margins = np.empty((len(CONDITIONS), 1, items), dtype=np.float32)
    for c, name in enumerate(CONDITIONS):
        shift = -2.5 * effect if name == "neg_top" else 0.0  # about `effect` of accuracy lost near the middle
        margins[c, 0] = difficulty + shift + rng.normal(0, 0.6, items)
    nll = np.empty((len(CONDITIONS), 1, windows))
    base = rng.normal(4000.0, 50.0, windows)
    for c, name in enumerate(CONDITIONS):
        nll[c, 0] = base + rng.normal(0, 2.0, windows) + (40.0 if name in ("neg_top", "neg_matched") else 0.0)
    return xr.Dataset(
        {
            "tse_item_margin": (("condition", "percent", "tse_item"), margins),
            "ppl_window_nll": (("condition", "percent", "window"), nll),
        },
        coords={
            "condition": np.asarray(CONDITIONS, dtype=object),
            "percent": [1.0],
            "tse_item_case": ("tse_item", np.asarray([CASES[i % 4] for i in range(items)], dtype=object)),
            "window_tokens": ("window", np.full(windows, 2047)),
        },
        attrs={"provenance": {"config": {"match_percent": 1.0, "match_tolerance": 0.05}}},
    )


def by_id(claims):
    return {claim.id: claim for claim in claims}


def test_each_row_equals_an_independent_computation():
    ds = synthetic_study(0, effect=0.1)
    claims = by_id(study_claims(ds, ClaimSettings(n_boot=2000)))
    correct = ds["tse_item_margin"].sel(percent=1.0).values > 0
    top, random, matched = (correct[CONDITIONS.index(c)] for c in ("neg_top", "neg_random", "neg_matched"))
    c2 = claims["C2"]
    assert c2.effect == random.mean() - top.mean()
    only_random, only_top = int((random & ~top).sum()), int((top & ~random).sum())
    assert c2.p_value == pytest.approx(binomtest(only_random, only_random + only_top, 0.5).pvalue)
    assert c2.verdict == "supported" and c2.n == 800 and c2.low > 0
    assert claims["C3"].effect == matched.mean() - top.mean()
    nll = ds["ppl_window_nll"].sel(percent=1.0).values
    tokens = 40 * 2047
    ppl = {c: np.exp(nll[CONDITIONS.index(c)].sum() / tokens) for c in CONDITIONS}
    assert claims["C1"].effect == pytest.approx(ppl["neg_top"] / ppl["neg_random"])
    assert claims["C1"].verdict == "supported"  # +40 nats per window of 2047 tokens: 2% more, far out of the noise
    assert claims["C7"].effect == pytest.approx(ppl["neg_matched"] / ppl["neg_top"])
    for missing in ("C4", "C5", "C6", "C8", "C9"):  # no BLiMP items, lm-eval, layer groups or POS windows
        assert claims[missing].verdict == "absent" and claims[missing].note


def with_lmeval_items(ds: xr.Dataset, seed: int) -> xr.Dataset:
    """``ds`` with lm-eval outcomes per example of tasks ``hard`` (300 examples: neg_matched loses about 20
    points against neg_top), ``easy`` (200: no effect) and ``offline`` (not run: NaN), and their accuracies."""
    rng = np.random.default_rng(seed)
    sizes, tasks = {"hard": 300, "easy": 200, "offline": 4}, ["hard", "easy", "offline"]
    labels = np.asarray([t for t in tasks for _ in range(sizes[t])], dtype=object)
    base = rng.random(len(labels))  # each example's difficulty, shared by every condition: the pairing
    correct = np.empty((len(CONDITIONS), 1, len(labels)), dtype=np.float32)
    for c, name in enumerate(CONDITIONS):
        threshold = np.where((labels == "hard") & (name == "neg_matched"), 0.3, 0.5)
        flips = rng.random(len(labels)) < 0.02
        correct[c, 0] = np.where(flips, base >= threshold, base < threshold)
    correct[:, :, labels == "offline"] = np.nan
    acc = np.stack([correct[:, :, labels == t].mean(axis=-1) for t in tasks], axis=-1)  # offline: NaN
    items = xr.Dataset(
        {
            "lmeval_item_correct": (("condition", "percent", "lmeval_item"), correct),
            "lmeval_acc": (("condition", "percent", "task"), acc),
        },
        coords={
            "task": tasks,
            "lmeval_item_task": ("lmeval_item", labels),
            "lmeval_item_doc": ("lmeval_item", np.concatenate([np.arange(sizes[t]) for t in tasks])),
        },
    )
    out = ds.merge(items)
    out.attrs = {"provenance": {**ds.attrs["provenance"], "lmeval_limit": 300}}
    return out


def test_c6_is_the_paired_accuracy_difference_over_lm_eval_examples():
    ds = with_lmeval_items(synthetic_study(0), seed=1)
    settings = ClaimSettings(n_boot=2000, seed=7)
    c6 = by_id(study_claims(ds, settings))["C6"]
    stored = ds["lmeval_item_correct"].sel(percent=1.0)
    top, matched = stored.sel(condition="neg_top").values, stored.sel(condition="neg_matched").values
    tasks = ds["lmeval_item_task"].values
    direct = accuracy_difference(top, matched, tasks, n_boot=2000, seed=7)
    assert (c6.effect, c6.low, c6.high, c6.p_value) == (direct.estimate, direct.low, direct.high, direct.p_value)
    run = tasks != "offline"
    assert c6.effect == pytest.approx(float(np.mean(top[run] - matched[run])))  # by hand, over the 500 run examples
    assert c6.n == 500 and c6.details["n_dropped"] == 4 and c6.details["n_strata"] == 2
    assert c6.verdict == "supported" and c6.low > 0 and "same examples" in c6.comparison and not c6.note


def test_c6_of_a_cube_without_lm_eval_examples_is_the_unpaired_row():
    ds = with_lmeval_items(synthetic_study(0), seed=1)
    old = ds.drop_vars(["lmeval_item_correct", "lmeval_item_task", "lmeval_item_doc"])  # a cube made before them
    c6 = by_id(study_claims(old, ClaimSettings(n_boot=500)))["C6"]
    acc = ds["lmeval_acc"].sel(percent=1.0)
    per_task = (acc.sel(condition="neg_top") - acc.sel(condition="neg_matched")).values[:2]
    assert c6.n == 2 and c6.effect == pytest.approx(float(per_task.mean()))
    assert c6.comparison == "mean over tasks of acc(neg_top) - acc(neg_matched)"
    assert c6.note.startswith(
        "unpaired normal approximation over tasks (lm-eval's per-example outcomes are not stored)"
    )


def test_no_effect_is_inconclusive_and_says_how_many_pairs_would_decide():
    claims = by_id(study_claims(synthetic_study(3, effect=0.0, items=400), ClaimSettings(n_boot=1000)))
    c2 = claims["C2"]
    assert c2.verdict == "inconclusive" and c2.low < 0 < c2.high
    assert "400 pairs give +/-" in c2.note and "pairs would give +/-1" in c2.note


@pytest.mark.slow
def test_verdicts_are_calibrated_over_seeded_simulated_studies():
    """No effect: "supported" in at most ~5% of 200 studies; a planted 10-point effect: supported in nearly all."""
    settings = ClaimSettings(n_boot=500)
    null = [by_id(study_claims(synthetic_study(seed, 0.0, items=600), settings))["C2"].verdict for seed in range(200)]
    rate = null.count("supported") / len(null)
    assert rate <= 0.08, f"no-effect studies called supported in {rate:.1%}"
    planted = [by_id(study_claims(synthetic_study(seed, 0.1, items=600), settings))["C2"].verdict for seed in range(40)]
    assert planted.count("supported") >= 38, planted


def test_the_json_document_validates_against_the_documented_schema():
    claims = study_claims(with_lmeval_items(synthetic_study(1, effect=0.1), seed=2), ClaimSettings(n_boot=500))
    document = json.loads(claims_json(claims, "s.zarr", "study", {"n_boot": 500, "seed": 0}))
    schema = json.loads((ROOT / "docs" / "claims.schema.json").read_text())
    validate(document, schema)
    assert [c["id"] for c in document["claims"]] == [f"C{i}" for i in range(1, 10)]
    assert document["claims"][5]["details"]["p_method"] == "exact McNemar"  # C6, paired over lm-eval examples
    with pytest.raises(AssertionError):  # the validator does refuse a wrong document
        validate({**document, "claims": [{"id": "C1"}]}, schema)


def validate(value, schema, where="$"):
    """A small JSON-schema checker (type, required, properties, items, enum, additionalProperties)."""
    kinds = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "boolean": bool}
    allowed = schema.get("type")
    if allowed is not None:
        names = allowed if isinstance(allowed, list) else [allowed]
        ok = any(
            value is None
            if n == "null"
            else isinstance(value, kinds[n]) and not (n != "boolean" and isinstance(value, bool))
            for n in names
        )
        assert ok, f"{where}: {value!r} is not {allowed}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing {key}"
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                validate(value[key], sub, f"{where}.{key}")
        if schema.get("additionalProperties") is False:
            extra = set(value) - set(schema.get("properties", {}))
            assert not extra, f"{where}: unexpected {sorted(extra)}"
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            validate(item, schema["items"], f"{where}[{i}]")


def test_text_and_markdown_tables_show_every_claim():
    claims = study_claims(synthetic_study(2, effect=0.1), ClaimSettings(n_boot=300))
    text, markdown = claims_text(claims), claims_markdown(claims)
    for claim in claims:
        assert claim.id in text and claim.verdict in text
        assert f"| {claim.id} |" in markdown
    assert markdown.splitlines()[0].startswith("| id | claim | comparison | effect | 95% CI | verdict | n |")


def test_scan_claims_correlate_over_steps():
    steps = 12
    rng = np.random.default_rng(0)
    wd = np.linspace(0.1, 1.0, steps)[:, None, None] + rng.normal(0, 0.01, (steps, 2, 8))
    cohort = np.zeros((2, 8), dtype=bool)
    cohort[:, :2] = True
    accuracy = np.linspace(0.5, 0.9, steps)[:, None] + np.zeros((steps, 3))
    margin = accuracy.copy()
    margin[:, 1] -= np.linspace(0.0, 0.3, steps) ** 2  # neg_cohort loses more and more of the clean margin
    ds = xr.Dataset(
        {
            "wd": (("step", "layer", "neuron"), wd),
            "cohort": (("layer", "neuron"), cohort),
            "tse_acc": (("step", "condition", "tse_case"), np.repeat(accuracy[:, :, None], 2, axis=2)),
            "tse_margin": (("step", "condition", "tse_case"), np.repeat(margin[:, :, None], 2, axis=2)),
        },
        coords={"step": np.arange(steps), "condition": ["clean", "neg_cohort", "neg_random"]},
    )
    claims = by_id(scan_claims(ds, ClaimSettings(n_boot=500)))
    assert claims["C10"].effect == pytest.approx(1.0) and claims["C10"].verdict == "supported"
    assert claims["C11"].effect == pytest.approx(1.0) and claims["C11"].verdict == "supported"
    assert claims["C10"].n == steps and claims["C10"].details["block"] >= 2
    short = by_id(scan_claims(ds.isel(step=slice(0, 3)), ClaimSettings(n_boot=100)))
    assert short["C10"].verdict == "absent" and "3 done steps" in short["C10"].note


def test_the_forest_plot_draws_each_claims_effect_and_interval():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dynamics.report.claim_figures import VERDICT_COLOURS, claims_figure

    claims = study_claims(synthetic_study(4, effect=0.1), ClaimSettings(n_boot=400))
    fig = claims_figure(claims, plt)
    drawn = {}
    for ax in fig.axes:
        labels = [t.get_text().split()[0] for t in ax.get_yticklabels()]
        for container in ax.containers:  # one errorbar container per claim, rows drawn bottom-up
            (x,), (y,) = container.lines[0].get_xdata(), container.lines[0].get_ydata()
            bars = container.lines[2][0].get_segments()[0]
            drawn[labels[int(y)]] = (x, bars[0][0], bars[1][0], container.lines[0].get_color())
    tested = [c for c in claims if c.effect is not None]
    assert sorted(drawn) == sorted(c.id for c in tested)
    for claim in tested:
        x, low, high, colour = drawn[claim.id]
        assert x == pytest.approx(claim.effect * claim.scale)
        assert (low, high) == pytest.approx((claim.low * claim.scale, claim.high * claim.scale))
        assert colour == VERDICT_COLOURS[claim.verdict]
    plt.close(fig)
