"""Plain-text table pieces shared by the scan's and the study's reports."""

from __future__ import annotations

from typing import Any

import numpy as np


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """Right-aligned columns under a dashed rule."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def fmt(value: float, digits: int = 3) -> str:
    """A number with ``digits`` decimals; "-" where there is none (NaN: not measured)."""
    return "-" if not np.isfinite(value) else f"{value:.{digits}f}"


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


def protocol_line(provenance: dict) -> str:
    """The scoring protocol and every resolved choice, as stored in the cube's provenance."""
    record = provenance.get("protocol")
    if not record:
        return "protocol: not recorded (a cube made before --protocol)"
    return (
        f"protocol {record['name']}: TSE {record['tse_reduction']}, BLiMP {record['blimp_reduction']}, "
        f"prefix {record['prefix']}, NPI vs {record['npi']}, random control from {record['random_control']} "
        f"neurons, BOS on {record['window_bos']} window(s), POS per {record.get('pos_unit', 'words')[:-1]}, "
        f"{wd_text(provenance, record)}"
    )


def wd_text(provenance: dict, record: dict) -> str:
    """Where the WD text came from: WikiText-2's split (joined as the protocol says) or the file given."""
    spec = provenance.get("wd_corpus") or provenance.get("corpus") or {}
    source = spec.get("source", "wikitext2") if isinstance(spec, dict) else str(spec)
    if source == "wikitext2":
        split = spec.get("split", "train") if isinstance(spec, dict) else "train"
        return f"WD text WikiText-2 {split} split joined by {record['wd_joiner']!r}"
    return f"WD text {source}"


def wd_md_lines(wd: np.ndarray, md: np.ndarray, where: str) -> list[str]:
    """The WD-MD Spearman correlation per layer (one table), from [layer, neuron] arrays."""
    from dynamics.stats.neurons import spearman_by_layer

    rho = spearman_by_layer(np.asarray(wd, dtype=float), np.asarray(md, dtype=float))
    rows = [[str(layer), fmt(float(r))] for layer, r in enumerate(rho)]
    return [f"WD-MD Spearman correlation per layer ({where}):", text_table(["layer", "spearman"], rows)]


#: A BOS choice that moves the checked window's perplexity by more than this factor is a warning.
BOS_WARN_FACTOR = 1.10


def bos_effect_line(record: dict[str, Any] | None) -> str | None:
    """The report's line for a stored :meth:`dynamics.syntax.bos_effect.BosEffect.to_attrs` record (``None`` when not measured)."""
    if not record:
        return None
    without, with_lead = float(record["ppl_without_bos"]), float(record["ppl_with_bos"])
    factor = without / with_lead
    line = (
        f"BOS check (window {int(record['window']) + 1}, {record['tokens']} tokens): perplexity "
        f"{without:.4g} without BOS as the protocol scores it, {with_lead:.4g} with BOS in front (x{factor:.3g})"
    )
    if factor > BOS_WARN_FACTOR or factor < 1 / BOS_WARN_FACTOR:
        line = (
            f"WARNING: {line}; this model's perplexities (and the texts its neurons were ranked on) are of "
            "windows without BOS after the first (--window-bos every, or --protocol strict, puts it on every window)"
        )
    return line


def target_ci_line(record: dict[str, Any] | None) -> str | None:
    """The report's line for a cube's ``--target-ci`` pilot (provenance ``target_ci``, written by
    :meth:`dynamics.evaluate.sizing.SampleSizes.record`; ``None`` when the samples were not sized)."""
    if not record:
        return None
    compared = f" ({record['pilot_comparison']})" if record.get("pilot_comparison") else ""
    line = (
        f"samples sized by --target-ci {record.get('pilot_target_points')}{compared}: the pilot's "
        f"{record.get('pilot_tse_pairs', 0)} TSE pairs gave +/-{record.get('pilot_tse_half_width_points', 0):.2f} "
        f"points -> {record.get('tse_per_case')} per case; "
    )
    if "pilot_blimp_pairs" in record:
        line += (
            f"its {record['pilot_blimp_pairs']} BLiMP pairs gave "
            f"+/-{record.get('pilot_blimp_half_width_points', 0):.2f} points -> "
        )
    return line + f"BLiMP {record.get('blimp_per_paradigm')} per paradigm"
