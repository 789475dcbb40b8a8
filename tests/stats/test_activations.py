"""Memory-bounded capture of MLP pre-activations: values, grouping, early stop, dtypes."""

from __future__ import annotations

import gc
import logging
import threading
import weakref

import pytest
import torch
import torch.nn.functional as F
from fixtures.tiny_models import TINY_FAMILIES, VOCAB, tiny_model

from checkpoints.adapters import mlp_shape, pre_activation_modules, transformer_layers
from dynamics.errors import UserInputError
from dynamics.models import cpu_threads
from dynamics.stats.activations import CaptureSettings, iter_layer_captures, iter_pre_activations, plan_layer_groups


@pytest.fixture(autouse=True)
def _thread_settings_end_with_the_test():
    """These tests set the process's CPU thread policy themselves: each ends with the settings it began with."""
    with cpu_threads.run_scope():
        yield


# Calls models: also run against the lowest transformers the project declares (.ci/run).
pytestmark = pytest.mark.models

WINDOW = 10
QUIET = CaptureSettings(progress=False)  # the default settings, without a progress bar


def _windows(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(2, VOCAB, (n, WINDOW), generator=torch.Generator().manual_seed(seed))


def _reference(model: torch.nn.Module, windows: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Inputs and outputs of every pre-activation module from one plain, full forward pass."""
    seen: dict[int, list] = {}
    handles = [
        module.register_forward_hook(lambda m, a, o, i=i: seen.setdefault(i, []).append((a[0], o)))
        for i, module in enumerate(pre_activation_modules(model))
    ]
    try:
        with torch.no_grad():
            for row in windows:  # one window at a time: batching is the capture's business
                model(input_ids=row[None])
    finally:
        for handle in handles:
            handle.remove()
    return {
        layer: tuple(torch.cat([p[k].reshape(-1, p[k].shape[-1]) for p in pairs]).float() for k in (0, 1))
        for layer, pairs in seen.items()
    }


def _budget(n_layers_per_pass: int, n_tokens: int, width: int) -> int:
    return n_layers_per_pass * n_tokens * width * 4


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_capture_equals_a_plain_forward(family: str) -> None:
    model = tiny_model(family)
    windows = _windows()
    reference = _reference(model, windows)
    captured = dict(
        iter_layer_captures(
            model, windows, CaptureSettings(batch_size=2, progress=False), sites=("pre_activation", "mlp_input")
        )
    )
    assert sorted(captured) == list(range(mlp_shape(model)[0]))
    for layer, tensors in captured.items():
        torch.testing.assert_close(tensors["mlp_input"], reference[layer][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tensors["pre_activation"], reference[layer][1], atol=1e-5, rtol=1e-5)


def test_gpt_neox_values_by_hand() -> None:
    """Pythia's MLP input is LayerNorm(block input) (parallel residual): recompute it from weights."""
    model = tiny_model("gpt_neox")
    windows = _windows()
    with torch.no_grad():
        hidden = model(input_ids=windows, output_hidden_states=True).hidden_states
    for layer, pre in iter_pre_activations(model, windows, QUIET):
        block = model.gpt_neox.layers[layer]
        norm = block.post_attention_layernorm
        x = F.layer_norm(hidden[layer], (x_dim := hidden[layer].shape[-1],), norm.weight, norm.bias, norm.eps)
        expected = x.reshape(-1, x_dim) @ block.mlp.dense_h_to_4h.weight.T + block.mlp.dense_h_to_4h.bias
        assert pre.shape == (3 * WINDOW, 128) and pre.dtype == torch.float32
        torch.testing.assert_close(pre, expected, atol=1e-5, rtol=1e-5)
        # Row w * window + t is token t of window w.
        torch.testing.assert_close(pre[WINDOW + 4], expected.view(3, WINDOW, -1)[1, 4])


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_grouping_gives_the_same_tensors(family: str) -> None:
    """Passes that resume from the stored residual stream give bit-identical captures."""
    model = tiny_model(family)
    windows = _windows(4)
    n_layers, width = mlp_shape(model)
    one_pass = dict(iter_pre_activations(model, windows, CaptureSettings(batch_size=3, progress=False)))
    for per_pass in (1, 2):
        for resume in (True, False):
            grouped = dict(
                iter_pre_activations(
                    model,
                    windows,
                    CaptureSettings(
                        memory_budget=_budget(per_pass, 4 * WINDOW, width),
                        batch_size=3,
                        progress=False,
                        resume_passes=resume,
                    ),
                )
            )
            assert sorted(grouped) == list(range(n_layers))
            for layer in range(n_layers):
                assert torch.equal(grouped[layer], one_pass[layer]), (family, per_pass, resume, layer)
    # The blocks' forwards are restored: a plain forward still matches the reference.
    reference = _reference(model, windows)
    torch.testing.assert_close(one_pass[0], reference[0][1].reshape(-1, width))


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
def test_batches_side_by_side_give_the_same_tensors(monkeypatch, family: str) -> None:
    """On the CPU with batch workers (a small model's --threads 0), batches run on two threads at
    once; every pass, the resumed ones included, gives the bit-identical captures of one batch at
    a time on one torch thread, in row order."""
    model = tiny_model(family)
    windows = _windows(7)
    n_layers, width = mlp_shape(model)
    threads_seen: set[int] = set()
    handle = pre_activation_modules(model)[0].register_forward_hook(
        lambda m, a, o: threads_seen.add(threading.get_ident())
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = []
        for workers in (1, 2):
            cpu_threads.set_batch_workers(workers)
            results.append(
                dict(
                    iter_layer_captures(
                        model,
                        windows,
                        CaptureSettings(
                            memory_budget=_budget(1, 7 * WINDOW, width + model.config.hidden_size),
                            batch_size=1,
                            progress=False,
                        ),
                        sites=("pre_activation", "mlp_input"),
                    )
                )
            )
    finally:
        torch.set_num_threads(before)
        handle.remove()
    assert len(threads_seen) >= 2  # the second run used worker threads
    assert sorted(results[1]) == list(range(n_layers))
    for layer in range(n_layers):
        for site in ("pre_activation", "mlp_input"):
            assert torch.equal(results[0][layer][site], results[1][layer][site]), (family, layer, site)
    reference = _reference(model, windows)
    torch.testing.assert_close(
        results[1][n_layers - 1]["pre_activation"], reference[n_layers - 1][1], atol=1e-5, rtol=1e-5
    )


def _count_calls(model: torch.nn.Module) -> tuple[dict[str, int], list]:
    """Count the blocks' real work (their attention runs), not calls a resumed pass skips."""
    counts = {f"block{i}": 0 for i in range(len(transformer_layers(model)))} | {"lm_head": 0}
    handles = [
        block.self_attn.register_forward_pre_hook(
            lambda m, a, name=f"block{i}": counts.__setitem__(name, counts[name] + 1)
        )
        for i, block in enumerate(transformer_layers(model))
    ]
    handles.append(
        model.lm_head.register_forward_pre_hook(lambda m, a: counts.__setitem__("lm_head", counts["lm_head"] + 1))
    )
    return counts, handles


def test_passes_stop_after_the_last_hooked_layer() -> None:
    model = tiny_model("llama")
    windows = _windows(5)
    counts, handles = _count_calls(model)
    try:
        layers = [
            layer
            for layer, _ in iter_pre_activations(
                model, windows, CaptureSettings(batch_size=2, progress=False), layers=[0]
            )
        ]
        assert layers == [0]
        assert counts == {"block0": 3, "block1": 0, "block2": 0, "lm_head": 0}  # 3 batches, stopped in block 0
        counts.update(dict.fromkeys(counts, 0))
        width = mlp_shape(model)[1]
        budget = _budget(1, 5 * WINDOW, width)
        list(
            iter_pre_activations(
                model, windows, CaptureSettings(memory_budget=budget, batch_size=5, progress=False, resume_passes=False)
            )
        )
        # One layer per pass, no resuming: block j is entered by passes j, j+1, ..., 2; the head never runs.
        assert counts == {"block0": 3, "block1": 2, "block2": 1, "lm_head": 0}
        counts.update(dict.fromkeys(counts, 0))
        list(iter_pre_activations(model, windows, CaptureSettings(memory_budget=budget, batch_size=5, progress=False)))
        # Resuming: pass j stops in block j's MLP and pass j+1 starts by re-running block j, so a
        # block runs at most twice (2L - 1 blocks in all, not L(L+1)/2).
        assert counts == {"block0": 2, "block1": 2, "block2": 1, "lm_head": 0}
    finally:
        for handle in handles:
            handle.remove()


def test_only_the_current_group_is_held() -> None:
    model = tiny_model("gpt_neox")
    windows = _windows()
    iterator = iter_pre_activations(
        model, windows, CaptureSettings(memory_budget=_budget(1, 3 * WINDOW, 128), progress=False)
    )
    layer, first = next(iterator)
    alive = weakref.ref(first)
    del first
    next(iterator)
    gc.collect()
    assert layer == 0 and alive() is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_gives_float32(dtype: torch.dtype) -> None:
    model = tiny_model("qwen2").to(dtype)
    windows = _windows()
    reference = _reference(model, windows)
    for layer, pre in iter_pre_activations(model, windows, QUIET):
        assert pre.dtype == torch.float32
        assert torch.equal(pre, reference[layer][1])  # the model's own half values, widened exactly


def test_training_mode_is_restored_and_dropout_off() -> None:
    model = tiny_model("gpt2")  # GPT-2 configs have dropout 0.1 by default
    windows = _windows()
    reference = _reference(model, windows)
    model.train()
    captured = dict(iter_pre_activations(model, windows, QUIET))
    assert model.training
    for layer, pre in captured.items():
        torch.testing.assert_close(pre, reference[layer][1], atol=1e-5, rtol=1e-5)


def test_plan_layer_groups(caplog: pytest.LogCaptureFixture) -> None:
    assert plan_layer_groups(range(12), 10, 50) == [[0, 1], [2, 3, 4, 5, 6], [7, 8, 9, 10, 11]]
    assert plan_layer_groups(range(4), 10, 10**6) == [[0, 1, 2, 3]]
    assert plan_layer_groups([1, 5, 7], 10, 20) == [[1], [5, 7]]
    assert plan_layer_groups([], 10, 20) == []
    with caplog.at_level(logging.WARNING, logger="dynamics.stats.activations"):
        assert plan_layer_groups(range(3), 100, 10) == [[0], [1], [2]]
    assert "exceeds the memory budget" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(layers=[3]), r"layers \[3\] are not valid: the model has layers 0..2"),
        (dict(sites=("post",)), r"capture sites \['post'\] are not valid; use pre_activation and/or mlp_input"),
        (
            dict(settings=CaptureSettings(memory_budget=0, progress=False)),
            "memory budget 0 must be a positive number of bytes",
        ),
        (
            dict(settings=CaptureSettings(batch_size=0, progress=False)),
            "batch size 0 must be a positive number of windows",
        ),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    model = tiny_model("gpt_neox")
    with pytest.raises(UserInputError, match=message):
        list(iter_layer_captures(model, _windows(), **{"settings": QUIET, **kwargs}))


def test_windows_must_be_token_ids() -> None:
    with pytest.raises(UserInputError, match=r"LongTensor \[n_windows, window\], got torch.float32 \(3, 10\)"):
        list(iter_pre_activations(tiny_model("gpt_neox"), _windows().float(), QUIET))
