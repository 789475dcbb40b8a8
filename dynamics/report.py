"""`dynamics report`: the headline numbers of a cube as plain-text tables."""

from __future__ import annotations

import numpy as np
import xarray as xr

from dynamics.errors import UserInputError


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """Right-aligned columns under a dashed rule."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def fmt(value: float, digits: int = 3) -> str:
    """A number with ``digits`` decimals; "-" where there is none (NaN: not measured)."""
    return "-" if not np.isfinite(value) else f"{value:.{digits}f}"


def _conditions(ds: xr.Dataset) -> list[str]:
    return [str(c) for c in ds["condition"].values] if "condition" in ds.coords else []


def step_table(ds: xr.Dataset) -> str:
    """One row per done step: cohort vs population WD, TSE and perplexity per condition, drift."""
    conditions = _conditions(ds)
    headers = ["step"]
    if "wd" in ds:
        headers += ["wd median", "wd cohort"]
    headers += [f"tse {c}" for c in conditions if "tse_acc" in ds]
    headers += [f"ppl {c}" for c in conditions if "ppl" in ds]
    if "drift_ref" in ds and "cohort" in ds:
        headers += ["drift_ref cohort"]
    rows = []
    for step in ds["step"].values:
        at = ds.sel(step=step)
        row = [str(int(step))]
        if "wd" in ds:
            row += [fmt(float(at["wd"].median())),
                    fmt(float(at["wd"].where(ds["cohort"]).mean())) if "cohort" in ds else "-"]
        if "tse_acc" in ds:
            row += [fmt(float(at["tse_acc"].sel(condition=c).mean())) for c in conditions]
        if "ppl" in ds:
            row += [fmt(float(at["ppl"].sel(condition=c)), 2) for c in conditions]
        if "drift_ref" in ds and "cohort" in ds:
            row += [fmt(float(at["drift_ref"].where(ds["cohort"]).mean()), 4)]
        rows.append(row)
    return text_table(headers, rows)


def case_table(ds: xr.Dataset) -> str:
    """TSE accuracy per case and condition at the last done step."""
    final = ds["tse_acc"].isel(step=-1)
    conditions = _conditions(ds)
    rows = [[str(case)] + [fmt(float(final.sel(tse_case=case, condition=c))) for c in conditions]
            for case in ds["tse_case"].values]
    return text_table(["tse case"] + conditions, rows)


def failure_lines(steps: dict[str, dict], unit: str = "step") -> list[str]:
    """One line per failed unit: its number or name, the kind and phase of the failure, the error."""
    lines = []
    for key, record in sorted(steps.items(), key=lambda item: int(item[0])):
        if record.get("status") != "failed":
            continue
        labels = record.get("labels") or {}
        name = " ".join(f"{k}={v}" for k, v in labels.items()) if labels else f"{unit} {key}"
        where = "/".join(filter(None, (record.get("kind"), record.get("phase"))))
        lines.append(f"  failed {name}" + (f" [{where}]" if where else "") + f": {record.get('error', '?')}")
    return lines


def report(ds: xr.Dataset) -> str:
    """The full plain-text report of a scan cube (or of a study cube, see dynamics.study_report)."""
    if ds.attrs.get("cube_kind") == "units":
        from dynamics.study_report import study_report

        return study_report(ds)
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
    ]
    if "cohort" in ds:
        parts.append(f"cohort: {int(ds['cohort'].sum())} neurons of {ds['cohort'].size} "
                     f"({100 * float(ds['cohort'].mean()):.2f}%)")
    if "matched_control" in ds:
        converged = bool(ds["matched_converged"])
        parts.append(f"matched control: bottom {float(ds['matched_percent']):.3g}% per layer, perplexity "
                     f"{float(ds['matched_ppl']):.4g} vs the cohort's {float(ds['matched_target_ppl']):.4g} at the "
                     f"reference step" + ("" if converged else
                                          f" (NOT matched: {ds['matched_converged'].attrs.get('reason', '')})"))
    parts += ["", step_table(ds)]
    if "tse_acc" in ds:
        parts += ["", f"TSE accuracy per case at step {int(ds['step'].values[-1])}:", case_table(ds)]
    return "\n".join(parts)
