"""Benchmark: one scan step (and optionally `dynamics ablate`) of a Pythia shape, next to its floor
and to the previous implementation, in the same run.

A random-weight GPT-NeoX of the chosen shape is planted as an offline Hub cache (the layout
of ``dynamics/bench/planted_hub.py``, one revision ``step143000``, float16 on disk). Then
``dynamics scan --steps 143000`` (the reference step is the step: cohort fixed, then the
step measured) runs ``--repeats`` times with this code and with a previous checkout
(``--old``, e.g. ``git worktree add /tmp/old c911d9c``), alternately, as subprocesses on
the same cache with the same options and budgets (the commands' defaults unless
``--extra`` says otherwise). Each run's phase seconds come from its cube; the accuracies
and perplexities of the two codes are compared.

The floor is counted, not measured: FLOPs of the capture forward (``--wd-tokens`` through
the layers, attention included), FLOPs of the evaluation (every distinct TSE sentence's and
every perplexity token under each of the 3 conditions through the layers, plus the
unembedding of each position that must be projected: a pair's positions from its first
difference on, every perplexity position) and the bytes the WD engine sorts (``wd-tokens x
layers x neurons`` float32), divided by peaks measured here on every usable core (a float32
matrix product, the best of the unembedding's shape and a 512 x 2048 tile, into a kept output;
the engine's sort: NumPy's row sort on the CPU,
``torch.sort`` on CUDA). ``--floor-only`` prints the floor alone.

    git worktree add /tmp/old c911d9c
    python scripts/bench_step.py --shape pythia-14m --old /tmp/old --repeats 1 --new-extra "--protocol strict"
    python scripts/bench_step.py --shape pythia-1.4b --device cuda --old /tmp/old   # on a GPU

Measured on this project's 2-core machine (load average 1.0-1.7), Pythia-14m shape,
``--repeats 1 --new-extra "--protocol strict" --ablate`` against c911d9c (2026-12-01): a scan
step's statistics 3.33 s (c911d9c 6.07, 1.83x; floor 1.95) and evaluation 12.46 s (67.82,
5.44x; floor 8.76); the command 21.5 s against 85.6 (3.98x); `dynamics ablate` 68.3 s against
300.9 (4.41x), per condition TSE 5.46x, BLiMP 4.36x, perplexity 5.74x. The same TSE, BLiMP
accuracies and WD; perplexity 1.6% apart by design (the strict protocol cuts perplexity text
disjoint from the WD text, c911d9c did not: ``docs/protocol.md``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dynamics.bench.planted_hub import BENCH_SHAPES as SHAPES
from dynamics.bench.planted_hub import Shape, build_hub_cache

ROOT = Path(__file__).resolve().parents[1]

SHARED = ROOT.parent / "shared" / "data"
STEP = 143000
# The commands' default budgets (dynamics/config/options.py), for the floor.
WD_TOKENS, PPL_TOKENS, TSE_PER_CASE, CONDITIONS = 65536, 16384, 100, 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="pythia-14m")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--old", type=Path, default=None, help="a checkout of the previous implementation")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each code, alternating (default: %(default)s)")
    parser.add_argument("--ablate", action="store_true", help="also time `dynamics ablate` (see --ablate-extra)")
    parser.add_argument(
        "--ablate-extra",
        default="--percents 1 --layer-groups 0 --match-iterations 2",
        help="options of both ablate runs (default: %(default)s)",
    )
    parser.add_argument("--extra", default="", help="options added to both scan commands, e.g. '--tse-per-case 20'")
    parser.add_argument(
        "--new-extra",
        default="",
        help="options added to this code's commands only, e.g. '--protocol strict' (the budgets and "
        "scoring of c911d9c, which has no --protocol)",
    )
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/bench_step"), help="cache and cubes (default: %(default)s)"
    )
    parser.add_argument("--tokenizer", type=Path, default=SHARED / "tokenizers" / "gpt-neox-20b.json")
    parser.add_argument("--corpus", type=Path, default=SHARED / "wikitext-2" / "test.txt")
    parser.add_argument("--blimp", type=Path, default=SHARED / "blimp")
    parser.add_argument("--floor-only", action="store_true", help="print the counted floor and exit")
    return parser.parse_args()


def run(code: Path, argv: list[str], env: dict[str, str], log: Path) -> float:
    """One CLI command of the code at ``code``; its wall seconds (raises when it fails)."""
    child = {**env, "PYTHONPATH": str(code)}
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "dynamics.cli", *argv],
            env=child,
            cwd=code,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode:
        raise SystemExit(f"{code}: `dynamics {' '.join(argv[:1])}` failed ({done.returncode}); see {log}")
    return time.perf_counter() - start


def cube_numbers(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a cube as an array (read with xarray, whichever code wrote it)."""
    import xarray as xr

    data = xr.open_zarr(path)
    return {name: data[name].values for name in data.data_vars if data[name].dtype.kind in "fb"} | {
        "phase": data["phase"].values
    }


