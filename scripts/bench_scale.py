"""Benchmark: throughput of a toy scan with the serial executor and with 1 and 2 local Dask workers.

One toy suite (built here unless --suite is given), the same scan settings for every row;
each row scans every step of the suite into a fresh cube. Rows:

- ``serial`` (the baseline): ``--executor serial``, the steps one after the other here;
- ``dask, N workers``: ``--executor dask --scheduler local --workers N`` (a LocalCluster of
  N processes with one thread each, started and stopped inside the timed run).

Columns: wall-clock seconds of the whole run (cluster start, reference step and cohort,
every step, cluster stop), steps per minute over the whole run, steps per minute in the
steady state (between the first and the last step written: no start-up), each as a
ratio to the serial row, and whether the cube equals the serial cube (every data variable
but the timings). With ``--repeats R`` the rows run R times in rotating order and the
median is shown. On a machine with fewer free cores than workers, more workers cannot
be faster: say how many cores the numbers were measured on.

    python scripts/bench_scale.py --checkpoints 16
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from dynamics.scan.config import ScanConfig
from dynamics.scan.driver import run_scan
from dynamics.toy.suite import ToyConfig, build_toy_suite
from store import open_cube
from store.cube import CubeWriter


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", type=Path, default=None, help="an existing toy suite (default: build one)")
    parser.add_argument(
        "--checkpoints", type=int, default=16, help="steps of the built suite after 0 (default: %(default)s)"
    )
    parser.add_argument(
        "--hidden-size", type=int, default=64, help="width of the built toy model (default: %(default)s)"
    )
    parser.add_argument("--workers", default="1,2", help="Dask worker counts to run (default: %(default)s)")
    parser.add_argument("--wd-tokens", type=int, default=4096, help="scan --wd-tokens (default: %(default)s)")
    parser.add_argument("--ppl-tokens", type=int, default=2048, help="scan --ppl-tokens (default: %(default)s)")
    parser.add_argument("--tse-per-case", type=int, default=10, help="scan --tse-per-case (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per row, rotating order (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=None, help="where suites and cubes go (default: a temp dir)")
    return parser.parse_args()


def build_suite(args: argparse.Namespace, workdir: Path) -> Path:
    out = workdir / "suite"
    steps = 4 * args.checkpoints
    config = ToyConfig(
        out=str(out),
        sentences=4000,
        heldout_sentences=400,
        hidden_size=args.hidden_size,
        layers=2,
        heads=2,
        context=64,
        batch_size=8,
        steps=steps,
        checkpoint_every=4,
        warmup_steps=4,
        progress=False,
    )
    return build_toy_suite(out, config)


def timed_scan(config: ScanConfig) -> tuple[float, list[float]]:
    """Wall seconds of the whole scan, and the moments each step was written."""
    written: list[float] = []
    original = CubeWriter.write_step

    def write_step(self, result, record=None):  # noqa: ANN001 - a wrapper for timing only
        original(self, result, record)
        written.append(time.perf_counter())

    CubeWriter.write_step = write_step  # type: ignore[method-assign]
    start = time.perf_counter()
    try:
        summary = run_scan(config)
    finally:
        CubeWriter.write_step = original  # type: ignore[method-assign]
    if summary.failed:
        raise SystemExit(f"steps failed: {summary.failed}")
    return time.perf_counter() - start, [t - start for t in written]


def same_cube(a: Path, b: Path) -> bool:
    x, y = open_cube(a), open_cube(b)
    names = sorted(set(x.data_vars) - {"seconds"})
    return names == sorted(set(y.data_vars) - {"seconds"}) and all(
        np.array_equal(x[n].values, y[n].values, equal_nan=True) for n in names
    )


def main() -> None:
    args = parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    workdir.mkdir(parents=True, exist_ok=True)
    suite = args.suite or build_suite(args, workdir)
    rows = [("serial", "serial", 0)] + [
        (f"dask, {n} worker{'s' * (n > 1)}", "dask", n) for n in map(int, args.workers.split(","))
    ]
    runs: dict[str, list[tuple[float, list[float]]]] = {name: [] for name, _, _ in rows}
    equal: dict[str, bool] = {}
    for repeat in range(args.repeats):
        for name, executor, workers in rows[repeat % len(rows) :] + rows[: repeat % len(rows)]:
            out = workdir / f"{executor}{workers}-{repeat}.zarr"
            shutil.rmtree(out, ignore_errors=True)
            config = ScanConfig(
                model=str(suite),
                out=str(out),
                steps="all",
                wd_tokens=args.wd_tokens,
                ppl_tokens=args.ppl_tokens,
                tse_per_case=args.tse_per_case,
                executor=executor,
                scheduler="local",
                workers=workers,
            )
            runs[name].append(timed_scan(config))
            baseline = workdir / "serial0-0.zarr"
            if baseline.exists() and name != "serial":
                equal[name] = equal.get(name, True) and same_cube(baseline, out)
    n_steps = len(runs["serial"][0][1])
    wall = {name: statistics.median(w for w, _ in r) for name, r in runs.items()}
    steady = {name: statistics.median((len(t) - 1) / (t[-1] - t[0]) * 60 for _, t in r) for name, r in runs.items()}
    print(
        f"\ntoy scan of {n_steps} steps ({suite}); {os.cpu_count()} CPU cores visible; median of {args.repeats} run(s)\n"
    )
    print("| executor | wall s | steps/min | ratio | steady steps/min | ratio | cube equals serial |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, _, _ in rows:
        per_min = n_steps / wall[name] * 60
        print(
            f"| {name} | {wall[name]:.1f} | {per_min:.1f} | {per_min / (n_steps / wall['serial'] * 60):.2f}x | "
            f"{steady[name]:.1f} | {steady[name] / steady['serial']:.2f}x | "
            f"{'baseline' if name == 'serial' else equal.get(name, 'n/a')} |"
        )


if __name__ == "__main__":  # Dask's worker processes re-import this file: nothing may run on import
    main()
