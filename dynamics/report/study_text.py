"""`dynamics report` on a study cube: the headline numbers as plain-text tables."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from dynamics.errors import UserInputError
from dynamics.report.claims import ClaimSettings, study_claims
from dynamics.report.claims_format import claims_text
from dynamics.report.condition_style import ranking
from dynamics.report.differentiation_text import differentiation_report
from dynamics.report.tables import bos_effect_line, failure_lines, protocol_line, target_ci_line, wd_md_lines
from dynamics.report.tables import fmt as _fmt
from dynamics.report.tables import text_table as _table

#: The per-item variables the claims are tested on (cubes made before them lack them).
ITEM_VARIABLES = ("tse_item_margin", "blimp_item_margin", "ppl_window_nll")


def match_percent(ds: xr.Dataset) -> float:
    """The percent at which the matched control was run."""
    return float(ds.attrs["identity"]["analysis"]["match_percent"])


def _at(ds: xr.Dataset, name: str, condition: str, percent: float) -> xr.DataArray:
    return ds[name].sel(condition=condition, percent=percent)


def header(ds: xr.Dataset) -> list[str]:
    prov = ds.attrs.get("provenance", {})
    done, total = int(len([u for u in ds.attrs["steps"].values() if u.get("status") == "done"])), len(ds.attrs["units"])
    lines = [
        f"model: {prov.get('model_id', '?')}   revision: {prov.get('revision') or '-'}   "
        f"conditions done: {done} of {total}"
    ]
    lines += failure_lines(ds.attrs["steps"], unit="condition")
    lines.append(protocol_line(prov))
    bos = bos_effect_line(prov.get("bos_check"))
    if bos:
        lines.append(bos)
    lines.append(
        f"budgets: {prov.get('tse_pairs', '?')} TSE pairs, {prov.get('blimp_pairs', '?')} BLiMP pairs, "
        f"{prov.get('ppl_tokens', '?')} perplexity tokens, {prov.get('wd_tokens', '?')} WD tokens, "
        f"lm-eval limit {prov.get('lmeval_limit')}"
    )
    if "matched_percent" in ds:
        record = prov.get("matched_control", {})
        state = "matched" if bool(ds["matched_converged"]) else f"NOT matched ({record.get('reason', '?')})"
        lines.append(
            f"matched control: bottom m = {float(ds['matched_percent']):.4g}% of each layer by {ranking(ds)}; "
            f"perplexity {float(ds['matched_ppl']):.4f} vs top-{match_percent(ds):g}% "
            f"{float(ds['matched_target_ppl']):.4f} (clean {float(ds['matched_clean_ppl']):.4f}; "
            f"{len(record.get('trials', []))} trials): {state}"
        )
        if record.get("noise_warning"):
            lines.append(f"WARNING: {record['noise_warning']}")
    sized = target_ci_line(prov.get("target_ci"))
    if sized:
        lines.append(sized)
    skipped = prov.get("lmeval_skipped") or {}
    if skipped:
        lines.append(f"lm-eval tasks skipped: {', '.join(skipped)} (reason in attrs provenance.lmeval_skipped)")
    return lines


def _accuracy_cell(ds: xr.Dataset, name: str, condition: str, percent: float) -> str:
    """Accuracy +/- the half-width of its 95% Wilson interval, from the stored per-pair margins (the
    summary alone for cubes made before them)."""
    items = f"{name}_item_margin"
    if items not in ds:
        summary = f"{name}_acc_all"
        return _fmt(float(_at(ds, summary, condition, percent))) if summary in ds else "-"
    margins = _at(ds, items, condition, percent).values
    margins = margins[np.isfinite(margins)]
    if not margins.size:
        return "-"
    n, k = margins.size, int((margins > 0).sum())
    low, high = wilson_interval(k, n)
    return f"{k / n:.3f} +/-{(high - low) / 2:.3f}"


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (one condition's accuracy on its own)."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def _count(ds: xr.Dataset, name: str) -> str:
    dim = f"{name}_item"
    return f"n={ds.sizes[dim]:,}" if dim in ds.sizes else "n=?"


def condition_table(ds: xr.Dataset) -> str:
    """Every condition and percent: perplexity (and its change), TSE and BLiMP accuracy with the
    half-width of their 95% interval (each condition on its own; the claims compare them paired),
    mean lm-eval accuracy, and what the mode does."""
    clean_ppl = float(ds["ppl"].sel(condition="clean").max()) if "ppl" in ds else np.nan
    rows = []
    for condition in ds["condition"].values:
        percents = ds["percent"].values[:1] if condition == "clean" else ds["percent"].values
        for p in percents:
            if not bool(ds["done"].sel(condition=condition, percent=p)):
                continue
            ppl = float(_at(ds, "ppl", condition, p)) if "ppl" in ds else np.nan
            row = [
                str(condition),
                "-" if condition == "clean" else f"{p:g}",
                _fmt(ppl, 3),
                _fmt(100 * (ppl / clean_ppl - 1), 2),
            ]
            row += [_accuracy_cell(ds, name, condition, p) for name in ("tse", "blimp")]
            lm = _at(ds, "lmeval_acc", condition, p).values if "lmeval_acc" in ds else np.array([np.nan])
            row.append(_fmt(float(np.nanmean(lm))) if np.isfinite(lm).any() else "-")
            rows.append(row)
    headers = ["condition", "percent", "ppl", "ppl +%", f"TSE ({_count(ds, 'tse')})", f"BLiMP ({_count(ds, 'blimp')})"]
    return _table([*headers, "lm-eval mean acc"], rows)


def mode_lines(ds: xr.Dataset) -> list[str]:
    """One line per ablation mode the study ran: what it does to a chosen neuron."""
    from dynamics.ablation.modes import MODES

    modes = sorted({str(u.get("mode", "negative")) for u in ds.attrs.get("units", []) if u.get("neurons")})
    return [f"  {m}: {MODES[m].meaning}" for m in modes if m in MODES]


def _per_label_table(ds: xr.Dataset, name: str, dim: str, title: str) -> str:
    """``name`` per label of ``dim`` for every condition done at the match percent."""
    p = match_percent(ds)
    conditions = [str(c) for c in ds["condition"].values if bool(ds["done"].sel(condition=c, percent=p))]
    rows = [
        [str(label)] + [_fmt(float(_at(ds, name, c, p).sel({dim: label}))) for c in conditions]
        for label in ds[dim].values
    ]
    return _table([title] + [f"{c}" for c in conditions], rows)


def group_table(ds: xr.Dataset) -> str:
    rows = []
    layers = ds["layer_group_of"].values if "layer_group_of" in ds else None
    for g in ds["layer_group"].values:
        members: Any = np.flatnonzero(layers == g) if layers is not None else []
        span = f"{members[0]}-{members[-1]}" if len(members) else "?"
        row = [str(int(g)), span]
        for scope in ("alone", "cumulative"):
            for v in ("group_tse_acc_all", "group_blimp_acc_all"):
                row.append(_fmt(float(ds[v].sel(group_scope=scope, layer_group=g))) if v in ds else "-")
        rows.append(row)
    return _table(["group", "layers", "alone TSE", "alone BLiMP", "cumul. TSE", "cumul. BLiMP"], rows)


def missing_items_line(ds: xr.Dataset) -> str:
    """One line naming the per-item variables an older cube lacks ("" when it has them all)."""
    missing = [name for name in ITEM_VARIABLES if name not in ds]
    if not missing:
        return ""
    return (
        f"this cube has no {', '.join(missing)} (made before per-item results were stored): the claims "
        "below that need them are absent; re-run the study into a new --out to test them"
    )


def study_report(ds: xr.Dataset, settings: ClaimSettings | None = None) -> str:
    """The full plain-text report of a study cube, its claims and mechanism tables last."""
    if not bool(ds["done"].any()):
        raise UserInputError("the study cube has no done conditions to report yet")
    p = match_percent(ds)
    parts = [*header(ds), "", "Conditions (ppl +%: change against clean; +/-: 95% interval of each accuracy alone):"]
    parts += [condition_table(ds), "ablation modes:", *mode_lines(ds)]
    if "tse_acc" in ds:
        parts += ["", f"TSE accuracy per case at {p:g}%:", _per_label_table(ds, "tse_acc", "tse_case", "tse case")]
    if "blimp_term_acc" in ds:
        parts += [
            "",
            f"BLiMP accuracy per phenomenon at {p:g}%:",
            _per_label_table(ds, "blimp_term_acc", "blimp_phenomenon", "phenomenon"),
        ]
    if "lmeval_acc" in ds and np.isfinite(ds["lmeval_acc"].values).any():
        parts += ["", f"lm-eval accuracy per task at {p:g}%:", _per_label_table(ds, "lmeval_acc", "task", "task")]
    if "pos_excess" in ds and np.isfinite(ds["pos_excess"].values).any():
        parts += ["", f"POS excess surprisal (nats) at {p:g}%:", _per_label_table(ds, "pos_excess", "pos", "pos")]
    if "md" in ds:
        parts += ["", *wd_md_lines(ds["wd"].values, ds["md"].values, "the WD windows")]
    if "group_done" in ds and bool(ds["group_done"].any()):
        parts += [
            "",
            "Negative ablation of the top neurons by layer group (alone / cumulative from group 0):",
            group_table(ds),
        ]
    mechanism = differentiation_report(ds)
    if mechanism:
        parts += ["", mechanism]
    parts += [
        "",
        *([missing_items_line(ds)] if missing_items_line(ds) else []),
        claims_text(study_claims(ds, settings)),
    ]
    return "\n".join(parts)
