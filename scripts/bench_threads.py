"""Benchmark: 1 vs 2 CPU threads for scoring and perplexity, by model shape (the thread policy's evidence).

Random GPT-NeoX models of a given shape (``pythia-14m``: 6 layers, hidden 128, 4 heads, MLP
512, vocabulary 50304; ``toy``: the built-in organism's 2 layers, hidden 128, vocabulary of
the toy words), the real Pythia tokenizer for TSE pairs (the toy's own words for ``toy``),
corpus windows of random ids. The thread counts alternate over ``--repeats`` rounds (order
rotating), so that other jobs on a shared machine slow both alike. Prints a markdown
table: seconds per round (median), the ratio 1-thread / 2-thread, and the FLOPs split of
one evaluated token between the body (layers) and the head (unembedding of a scored
position), which is what :func:`dynamics.models.runtime.set_threads` decides on.

    python scripts/bench_threads.py --shape pythia-14m --pairs 200 --windows 2 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, PreTrainedTokenizerFast

from dynamics.models.runtime import evaluation_flops
from dynamics.syntax.perplexity import perplexity
from dynamics.syntax.scoring import Batching, score_pairs
from dynamics.syntax.tse import sample_tse, tse_pairs

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHAPES = {
    "pythia-14m": dict(
        num_hidden_layers=6,
        hidden_size=128,
        num_attention_heads=4,
        intermediate_size=512,
        vocab_size=50304,
        window=2048,
    ),
    "toy": dict(
        num_hidden_layers=2, hidden_size=128, num_attention_heads=4, intermediate_size=512, vocab_size=0, window=64
    ),
}


def build(shape: str) -> tuple[torch.nn.Module, object, int]:
    spec = dict(SHAPES[shape])
    window = int(spec.pop("window"))
    if shape == "toy":
        from dynamics.toy.suite import build_tokenizer, vocabulary

        tokenizer = build_tokenizer()
        spec["vocab_size"] = len(vocabulary())
    else:
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=str(SHARED / "tokenizers" / "gpt-neox-20b.json"),
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
        )
    torch.manual_seed(0)
    config = GPTNeoXConfig(max_position_embeddings=max(2048, window), **spec)
    return AutoModelForCausalLM.from_config(config).eval(), tokenizer, window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="pythia-14m")
    parser.add_argument("--pairs", type=int, default=200, help="TSE pairs scored per round (default: %(default)s)")
    parser.add_argument("--windows", type=int, default=2, help="corpus windows per round (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per thread count (default: %(default)s)")
    args = parser.parse_args()
    model, tokenizer, window = build(args.shape)
    pairs = sample_tse(tse_pairs(), per_case=max(1, args.pairs // 22), seed=0)[: args.pairs]
    windows = torch.randint(
        0, model.config.vocab_size, (args.windows, window), generator=torch.Generator().manual_seed(1)
    )
    tasks = {
        "scoring": lambda: score_pairs(model, tokenizer, pairs, batching=Batching(progress=False)),
        "perplexity": lambda: perplexity(model, windows, progress=False),
    }
    seconds: dict[tuple[str, int], list[float]] = {(t, n): [] for t in tasks for n in (1, 2)}
    loads = [os.getloadavg()[0]]
    with torch.inference_mode():
        for task in tasks.values():  # warm-up, not timed
            torch.set_num_threads(1)
            task()
        for r in range(args.repeats):
            for threads in (1, 2) if r % 2 == 0 else (2, 1):
                torch.set_num_threads(threads)
                for name, task in tasks.items():
                    start = time.perf_counter()
                    task()
                    seconds[(name, threads)].append(time.perf_counter() - start)
            loads.append(os.getloadavg()[0])
    body, head = evaluation_flops(model)
    print(
        f"shape {args.shape}: flops per scored token body {body:.3g}, head {head:.3g} "
        f"(head share {head / (body + head):.0%}); load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores"
    )
    print("| task | 1 thread s | 2 threads s | 1/2 ratio |")
    print("|---|---:|---:|---:|")
    for name in tasks:
        one, two = statistics.median(seconds[(name, 1)]), statistics.median(seconds[(name, 2)])
        print(f"| {name} | {one:.2f} | {two:.2f} | {one / two:.2f} |")


if __name__ == "__main__":
    main()
