"""Benchmark memory-bounded pre-activation capture: resumed passes against re-run passes.

When the captures of all layers do not fit the memory budget, the capture makes one pass
per group of layers. The baseline re-runs every block before a group in each pass (cost
grows with L(L + 1) / 2 blocks for one layer per pass); the default resumes each pass from
the residual stream the previous pass stored (2L - 1 blocks). Same model, same windows,
same run; the captures are checked to be bit-identical.

The model is a random GPT-NeoX (Pythia architecture) built from a config, so nothing is
downloaded. Example::

    python scripts/bench_capture.py --layers 12 --d-model 256 --tokens 8192 --layers-per-pass 1
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig

from dynamics.stats.activations import CaptureSettings, iter_pre_activations


def build_model(layers: int, d_model: int, seed: int) -> torch.nn.Module:
    config = GPTNeoXConfig(
        vocab_size=50304,
        hidden_size=d_model,
        num_hidden_layers=layers,
        num_attention_heads=max(1, d_model // 64),
        intermediate_size=4 * d_model,
        max_position_embeddings=2048,
        rotary_pct=0.25,
        use_parallel_residual=True,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def run(
    model: torch.nn.Module, windows: torch.Tensor, budget: int, batch_size: int, resume: bool
) -> tuple[float, dict]:
    start = time.perf_counter()
    captured = {}
    settings = CaptureSettings(memory_budget=budget, batch_size=batch_size, progress=False, resume_passes=resume)
    for layer, pre in iter_pre_activations(model, windows, settings):
        captured[layer] = pre[:: max(1, pre.shape[0] // 512)].clone()  # a sample of rows, to compare
        del pre
    return time.perf_counter() - start, captured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--layers-per-pass", type=int, default=1, help="decides the memory budget")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args.layers, args.d_model, seed=0)
    n_windows = args.tokens // args.window
    windows = torch.randint(0, 50304, (n_windows, args.window), generator=torch.Generator().manual_seed(1))
    n_tokens = n_windows * args.window
    budget = args.layers_per_pass * n_tokens * 4 * 4 * args.d_model
    best = {False: float("inf"), True: float("inf")}
    captures = {}
    for _ in range(args.repeats):
        for resume in (False, True):
            seconds, captures[resume] = run(model, windows, budget, args.batch_size, resume)
            best[resume] = min(best[resume], seconds)
    identical = all(torch.equal(captures[False][k], captures[True][k]) for k in captures[False])
    passes = -(-args.layers // args.layers_per_pass)
    print(
        f"GPT-NeoX {args.layers} layers, d_model {args.d_model}, {n_tokens} tokens, {args.layers_per_pass} "
        f"layer(s) per pass ({passes} passes), torch threads {torch.get_num_threads()}, best of {args.repeats}"
    )
    print("| method | seconds | speed-up |\n|---|---:|---:|")
    print(f"| re-run earlier blocks every pass (baseline) | {best[False]:.2f} | 1.00x |")
    print(f"| resume from the stored residual stream | {best[True]:.2f} | {best[False] / best[True]:.2f}x |")
    print(f"captures bit-identical: {identical}")


if __name__ == "__main__":
    main()
