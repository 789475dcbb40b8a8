"""Benchmark: batched minimal-pair scoring against a one-sentence-at-a-time loop.

Same model, same pairs, one run. The model is a randomly initialised Pythia-70m-shaped
GPT-NeoX (hidden 512, 6 layers, 8 heads, MLP 2048, vocabulary 50304) with the real Pythia
tokenizer; the pairs are a stratified sample of the built-in TSE benchmark (or BLiMP from
a local directory). Rows:

- ``loop`` (the baseline): for each sentence, one unpadded forward pass, ``log_softmax``,
  gather, sum: what a straightforward evaluation script does;
- ``scorer, one pair per batch``: :func:`dynamics.syntax.scoring.score_pairs` with one
  pair (two or three sentences, their shared prefix run once) per batch;
- ``scorer, batched``: the same with the token budget (the default).

The methods run interleaved over ``--chunks`` chunks of the pairs, their order rotating,
so that other jobs on a shared machine slow each of them alike. Prints a markdown table:
wall-clock seconds, pairs per second, ratio to the loop, accuracy, the largest score
difference to the loop, and whether exactly the same pairs are counted correct.

    python scripts/bench_scoring.py --pairs 500
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, PreTrainedTokenizerFast

from dynamics.syntax.pairs import MinimalPair
from dynamics.syntax.scoring import DEFAULT_BATCH_TOKENS, DEFAULT_MAX_BATCH_SIZE, Batching, score_pairs

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=500, help="number of minimal pairs (default: %(default)s)")
    parser.add_argument(
        "--source",
        choices=["tse", "blimp"],
        default="tse",
        help="TSE stratified sample (built-in) or BLiMP (default: %(default)s)",
    )
    parser.add_argument(
        "--blimp-dir",
        type=Path,
        default=SHARED / "blimp",
        help="directory of BLiMP .jsonl files (default: %(default)s)",
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=SHARED / "tokenizers" / "gpt-neox-20b.json",
        help="Pythia tokenizer.json (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS, help="token budget per batch (default: %(default)s)"
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULT_MAX_BATCH_SIZE,
        help="rows per batch at most (default: %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and the sample (default: %(default)s)")
    parser.add_argument("--skip-one-pair", action="store_true", help="leave out the 'one pair per batch' row")
    parser.add_argument(
        "--chunks",
        type=int,
        default=5,
        help="interleave the methods over this many chunks of pairs (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    return parser.parse_args()


def load_pairs(args: argparse.Namespace) -> list[MinimalPair]:
    """A seeded, stratified sample of about ``args.pairs`` pairs."""
    if args.source == "tse":
        from dynamics.syntax.tse import sample_tse, tse_pairs

        pairs = sample_tse(tse_pairs(), per_case=math.ceil(args.pairs / 22), seed=args.seed)
    else:
        per_file = math.ceil(args.pairs / 67)
        pairs = []
        for path in sorted(args.blimp_dir.glob("*.jsonl")):
            lines = path.read_text().splitlines()
            rng = np.random.default_rng([args.seed, len(pairs)])
            for i in sorted(rng.choice(len(lines), size=per_file, replace=False).tolist()):
                rec = json.loads(lines[i])
                pairs.append(MinimalPair(rec["sentence_good"], rec["sentence_bad"], rec["UID"]))
    rng = np.random.default_rng(args.seed)
    keep = sorted(rng.choice(len(pairs), size=min(args.pairs, len(pairs)), replace=False).tolist())
    return [pairs[i] for i in keep]


def loop_scores(model, tokenizer, sentences: list[str], prefix_id: int) -> np.ndarray:
    """The baseline: one sentence per forward pass, log_softmax, gather, sum."""
    out = np.empty(len(sentences))
    with torch.inference_mode():
        for k, sentence in enumerate(sentences):
            ids = [prefix_id] + tokenizer(sentence, add_special_tokens=False)["input_ids"]
            x = torch.tensor([ids])
            log_probs = torch.log_softmax(model(input_ids=x, use_cache=False).logits[0, :-1].float(), dim=-1)
            out[k] = float(log_probs.gather(-1, x[0, 1:, None]).sum())
    return out


def loop_pairs(model, tokenizer, pairs: list[MinimalPair]) -> np.ndarray:
    """The baseline on pairs: ``[3, n]`` scores of good, bad and intrusive (NaN) sentences."""
    good = loop_scores(model, tokenizer, [p.good for p in pairs], 0)
    bad = loop_scores(model, tokenizer, [p.bad for p in pairs], 0)
    intrusive = np.array([loop_scores(model, tokenizer, [p.intrusive], 0)[0] if p.intrusive else np.nan for p in pairs])
    return np.stack([good, bad, intrusive])


def scorer_pairs(model, tokenizer, pairs: list[MinimalPair], **batching) -> np.ndarray:
    """The scorer on pairs: ``[3, n]`` scores of good, bad and intrusive (NaN) sentences; ``batching``:
    fields of :class:`dynamics.syntax.scoring.Batching`."""
    result = score_pairs(model, tokenizer, pairs, batching=Batching(progress=False, **batching), keep_pairs=True)
    return np.stack([result.good, result.bad, result.intrusive])


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = GPTNeoXConfig(
        hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048, vocab_size=50304
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(args.tokenizer),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|padding|>",
    )
    pairs = load_pairs(args)
    n_tokens = [len(tokenizer(p.good, add_special_tokens=False)["input_ids"]) for p in pairs]

    # Warm-up (allocator, oneDNN kernels), not timed.
    score_pairs(model, tokenizer, pairs[:16], batching=Batching(progress=False))
    loop_scores(model, tokenizer, [p.good for p in pairs[:4]], 0)

    methods = [("loop (baseline)", loop_pairs)]
    if not args.skip_one_pair:
        methods.append(("scorer, one pair per batch", partial(scorer_pairs, batch_tokens=1, max_batch_size=1)))
    methods.append(
        ("scorer, batched", partial(scorer_pairs, batch_tokens=args.batch_tokens, max_batch_size=args.max_batch_size))
    )
    scores = {name: np.full((3, len(pairs)), np.nan) for name, _ in methods}
    seconds = dict.fromkeys(scores, 0.0)
    load_before = os.getloadavg()[0]
    # Interleaved in chunks, the order rotating, so that other jobs on a shared machine
    # slow every method alike.
    for c, chunk in enumerate(np.array_split(np.arange(len(pairs)), args.chunks)):
        for name, method in methods[c % len(methods) :] + methods[: c % len(methods)]:
            start = time.perf_counter()
            scores[name][:, chunk] = method(model, tokenizer, [pairs[i] for i in chunk])
            seconds[name] += time.perf_counter() - start
    base = "loop (baseline)"
    correct = {name: (g > b) & (np.isnan(i) | (g > i)) for name, (g, b, i) in scores.items()}

    print(
        f"\n{len(pairs)} {args.source.upper()} pairs ({sum(p.intrusive is not None for p in pairs)} "
        f"NPI triples), {np.mean(n_tokens):.1f} tokens per good sentence on average; Pythia-70m-shaped "
        f"random GPT-NeoX, float32, CPU, {torch.get_num_threads()} threads; batch_tokens={args.batch_tokens}, "
        f"max_batch_size={args.max_batch_size}; {args.chunks} interleaved chunks; load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after\n"
    )
    print("| method | seconds | pairs/s | ratio to loop | accuracy | max abs score diff to loop | same correct pairs |")
    print("|---|---:|---:|---:|---:|---:|---|")
    results = []
    for name in scores:
        diff = float(np.nanmax(np.abs(scores[name] - scores[base])))
        same = bool((correct[name] == correct[base]).all())
        results.append(
            {
                "method": name,
                "seconds": seconds[name],
                "accuracy": float(correct[name].mean()),
                "max_diff": diff,
                "same_correct": same,
            }
        )
        print(
            f"| {name} | {seconds[name]:.2f} | {len(pairs) / seconds[name]:.1f} | "
            f"{seconds[base] / seconds[name]:.2f}x | {correct[name].mean():.4f} | {diff:.2e} | "
            f"{'yes' if same else 'NO'} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
