"""Benchmark: batched minimal-pair scoring against a one-sentence-at-a-time loop.

Same model, same pairs, one run. The model is a randomly initialised Pythia-70m-shaped
GPT-NeoX (hidden 512, 6 layers, 8 heads, MLP 2048, vocabulary 50304) with the real Pythia
tokenizer; the pairs are a stratified sample of the built-in TSE benchmark (or BLiMP from
a local directory). Rows:

- ``loop`` (the baseline): for each sentence, one unpadded forward pass, ``log_softmax``,
  gather, sum: what a straightforward evaluation script does;
- ``scorer, batch 1``: :func:`dynamics.syntax.scoring.score_pairs` with one sentence per
  batch (the scorer's own overheads without batching);
- ``scorer, batched``: the same with the token budget (the default).

Prints a markdown table: pairs per second, ratio to the loop, accuracy, and the largest
score difference to the loop.

    python scripts/bench_scoring.py --pairs 500
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, PreTrainedTokenizerFast

from dynamics.syntax.pairs import MinimalPair
from dynamics.syntax.scoring import DEFAULT_BATCH_TOKENS, DEFAULT_MAX_BATCH_SIZE, score_pairs

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=500, help="number of minimal pairs (default: %(default)s)")
    parser.add_argument("--source", choices=["tse", "blimp"], default="tse",
                        help="TSE stratified sample (built-in) or BLiMP (default: %(default)s)")
    parser.add_argument("--blimp-dir", type=Path, default=SHARED / "blimp",
                        help="directory of BLiMP .jsonl files (default: %(default)s)")
    parser.add_argument("--tokenizer", type=Path, default=SHARED / "tokenizers" / "gpt-neox-20b.json",
                        help="Pythia tokenizer.json (default: %(default)s)")
    parser.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS,
                        help="token budget per batch (default: %(default)s)")
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                        help="rows per batch at most (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and the sample (default: %(default)s)")
    parser.add_argument("--skip-batch1", action="store_true", help="leave out the 'scorer, batch 1' row")
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


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = GPTNeoXConfig(hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                           intermediate_size=2048, vocab_size=50304)
    model = AutoModelForCausalLM.from_config(config).eval()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(args.tokenizer), bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>", pad_token="<|padding|>")
    pairs = load_pairs(args)
    n_tokens = [len(tokenizer(p.good, add_special_tokens=False)["input_ids"]) for p in pairs]

    # Warm-up (allocator, oneDNN kernels), not timed.
    score_pairs(model, tokenizer, pairs[:16], progress=False)
    loop_scores(model, tokenizer, [p.good for p in pairs[:4]], 0)

    rows = []
    start = time.perf_counter()
    good = loop_scores(model, tokenizer, [p.good for p in pairs], 0)
    bad = loop_scores(model, tokenizer, [p.bad for p in pairs], 0)
    intr = np.array([loop_scores(model, tokenizer, [p.intrusive], 0)[0] if p.intrusive else np.nan
                     for p in pairs])
    loop_s = time.perf_counter() - start
    loop_correct = (good > bad) & (np.isnan(intr) | (good > intr))
    rows.append(("loop (baseline)", loop_s, float(loop_correct.mean()), 0.0, True))

    variants = [("scorer, batched", dict(batch_tokens=args.batch_tokens, max_batch_size=args.max_batch_size))]
    if not args.skip_batch1:
        variants.insert(0, ("scorer, batch 1", dict(batch_tokens=1, max_batch_size=1)))
    for name, kwargs in variants:
        start = time.perf_counter()
        result = score_pairs(model, tokenizer, pairs, keep_pairs=True, progress=False, **kwargs)
        seconds = time.perf_counter() - start
        diff = float(np.nanmax(np.abs(np.concatenate([result.good - good, result.bad - bad]))))
        rows.append((name, seconds, result.overall_accuracy, diff,
                     bool((result.correct == loop_correct).all())))

    print(f"\n{len(pairs)} {args.source.upper()} pairs ({sum(p.intrusive is not None for p in pairs)} NPI triples), "
          f"{np.mean(n_tokens):.1f} tokens per good sentence on average; Pythia-70m-shaped random GPT-NeoX, "
          f"float32, CPU, {torch.get_num_threads()} threads; batch_tokens={args.batch_tokens}, "
          f"max_batch_size={args.max_batch_size}\n")
    print("| method | seconds | pairs/s | ratio to loop | accuracy | max abs score diff to loop | same correct pairs |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, seconds, acc, diff, same in rows:
        print(f"| {name} | {seconds:.2f} | {len(pairs) / seconds:.1f} | {loop_s / seconds:.2f}x | "
              f"{acc:.4f} | {diff:.2e} | {'yes' if same else 'NO'} |")
    if args.json:
        args.json.write_text(json.dumps([dict(zip(("method", "seconds", "accuracy", "max_diff", "same"), r))
                                         for r in rows], indent=1))


if __name__ == "__main__":
    main()
