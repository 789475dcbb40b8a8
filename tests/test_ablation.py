"""Sign-specific ablation: only the chosen neurons, only the chosen sign, on every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from fixtures.tiny_models import N_LAYERS, TINY_FAMILIES, tiny_input_ids, tiny_model

from checkpoints.adapters import mlp_shape, pre_activation_modules
from dynamics.ablation.hooks import ablate, activation_modules, neuron_indices
from dynamics.ablation.modes import ACTIVATION_MODES, MODES
from dynamics.ablation.modes import elementwise as ablation_function
from dynamics.errors import UserInputError

# Calls models: also run against the lowest transformers the project declares (.ci/run).
pytestmark = pytest.mark.models

# The pre-activation modes written out independently of the library (abs_pre: this project's
# old "signflip", act(|a|)).
EXPECTED_MAP = {
    "negative": lambda a: torch.where(a < 0, torch.zeros_like(a), a),
    "positive": lambda a: torch.where(a > 0, torch.zeros_like(a), a),
    "both": lambda a: a * 0,
    "abs_pre": lambda a: torch.where(a < 0, -a, a),
}
PRE_MODES = tuple(m for m in MODES if m not in ACTIVATION_MODES)
# The official activation modes, as utils/ablations.py's SelectiveSignFlip and SelectivePosReLU
# define them: a function of the pre-activation a and the activation's output y = act(a).
EXPECTED_POST = {
    "signflip": lambda a, y: torch.where(y < 0, -y, y),
    "posrelu": lambda a, y: torch.where(a > 0, a, y),
}


def _mlp_parts(model: torch.nn.Module, family: str, layer: int):  # noqa: ANN202
    """(module whose output is the MLP output, manual MLP(x, rewrite)) written per family by hand."""
    if family == "gpt_neox":
        mlp = model.gpt_neox.layers[layer].mlp
        return mlp, lambda x, rw: mlp.dense_4h_to_h(
            F.gelu(rw(F.linear(x, mlp.dense_h_to_4h.weight, mlp.dense_h_to_4h.bias)))
        )
    if family == "gpt2":
        mlp = model.transformer.h[layer].mlp
        fc, proj = mlp.c_fc, mlp.c_proj
        return mlp, lambda x, rw: F.gelu(rw(x @ fc.weight + fc.bias), approximate="tanh") @ proj.weight + proj.bias
    if family == "opt":
        block = model.model.decoder.layers[layer]
        return block.fc2, lambda x, rw: block.fc2(F.relu(rw(F.linear(x, block.fc1.weight, block.fc1.bias))))
    root = model.model.language_model if family == "gemma3" else model.model
    mlp = root.layers[layer].mlp
    act = F.silu if family in {"llama", "mistral", "qwen2", "qwen3"} else (lambda a: F.gelu(a, approximate="tanh"))
    gate, up = mlp.gate_proj, mlp.up_proj
    return mlp, lambda x, rw: mlp.down_proj(
        act(rw(F.linear(x, gate.weight, gate.bias))) * F.linear(x, up.weight, up.bias)
    )


def _random_mask(shape: tuple[int, int], seed: int = 0, empty_layer: int | None = 1) -> torch.Tensor:
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.25
    if empty_layer is not None:
        mask[empty_layer] = False
    return mask


def _record(
    model: torch.nn.Module, modules: list[torch.nn.Module], ids: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) of each module during one forward pass; hooks added last, so they see rewrites."""
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = [
        m.register_forward_hook(lambda mod, a, o, i=i: seen.__setitem__(i, (a[0].clone(), o.clone())))
        for i, m in enumerate(modules)
    ]
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    return [seen[i] for i in range(len(modules))]


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def family_model(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module]:
    return request.param, tiny_model(request.param)


def test_every_mode_is_checked_here() -> None:
    assert set(MODES) == set(EXPECTED_MAP) | set(EXPECTED_POST)


