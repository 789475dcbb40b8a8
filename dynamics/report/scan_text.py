"""`dynamics report`: the headline numbers of a cube as plain-text tables."""

from __future__ import annotations

from collections.abc import Callable

import xarray as xr

from dynamics.errors import UserInputError
from dynamics.report.claims import ClaimSettings
from dynamics.report.claims_format import claims_text
from dynamics.report.scan_claims import scan_claims
from dynamics.report.study_text import study_report
from dynamics.report.tables import failure_lines, fmt, protocol_line, target_ci_line, text_table, wd_md_lines


def _conditions(ds: xr.Dataset) -> list[str]:
    return [str(c) for c in ds["condition"].values] if "condition" in ds.coords else []


#: A group of columns of the step table: its headers, and its cells at one step (the cube at that step).
StepColumns = tuple[list[str], Callable[[xr.Dataset], list[str]]]


def step_table(ds: xr.Dataset) -> str:
    """One row per done step: cohort vs population WD, TSE, BLiMP and perplexity per condition, drift, tokens."""
    columns = _step_columns(ds)
    headers = ["step"] + [header for names, _ in columns for header in names]
    rows = []
    for step in ds["step"].values:
        at = ds.sel(step=step)
        rows.append([str(int(step))] + [cell for _, cells in columns for cell in cells(at)])
    return text_table(headers, rows)


def _step_columns(ds: xr.Dataset) -> list[StepColumns]:
    """The column groups of the step table that ``ds`` has data for, in the table's order."""
    conditions = _conditions(ds)
    columns: list[StepColumns] = []
    if "wd" in ds:
        columns.append(
            (
                ["wd median", "wd cohort"],
                lambda at: [
                    fmt(float(at["wd"].median())),
                    fmt(float(at["wd"].where(ds["cohort"]).mean())) if "cohort" in ds else "-",
                ],
            )
        )
    # TSE and BLiMP: the mean over cases and paradigms (each with the same number of sampled pairs)
    for name, label in (("tse_acc", "tse"), ("blimp_acc", "blimp")):
        if name in ds:
            columns.append(([f"{label} {c}" for c in conditions], _condition_means(name, conditions)))
    if "ppl" in ds:
        columns.append(
            (
                [f"ppl {c}" for c in conditions],
                lambda at: [fmt(float(at["ppl"].sel(condition=c)), 2) for c in conditions],
            )
        )
    if "drift_ref" in ds and "cohort" in ds:
        columns.append((["drift_ref cohort"], lambda at: [fmt(float(at["drift_ref"].where(ds["cohort"]).mean()), 4)]))
    if "tokens" in ds.coords and bool((ds["tokens"] >= 0).any()):
        columns.append((["tokens"], lambda at: [f"{int(at['tokens']):,}" if int(at["tokens"]) >= 0 else "-"]))
    return columns


def _condition_means(name: str, conditions: list[str]) -> Callable[[xr.Dataset], list[str]]:
    """The cells of ``name`` at one step: its mean over its other dimensions, per condition."""
    return lambda at: [fmt(float(at[name].sel(condition=c).mean())) for c in conditions]


def case_table(ds: xr.Dataset) -> str:
    """TSE accuracy per case and condition at the last done step."""
    final = ds["tse_acc"].isel(step=-1)
    conditions = _conditions(ds)
    rows = [
        [str(case)] + [fmt(float(final.sel(tse_case=case, condition=c))) for c in conditions]
        for case in ds["tse_case"].values
    ]
    return text_table(["tse case"] + conditions, rows)


def duplicate_lines(ds: xr.Dataset) -> list[str]:
    """One line per step whose weight files equal an earlier step's (``duplicate_of``)."""
    if "duplicate_of" not in ds.coords:
        return []
    records = ds.attrs.get("steps", {})
    lines = []
    for step, original in zip(ds["step"].values, ds["duplicate_of"].values):
        if int(original) >= 0:
            copied = "copied_from" in records.get(str(int(step)), {})
            lines.append(
                f"step {int(step)}: duplicate_of={int(original)} (same weight files as step {int(original)}; "
                + ("its numbers are copied from it)" if copied else "measured anyway)")
            )
    return lines


def report(ds: xr.Dataset, settings: ClaimSettings | None = None) -> str:
    """The full plain-text report of a scan cube (or of a study cube, see dynamics.report.study_text),
    its claims last."""
    if ds.attrs.get("cube_kind") == "units":
        return study_report(ds, settings)
    if ds.sizes.get("step", 0) == 0:
        raise UserInputError("the cube has no done steps to report yet")
    attrs = ds.attrs
    steps = attrs.get("steps", {})
    failed = sorted(int(s) for s, r in steps.items() if r.get("status") == "failed")
    identity = attrs.get("identity", {})
    parts = [
        f"model: {identity.get('model', '?')}   reference step: {identity.get('reference_step', '?')}   "
        f"done steps: {ds.sizes['step']}   failed: {', '.join(map(str, failed)) or 'none'}",
        *failure_lines(steps),
        protocol_line(attrs.get("provenance", {})),
    ]
    parts += duplicate_lines(ds)
    sized = target_ci_line(attrs.get("provenance", {}).get("target_ci"))
    if sized:
        parts.append(sized)
    skipped = attrs.get("provenance", {}).get("benchmarks_skipped") or {}
    parts += [f"not measured: {name} ({why})" for name, why in skipped.items()]
    if "cohort" in ds:
        parts.append(
            f"cohort: {int(ds['cohort'].sum())} neurons of {ds['cohort'].size} "
            f"({100 * float(ds['cohort'].mean()):.2f}%)"
        )
    if "matched_control" in ds:
        converged = bool(ds["matched_converged"])
        parts.append(
            f"matched control: bottom {float(ds['matched_percent']):.3g}% per layer, perplexity "
            f"{float(ds['matched_ppl']):.4g} vs the cohort's {float(ds['matched_target_ppl']):.4g} at the "
            f"reference step"
            + ("" if converged else f" (NOT matched: {ds['matched_converged'].attrs.get('reason', '')})")
        )
    parts += ["", step_table(ds)]
    if "tse_acc" in ds:
        parts += ["", f"TSE accuracy per case at step {int(ds['step'].values[-1])}:", case_table(ds)]
    if "md" in ds:
        last = int(ds["step"].values[-1])
        parts += ["", *wd_md_lines(ds["wd"].sel(step=last).values, ds["md"].sel(step=last).values, f"step {last}")]
    parts += ["", claims_text(scan_claims(ds, settings))]
    return "\n".join(parts)
