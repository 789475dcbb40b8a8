"""Architecture adapters: every family, on a tiny random model built from its config."""

from __future__ import annotations

import pytest
import torch
import transformers
from fixtures.tiny_models import D_MODEL, N_LAYERS, TINY_FAMILIES, tiny_config, tiny_input_ids, tiny_model

from checkpoints.adapters import (
    SUPPORTED_FAMILIES,
    activation_function,
    adapter_for,
    mlp_shape,
    neuron_input_biases,
    neuron_input_weights,
    pre_activation_modules,
    transformer_layers,
)
from dynamics.errors import UserInputError

# Calls models: also run against the lowest transformers the project declares (.ci/run).
pytestmark = pytest.mark.models

# Written out independently of the adapter table: family -> (activation, gated, width).
EXPECTED = {
    "gpt_neox": ("gelu", False, 128),
    "llama": ("silu", True, 64),
    "mistral": ("silu", True, 64),
    "qwen2": ("silu", True, 64),
    "qwen3": ("silu", True, 64),
    "gemma": ("gelu_tanh", True, 64),
    "gemma2": ("gelu_tanh", True, 64),
    "gemma3_text": ("gelu_tanh", True, 64),
    "gemma3": ("gelu_tanh", True, 64),
    "gpt2": ("gelu_new", False, 128),
    "opt": ("relu", False, 128),
}


def _model_activation(model: torch.nn.Module, family: str) -> torch.nn.Module:
    """The family's own activation module, found by hand (not through the adapter)."""
    if family == "gpt_neox":
        return model.gpt_neox.layers[0].mlp.act
    if family == "gpt2":
        return model.transformer.h[0].mlp.act
    if family == "opt":
        return model.model.decoder.layers[0].activation_fn
    if family == "gemma3":
        return model.model.language_model.layers[0].mlp.act_fn
    return model.model.layers[0].mlp.act_fn


def test_every_supported_family_has_a_tiny_model() -> None:
    assert set(SUPPORTED_FAMILIES) == set(TINY_FAMILIES) == set(EXPECTED)


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def family_model(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module]:
    return request.param, tiny_model(request.param)


def test_adapter_fields(family_model: tuple[str, torch.nn.Module]) -> None:
    family, model = family_model
    adapter = adapter_for(model)
    activation, gated, width = EXPECTED[family]
    assert (adapter.family, adapter.activation, adapter.gated) == (family, activation, gated)
    assert adapter.transposed_weight == (family == "gpt2")
    assert adapter_for(model.config) == adapter
    assert mlp_shape(model) == (N_LAYERS, width)


def test_pre_activation_modules_give_the_neurons(family_model: tuple[str, torch.nn.Module]) -> None:
    family, model = family_model
    n_layers, n_neurons = mlp_shape(model)
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    modules = pre_activation_modules(model)
    assert len(modules) == n_layers
    handles = [
        module.register_forward_hook(lambda m, args, out, i=i: captured.__setitem__(i, (args[0], out)))
        for i, module in enumerate(modules)
    ]
    try:
        with torch.no_grad():
            model(input_ids=tiny_input_ids(batch=2, length=7))
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(captured) == list(range(n_layers))
    for layer, (x, out) in captured.items():
        # OPT flattens [batch, seq] before fc1; every other family keeps them.
        assert out.shape == ((14, n_neurons) if family == "opt" else (2, 7, n_neurons))
        weights = neuron_input_weights(model, layer)
        assert weights.shape == (n_neurons, D_MODEL) and weights.dtype == torch.float32
        expected = x @ weights.T
        bias = neuron_input_biases(model, layer)
        if bias is not None:
            expected = expected + bias
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # The tiny models have random biases where the family has them: a forgotten bias shows.
    assert (neuron_input_biases(model, 0) is None) == (
        family in {"mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gemma3"}
    )


def test_activation_function_matches_the_models_own(family_model: tuple[str, torch.nn.Module]) -> None:
    family, model = family_model
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(activation_function(adapter_for(model))(x), _model_activation(model, family)(x))


def test_gpt2_conv1d_weight_is_transposed() -> None:
    model = tiny_model("gpt2")
    raw = model.transformer.h[1].mlp.c_fc.weight
    assert raw.shape == (D_MODEL, 128)
    torch.testing.assert_close(neuron_input_weights(model, 1), raw.detach().T)


def test_weights_are_a_float32_copy() -> None:
    model = tiny_model("llama").to(torch.bfloat16)
    weights = neuron_input_weights(model, 0)
    assert weights.dtype == torch.float32
    weights.zero_()
    assert model.model.layers[0].mlp.gate_proj.weight.abs().sum() > 0
    float_model = tiny_model("gpt_neox")
    copy = neuron_input_weights(float_model, 0)
    assert copy.data_ptr() != float_model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight.data_ptr()


def test_base_model_without_head() -> None:
    model = tiny_model("opt")
    assert len(transformer_layers(model.model)) == N_LAYERS
    assert pre_activation_modules(model.model)[2] is model.model.decoder.layers[2].fc1


def test_activation_read_from_config() -> None:
    config = transformers.GPTNeoXConfig(hidden_act="relu")
    assert adapter_for(config).activation == "relu"
    assert adapter_for(transformers.Gemma2Config(hidden_activation="gelu")).activation == "gelu"
    assert adapter_for(transformers.LlamaConfig(hidden_act="gelu_fast")).activation == "gelu_fast"
    assert adapter_for(tiny_config("gemma3")).activation == "gelu_tanh"


def test_unsupported_family_lists_the_supported_ones() -> None:
    with pytest.raises(UserInputError) as info:
        adapter_for(transformers.BertConfig())
    message = str(info.value)
    assert "'bert'" in message and "\n" not in message
    assert all(family in message for family in SUPPORTED_FAMILIES)


def test_not_a_model() -> None:
    with pytest.raises(UserInputError, match="cannot find a model type on int"):
        adapter_for(3)


def test_bad_layer_index() -> None:
    model = tiny_model("gpt_neox")
    with pytest.raises(UserInputError, match="layer 3 does not exist: the model has layers 0..2"):
        neuron_input_weights(model, 3)
