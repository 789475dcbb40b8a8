"""Benchmark: the evaluation of one scan step and of one ablate condition on the CPU, this code
against an older checkout, alternately, in the same run, with the same inputs.

Each code runs in its own subprocess (``PYTHONPATH`` set to that checkout) on the same inputs:
a random-weight GPT-NeoX of the chosen Pythia shape (seed 0, float32), the real Pythia
tokenizer, the seeded TSE sample, a seeded BLiMP sample from ``../shared/data/blimp`` and
perplexity windows cut from WikiText-2's test text. The work is what the commands do by
default at the strict protocol's budgets (the older code's only protocol: sum over tokens,
BOS prefix, NPI judged against the intrusive sentence too):

- ``scan``: one step's evaluation: TSE (``--tse-per-case`` 100 per case) and perplexity
  (16,384 tokens) under clean, cohort and control (1% of each layer's neurons each, negative
  pre-activations zeroed), through the scan's own ``syntax_and_perplexity``.
- ``ablate``: one condition of ``dynamics ablate``: TSE (50 per case), BLiMP (50 per paradigm)
  and perplexity (16,384 tokens) under the cohort's negative ablation, through the public
  scoring and perplexity functions the study calls, with the study's arguments.

Threads: each code's automatic policy (``--threads 0``: one thread for models under 50M
parameters; this code also times one thread against every core for the vocabulary
projection), unless ``--threads`` gives a count.
The table gives each code's median seconds, the ratio old / new, and whether the accuracies
(per TSE case and condition, per BLiMP paradigm) are identical and how far perplexities and
margins are apart.

    git worktree add /tmp/old c911d9c
    python scripts/bench_eval.py --old /tmp/old --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PPL_TOKENS, WINDOW, COHORT_PERCENT = 16384, 2048, 1.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, default=None, help="a checkout of the previous implementation")
    parser.add_argument("--shape", default="pythia-14m", help="a shape of scripts/bench_step.py (default: %(default)s)")
    parser.add_argument("--what", default="scan,ablate", help="scan, ablate or both (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each code, alternating (default: %(default)s)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads; 0: each code's automatic policy (default: %(default)s)"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_eval"))
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)  # internal: run one code
    parser.add_argument("--model-config", default="{}", help=argparse.SUPPRESS)  # internal: the child's model
    return parser.parse_args()


def child(args: argparse.Namespace) -> None:
    """Run the evaluation with the code on ``sys.path`` and write its numbers to ``args.child``."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    config = json.loads(args.model_config)  # made by the parent: the child's PYTHONPATH may be another code
    from dynamics.ablation.hooks import ablate
    from dynamics.syntax.blimp import load_blimp
    from dynamics.syntax.pairs import stratified_sample
    from dynamics.syntax.perplexity import perplexity
    from dynamics.syntax.scoring import score_pairs
    from dynamics.syntax.tse import TSE_CASES, sample_tse, tse_pairs

    try:
        from dynamics.scan.measures import syntax_and_perplexity
    except ImportError:  # the layout before the restructure
        from dynamics.measures import syntax_and_perplexity  # type: ignore[no-redef]

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**config)).eval()
    try:  # each code's own thread policy (--threads 0), or the count given
        from dynamics.models.runtime import set_threads

        set_threads(args.threads, model)
    except ImportError:  # before the restructure: one thread under 50M parameters, else torch's default
        small = sum(p.numel() for p in model.parameters()) < 50_000_000
        torch.set_num_threads(args.threads or (1 if small else torch.get_num_threads()))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(SHARED / "tokenizers" / "gpt-neox-20b.json"),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|padding|>",
    )
    text = (SHARED / "wikitext-2" / "test.txt").read_text()
    ids = tokenizer(text[:400_000], add_special_tokens=False)["input_ids"]
    windows = torch.tensor(ids[: PPL_TOKENS // WINDOW * WINDOW]).reshape(-1, WINDOW)
    layers, neurons = config["num_hidden_layers"], config["intermediate_size"]
    chosen = max(1, round(neurons * COHORT_PERCENT / 100))
    generator = torch.Generator().manual_seed(1)
    cohort = torch.zeros(layers, neurons, dtype=torch.bool)
    control = torch.zeros(layers, neurons, dtype=torch.bool)
    for layer in range(layers):
        order = torch.randperm(neurons, generator=generator)
        cohort[layer, order[:chosen]] = True
        control[layer, order[chosen : 2 * chosen]] = True
    new_api = "differences_only" in score_pairs.__code__.co_varnames
    numbers: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    if "scan" in args.what:
        pairs = sample_tse(tse_pairs(), per_case=100, seed=0)
        conditions = {"clean": None, "neg_cohort": cohort, "neg_random": control}
        options = {"npi": "intrusive"} if new_api else {}
        start = time.perf_counter()
        with torch.inference_mode():
            result = syntax_and_perplexity(
                model, tokenizer, pairs, windows, conditions, TSE_CASES, "sum", "bos" if new_api else True, **options
            )
        seconds["scan evaluation"] = time.perf_counter() - start
        numbers["scan tse_acc"] = result["tse_acc"].values.ravel().tolist()
        numbers["scan tse_margin"] = result["tse_margin"].values.ravel().tolist()
        numbers["scan ppl"] = result["ppl"].values.ravel().tolist()
    if "ablate" in args.what:
        tse = sample_tse(tse_pairs(), per_case=50, seed=0)
        loaded = load_blimp(str(SHARED / "blimp"))
        paradigms = sorted({p.case for p in loaded})
        grouped = {p: {"": [x for x in loaded if x.case == p]} for p in paradigms}
        sample = stratified_sample(grouped, 50, seed=0)
        blimp = [x for p in paradigms for x in sample[p][""]]
        extra: dict = {"differences_only": True} if new_api else {}
        if "batching" in score_pairs.__code__.co_varnames:  # the batching settings as one value (#22)
            from dynamics.syntax.settings import Batching

            extra["batching"] = Batching(progress=False)
        else:
            extra["progress"] = False
        with ablate(model, cohort, mode="negative"), torch.inference_mode():
            for name, pairs in (("tse", tse), ("blimp", blimp)):
                start = time.perf_counter()
                scores = score_pairs(model, tokenizer, pairs, keep_pairs=True, **extra)
                seconds[f"ablate {name}"] = time.perf_counter() - start
                numbers[f"ablate {name} correct"] = scores.correct.astype(float).tolist()
            start = time.perf_counter()
            value = perplexity(model, windows, batch_size=4, progress=False)
            seconds["ablate ppl"] = time.perf_counter() - start
            numbers["ablate ppl"] = [value]
        seconds["ablate condition"] = sum(seconds[f"ablate {p}"] for p in ("tse", "blimp", "ppl"))
    args.child.write_text(json.dumps({"seconds": seconds, "numbers": numbers}))


def run_code(code: Path, args: argparse.Namespace, out: Path) -> dict:
    from dynamics.bench.planted_hub import BENCH_SHAPES, pythia_config

    model_config = json.dumps(pythia_config(BENCH_SHAPES[args.shape]))
    argv = [sys.executable, __file__, "--child", str(out), "--shape", args.shape, "--what", args.what]
    argv += ["--model-config", model_config]
    env = {**os.environ, "PYTHONPATH": str(code), "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}
    done = subprocess.run([*argv, "--threads", str(args.threads)], env=env, cwd=code, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{code} failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def compare(new: dict[str, list[float]], old: dict[str, list[float]]) -> list[str]:
    lines = []
    for name in sorted(set(new) & set(old)):
        a, b = np.asarray(new[name]), np.asarray(old[name])
        if "acc" in name or "correct" in name:
            lines.append(f"{name}: {'identical' if np.array_equal(a, b, equal_nan=True) else 'DIFFERENT'}")
        else:
            lines.append(f"{name}: max relative difference {np.nanmax(np.abs(a - b) / np.abs(b)):.2g}")
    return lines


def main() -> None:
    args = parse_args()
    if args.child is not None:
        child(args)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    codes = {"new": ROOT} | ({"old": args.old.resolve()} if args.old else {})
    runs: dict[str, list[dict]] = {name: [] for name in codes}
    loads = [os.getloadavg()[0]]
    for r in range(args.repeats):
        for name in list(codes) if r % 2 == 0 else list(codes)[::-1]:
            runs[name].append(run_code(codes[name], args, args.work / f"{name}-{r}.json"))
            loads.append(os.getloadavg()[0])
            print(f"{name} run {r}: {runs[name][-1]['seconds']} (load {loads[-1]:.1f})", flush=True)
    print(
        f"\n{args.shape}, CPU, threads {args.threads or 'auto'}, {args.repeats} run(s) of each code alternating, "
        f"load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores; median seconds:\n"
    )
    print("| part | new | " + ("old | old / new |" if "old" in codes else ""))
    print("|---|---:|" + ("---:|---:|" if "old" in codes else ""))
    for part in runs["new"][0]["seconds"]:
        new = float(np.median([run["seconds"][part] for run in runs["new"]]))
        cells = [f"{new:.1f}"]
        if "old" in codes:
            old = float(np.median([run["seconds"][part] for run in runs["old"]]))
            cells += [f"{old:.1f}", f"{old / new:.2f}x"]
        print(f"| {part} | " + " | ".join(cells) + " |")
    if "old" in codes:
        print("\nnew vs old: " + "; ".join(compare(runs["new"][0]["numbers"], runs["old"][0]["numbers"])))


if __name__ == "__main__":
    main()
