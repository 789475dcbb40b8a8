"""Markdown tables of a scan cube and a study cube, and of the environment (for gpu_check.py).

Each section function returns (lines, ok): ok is False when a step or condition is not
done or a headline number is not finite.
"""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

PACKAGES = (
    "torch",
    "transformers",
    "huggingface_hub",
    "tokenizers",
    "safetensors",
    "accelerate",
    "numpy",
    "pandas",
    "xarray",
    "zarr",
    "numcodecs",
    "dask",
    "scipy",
)
SCAN_CONDITIONS = ("clean", "neg_cohort", "neg_random")
STUDY_CONDITIONS = ("clean", "neg_top", "neg_random", "neg_matched")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return [line(headers), line(["---"] * len(headers)), *(line(r) for r in rows)]


def number(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if np.isfinite(value) else str(value)


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def source_revision(root: Path) -> str:
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return proc.stdout.strip() if proc.returncode == 0 else "unknown (no git checkout)"


def source_fingerprint(root: Path) -> str:
    """sha256 (first 12 hex digits) of the package sources: names a run where there is no git checkout."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for package in ("checkpoints", "dynamics", "store") for p in (root / package).rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def environment_lines(device: str, dtype: str | None) -> list[str]:
    import torch

    root = Path(__file__).resolve().parents[2]  # the checkout
    rows = [
        ["python", platform.python_version()],
        ["platform", platform.platform()],
        ["project commit", source_revision(root)],
        ["source fingerprint", source_fingerprint(root)],
    ]
    rows += [[name, package_version(name)] for name in PACKAGES]
    rows.append(["torch CUDA", str(torch.version.cuda)])
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            rows.append([f"GPU {i}", f"{props.name}, {props.total_memory / 2**30:.0f} GiB"])
    else:
        rows.append(["GPU", "none visible to torch"])
    rows += [
        ["device", device],
        ["dtype", dtype or "each command's default (auto: the checkpoint's own on CUDA, float32 on the CPU)"],
    ]
    return ["## Environment", "", *markdown_table(["what", "value"], rows)]


def failure(record: dict[str, Any]) -> str:
    """A failed step's or condition's reason, on one line."""
    kind = record.get("error_type")
    text = " ".join(str(record.get("error", "")).split())
    text = text if len(text) <= 240 else text[:237] + "..."
    return f"{kind}: {text}" if kind else text


def scan_section(cube: Path, steps: Sequence[int]) -> tuple[list[str], bool]:
    """Per step: status, seconds per phase, TSE accuracy and perplexity per condition."""
    from store import open_cube

    if not (cube / "zarr.json").is_file():
        return [f"no scan cube at {cube}: the command failed before creating it (see scan.log)"], False
    ds = open_cube(cube, include_pending=True)
    records = ds.attrs.get("steps", {})
    phases = [str(p) for p in ds["phase"].values] if "phase" in ds.coords else []
    conditions = [c for c in SCAN_CONDITIONS if "condition" in ds.coords and c in ds["condition"].values]
    headers = [
        "step",
        "status",
        *[f"{p} s" for p in phases],
        "total s",
        *[f"TSE {c}" for c in conditions],
        *[f"ppl {c}" for c in conditions],
        "BLiMP clean",
        "dtype",
        "failure",
    ]
    rows, ok = [], True
    for step in steps:
        record = records.get(str(step), {})
        status = record.get("status", "pending")
        row = [str(step), status]
        if status == "done" and step in ds["step"].values:
            at = ds.sel(step=step)
            seconds = [float(at["seconds"].sel(phase=p)) for p in phases] if "seconds" in ds else []
            tse = [float(at["tse_acc"].sel(condition=c).mean()) if "tse_acc" in ds else np.nan for c in conditions]
            ppl = [float(at["ppl"].sel(condition=c)) if "ppl" in ds else np.nan for c in conditions]
            headline = tse + ppl
            ok = ok and bool(conditions) and all(np.isfinite(headline))
            row += [number(s, 1) for s in seconds] + [number(sum(seconds), 1)]
            blimp = float(at["blimp_acc"].sel(condition="clean").mean()) if "blimp_acc" in ds else np.nan
            row += [number(v) for v in tse] + [number(v, 1) for v in ppl] + [number(blimp)]
            row += [str(record.get("dtype", "-")), ""]
        else:
            ok = False
            reason = failure(record) if status == "failed" else "not finished (stopped, or the command ended first)"
            row += ["-"] * (len(phases) + 3 + 2 * len(conditions)) + [reason]
        rows.append(row)
    lines = markdown_table(headers, rows)
    lines += [
        "",
        (
            "TSE: accuracy, mean over the cases; ppl: corpus perplexity; conditions: clean, the reference "
            "step's top-WD cohort's negative pre-activations ablated (neg_cohort), a random control."
        ),
    ]
    return lines, ok


def study_section(cube: Path, wall_seconds: float) -> tuple[list[str], bool]:
    """Wall time, condition counts, per-phase seconds and headline numbers of a study cube."""
    from store import open_cube

    if not (cube / "zarr.json").is_file():
        return [f"no study cube at {cube}: the command failed before creating it (see ablate.log)"], False
    ds = open_cube(cube)
    records = ds.attrs.get("steps", {})
    units = ds.attrs.get("units", [])
    statuses = [records.get(str(i), {}).get("status", "pending") for i in range(len(units))]
    counts = {s: statuses.count(s) for s in ("done", "failed", "pending")}
    ok = counts["done"] == len(units) > 0
    lines = [
        (
            f"wall time {wall_seconds:.1f} s; conditions: {counts['done']} done, {counts['failed']} failed, "
            f"{counts['pending']} not run, of {len(units)}"
        )
    ]
    lines += _failure_lines(statuses, units, records) + _phase_seconds_lines(ds)
    rows, measured = _study_rows(ds)
    if not rows:
        return [*lines, "", "the study cube has no clean or neg_top condition"], False
    lines += ["", *markdown_table(["condition", "status", "TSE", "BLiMP", "ppl"], rows)]
    return lines, ok and measured


def _failure_lines(statuses: list[str], units: list[dict], records: dict[str, Any]) -> list[str]:
    """One line per reason the failed units failed with, naming (up to four of) the units."""
    by_reason: dict[str, list[str]] = {}
    for i, status in enumerate(statuses):
        if status == "failed":
            labels = " ".join(f"{k}={v}" for k, v in units[i].get("labels", {}).items())
            by_reason.setdefault(failure(records[str(i)]), []).append(f"{i} ({labels})")
    lines = []
    for reason, failed in by_reason.items():
        shown = ", ".join(failed[:4]) + (f" and {len(failed) - 4} more" if len(failed) > 4 else "")
        lines.append(f"- {len(failed)} failed with {reason}: units {shown}")
    return lines


def _phase_seconds_lines(ds: Any) -> list[str]:
    """Seconds per phase summed over the conditions (and the layer groups), when the cube has them."""
    if "seconds" not in ds or "phase" not in ds.coords:
        return []
    per_phase = {str(p): float(np.nansum(ds["seconds"].sel(phase=p).values)) for p in ds["phase"].values}
    if "group_seconds" in ds:
        for p in per_phase:
            per_phase[p] += float(np.nansum(ds["group_seconds"].sel(phase=p).values))
    return [
        "",
        "seconds per phase, summed over the conditions: " + ", ".join(f"{p} {s:.1f}" for p, s in per_phase.items()),
    ]


def _study_rows(ds: Any) -> tuple[list[list[str]], bool]:
    """The headline row of each condition at the match percent, and whether clean and neg_top are done
    with finite numbers."""
    percent = float(ds.attrs.get("identity", {}).get("analysis", {}).get("match_percent", 1.0))
    rows, measured = [], True
    for condition in STUDY_CONDITIONS:
        if "condition" not in ds.coords or condition not in ds["condition"].values:
            continue
        at = ds.sel(condition=condition, percent=percent)
        done = bool(at["done"]) if "done" in ds else False
        values = [float(at[v]) if v in ds else np.nan for v in ("tse_acc_all", "blimp_acc_all", "ppl")]
        if condition in ("clean", "neg_top"):
            measured = measured and done and all(np.isfinite(values))
        label = condition if condition == "clean" else f"{condition} {percent:g}%"
        rows.append([label, "done" if done else "not done", number(values[0]), number(values[1]), number(values[2], 1)])
    return rows, measured
