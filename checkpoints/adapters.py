"""Architecture adapters: where a model family keeps its MLP pre-activation.

Keyed by ``config.model_type`` only (never by the model's name), so a fine-tune or a
GGUF export of a supported architecture is found without a list of names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dynamics.errors import DynamicsError, UserInputError

if TYPE_CHECKING:  # torch is imported lazily so that resolving a model name stays instant
    import torch


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Where one model family keeps its MLP neurons.

    Attributes:
        family: ``config.model_type``, e.g. ``"gpt_neox"``.
        layers: dotted path from the model to the ``ModuleList`` of blocks.
        pre_activation: dotted path from one block to the module whose *output* is the MLP
            pre-activation (the input of the nonlinearity; the gate for gated MLPs).
        activation: ``"gelu" | "silu" | "gelu_tanh" | "gelu_new" | "relu"`` as read from the
            config; any other value is the config's own (``transformers.ACT2FN``) name.
        gated: True when the activation multiplies an up-projection (``act(gate) * up``).
        transposed_weight: True for GPT-2's ``Conv1D``, which stores its weight as [in, out].
    """

    family: str
    layers: str
    pre_activation: str
    activation: str
    gated: bool
    transposed_weight: bool


@dataclass(frozen=True)
class _FamilyRow:
    layers: str
    pre_activation: str
    activation_keys: tuple[str, ...]  # config attributes naming the activation, first present wins
    default_activation: str
    gated: bool = False
    transposed_weight: bool = False


_LLAMA_LIKE = _FamilyRow("model.layers", "mlp.gate_proj", ("hidden_act",), "silu", gated=True)
_GEMMA_LIKE = _FamilyRow(
    "model.layers", "mlp.gate_proj", ("hidden_activation", "hidden_act"), "gelu_pytorch_tanh", gated=True
)

# One row per family; adding a family is one row here plus a tiny-config test.
_FAMILIES: dict[str, _FamilyRow] = {
    "gpt_neox": _FamilyRow("gpt_neox.layers", "mlp.dense_h_to_4h", ("hidden_act",), "gelu"),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _FamilyRow("model.layers", "mlp.gate_proj", ("hidden_act",), "gelu_pytorch_tanh", gated=True),
    "gemma2": _GEMMA_LIKE,
    "gemma3_text": _GEMMA_LIKE,
    # The multimodal Gemma 3 (Gemma3ForConditionalGeneration) keeps its text model one level deeper.
    "gemma3": _FamilyRow(
        "model.language_model.layers",
        "mlp.gate_proj",
        ("hidden_activation", "hidden_act"),
        "gelu_pytorch_tanh",
        gated=True,
    ),
    "gpt2": _FamilyRow("transformer.h", "mlp.c_fc", ("activation_function",), "gelu_new", transposed_weight=True),
    "opt": _FamilyRow("model.decoder.layers", "fc1", ("activation_function",), "relu"),
}

SUPPORTED_FAMILIES: tuple[str, ...] = tuple(_FAMILIES)

# transformers' activation names -> the adapter's canonical names.
_CANONICAL_ACTIVATION = {
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_python_tanh": "gelu_tanh",
    "gelu_new": "gelu_new",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}


def _config_of(model_or_config: object) -> Any:
    config = getattr(model_or_config, "config", model_or_config)
    if not hasattr(config, "model_type"):
        raise UserInputError(
            f"cannot find a model type on {type(model_or_config).__name__}: give a transformers model or its config"
        )
    return config


def adapter_for(model_or_config: object) -> ArchitectureAdapter:
    """The adapter of a model or config, chosen by ``config.model_type`` only.

    Raises:
        UserInputError: the family is not supported (the message lists those that are).
    """
    config = _config_of(model_or_config)
    family = str(config.model_type)
    row = _FAMILIES.get(family)
    if row is None:
        raise UserInputError(
            f"unsupported model family {family!r}: supported families are {', '.join(SUPPORTED_FAMILIES)}"
        )
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    raw = next(
        (getattr(text_config, key) for key in row.activation_keys if getattr(text_config, key, None)),
        row.default_activation,
    )
    return ArchitectureAdapter(
        family=family,
        layers=row.layers,
        pre_activation=row.pre_activation,
        activation=_CANONICAL_ACTIVATION.get(str(raw), str(raw)),
        gated=row.gated,
        transposed_weight=row.transposed_weight,
    )


def transformer_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's blocks, in order.

    The adapter's path starts at the task model (``...ForCausalLM``); a bare base model
    (``GPTNeoXModel``, ``LlamaModel``...) lacks the first attribute, so it is tried without it.
    """
    import torch

    adapter = adapter_for(model)
    for path in (adapter.layers, adapter.layers.split(".", 1)[-1]):
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise DynamicsError(
        f"{type(model).__name__} (model_type {adapter.family!r}) has no block list at {adapter.layers!r}"
    )


def pre_activation_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The module whose output is the MLP pre-activation, one per layer, in order."""
    adapter = adapter_for(model)
    return [block.get_submodule(adapter.pre_activation) for block in transformer_layers(model)]


def _checked_layer(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    modules = pre_activation_modules(model)
    if not -len(modules) <= layer < len(modules):
        raise UserInputError(f"layer {layer} does not exist: the model has layers 0..{len(modules) - 1}")
    return modules[layer]


def neuron_input_weights(model: torch.nn.Module, layer: int) -> torch.Tensor:
    """Input weights of one layer's MLP neurons: [n_neurons, d_model], a float32 copy.

    Row ``i`` is neuron ``i``'s weight vector, so ``x @ W.T (+ bias)`` is the pre-activation
    (GPT-2's ``Conv1D`` stores [d_model, n_neurons] and is transposed here).
    """
    import torch

    weight = _checked_layer(model, layer).weight.detach()  # type: ignore[operator]
    if adapter_for(model).transposed_weight:
        weight = weight.T
    return weight.to(torch.float32, copy=True).contiguous()


def neuron_input_biases(model: torch.nn.Module, layer: int) -> torch.Tensor | None:
    """Biases of one layer's MLP neurons ([n_neurons], float32 copy), or None when there are none."""
    import torch

    bias = getattr(_checked_layer(model, layer), "bias", None)
    return None if bias is None else bias.detach().to(torch.float32, copy=True)


def mlp_shape(model: torch.nn.Module) -> tuple[int, int]:
    """``(n_layers, n_neurons per layer)`` of the model's MLPs."""
    widths = {_out_features(module) for module in pre_activation_modules(model)}
    if len(widths) != 1:
        raise DynamicsError(f"MLP widths differ across layers ({sorted(widths)}); per-layer widths are not supported")
    return len(pre_activation_modules(model)), widths.pop()


def _out_features(module: torch.nn.Module) -> int:
    out_features = getattr(module, "out_features", None)  # torch.nn.Linear
    if out_features is not None:
        return int(out_features)
    nf = getattr(module, "nf", None)  # transformers' Conv1D
    if nf is not None:
        return int(nf)
    raise DynamicsError(f"cannot tell the output width of a {type(module).__name__} pre-activation module")


def activation_function(adapter: ArchitectureAdapter) -> Callable[[torch.Tensor], torch.Tensor]:
    """The family's nonlinearity as a callable on tensors (for manual MLP computations)."""
    import torch.nn.functional as F

    functions = {
        "gelu": F.gelu,
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
        "silu": F.silu,
        "relu": F.relu,
    }
    if adapter.activation in functions:
        return functions[adapter.activation]
    from transformers.activations import ACT2FN

    return ACT2FN[adapter.activation]
