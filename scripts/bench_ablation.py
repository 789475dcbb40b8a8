"""Overhead of sign-specific ablation on a forward pass (issue 4: target <= 5% on CPU).

A Pythia-160m-shaped model (GPTNeoXConfig: hidden 768, 12 layers, 12 heads, intermediate
3072, vocab 50304) with random weights runs clean (the baseline) and with `negative`
ablation of 1% of the neurons of every layer, through the library's hook
(``dynamics.ablation.hooks.ablate``: gather/clamp/scatter of the chosen columns) and through the
alternative it was chosen over (a full-width ``torch.where`` with a precomputed column
mask). Variants are interleaved in rotating order; medians over repeats are compared.

    python scripts/bench_ablation.py --repeats 7

``--study``: the default `dynamics ablate` study (every condition: clean, neg/pos/both top and
neg random per percent, neg matched, the layer groups) on a Pythia-14m-shaped random model
(GPT-NeoX tokenizer, WikiText-2 and BLiMP from ../shared/data) run twice in this process:
one condition at a time (``--conditions-per-pass 1``, the baseline) and with the conditions
of one ablation mode in shared passes (``0``). Budgets are scaled down (``--tse-per-case`` and
friends) so that both fit in minutes on two CPU cores; seconds per condition are the cube's
measured phases (TSE, BLiMP, perplexity, POS) summed over conditions, then divided by them.

    python scripts/bench_ablation.py --study --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig

from checkpoints.adapters import mlp_shape, pre_activation_modules
from dynamics.ablation.hooks import ablate


def pythia_shaped(hidden: int, layers: int, heads: int, inner: int) -> torch.nn.Module:
    """A random float32 GPT-NeoX of a Pythia shape (vocabulary 50304, context 2048)."""
    config = GPTNeoXConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inner,
        vocab_size=50304,
        max_position_embeddings=2048,
    )
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def pythia_160m_shaped() -> torch.nn.Module:
    return pythia_shaped(768, 12, 12, 3072)


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pythia_14m_shaped(directory: Path, tokenizer_file: Path) -> Path:
    """A Pythia-14m-shaped random model (hidden 128, 6 layers, MLP 512, vocab 50304) with the GPT-NeoX
    tokenizer, saved as a model directory."""
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(0)
    pythia_shaped(128, 6, 4, 512).save_pretrained(directory)
    eos = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), bos_token=eos, eos_token=eos, pad_token=eos)
    tokenizer.save_pretrained(directory)
    return directory


def study_bench(args: argparse.Namespace) -> None:
    """The default study, one condition at a time vs the conditions of one mode in shared passes."""
    from dynamics.study.config import StudyConfig
    from dynamics.study.driver import run_study
    from store import open_cube

    data = Path(args.data)
    root = Path(tempfile.mkdtemp(prefix="bench_study_"))
    model = pythia_14m_shaped(root / "model", data / "tokenizers" / "gpt-neox-20b.json")
    variants = {"one condition at a time (baseline)": 1, "one mode per shared pass": 0}
    names = list(variants)
    measured: dict[str, list[float]] = {name: [] for name in names}
    per_phase: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    wall: dict[str, list[float]] = {name: [] for name in names}
    cubes = {}
    for repeat in range(args.repeats):
        for name in names[repeat % 2 :] + names[: repeat % 2]:
            config = StudyConfig(
                model=str(model),
                out=str(root / f"{variants[name]}-{repeat}.zarr"),
                wd_corpus=str(data / "wikitext-2" / "test.txt"),
                ppl_corpus=str(data / "wikitext-2" / "valid.txt"),
                wd_tokens=args.wd_tokens,
                ppl_tokens=args.ppl_tokens,
                tse_per_case=args.tse_per_case,
                blimp=str(data / "blimp"),
                blimp_per_paradigm=args.blimp_per_paradigm,
                tasks="none",
                conditions_per_pass=variants[name],
            )
            start = time.perf_counter()
            summary = run_study(config)
            wall[name].append(time.perf_counter() - start)
            if summary.failed:
                raise SystemExit(f"{name}: conditions {summary.failed} failed")
            cube = cubes[name] = open_cube(config.out)
            seconds = [cube[v] for v in ("seconds", "group_seconds") if v in cube]
            measured[name].append(sum(float(v.sum()) for v in seconds) / summary.units)
            for phase in seconds[0]["phase"].values.tolist():
                total = sum(float(v.sel(phase=phase).sum()) for v in seconds)
                per_phase[name].setdefault(phase, []).append(total / summary.units)
    alone, together = (cubes[n] for n in names)
    for name in ("ppl", "tse_acc", "blimp_acc", "group_tse_acc", "group_blimp_acc"):
        if not np.array_equal(alone[name].values, together[name].values, equal_nan=True):
            raise SystemExit(f"{name} differs between the variants")
    margin = float(np.nanmax(np.abs(alone["tse_margin"].values - together["tse_margin"].values)))
    units = int(alone["done"].sum()) + (int(alone["group_done"].sum()) if "group_done" in alone else 0)
    print(
        f"`dynamics ablate` defaults (percents 0.5,1,2,5, layer groups 6 of 6 layers, tasks none, POS "
        f"{'skipped (no spaCy)' if 'pos_excess' not in alone or np.isnan(alone['pos_excess'].values).all() else 'on'})"
        f" on a Pythia-14m-shaped random model, CPU ({torch.get_num_threads()} threads in this process), budgets: "
        f"TSE {args.tse_per_case}/case, BLiMP {args.blimp_per_paradigm}/paradigm x 67, perplexity {args.ppl_tokens} "
        f"tokens, WD {args.wd_tokens} tokens; {args.repeats} interleaved repeat(s), {summary.units} conditions ({units} cells)\n"
    )
    print(
        "| variant | s per condition (measured phases, median) | run wall s (median, incl. WD and matching) | ratio |"
    )
    print("|---|---:|---:|---:|")
    base = statistics.median(measured[names[0]])
    for name in names:
        per = statistics.median(measured[name])
        print(f"| {name} | {per:.2f} | {statistics.median(wall[name]):.1f} | {base / per:.2f}x |")
    print("\n| phase | s per condition, one at a time | s per condition, shared passes | ratio |")
    print("|---|---:|---:|---:|")
    for phase, values in per_phase[names[0]].items():
        one, shared = statistics.median(values), statistics.median(per_phase[names[1]][phase])
        if one > 0.005:  # phases the budgets run (a skipped phase takes microseconds)
            print(f"| {phase} | {one:.2f} | {shared:.2f} | {one / shared:.2f}x |")
    print(
        "\nEvery perplexity, TSE and BLiMP accuracy equal in both cubes (checked); "
        f"max |TSE margin difference| {margin:.3g} nats."
    )


def random_mask(shape: tuple[int, int], fraction: float, seed: int) -> torch.Tensor:
    """``round(fraction * n)`` random neurons per layer, seeded."""
    n_layers, n_neurons = shape
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(shape, dtype=torch.bool)
    k = max(1, round(fraction * n_neurons))
    for layer in range(n_layers):
        mask[layer, torch.randperm(n_neurons, generator=generator)[:k]] = True
    return mask


@contextmanager
def ablate_where(model: torch.nn.Module, mask: torch.Tensor):
    """The alternative hook: ``torch.where`` over the full width with a column mask."""
    handles = []
    try:
        for module, columns in zip(pre_activation_modules(model), mask):
            if columns.any():
                columns = columns.to(module.weight.device)

                def hook(_module, _args, output, columns=columns):  # noqa: ANN001, ANN202
                    return torch.where(columns & (output < 0), 0.0, output)

                handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


class HookTimer:
    """Wall time spent between the start and the end of each module's forward hooks.

    A start hook is prepended (runs before any other forward hook) and a stop hook appended
    (after the ablation's), so the total is the time the ablation hooks took *inside* the
    measured pass; it is inflated by machine load exactly as the pass itself is.
    """

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        self.modules, self.total, self.started, self.handles = modules, 0.0, 0.0, []

    def _start(self, *_: object) -> None:
        self.started = time.perf_counter()

    def _stop(self, *_: object) -> None:
        self.total += time.perf_counter() - self.started

    def __enter__(self) -> HookTimer:
        self.total = 0.0
        for module in self.modules:
            self.handles.append(module.register_forward_hook(self._start, prepend=True))
            self.handles.append(module.register_forward_hook(self._stop))
        return self

    def __exit__(self, *_: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def hook_cost_ms(hook: Callable, shape: tuple[int, ...], repeats: int) -> float:
    """Thread CPU milliseconds of one hook call on a random pre-activation of ``shape``.

    Thread CPU time on one thread is insensitive to other processes sharing the machine,
    so this isolates the hook's own cost from the noise of end-to-end timings.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tensors = [torch.randn(shape, generator=torch.Generator().manual_seed(i)) for i in range(3)]
        with torch.inference_mode():
            hook(None, (), tensors[0])
            start = time.thread_time()
            for i in range(repeats):
                hook(None, (), tensors[i % 3])
            return 1e3 * (time.thread_time() - start) / repeats
    finally:
        torch.set_num_threads(threads)


def first_hook(context: Callable[[], AbstractContextManager], module: torch.nn.Module) -> Callable:
    """The forward hook a context manager puts on ``module`` (to time it alone)."""
    with context():
        return next(iter(module._forward_hooks.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="sequences per forward pass (default 4)")
    parser.add_argument("--tokens", type=int, default=512, help="tokens per sequence (default 512)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per variant (default 5)")
    parser.add_argument("--fraction", type=float, default=0.01, help="neurons ablated per layer (default 0.01)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, tokens and neuron choice (default 0)")
    parser.add_argument("--study", action="store_true", help="the ablate study benchmark instead (see above)")
    parser.add_argument("--data", default=str(SHARED_DATA), help="../shared/data: tokenizer, WikiText-2, BLiMP")
    parser.add_argument("--tse-per-case", type=int, default=5, help="--study: TSE pairs per case (default 5)")
    parser.add_argument("--blimp-per-paradigm", type=int, default=5, help="--study: BLiMP pairs per paradigm (5)")
    parser.add_argument("--ppl-tokens", type=int, default=4096, help="--study: perplexity tokens (default 4096)")
    parser.add_argument("--wd-tokens", type=int, default=8192, help="--study: WD tokens (default 8192)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.study:
        study_bench(args)
        return
    torch.manual_seed(args.seed)
    model = pythia_160m_shaped()
    mask = random_mask(mlp_shape(model), args.fraction, args.seed)
    ids = torch.randint(0, 50304, (args.batch, args.tokens), generator=torch.Generator().manual_seed(args.seed))

    variants: dict[str, Callable[[], AbstractContextManager]] = {
        "clean (baseline)": nullcontext,
        "ablate: index_select/index_copy_ (library)": lambda: ablate(model, mask, mode="negative"),
        "ablate: torch.where column mask": lambda: ablate_where(model, mask),
    }
    names = list(variants)
    with torch.inference_mode():
        clean = model(input_ids=ids).logits
        with ablate(model, mask, mode="negative"):
            ours = model(input_ids=ids).logits
        with ablate_where(model, mask):
            theirs = model(input_ids=ids).logits
        if not torch.allclose(ours, theirs, atol=1e-5):
            raise SystemExit("the two hooks disagree")
        changed = (ours - clean).abs().max().item()
        wall: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        share: dict[str, list[float]] = {name: [] for name in names}
        timer = HookTimer(pre_activation_modules(model))
        for repeat in range(args.repeats):
            order = names[repeat % len(names) :] + names[: repeat % len(names)]
            for name in order:
                with variants[name](), timer:  # every variant carries the same (tiny) timing hooks
                    start_wall, start_cpu = time.perf_counter(), time.process_time()
                    model(input_ids=ids)
                    cpu[name].append(time.process_time() - start_cpu)
                    wall[name].append(time.perf_counter() - start_wall)
                share[name].append(timer.total / wall[name][-1])

    n_layers = mlp_shape(model)[0]
    print(
        f"Pythia-160m-shaped, random weights, CPU ({torch.get_num_threads()} threads), batch {args.batch} x "
        f"{args.tokens} tokens, {int(mask.sum())} neurons ablated ({args.fraction:.0%} per layer, negative), "
        f"{args.repeats} interleaved repeats; max |logit change| {changed:.3g}\n"
    )
    print(
        "| variant | median wall s | min wall s | median CPU s | wall overhead | CPU overhead | min-wall overhead "
        "| in-pass hook time |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        # Overheads are medians of per-repeat ratios (the variants of one repeat ran back to
        # back), and the ratio of minima (the least disturbed pass of each variant).
        wall_ratio = statistics.median(a / b for a, b in zip(wall[name], wall[names[0]]))
        cpu_ratio = statistics.median(a / b for a, b in zip(cpu[name], cpu[names[0]]))
        min_ratio = min(wall[name]) / min(wall[names[0]])
        print(
            f"| {name} | {statistics.median(wall[name]):.3f} | {min(wall[name]):.3f} | {statistics.median(cpu[name]):.3f} "
            f"| {100 * (wall_ratio - 1):+.1f}% | {100 * (cpu_ratio - 1):+.1f}% | {100 * (min_ratio - 1):+.1f}% "
            f"| {100 * statistics.median(share[name]):.2f}% |"
        )
    print(
        "\nOverheads are medians of per-repeat ratios to the clean pass of the same repeat; "
        "'in-pass hook time' is the median share of each pass spent inside the ablation hooks."
    )

    shape = (args.batch, args.tokens, mlp_shape(model)[1])
    module = pre_activation_modules(model)[0]
    clean_cpu_ms = 1e3 * statistics.median(cpu[names[0]])
    print(f"\nHook alone (thread CPU time, 1 thread, on a [{shape[0]}, {shape[1]}, {shape[2]}] pre-activation):\n")
    print("| hook | ms per layer | ms per forward | % of clean forward CPU |")
    print("|---|---:|---:|---:|")
    for name in names[1:]:
        per_layer = hook_cost_ms(first_hook(variants[name], module), shape, repeats=20)
        print(
            f"| {name} | {per_layer:.2f} | {per_layer * n_layers:.1f} | {100 * per_layer * n_layers / clean_cpu_ms:.2f}% |"
        )


if __name__ == "__main__":
    main()
