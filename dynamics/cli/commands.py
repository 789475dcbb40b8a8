"""The small commands (`steps`, `tse export`, `plot`, `report`, `toy`) and the entry points of
`scan` and `ablate`: each a config dataclass (its options) and a function running it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dynamics.config.options import option
from dynamics.config.paths import check_output_dir
from dynamics.errors import CubeError, DamagedCubeError, UserInputError


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

    check_output_dir(config.directory, "DIR", not_a_cube=True)
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
    from store.safe_files import files_into

    cubes = [config.cube] if isinstance(config.cube, str) else list(config.cube)
    _require_distinct(cubes)
    formats = plot_formats(config.formats)
    opened = [open_cube(cube) for cube in cubes]
    for one, cube in zip(opened, cubes):  # each one's own checks, before they are read together
        _check_meaning(one, cube)
    ds = opened[0] if len(cubes) == 1 else open_cubes(cubes, dim="seed")
    for cube in cubes:
        _require_data(cube)
    out = check_output_dir(config.out, "--out", not_a_cube=True)
    with files_into(out) as staging:  # every figure, or none: a full disk leaves nothing of this run
        paths = plot_cube(ds, staging, formats, x=config.x)
    print(f"wrote {len(paths)} files to {config.out}")
    return 0


#: What ``--formats`` accepts.
PLOT_FORMATS = ("png", "pdf", "svg")


def plot_formats(text: str) -> list[str]:
    """``--formats``: comma-separated, each one of :data:`PLOT_FORMATS`, at least one; one line otherwise."""
    formats = [f.strip() for f in text.split(",")]
    accepted = ", ".join(PLOT_FORMATS)
    if not any(formats):
        raise UserInputError(f"--formats {text!r} names no format; give one or more of {accepted}, e.g. png,pdf")
    bad = [f for f in formats if f not in PLOT_FORMATS]
    if bad:
        raise UserInputError(f"--formats {text!r}: {bad[0]!r} is not a figure format; expected some of {accepted}")
    return list(dict.fromkeys(formats))


def _require_distinct(cubes: list[str]) -> None:
    """One cube given twice would be drawn as two seeds that agree: one line instead."""
    import os

    seen: dict[str, str] = {}
    for cube in cubes:
        real = os.path.realpath(os.path.expanduser(cube))
        if real in seen:
            same = "" if seen[real] == cube else f" (as {seen[real]!r} and {cube!r})"
            raise UserInputError(
                f"CUBE {cube!r} is given twice{same}; give each seed's cube once (several cubes are read as seeds)"
            )
        seen[real] = cube


@dataclass(frozen=True)
class ReportConfig:
    """`dynamics report`: the headline numbers of a cube as plain-text tables."""

    cube: str = option(help="the cube (.zarr directory)", positional=True)
    check: bool = option(
        False,
        help="instead of the tables, verify that every done step's stored variables are "
        "present, readable and as written (their digests; exit 1 naming each step and variable "
        "lost or changed)",
    )
    format: str = option(
        "text",
        help="text: the tables and the claims; markdown: the claims as a markdown table; json: the claims "
        "and every comparison behind them (docs/claims.schema.json)",
        choices=["text", "markdown", "json"],
    )
    bootstrap: int = option(10_000, help="bootstrap resamples behind each claim's 95%% CI")
    seed: int | None = option(None, help="seed of the bootstrap (default: the cube's --seed)")
    target_ci: float = option(
        1.0,
        help="CI half-width, in accuracy points, an inconclusive claim's note says how many pairs would reach",
    )


def run_report(config: ReportConfig) -> int:
    from store import open_cube
    from store.verify import check_report

    settings = _claim_settings(config)  # bad numbers first, before the cube is read
    ds = open_cube(config.cube)
    _check_meaning(ds, config.cube)
    if config.check:
        lines, error = check_report(config.cube, ds.attrs)
        print("\n".join(lines))
        if error:
            raise CubeError(error)
        return 0
    _require_data(config.cube)
    print(_formatted_report(ds, config, settings))
    return 0


def _claim_settings(config: ReportConfig) -> Any:
    from dynamics.errors import UserInputError
    from dynamics.report.claims import ClaimSettings

    if config.bootstrap < 100:
        raise UserInputError(f"--bootstrap {config.bootstrap!r}: expected at least 100 resamples")
    if not 0 < config.target_ci <= 100:
        raise UserInputError(f"--target-ci {config.target_ci!r}: expected accuracy points in (0, 100]")
    if config.seed is not None and not 0 <= config.seed < 2**32:
        raise UserInputError(f"--seed {config.seed!r}: expected a whole number from 0 to 4294967295")
    return ClaimSettings(n_boot=config.bootstrap, seed=config.seed or 0, target_points=config.target_ci)


def _formatted_report(ds: Any, config: ReportConfig, settings: Any) -> str:
    """The report in ``config.format``; the bootstrap seed is the cube's own unless --seed is given."""
    from dataclasses import replace

    from dynamics.report.claims import cube_claim_settings, study_claims
    from dynamics.report.claims_format import claims_json, claims_markdown
    from dynamics.report.scan_claims import scan_claims
    from dynamics.report.scan_text import report

    if config.seed is None:
        settings = replace(settings, seed=cube_claim_settings(ds).seed)
    if config.format == "text":
        return report(ds, settings)
    study = ds.attrs.get("cube_kind") == "units"
    claims = study_claims(ds, settings) if study else scan_claims(ds, settings)
    if config.format == "markdown":
        return claims_markdown(claims)
    used = {"n_boot": settings.n_boot, "seed": settings.seed, "level": settings.level, "target_ci": config.target_ci}
    return claims_json(claims, config.cube, "study" if study else "scan", used)


def _check_meaning(ds: Any, cube: str) -> None:
    from dynamics.report.cube_checks import check_cohort_size

    check_cohort_size(ds, cube)


def _require_data(cube: str) -> None:
    """Tables and figures of a cube some of whose done steps lost or changed data would be wrong: one line instead."""
    from pathlib import Path

    from store.metadata import read_root_attrs
    from store.verify import check_report

    _, error = check_report(cube, read_root_attrs(Path(cube)))
    if error:
        raise DamagedCubeError(f"{error} (`dynamics report --check {cube}` names what is lost or changed)")


def run_toy(config: Any) -> int:
    from dynamics.toy.suite import build_toy_suite
    from store.safe_files import make_directories, remove_directories

    out = check_output_dir(config.out, "--out", not_a_cube=True)
    made = make_directories(out)  # here, one level at a time: a very deep --out is no RecursionError
    try:
        path = build_toy_suite(config.out, config)
    except BaseException:
        remove_directories(made)  # only those still empty
        raise
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
