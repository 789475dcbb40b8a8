"""What the digests of issue #21 cost on a Pythia-1.4b-shaped step (24 layers x 8192 neurons,
d_model 2048, a 1% cohort and its random control: 3,936 weight rows).

Baseline in the same run: the writer with the digests switched off, and the check without
recomputing them (what `report --check` and a resume read before digests existed).

    python scripts/bench_digests.py [--steps 6] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import xarray as xr

import store.cube
from store.cube import CubeWriter
from store.digests import step_digests
from store.verify import check_cube

LAYERS, NEURONS, D_MODEL, MEMBERS = 24, 8192, 2048, 2 * 24 * 82
CONDITIONS, CASES, PARADIGMS = ["clean", "neg_cohort", "neg_random"], 22, 67


def step_result(step: int, rng: np.random.Generator) -> xr.Dataset:
    per_neuron = ("step", "layer", "neuron")
    shape = (1, LAYERS, NEURONS)
    data = {name: (per_neuron, rng.random(shape, dtype="float32")) for name in ("wd", "wd_neg", "wd_pos", "drift_ref")}
    data["cohort_weights"] = (("step", "member", "d_model"), rng.standard_normal((1, MEMBERS, D_MODEL), "float32"))
    data["tse_acc"] = (("step", "condition", "tse_case"), rng.random((1, 3, CASES)))
    data["tse_margin"] = (("step", "condition", "tse_case"), rng.random((1, 3, CASES)))
    data["blimp_acc"] = (("step", "condition", "blimp_paradigm"), rng.random((1, 3, PARADIGMS)))
    data["ppl"] = (("step", "condition"), rng.random((1, 3)))
    data["seconds"] = (("step", "phase"), rng.random((1, 4)))
    data["tokens"] = (("step",), np.asarray([step * 2_097_152]))
    data["duplicate_of"] = (("step",), np.asarray([-1]))
    return xr.Dataset(data, coords={"step": [step], "condition": CONDITIONS})


def write(path: Path, steps: list[int], digests: bool) -> list[float]:
    rng = np.random.default_rng(0)
    results = [step_result(s, rng) for s in steps]
    seconds = []
    off = mock.patch.object(store.cube, "step_digests", lambda body, dtypes: {})
    with off if not digests else contextlib.nullcontext(), CubeWriter(path, steps, {"model": "m"}) as cube:
        for result in results:
            start = time.perf_counter()
            cube.write_step(result)
            seconds.append(time.perf_counter() - start)
    return seconds[1:]  # the first step also pre-allocates every variable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    steps = list(range(0, 1000 * args.steps, 1000))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        plain, hashed = Path(tmp) / "plain.zarr", Path(tmp) / "hashed.zarr"
        write_plain = write(plain, steps, digests=False)
        write_hashed = write(hashed, steps, digests=True)
        check_plain, check_hashed = [], []
        for _ in range(3):
            start = time.perf_counter()
            check_cube(hashed, verify=False)
            check_plain.append((time.perf_counter() - start) / len(steps))
            start = time.perf_counter()
            found = check_cube(hashed, verify=True)
            check_hashed.append((time.perf_counter() - start) / len(steps))
        assert not found.changed and not found.lost and not found.unverified
        body = step_result(0, np.random.default_rng(1)).drop_vars(["step", "condition"])
        dtypes = {str(n): v.dtype for n, v in body.variables.items()}
        hashing = []
        for _ in range(5):
            start = time.perf_counter()
            step_digests(body, dtypes)
            hashing.append(time.perf_counter() - start)
        records = json.loads((hashed / "zarr.json").read_text())["attributes"]["steps"]
        per_step = statistics.mean(len(json.dumps({"digests": r["digests"]})) for r in records.values())
        stored = sum(f.stat().st_size for f in hashed.rglob("*") if f.is_file()) / len(steps)
        shutil.rmtree(plain)
    rows = [
        ("write one step, no digests (baseline)", statistics.median(write_plain)),
        ("write one step, with digests", statistics.median(write_hashed)),
        ("check one step, read + decode only (baseline)", statistics.median(check_plain)),
        ("check one step, read + decode + digests", statistics.median(check_hashed)),
    ]
    print(
        f"{len(steps)} steps of {LAYERS}x{NEURONS} neurons, {MEMBERS} weight rows of {D_MODEL}; {stored / 2**20:.1f} MiB stored per step"
    )
    print("| what | seconds per step | vs baseline |")
    print("|---|---:|---:|")
    for i, (what, value) in enumerate(rows):
        base = rows[i - i % 2][1]
        print(f"| {what} | {value:.3f} | {value / base:.2f}x |")
    print(
        f"hashing one step's {len(dtypes)} variables alone (inside the write above): {statistics.median(hashing):.3f} s"
    )
    print(
        f"digests add {per_step:.0f} bytes per done step to zarr.json ({len(records[str(steps[0])]['digests'])} variables)"
    )


if __name__ == "__main__":
    main()
