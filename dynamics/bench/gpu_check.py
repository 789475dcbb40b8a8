"""GPU check: `dynamics scan` and `dynamics ablate` on a Pythia-shaped model, end to end, offline.

Builds a random-weight GPT-NeoX with the shape of a Pythia model (float16 weights, Pythia's
own config.json keys, the real GPT-NeoX-20B tokenizer from ``--tokenizer``) as two revisions
(``step142000``, ``step143000``) of ``EleutherAI/pythia-*`` in an offline Hugging Face cache
laid out exactly as the Hub client leaves it (``refs/step{N}`` holding a commit hash,
``snapshots/<commit>/<file>`` linked to ``blobs/<hash>``). Then runs the real command line
(``python -m dynamics.cli``) with ``HF_HUB_OFFLINE=1`` on that cache:

    dynamics scan   --model pythia-1.4b --steps 142000,143000 --device cuda ...
    dynamics ablate --model pythia-1.4b --revision 143000 --tasks none --pos off ...

each under a wall-clock limit, opens the cubes with ``store.open_cube`` and prints (and
writes to ``OUT/gpu_check.md``) the environment, per-step phase seconds and headline
numbers of the scan, and the study's wall time, condition counts and headline numbers.
Exit code 1 when a step or condition failed or did not finish, or a headline number is not
finite; 2 for bad arguments.

The cubes and the cache live under ``--work`` (big, many files); ``--out`` gets only
``gpu_check.md``, ``scan.log`` and ``ablate.log``.

    python scripts/gpu_check.py --out /tmp/gpucheck                       # on a GPU machine
    python scripts/gpu_check.py --shape tiny --device cpu --out /tmp/gc   # CPU smoke test
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dynamics.bench.gpu_tables import environment_lines, scan_section, study_section
from dynamics.bench.planted_hub import SHAPES, Shape, build_hub_cache, cached_steps

ROOT = Path(__file__).resolve().parents[2]  # the checkout: ../shared/data lies beside it

SHARED = ROOT.parent / "shared" / "data"
STEPS = (142000, 143000)
CLI = [sys.executable, "-m", "dynamics.cli", "-v"]
# Small budgets for a CPU smoke test; the GPU check runs the command's own defaults.
QUICK_SCAN = [
    "--window",
    "256",
    "--wd-tokens",
    "2048",
    "--ppl-tokens",
    "512",
    "--tse-per-case",
    "4",
    "--blimp-per-paradigm",
    "2",
]
QUICK_ABLATE = [*QUICK_SCAN, "--match-iterations", "4"]


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (exit code 2), as the `dynamics` command gives them."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="gpu_check.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--shape", choices=sorted(SHAPES), default="pythia-1.4b", help="model shape (default: %(default)s)")
    add("--out", type=Path, required=True, help="where gpu_check.md and the command logs go (e.g. $OUT)")
    add(
        "--work",
        type=Path,
        default=Path("/tmp/gpu_check_work"),
        help="Hugging Face cache and the cubes (default: %(default)s)",
    )
    add(
        "--tokenizer",
        type=Path,
        default=SHARED / "tokenizers" / "gpt-neox-20b.json",
        help="the GPT-NeoX-20B tokenizer.json (default: %(default)s)",
    )
    add(
        "--corpus",
        type=Path,
        default=SHARED / "wikitext-2" / "test.txt",
        help="a local text corpus for WD and perplexity (default: %(default)s)",
    )
    add(
        "--blimp",
        type=Path,
        default=SHARED / "blimp",
        help="a directory of BLiMP <paradigm>.jsonl files (default: %(default)s)",
    )
    add("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when present, else cpu)")
    add(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default=None,
        help="passed to both commands (default: theirs, auto: the checkpoint's own dtype on CUDA)",
    )
    add(
        "--memory-budget-gib",
        type=float,
        default=None,
        help="passed to both commands (default: theirs, 0: auto, sized from free device memory)",
    )
    add(
        "--budget",
        choices=["auto", "default", "quick"],
        default="auto",
        help="default: the commands' own budgets; quick: tiny budgets for a CPU smoke test; auto: quick for "
        "--shape tiny, else default (default: %(default)s)",
    )
    add("--scan-args", default="", help="extra arguments for `dynamics scan`, one shell-quoted string")
    add("--ablate-args", default="", help="extra arguments for `dynamics ablate`, one shell-quoted string")
    add("--scan-timeout", type=float, default=200.0, help="seconds before the scan is stopped (default: %(default)s)")
    add(
        "--ablate-timeout", type=float, default=300.0, help="seconds before the study is stopped (default: %(default)s)"
    )
    add(
        "--total-timeout",
        type=float,
        default=None,
        help="seconds for the whole check: each command is stopped early enough for the table to be written "
        "within it (default: no limit beyond the two above)",
    )
    add("--only", choices=["scan", "ablate"], default=None, help="run only one of the two commands")
    add("--skip-build", action="store_true", help="reuse the cache already under --work")
    add("--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)")
    args = parser.parse_args(argv)
    needed = [
        ("--tokenizer", args.tokenizer, not args.skip_build),
        ("--corpus", args.corpus, True),
        ("--blimp", args.blimp, args.only != "scan"),
    ]
    for flag, path, used in needed:
        if used and not path.exists():
            parser.error(f"{flag} {str(path)!r} does not exist; give the path of a local copy")
    if args.memory_budget_gib is not None and args.memory_budget_gib <= 0:
        parser.error(f"--memory-budget-gib {args.memory_budget_gib}: give a positive number of GiB")
    try:
        extra = shlex.split(args.scan_args), shlex.split(args.ablate_args)
    except ValueError as exc:
        parser.error(f"--scan-args/--ablate-args: cannot split the string ({exc})")
    args.scan_extra, args.ablate_extra = extra
    args.device = args.device or default_device()
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        parser.error(f"--device {args.device!r} is not one of cpu, cuda, cuda:N")
    if args.device.startswith("cuda") and not cuda_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device here; give --device cpu")
    args.cache = args.work / "hf_home" / "hub"
    missing = [s for s in STEPS if s not in cached_steps(args.cache, SHAPES[args.shape].repo)]
    if args.skip_build and missing:
        parser.error(
            f"--skip-build, but {args.cache} lacks {SHAPES[args.shape].repo} step(s) "
            f"{', '.join(map(str, missing))}; run without --skip-build"
        )
    return args


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def default_device() -> str:
    return "cuda" if cuda_available() else "cpu"


def hub_environment(hf_home: Path) -> dict[str, str]:
    """The child's environment: the planted cache as the user's default one, and no network."""
    env = {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TQDM_MININTERVAL": "15",
        "PYTHONUNBUFFERED": "1",
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(ROOT)) if p)
    return env


def time_left(args: argparse.Namespace, own_limit: float) -> float:
    """A command's limit: its own, cut so that the whole check ends within --total-timeout."""
    if args.total_timeout is None:
        return own_limit
    reserve = 20.0  # reading the cubes and writing the table
    return max(1.0, min(own_limit, args.total_timeout - (time.monotonic() - args.started) - reserve))


