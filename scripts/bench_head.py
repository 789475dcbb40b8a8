"""Benchmark: the CPU vocabulary head, tile by tile (the product's path) against whole rows.

Random float32 ``Linear`` heads of a few shapes (``d_model x vocabulary``), random hidden
states and targets; each round projects ``--rows`` positions once through
``linear_head.linear_head_log_probs`` (CPU tiles of ``CPU_TILE_ROWS x CPU_TILE_VOCAB``) and
once through ``linear_head.whole_rows_log_probs`` (chunks of whole rows under
``modelcalls.LOGITS_CHUNK_BYTES``, the previous CPU path), alternating, on each thread count.
Prints a markdown table of the best and median seconds, the ratio, the GFLOP/s of the
product alone (2 x rows x d_model x vocabulary FLOP) and the largest difference between
the two results.

    python scripts/bench_head.py --rows 4096 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dynamics.models import cpu_threads, linear_head
from dynamics.models.modelcalls import chunk_rows

SHAPES = {"pythia-14m": (128, 50304), "smollm2-135m": (576, 49152), "pythia-1.4b": (2048, 50304)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4096, help="positions projected per round (default 4096)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per path (default 5)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, cpu_threads.usable_cores()])
    args = parser.parse_args()
    print(
        f"tiles {linear_head.CPU_TILE_ROWS} x {linear_head.CPU_TILE_VOCAB}; {args.rows} rows; best (median) of {args.repeats}"
    )
    print("| shape | threads | tiles, s | whole rows, s | whole / tiles | product GFLOP/s (tiles) | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.shapes:
        d_model, vocab = SHAPES[name]
        generator = torch.Generator().manual_seed(0)
        head = torch.nn.Linear(d_model, vocab, bias=False)
        with torch.no_grad():
            head.weight.copy_(torch.randn(vocab, d_model, generator=generator) * d_model**-0.5)
        hidden = torch.randn(args.rows, d_model, generator=generator)
        targets = torch.randint(0, vocab, (args.rows,), generator=generator)
        step = chunk_rows(vocab)
        none = (None, None, None)
        for threads in args.threads:
            cpu_threads.set_cpu_threads(threads)
            seconds: dict[str, list[float]] = {"tiles": [], "whole": []}
            results: dict[str, torch.Tensor] = {}
            with torch.no_grad():
                for _ in range(args.repeats + 1):  # the first round warms up and is not counted
                    for path in seconds:
                        start = time.perf_counter()
                        if path == "tiles":
                            results[path] = linear_head.linear_head_log_probs(head, head, hidden, targets, none, step)
                        else:
                            with cpu_threads.cpu_threads(threads):
                                results[path] = linear_head.whole_rows_log_probs(head, hidden, targets, none, step)
                        seconds[path].append(time.perf_counter() - start)
            tiles, whole = (min(seconds[p][1:]) for p in ("tiles", "whole"))
            med = {p: statistics.median(seconds[p][1:]) for p in seconds}
            gflops = 2 * args.rows * d_model * vocab / tiles / 1e9
            diff = float((results["tiles"] - results["whole"]).abs().max())
            print(
                f"| {name} | {threads} | {tiles:.3f} ({med['tiles']:.3f}) | {whole:.3f} ({med['whole']:.3f}) "
                f"| {whole / tiles:.2f}x | {gflops:.0f} | {diff:.1e} |",
                flush=True,
            )
    cpu_threads.set_cpu_threads(None)


if __name__ == "__main__":
    main()
