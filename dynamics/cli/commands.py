"""The small commands (`steps`, `tse export`, `plot`, `report`, `toy`) and the entry points of
`scan` and `ablate`: each a config dataclass (its options) and a function running it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dynamics.config.options import option
from dynamics.config.paths import check_output_dir
from dynamics.errors import CubeError, DamagedCubeError


@dataclass(frozen=True)
class StepsConfig:
    """`dynamics steps`: show the steps a spec selects."""

    spec: str = option(help="step spec, e.g. 0:143000:1000, pythia, log, final, all", positional=True)
    model: str | None = option(
        None,
        help="check the steps against this model's checkpoints (a Hub repo's refs are "
        "listed: offline, its cached ones)",
    )
    revision_template: str = option(
        "step{step}",
        help="the Hub revision name of a step: {step} and optionally {tokens} (e.g. stage1-step{step}-tokens{tokens}B)",
    )
    cache_dir: str | None = option(None, help="Hugging Face cache directory (default: the hub's own)")


def run_steps(config: StepsConfig) -> int:
    from checkpoints.hub_source import HubSource
    from checkpoints.names import resolve_model
    from checkpoints.revisions import RevisionTemplate
    from checkpoints.source import open_source
    from checkpoints.steps import parse_steps
    from dynamics.toy.builtin import ensure_toy_suite, is_toy_alias

    RevisionTemplate(config.revision_template)  # a malformed template is one line
    ref = resolve_model(config.model) if config.model else None
    parse_steps(config.spec)  # the spec's form, before a toy suite is trained
    if ref is not None and is_toy_alias(ref):
        ensure_toy_suite(ref)
    source = open_source(ref, cache_dir=config.cache_dir, revision_template=config.revision_template) if ref else None
    available = (
        (source.verified_steps() if isinstance(source, HubSource) else source.available_steps())
        if source is not None
        else None
    )
    steps = parse_steps(config.spec, available, source=source.model_id if source else "")
    print(f"{len(steps)} steps: {' '.join(str(s) for s in steps)}")
    if source is not None and available is not None:
        where = source.revisions().where if isinstance(source, HubSource) else source.model_id
        shown = (
            " ".join(str(s) for s in available)
            if len(available) <= 40
            else (" ".join(map(str, available[:20])) + " ... " + " ".join(map(str, available[-10:])))
        )
        print(f"{source.model_id} offers {len(available)} steps ({where}): {shown}")
    return 0


@dataclass(frozen=True)
class TseExportConfig:
    """`dynamics tse export`: write the built-in TSE benchmark (Marvin & Linzen 2018) to files."""

    directory: str = option(help="output directory", positional=True)
    format: str = option(
        "pickle",
        help="pickle: <case>.pickle dicts as the original generator wrote; "
        "jsonl: sentence_good, sentence_bad, case, subcase",
        choices=["pickle", "jsonl"],
    )
    overwrite: bool = option(False, help="replace existing files whose content differs")


def run_tse_export(config: TseExportConfig) -> int:
    from dynamics.syntax.tse_io import export_tse

    check_output_dir(config.directory, "DIR")
    paths = export_tse(config.directory, format=config.format, overwrite=config.overwrite)  # type: ignore[arg-type]
    print(f"wrote {len(paths)} files to {config.directory}")
    return 0


@dataclass(frozen=True)
class PlotConfig:
    """`dynamics plot`: seaborn figures of a cube (PNG and PDF)."""

    cube: list[str] = option(
        help="the cube (.zarr directory); several scan cubes of one model size trained with "
        "different seeds: their mean and a band from the lowest to the highest seed",
        positional=True,
        nargs="+",
        metavar="CUBE",
    )
    out: str = option("figures", help="directory for the figures", flag="-o")
    formats: str = option("png,pdf", help="comma-separated file formats: png, pdf, svg")
    x: str = option(
        "step", help="x axis of the training-dynamics figures: step or tokens (tokens seen)", choices=["step", "tokens"]
    )


def run_plot(config: PlotConfig) -> int:
    from dynamics.report.scan_figures import plot_cube
    from store import open_cube, open_cubes

    cubes = [config.cube] if isinstance(config.cube, str) else list(config.cube)
    ds = open_cube(cubes[0]) if len(cubes) == 1 else open_cubes(cubes, dim="seed")
    for cube in cubes:
        _require_data(cube)
    check_output_dir(config.out, "--out")
    paths = plot_cube(ds, config.out, [f.strip() for f in config.formats.split(",") if f.strip()], x=config.x)
    print(f"wrote {len(paths)} files to {config.out}")
    return 0


@dataclass(frozen=True)
class ReportConfig:
    """`dynamics report`: the headline numbers of a cube as plain-text tables."""

    cube: str = option(help="the cube (.zarr directory)", positional=True)
    check: bool = option(
        False,
        help="instead of the tables, verify that every done step's stored variables are "
        "present and readable (exit 1 naming what is lost)",
    )


def run_report(config: ReportConfig) -> int:
    from dynamics.report.scan_text import report
    from store import open_cube
    from store.integrity import lost_data_report

    ds = open_cube(config.cube)
    if config.check:
        lines, error = lost_data_report(config.cube, ds.attrs)
        print("\n".join(lines))
        if error:
            raise CubeError(error)
        return 0
    _require_data(config.cube)
    print(report(ds))
    return 0


def _require_data(cube: str) -> None:
    """Tables and figures of a cube some of whose done steps lost data would be wrong: one line instead."""
    from pathlib import Path

    from store.integrity import lost_data_report
    from store.metadata import read_root_attrs

    _, error = lost_data_report(cube, read_root_attrs(Path(cube)))
    if error:
        raise DamagedCubeError(f"{error} (`dynamics report --check {cube}` names what is lost)")


def run_toy(config: Any) -> int:
    from dynamics.toy.suite import build_toy_suite

    check_output_dir(config.out, "--out")
    path = build_toy_suite(config.out, config)
    print(f"toy suite written to {path}; scan it with: dynamics scan --model {path} --steps all --out toy.zarr")
    return 0


def run_scan_command(config: Any) -> int:
    from dynamics.scan.driver import run_scan

    summary = run_scan(config)
    print(
        f"{config.out}: {len(summary.done) - len(summary.copied)} steps computed, "
        + (
            f"{len(summary.copied)} copied from an earlier step with the same weights "
            f"({', '.join(f'{s}={o}' for s, o in sorted(summary.copied.items()))}), "
            if summary.copied
            else ""
        )
        + f"{len(summary.skipped)} already done, "
        f"{len(summary.failed)} failed" + (f" ({', '.join(map(str, summary.failed))})" if summary.failed else "")
    )
    return 0 if not summary.failed else 1


def run_ablate_command(config: Any) -> int:
    from dynamics.study.driver import run_study

    summary = run_study(config)
    print(
        f"{config.out}: {len(summary.done)} conditions computed, {len(summary.skipped)} already done, "
        f"{len(summary.failed)} failed (of {summary.units}); see: dynamics report {config.out}"
    )
    return 0 if not summary.failed else 1