def run_command(argv: list[str], log_path: Path, timeout: float, env: dict[str, str]) -> tuple[int | None, float]:
    """Run one CLI command with its output in ``log_path``; (exit code or None on timeout, seconds)."""
    start = time.perf_counter()
    with log_path.open("w") as log:
        log.write("$ " + shlex.join(argv) + "\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the child's own process group: it and whatever it started
            proc.wait()
            code = None
            log.write(f"\ngpu_check: stopped after {timeout:.0f} s (a --*-timeout option)\n")
    return code, time.perf_counter() - start


def log_tail(path: Path, lines: int = 25) -> list[str]:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return ["```", *text[-lines:], "```"]


def command_lines(name: str, code: int | None, seconds: float, log_path: Path) -> tuple[list[str], bool]:
    state = "timed out" if code is None else f"exit code {code}"
    lines = [f"`dynamics {name}`: {state} after {seconds:.1f} s (log: {log_path.name})"]
    ok = code == 0
    if not ok:
        lines += ["", f"Last lines of {log_path.name}:", *log_tail(log_path)]
    return lines, ok


def scan_check(
    args: argparse.Namespace, shape: Shape, common: list[str], env: dict[str, str], quick: bool
) -> tuple[list[str], bool]:
    cube = args.work / "scan.zarr"
    shutil.rmtree(cube, ignore_errors=True)  # a check measures afresh
    argv = [
        *CLI,
        "scan",
        "--model",
        shape.alias,
        "--steps",
        ",".join(map(str, STEPS)),
        "--out",
        str(cube),
        "--retries",
        "1",
        "--blimp",
        str(args.blimp.resolve()),
        *common,
        *(QUICK_SCAN if quick else []),
        *args.scan_extra,
    ]
    code, seconds = run_command(argv, args.out / "scan.log", time_left(args, args.scan_timeout), env)
    lines, ran_ok = command_lines("scan", code, seconds, args.out / "scan.log")
    table, table_ok = scan_section(cube, STEPS)
    return ["", "## dynamics scan", "", *lines, "", *table], ran_ok and table_ok


def ablate_check(
    args: argparse.Namespace, shape: Shape, common: list[str], env: dict[str, str], quick: bool
) -> tuple[list[str], bool]:
    cube = args.work / "study.zarr"
    shutil.rmtree(cube, ignore_errors=True)
    argv = [
        *CLI,
        "ablate",
        "--model",
        shape.alias,
        "--revision",
        str(STEPS[-1]),
        "--out",
        str(cube),
        "--retries",
        "1",
        "--blimp",
        str(args.blimp.resolve()),
        "--tasks",
        "none",
        "--pos",
        "off",
        *common,
        *(QUICK_ABLATE if quick else []),
        *args.ablate_extra,
    ]
    code, seconds = run_command(argv, args.out / "ablate.log", time_left(args, args.ablate_timeout), env)
    lines, ran_ok = command_lines("ablate", code, seconds, args.out / "ablate.log")
    table, table_ok = study_section(cube, seconds)
    return ["", "## dynamics ablate", "", *lines, "", *table], ran_ok and table_ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    shape = SHAPES[args.shape]
    quick = args.budget == "quick" or (args.budget == "auto" and args.shape == "tiny")
    report = [
        f"# GPU check: {args.shape} ({shape.repo} shape), device {args.device}",
        "",
        *environment_lines(args.device, args.dtype),
        "",
    ]
    if args.skip_build:
        report.append(f"cache: reused {args.cache}")
    else:
        seconds = build_hub_cache(args.cache, shape, args.tokenizer, STEPS, args.device, args.seed)
        report.append(
            f"cache: built {shape.repo} revisions {', '.join(f'step{s}' for s in STEPS)} "
            f"({shape.parameters() / 1e9:.2f} B parameters, float16) in {seconds:.1f} s under {args.cache}"
        )
    print("\n".join(report), flush=True)

    env = hub_environment(args.cache.parent)
    common = ["--device", args.device, "--corpus", str(args.corpus.resolve())]
    common += ["--dtype", args.dtype] if args.dtype else []
    common += ["--memory-budget-gib", str(args.memory_budget_gib)] if args.memory_budget_gib else []
    sections: list[str] = []
    ok = True
    table = args.out / "gpu_check.md"
    table.write_text("\n".join(report) + "\n")  # rewritten after each part: a killed check still leaves a table
    for name, check in (("scan", scan_check), ("ablate", ablate_check)):
        if args.only in (None, name):
            part, part_ok = check(args, shape, common, env, quick)
            print("\n".join(part), flush=True)
            sections += part
            ok = ok and part_ok
            table.write_text("\n".join([*report, *sections]) + "\n")
    verdict = ["", f"**verdict: {'PASS' if ok else 'FAIL'}**"]
    print("\n".join(verdict), flush=True)
    table.write_text("\n".join([*report, *sections, *verdict]) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