def phase_seconds(numbers: dict[str, np.ndarray]) -> dict[str, float]:
    seconds = numbers["seconds"].reshape(-1, len(numbers["phase"]))
    return {str(p): float(np.nanmean(seconds[:, i])) for i, p in enumerate(numbers["phase"])}


def same_numbers(new: dict[str, np.ndarray], old: dict[str, np.ndarray], names: tuple[str, ...]) -> str:
    """Largest difference per shared variable."""
    parts = []
    for name in names:
        if name in new and name in old and new[name].shape == old[name].shape:
            a, b = new[name].astype(float), old[name].astype(float)
            diff = np.nanmax(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))
            parts.append(f"{name} max relative difference {diff:.3g}")
    return "; ".join(parts) or "no shared variable"


def budgets(extra: str) -> tuple[int, int, int]:
    """``(wd_tokens, ppl_tokens, tse_per_case)`` of the scan commands: the defaults or ``--extra``'s."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--wd-tokens", type=int, default=WD_TOKENS)
    parser.add_argument("--ppl-tokens", type=int, default=PPL_TOKENS)
    parser.add_argument("--tse-per-case", type=int, default=TSE_PER_CASE)
    known, _ = parser.parse_known_args(extra.split())
    return known.wd_tokens, known.ppl_tokens, known.tse_per_case


def floor_seconds(shape: Shape, device: str, extra: str) -> dict[str, float]:
    """The counted floor of each phase at peaks measured here (see the module docstring)."""
    import torch
    from transformers import PreTrainedTokenizerFast

    from dynamics.models.cpu_threads import usable_cores
    from dynamics.syntax.tse import sample_tse, tse_pairs

    if device == "cpu":  # every usable core: a small model's batches run side by side on all of them
        torch.set_num_threads(usable_cores())
    d, layers, inner, vocab = shape.hidden, shape.layers, shape.intermediate, shape.vocab
    window = min(2048, shape.max_positions)
    body = 2.0 * layers * (4 * d * d + 2 * d * inner)  # per token: attention projections and MLP
    attention = 2.0 * layers * d * window  # per token, causal average over a window
    head = 2.0 * d * vocab
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(SHARED / "tokenizers" / "gpt-neox-20b.json"))
    wd_tokens, ppl_tokens, per_case = budgets(extra)
    pairs = sample_tse(tse_pairs(), per_case=per_case, seed=0) if per_case else []
    tse_tokens, tse_heads = tse_work(tokenizer, pairs)
    capture_flops = wd_tokens * (body + attention)
    eval_flops = CONDITIONS * (tse_tokens * body + tse_heads * head + ppl_tokens * (body + attention + head))
    sort_bytes = 4.0 * wd_tokens * layers * inner
    dev = torch.device(device)
    x = torch.randn(min(inner, 256), WD_TOKENS, device=dev)  # neurons x tokens: the engine sorts rows
    flop_rate = 0.0  # the best of a whole product and a cache-sized tile, each into a kept output
    for rows, columns, repeats in ((4096, vocab, 1), (512, 2048, 8)):
        a, b = torch.randn(rows, d, device=dev), torch.randn(d, columns, device=dev)
        out = torch.empty(rows, columns, device=dev)
        seconds = _best(lambda a=a, b=b, out=out, n=repeats: [torch.mm(a, b, out=out) for _ in range(n)], dev)
        flop_rate = max(flop_rate, 2.0 * rows * d * columns * repeats / seconds)
    if device == "cpu":  # the engine's CPU sort: NumPy's SIMD quicksort of rows in place, on every core
        sort_rate = 4.0 * x.numel() * usable_cores() / _best(lambda: x.numpy().copy().sort(axis=1), dev)
    else:
        sort_rate = 4.0 * x.numel() / _best(lambda: torch.sort(x, dim=1), dev)
    print(
        f"floor: {tse_tokens} TSE tokens ({tse_heads} projected: from each pair's first difference) and "
        f"{ppl_tokens} perplexity tokens x {CONDITIONS} conditions; peaks measured here: "
        f"matmul {flop_rate / 1e9:.1f} GFLOP/s, sort {sort_rate / 1e9:.2f} GB/s"
    )
    return {
        "statistics": capture_flops / flop_rate + sort_bytes / sort_rate,
        "evaluation": eval_flops / flop_rate,
        "capture": capture_flops / flop_rate,
        "sort": sort_bytes / sort_rate,
    }


def tse_work(tokenizer, pairs) -> tuple[int, int]:  # noqa: ANN001
    """``(tokens, projected)`` of the TSE pairs with a BOS prefix: every distinct sentence's tokens run
    through the layers once; only positions from a pair's first difference on are projected."""
    from dynamics.syntax.logprobs import common_prefix_length

    ids: dict[str, list[int]] = {}
    sentences = sorted({s for p in pairs for s in (p.good, p.bad, p.intrusive) if s})
    for sentence, encoded in zip(sentences, tokenizer(sentences, add_special_tokens=False)["input_ids"]):
        ids[sentence] = [0, *encoded]  # the BOS prefix
    tokens = sum(len(row) for row in ids.values())
    projected = 0
    for pair in pairs:
        rows = [ids[s] for s in (pair.good, pair.bad, pair.intrusive) if s]
        first = min(common_prefix_length(rows[0], row) for row in rows[1:])
        projected += sum(len(row) - max(1, first) for row in rows)
    return tokens, projected