@pytest.mark.parametrize("mode", PRE_MODES)
def test_mlp_output_equals_manual_computation(family_model: tuple[str, torch.nn.Module], mode: str) -> None:
    family, model = family_model
    mask = _random_mask(mlp_shape(model))
    ids = tiny_input_ids(batch=2, length=9)
    outputs = [_mlp_parts(model, family, layer)[0] for layer in range(N_LAYERS)]
    pre_modules = pre_activation_modules(model)
    with ablate(model, mask, mode=mode) as hooked:
        assert sorted(hooked) == [layer for layer in range(N_LAYERS) if mask[layer].any()]
        assert [len(m._forward_hooks) for m in pre_modules] == [int(mask[layer].any()) for layer in range(N_LAYERS)]
        pre = _record(model, pre_modules, ids)
        mlp = _record(model, outputs, ids)
    assert all(len(m._forward_hooks) == 0 for m in pre_modules)
    hit_sign = 0
    for layer in range(N_LAYERS):
        x, ablated = pre[layer]
        chosen = mask[layer]
        clean = _mlp_parts(model, family, layer)[1](x, lambda a: a)
        # Pre-activation recomputed from the layer's own input: untouched neurons identical,
        # chosen ones mapped elementwise by the mode.
        raw = F.linear(x, *_weight_and_bias(pre_modules[layer], family))
        torch.testing.assert_close(ablated[..., ~chosen], raw[..., ~chosen], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ablated[..., chosen], EXPECTED_MAP[mode](raw[..., chosen]), atol=1e-5, rtol=1e-5)

        def rewrite(a: torch.Tensor, chosen: torch.Tensor = chosen) -> torch.Tensor:
            return torch.where(chosen, EXPECTED_MAP[mode](a), a)

        manual = _mlp_parts(model, family, layer)[1](x, rewrite)  # x: the MLP input (fc1 input for OPT)
        torch.testing.assert_close(mlp[layer][1], manual, atol=1e-5, rtol=1e-5)
        if chosen.any():
            hit_sign += int(not torch.allclose(manual, clean))
        else:
            torch.testing.assert_close(mlp[layer][1], clean, atol=1e-5, rtol=1e-5)
    # Every ablated layer really changed its MLP output, except OPT's ReLU under `negative`:
    # ReLU already discards the negative side, so removing it changes nothing (the contrast case).
    assert hit_sign == (0 if (family, mode) == ("opt", "negative") else int(mask.any(dim=1).sum()))


def _activation(family: str):  # noqa: ANN202
    """Each family's nonlinearity, written by hand."""
    if family == "gpt_neox":
        return F.gelu
    if family == "opt":
        return F.relu
    if family in {"llama", "mistral", "qwen2", "qwen3"}:
        return F.silu
    return lambda a: F.gelu(a, approximate="tanh")  # gpt2 (gelu_new), gemma family (gelu_pytorch_tanh)


def _mlp_output_by_hand(model: torch.nn.Module, family: str, layer: int, x: torch.Tensor, post) -> torch.Tensor:  # noqa: ANN001
    """The MLP output with the activation's output rewritten by ``post(a, act(a))``, by hand per family."""
    act = _activation(family)
    if family == "gpt_neox":
        mlp = model.gpt_neox.layers[layer].mlp
        a = F.linear(x, mlp.dense_h_to_4h.weight, mlp.dense_h_to_4h.bias)
        return mlp.dense_4h_to_h(post(a, act(a)))
    if family == "gpt2":
        mlp = model.transformer.h[layer].mlp
        a = x @ mlp.c_fc.weight + mlp.c_fc.bias
        return post(a, act(a)) @ mlp.c_proj.weight + mlp.c_proj.bias
    if family == "opt":
        block = model.model.decoder.layers[layer]
        a = F.linear(x, block.fc1.weight, block.fc1.bias)
        return block.fc2(post(a, act(a)))
    root = model.model.language_model if family == "gemma3" else model.model
    mlp = root.layers[layer].mlp
    a = F.linear(x, mlp.gate_proj.weight, mlp.gate_proj.bias)
    return mlp.down_proj(post(a, act(a)) * F.linear(x, mlp.up_proj.weight, mlp.up_proj.bias))


@pytest.mark.parametrize("mode", ACTIVATION_MODES)
def test_official_activation_modes_equal_a_hand_computation(
    family_model: tuple[str, torch.nn.Module], mode: str
) -> None:
    """signflip = |act(a)| and posrelu = a if a > 0 else act(a), on the chosen neurons only, every family."""
    family, model = family_model
    mask = _random_mask(mlp_shape(model))
    ids = tiny_input_ids(batch=2, length=9)
    outputs = [_mlp_parts(model, family, layer)[0] for layer in range(N_LAYERS)]
    acts = activation_modules(model)
    with ablate(model, mask, mode=mode):
        assert [len(m._forward_hooks) for m in acts] == [int(mask[layer].any()) for layer in range(N_LAYERS)]
        pre = _record(model, pre_activation_modules(model), ids)
        mlp = _record(model, outputs, ids)
    assert all(len(m._forward_hooks) == 0 for m in acts)
    changed = 0
    for layer in range(N_LAYERS):
        chosen = mask[layer]
        x = pre[layer][0]  # the MLP input (fc1's input for OPT)

        def post(a: torch.Tensor, y: torch.Tensor, chosen: torch.Tensor = chosen) -> torch.Tensor:
            return torch.where(chosen, EXPECTED_POST[mode](a, y), y)

        manual = _mlp_output_by_hand(model, family, layer, x, post)
        torch.testing.assert_close(mlp[layer][1], manual, atol=1e-5, rtol=1e-5)
        clean = _mlp_output_by_hand(model, family, layer, x, lambda a, y: y)
        changed += int(not torch.allclose(manual, clean, atol=1e-6))
    # ReLU (OPT) has no negative output and is the identity on the positive side: nothing changes.
    assert changed == (0 if family == "opt" else int(mask.any(dim=1).sum()))


