"""Overhead of sign-specific ablation on a forward pass (issue 4: target <= 5% on CPU).

A Pythia-160m-shaped model (GPTNeoXConfig: hidden 768, 12 layers, 12 heads, intermediate
3072, vocab 50304) with random weights runs clean (the baseline) and with `negative`
ablation of 1% of the neurons of every layer, through the library's hook
(``dynamics.ablation.ablate``: gather/clamp/scatter of the chosen columns) and through the
alternative it was chosen over (a full-width ``torch.where`` with a precomputed column
mask). Variants are interleaved in rotating order; medians over repeats are compared.

    python scripts/bench_ablation.py --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig

from checkpoints.adapters import mlp_shape, pre_activation_modules
from dynamics.ablation import ablate


def pythia_160m_shaped() -> torch.nn.Module:
    config = GPTNeoXConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        vocab_size=50304,
        max_position_embeddings=2048,
    )
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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
