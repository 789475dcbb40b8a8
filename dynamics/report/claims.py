"""The paper's claims tested on a study cube (`dynamics ablate`): one row per claim with its effect, 95% CI,
verdict and n, from the per-item outcomes the cube stores (docs/statistics.md).

Every comparison is paired: the two conditions were scored on the same TSE and BLiMP pairs and
the same perplexity windows, so the bootstrap resamples items (within their case or paradigm)
or windows, and accuracy differences carry the exact McNemar p-value. A claim is ``supported``
when its CI lies on the predicted side of no effect, ``contradicted`` when it lies on the other
side, ``inconclusive`` otherwise (the row then says how many items a firmer answer needs), and
``absent`` when the cube lacks what it needs (the row says what).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from dynamics.report.claim_rows import Claim, Criterion, absent, comparison_row, equivalence_row, settings_of
from dynamics.stats.paired import Comparison, accuracy_difference, perplexity_ratio, ratio_difference, trend

#: Function words and content words of the universal POS tags (claim C9).
FUNCTION_POS = ("DET", "ADP", "AUX", "PART", "PUNCT", "CCONJ", "SCONJ", "PRON")
CONTENT_POS = ("NOUN", "VERB", "ADJ", "ADV", "PROPN")


@dataclass(frozen=True)
class ClaimSettings:
    """The bootstrap (resamples, seed, level) and the precision targets behind the rows."""

    n_boot: int = 10_000
    seed: int = 0
    level: float = 0.95
    target_points: float = 1.0  # accuracy CI half-width, in points, that "would need n items" aims at
    target_ratio: float = 0.01  # perplexity-ratio CI half-width the same sentence aims at


def cube_claim_settings(ds: xr.Dataset, **overrides: Any) -> ClaimSettings:
    """The default settings for a cube: its own ``--seed`` seeds the bootstrap (so the report and the
    figures of one cube give the same intervals)."""
    seed = settings_of(ds).get("seed", 0)
    return ClaimSettings(**{"seed": int(seed) if isinstance(seed, int) else 0, **overrides})


@dataclass
class _Study:
    ds: xr.Dataset
    percent: float
    settings: ClaimSettings
    config: dict[str, Any] = field(default_factory=dict)

    def has(self, name: str, condition: str) -> bool:
        if name not in self.ds or "condition" not in self.ds[name].dims:
            return False
        if condition not in self.ds["condition"].values.tolist():
            return False
        return bool(np.isfinite(self.values(name, condition)).any())

    def values(self, name: str, condition: str) -> np.ndarray:
        array = self.ds[name].sel(condition=condition)
        if "percent" in array.dims:
            array = array.sel(percent=self.percent)
        return np.asarray(array.values, dtype=float)

    def correct(self, benchmark: str, condition: str) -> np.ndarray:
        margin = self.values(f"{benchmark}_item_margin", condition)
        return np.where(np.isnan(margin), np.nan, margin > 0)


def study_claims(ds: xr.Dataset, settings: ClaimSettings | None = None) -> list[Claim]:
    """Claims C1-C9 of a study cube (opened with :func:`store.open_cube`)."""
    settings = settings or ClaimSettings()
    config = settings_of(ds)
    study = _Study(ds, float(config.get("match_percent", 1.0)), settings, config)
    return [build(study) for build in STUDY_CLAIMS]


def _accuracy(study: _Study, cid: str, benchmark: str, control: str) -> Claim:
    name, label = ("tse", "TSE") if benchmark == "tse" else ("blimp", "BLiMP")
    text = f"neg_top lowers {label} accuracy more than {control}"
    comparison = f"acc({control}) - acc(neg_top), same pairs, top {study.percent:g}%"
    needed = f"{name}_item_margin"
    if not (study.has(needed, "neg_top") and study.has(needed, control)):
        return absent(cid, text, comparison, f"the cube has no per-pair {label} outcomes of neg_top and {control}")
    strata = _labels(study.ds[f"{name}_item_case"].values)
    result = accuracy_difference(
        study.correct(name, control), study.correct(name, "neg_top"), strata, **_boot(study.settings)
    )
    criterion = Criterion(+1, "points", study.settings.target_points / 100, "pairs")
    return comparison_row(cid, text, comparison, result, criterion)


def _perplexity(study: _Study) -> Claim:
    text = "neg_top raises perplexity more than neg_random"
    comparison = f"ppl(neg_top) / ppl(neg_random), same windows, top {study.percent:g}%"
    if not (study.has("ppl_window_nll", "neg_top") and study.has("ppl_window_nll", "neg_random")):
        return absent("C1", text, comparison, "the cube has no per-window perplexity of neg_top and neg_random")
    tokens = np.asarray(study.ds["window_tokens"].values, dtype=float)
    result = perplexity_ratio(
        study.values("ppl_window_nll", "neg_top"),
        tokens,
        study.values("ppl_window_nll", "neg_random"),
        tokens,
        **_boot(study.settings),
    )
    return comparison_row(
        "C1", text, comparison, result, Criterion(+1, "ratio", study.settings.target_ratio, "windows", null=1.0)
    )


def _matched(study: _Study) -> Claim:
    text = "the matched control is matched: its perplexity equals neg_top's within the tolerance"
    comparison = f"ppl(neg_matched) / ppl(neg_top) - 1 within +/- tolerance x neg_top's increase, {study.percent:g}%"
    names = ("neg_matched", "neg_top", "clean")
    if not all(study.has("ppl_window_nll", c) for c in names):
        return absent("C7", text, comparison, "the cube has no per-window perplexity of neg_matched, neg_top and clean")
    tokens = np.asarray(study.ds["window_tokens"].values, dtype=float)
    nll = {c: study.values("ppl_window_nll", c) for c in names}
    result = perplexity_ratio(nll["neg_matched"], tokens, nll["neg_top"], tokens, **_boot(study.settings))
    top_increase = float(np.exp((nll["neg_top"].sum() - nll["clean"].sum()) / tokens.sum()) - 1)
    tolerance = float(study.config.get("match_tolerance", 0.05))
    margin = tolerance * abs(top_increase) / (1 + top_increase)
    note = ""
    if "matched_converged" in study.ds and not bool(study.ds["matched_converged"].values):
        note = "the bisection did not converge (docs/study.md); the closest m is used"
    return equivalence_row("C7", text, comparison, result, margin, note)


LMEVAL_TEXT = "double dissociation: neg_matched hurts the non-syntactic lm-eval tasks more than neg_top"


def _lmeval(study: _Study) -> Claim:
    """C6 from each lm-eval example's outcome when the cube stores them (paired over items, stratified by
    task), else from the per-task accuracies (cubes made before ``lmeval_item_correct``)."""
    if study.has("lmeval_item_correct", "neg_top") and study.has("lmeval_item_correct", "neg_matched"):
        return _lmeval_paired(study)
    return _lmeval_unpaired(study)


def _lmeval_paired(study: _Study) -> Claim:
    comparison = f"acc(neg_top) - acc(neg_matched) over the examples of every task, same examples, {study.percent:g}%"
    result = accuracy_difference(
        study.values("lmeval_item_correct", "neg_top"),
        study.values("lmeval_item_correct", "neg_matched"),
        _labels(study.ds["lmeval_item_task"].values),
        **_boot(study.settings),
    )
    criterion = Criterion(+1, "points", study.settings.target_points / 100, "examples")
    return comparison_row("C6", LMEVAL_TEXT, comparison, result, criterion)


def _lmeval_unpaired(study: _Study) -> Claim:
    text, comparison = LMEVAL_TEXT, "mean over tasks of acc(neg_top) - acc(neg_matched)"
    if "lmeval_acc" not in study.ds or not (
        study.has("lmeval_acc", "neg_top") and study.has("lmeval_acc", "neg_matched")
    ):
        skipped = study.ds.attrs.get("provenance", {}).get("lmeval_skipped") or {}
        why = f"data unavailable for {', '.join(skipped)}" if skipped else "--tasks none or none could run"
        return absent("C6", text, comparison, f"no lm-eval task ran ({why})")
    top, matched = study.values("lmeval_acc", "neg_top"), study.values("lmeval_acc", "neg_matched")
    keep = np.isfinite(top) & np.isfinite(matched)
    limit = study.ds.attrs.get("provenance", {}).get("lmeval_limit")
    if not limit:
        return absent("C6", text, comparison, "per-task example counts unknown (--lmeval-limit 0): no standard error")
    se = np.sqrt((top * (1 - top) + matched * (1 - matched)) / float(limit))[keep]
    effect = float(np.mean(top[keep] - matched[keep]))
    half = 1.959963984540054 * float(np.sqrt((se**2).sum())) / keep.sum()
    result = Comparison(
        "lmeval_difference", effect, effect - half, effect + half, 0.95, int(keep.sum()), None, "", 0, 0
    )
    note = "unpaired normal approximation over tasks (lm-eval's per-example outcomes are not stored)"
    criterion = Criterion(+1, "points", study.settings.target_points / 100, "tasks")
    return comparison_row("C6", text, comparison, result, criterion, note=note)


def _layer_groups(study: _Study) -> Claim:
    text = "early layer groups hurt TSE more than late ones"
    comparison = "slope of the TSE accuracy loss (clean - group alone) over layer groups, per pair"
    name = "group_tse_item_margin"
    if (
        name not in study.ds
        or "clean" not in study.ds["condition"].values.tolist()
        or study.ds.sizes.get("layer_group", 0) < 2
    ):
        return absent("C8", text, comparison, "the study ran fewer than two layer groups (--layer-groups)")
    clean = study.correct("tse", "clean")
    margins = np.asarray(study.ds[name].sel(group_scope="alone").values, dtype=float)  # [group, item]
    harm = clean[None, :] - np.where(np.isnan(margins), np.nan, margins > 0)
    strata = _labels(study.ds["tse_item_case"].values)
    result = trend(harm, strata, **_boot(study.settings))
    criterion = Criterion(-1, "points per group", study.settings.target_points / 100, "pairs")
    return comparison_row("C8", text, comparison, result, criterion)


def _pos(study: _Study) -> Claim:
    text = "POS: neg_top's excess surprisal is larger on function words than on content words"
    comparison = "mean excess surprisal (nats) of function-word tokens - of content-word tokens, neg_top"
    if not study.has("pos_window_excess", "neg_top"):
        return absent(
            "C9", text, comparison, "the cube has no per-window POS surprisal (POS off, skipped, or per word)"
        )
    excess = study.ds["pos_window_excess"].sel(condition="neg_top", percent=study.percent)
    count = study.ds["pos_window_count"].sel(condition="neg_top", percent=study.percent)
    result = ratio_difference(
        excess.sel(pos=list(FUNCTION_POS)).sum("pos").values,
        count.sel(pos=list(FUNCTION_POS)).sum("pos").values,
        excess.sel(pos=list(CONTENT_POS)).sum("pos").values,
        count.sel(pos=list(CONTENT_POS)).sum("pos").values,
        **_boot(study.settings),
    )
    return comparison_row("C9", text, comparison, result, Criterion(+1, "nats", 0.01, "windows"))


def _labels(values: Any) -> np.ndarray:
    """Case or paradigm labels as Python strings (zarr gives NumPy's variable-width string dtype)."""
    return np.asarray([str(v) for v in np.asarray(values).tolist()], dtype=object)


def _boot(settings: ClaimSettings) -> dict[str, Any]:
    return {"n_boot": settings.n_boot, "seed": settings.seed, "level": settings.level}


STUDY_CLAIMS: tuple[Callable[[_Study], Claim], ...] = (
    _perplexity,
    lambda s: _accuracy(s, "C2", "tse", "neg_random"),
    lambda s: _accuracy(s, "C3", "tse", "neg_matched"),
    lambda s: _accuracy(s, "C4", "blimp", "neg_random"),
    lambda s: _accuracy(s, "C5", "blimp", "neg_matched"),
    _lmeval,
    _matched,
    _layer_groups,
    _pos,
)