def test_signflip_and_posrelu_differ_from_abs_pre() -> None:
    """The old signflip, act(|a|), is not the official |act(a)|: they differ wherever a < 0."""
    a = torch.linspace(-3, 3, 13)
    gelu = F.gelu
    official = ablation_function("signflip", gelu)(a)
    torch.testing.assert_close(official, gelu(a).abs())
    torch.testing.assert_close(ablation_function("posrelu", gelu)(a), torch.where(a > 0, a, gelu(a)))
    old = gelu(ablation_function("abs_pre")(a))
    assert not torch.allclose(official[a < 0], old[a < 0])
    with pytest.raises(UserInputError, match="rewrites the activation's output: pass the activation"):
        ablation_function("signflip")


def _weight_and_bias(module: torch.nn.Module, family: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = module.weight.T if family == "gpt2" else module.weight  # GPT-2 Conv1D is [in, out]
    return weight, module.bias


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2", "opt", "llama"])
def test_logits_change_only_when_the_sign_is_hit(family: str) -> None:
    """Neurons pushed always positive (bias +1) or always negative (bias -1) by hand."""
    model = tiny_model(family)
    ids = tiny_input_ids(batch=2, length=9)
    layer, positive, negative = 1, [3, 7], [5, 11]
    module = pre_activation_modules(model)[layer]
    with torch.no_grad():
        module.bias[positive] = 1.0
        module.bias[negative] = -1.0
        clean = model(input_ids=ids).logits
    pre = _record(model, [module], ids)[0][1]
    assert (pre[..., positive] > 0).all() and (pre[..., negative] < 0).all()  # the premise
    cases = [
        # (mode, neurons, does the mode's sign range meet these neurons?)
        ("negative", positive, False),
        ("positive", negative, False),
        ("abs_pre", positive, False),
        ("positive", positive, True),
        ("both", positive, True),
        ("both", negative, True),
        ("abs_pre", negative, True),
        ("negative", negative, True),
    ]
    for mode, chosen, hit in cases:
        with torch.no_grad(), ablate(model, {layer: chosen}, mode=mode):
            logits = model(input_ids=ids).logits
        # OPT's ReLU maps the negative side to 0 already: zeroing it (negative/both) changes nothing.
        changes = hit and not (family == "opt" and mode in {"negative", "both"} and chosen == negative)
        if changes:
            assert not torch.allclose(logits, clean, atol=1e-5), (mode, chosen)
        else:
            assert torch.equal(logits, clean), (mode, chosen)


def test_nested_ablations_compose() -> None:
    model = tiny_model("gpt_neox")
    modules = pre_activation_modules(model)
    ids = tiny_input_ids(batch=1, length=8)
    outer, inner = (
        _random_mask(mlp_shape(model), seed=1, empty_layer=None),
        _random_mask(mlp_shape(model), seed=2, empty_layer=None),
    )
    assert (outer & inner).any()
    with ablate(model, outer, mode="positive"):
        with ablate(model, inner, mode="abs_pre"):
            nested = _record(model, modules, ids)
        only_outer = _record(model, modules, ids)
    for layer in range(N_LAYERS):
        x, got = nested[layer]
        raw = F.linear(x, modules[layer].weight, modules[layer].bias)
        step = torch.where(outer[layer], EXPECTED_MAP["positive"](raw), raw)
        expected = torch.where(inner[layer], EXPECTED_MAP["abs_pre"](step), step)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        # On the overlap: |min(a, 0)|, which the reverse order (min(|a|, 0) = 0) would not give.
        overlap = outer[layer] & inner[layer]
        torch.testing.assert_close(got[..., overlap], -raw[..., overlap].clamp_max(0), atol=1e-5, rtol=1e-5)
        x, got = only_outer[layer]
        raw = F.linear(x, modules[layer].weight, modules[layer].bias)
        torch.testing.assert_close(
            got, torch.where(outer[layer], EXPECTED_MAP["positive"](raw), raw), atol=1e-5, rtol=1e-5
        )


def test_hooks_removed_after_an_exception() -> None:
    model = tiny_model("qwen3")
    ids = tiny_input_ids()
    with torch.no_grad():
        clean = model(input_ids=ids).logits
    with pytest.raises(RuntimeError, match="boom"):
        with ablate(model, _random_mask(mlp_shape(model)), mode="both"):
            raise RuntimeError("boom")
    assert all(len(m._forward_hooks) == 0 for m in pre_activation_modules(model))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, clean)