def _best(fn, device) -> float:  # noqa: ANN001
    import torch

    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    args = parse_args()
    shape = SHAPES[args.shape]
    if args.floor_only:
        floor = floor_seconds(shape, args.device, args.extra)
        print("floor (s): " + ", ".join(f"{phase} {value:.3g}" for phase, value in floor.items()))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    hf_home = args.work / "hf"
    built = build_hub_cache(hf_home / "hub", shape, args.tokenizer, (STEP,), "cpu")
    env = {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TQDM_DISABLE": "1",
    }
    codes = {"new": ROOT} | ({"old": args.old.resolve()} if args.old else {})
    scan = [
        "scan",
        "--model",
        shape.alias,
        "--steps",
        str(STEP),
        "--device",
        args.device,
        "--corpus",
        str(args.corpus.resolve()),
        *args.extra.split(),
    ]
    ablate = [
        "ablate",
        "--model",
        shape.alias,
        "--revision",
        str(STEP),
        "--device",
        args.device,
        "--corpus",
        str(args.corpus.resolve()),
        "--blimp",
        str(args.blimp.resolve()),
        "--tasks",
        "none",
        "--pos",
        "off",
        *args.ablate_extra.split(),
    ]
    loads = [os.getloadavg()[0]]
    results: dict[tuple[str, str], list[tuple[float, dict[str, np.ndarray]]]] = {}
    commands = [("scan", scan)] + ([("ablate", ablate)] if args.ablate else [])
    for r in range(args.repeats):
        order = list(codes) if r % 2 == 0 else list(codes)[::-1]
        for command, argv in commands:
            for name in order:
                cube = args.work / f"{command}-{name}-{r}.zarr"
                shutil.rmtree(cube, ignore_errors=True)
                own = args.new_extra.split() if name == "new" else []
                log = args.work / f"{command}-{name}-{r}.log"
                wall = run(codes[name], [*argv, *own, "--out", str(cube)], env, log)
                results.setdefault((command, name), []).append((wall, cube_numbers(cube)))
                loads.append(os.getloadavg()[0])
                print(f"{command} {name} run {r}: {wall:.1f} s wall (load {loads[-1]:.1f})", flush=True)
    floor = floor_seconds(shape, args.device, args.extra)
    print(
        f"\n{args.shape} on {args.device}, cache planted in {built:.1f} s, {args.repeats} run(s) of each code, "
        f"load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores\n"
    )
    for command, _ in commands:
        per_code = {name: [phase_seconds(n) for _, n in results[(command, name)]] for name in codes}
        phases = list(per_code["new"][0])
        print(f"`dynamics {command}` seconds per {'step' if command == 'scan' else 'condition'} (median over runs):\n")
        print("| phase | new | " + ("old | old / new | " if "old" in codes else "") + "floor | new / floor |")
        print("|---|---:|" + ("---:|---:|" if "old" in codes else "") + "---:|---:|")
        for phase in phases:
            new = float(np.median([s[phase] for s in per_code["new"]]))
            cells = [f"{new:.2f}"]
            if "old" in codes:
                old = float(np.median([s.get(phase, np.nan) for s in per_code["old"]]))
                cells += [f"{old:.2f}", f"{old / new:.2f}" if new else "-"]
            low = floor.get(phase) if command == "scan" else None
            cells += [f"{low:.3g}" if low else "-", f"{new / low:.1f}" if low else "-"]
            print(f"| {phase} | " + " | ".join(cells) + " |")
        walls = {name: float(np.median([w for w, _ in results[(command, name)]])) for name in codes}
        print(
            "| wall (command) | "
            + " | ".join(f"{walls[n]:.1f}" for n in codes)
            + (f" | {walls['old'] / walls['new']:.2f}" if "old" in codes else "")
            + " | - | - |\n"
        )
        if "old" in codes:
            names = ("tse_acc", "tse_margin", "ppl", "tse_acc_all", "blimp_acc_all", "wd")
            print(
                "new vs old:",
                same_numbers(results[(command, "new")][0][1], results[(command, "old")][0][1], names),
                "\n",
            )
    print(f"floor parts (s): capture {floor['capture']:.3g}, sort {floor['sort']:.3g}")


if __name__ == "__main__":
    main()