def test_mask_formats_agree() -> None:
    model = tiny_model("opt")
    modules = pre_activation_modules(model)
    ids = tiny_input_ids(batch=1, length=6)
    mask = _random_mask(mlp_shape(model))
    lists = [torch.nonzero(row).flatten().tolist() for row in mask]
    formats = {
        "torch": mask,
        "numpy": mask.numpy(),
        "xarray": xr.DataArray(mask.numpy(), dims=("layer", "neuron")),
        "dict": {layer: idx + idx[:2] for layer, idx in enumerate(lists) if idx},  # duplicates dropped
        "list": lists,
    }
    results = {}
    for name, neurons in formats.items():
        with ablate(model, neurons, mode="negative"):
            results[name] = _record(model, modules, ids)
    for name, result in results.items():
        for layer in range(N_LAYERS):
            assert torch.equal(result[layer][1], results["torch"][layer][1]), name


def test_neuron_indices_normalises() -> None:
    got = neuron_indices({2: [5, 1, 5], 0: np.array([3])}, (3, 8))
    assert {layer: idx.tolist() for layer, idx in got.items()} == {2: [1, 5], 0: [3]}
    assert all(idx.dtype == torch.int64 for idx in got.values())
    assert neuron_indices([[], [], []], (3, 8)) == {}


def test_autograd_path_is_out_of_place_and_correct() -> None:
    model = tiny_model("gpt_neox")
    ids = tiny_input_ids(batch=1, length=6)
    mask = _random_mask(mlp_shape(model), empty_layer=None)
    with ablate(model, mask, mode="negative"):
        with torch.no_grad():
            expected = model(input_ids=ids).logits
        logits = model(input_ids=ids).logits
        logits.sum().backward()
    torch.testing.assert_close(logits.detach(), expected)
    grad = model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("neurons", "mode", "message"),
    [
        (
            np.zeros((3, 128), bool),
            "zero",
            "ablation mode 'zero' is unknown; use one of negative, positive, both, signflip",
        ),
        (
            np.zeros((3, 64), bool),
            "negative",
            r"neuron mask has shape \(3, 64\); the model needs \(3, 128\) \[layer, neuron\]",
        ),
        (torch.zeros(3, 128), "negative", "neuron mask has dtype float32; give a boolean mask"),
        ([[1], [2]], "negative", "neuron list has 2 per-layer entries; the model has 3 layers"),
        ({3: [1]}, "negative", r"layer 3 in the neuron set does not exist: the model has layers 0..2"),
        ({0: [128]}, "negative", r"layer 0 neuron indices must lie in 0..127, got \[128\]"),
        ({0: [-1]}, "negative", r"layer 0 neuron indices must lie in 0..127, got \[-1\]"),
        ([[True, False], [], []], "negative", "layer 0 neuron indices have dtype bool; give integer indices"),
        ({1: [0.5]}, "negative", "layer 1 neuron indices have dtype float64; give integer indices"),
    ],
)
def test_bad_neuron_sets(neurons: object, mode: str, message: str) -> None:
    model = tiny_model("gpt_neox")
    with pytest.raises(UserInputError, match=message):
        with ablate(model, neurons, mode=mode):
            pass
    assert all(len(m._forward_hooks) == 0 for m in pre_activation_modules(model))


def test_paired_increase_and_its_noise_warning() -> None:
    from dynamics.ablation.matched import noise_warning, paired_increase

    clean = torch.tensor([200.0, 180.0, 220.0, 210.0], dtype=torch.float64)
    ablated = torch.tensor([202.0, 181.0, 224.0, 209.0], dtype=torch.float64)
    increase, se = paired_increase(clean, ablated, predicted_per_window=100)
    d = [(a - c) / 100 for a, c in zip(ablated.tolist(), clean.tolist())]
    mean = sum(d) / 4
    sd = (sum((x - mean) ** 2 for x in d) / 3) ** 0.5
    assert increase == pytest.approx(np.exp(mean) - 1) and se == pytest.approx(np.exp(mean) * sd / 2)
    # the perplexities themselves: exp(total NLL / tokens)
    assert (1 + increase) == pytest.approx(np.exp(ablated.sum().item() / 400) / np.exp(clean.sum().item() / 400))
    assert "within the noise" in noise_warning(increase, se)  # +1.5% with a 1.0% standard error
    assert noise_warning(0.2, 0.01) == ""
