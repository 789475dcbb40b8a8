"""Tiny random models of every supported family, built from configs (offline, instant).

Import from a test as ``from tiny_models import tiny_model, TINY_FAMILIES`` (pytest puts
``tests/`` on ``sys.path``; ``tests`` has no ``__init__.py``). Every model has
``N_LAYERS`` blocks, hidden size ``D_MODEL``, a vocabulary of ``VOCAB`` tokens, and is in
eval mode, float32, on CPU. Biases are drawn at random (transformers initialises them to
zero) so that a test which forgets a bias fails.
"""

from __future__ import annotations

import torch
import transformers
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

N_LAYERS = 3
D_MODEL = 32
N_HEADS = 4
VOCAB = 100
MAX_POSITIONS = 128

_ATTENTION = dict(
    hidden_size=D_MODEL,
    num_hidden_layers=N_LAYERS,
    num_attention_heads=N_HEADS,
    vocab_size=VOCAB,
    max_position_embeddings=MAX_POSITIONS,
)
_GQA = dict(_ATTENTION, num_key_value_heads=2, head_dim=D_MODEL // N_HEADS, intermediate_size=64)


def tiny_config(family: str) -> PretrainedConfig:
    """A tiny config of ``family`` (a ``config.model_type``)."""
    builders = {
        "gpt_neox": lambda: transformers.GPTNeoXConfig(**_ATTENTION, intermediate_size=128),
        "llama": lambda: transformers.LlamaConfig(**_GQA, mlp_bias=True),
        "mistral": lambda: transformers.MistralConfig(**_GQA),
        "qwen2": lambda: transformers.Qwen2Config(**_GQA),
        "qwen3": lambda: transformers.Qwen3Config(**_GQA),
        "gemma": lambda: transformers.GemmaConfig(**_GQA),
        "gemma2": lambda: transformers.Gemma2Config(**_GQA),
        "gemma3_text": lambda: transformers.Gemma3TextConfig(**_GQA),
        "gemma3": lambda: transformers.Gemma3Config(
            text_config=dict(_GQA),
            vision_config=dict(
                hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                image_size=28, patch_size=14,
            ),
            mm_tokens_per_image=4,
        ),
        "gpt2": lambda: transformers.GPT2Config(
            n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS, n_inner=128, vocab_size=VOCAB,
            n_positions=MAX_POSITIONS, bos_token_id=0, eos_token_id=0,
        ),
        "opt": lambda: transformers.OPTConfig(
            **_ATTENTION, ffn_dim=128, word_embed_proj_dim=D_MODEL, pad_token_id=1,
        ),
    }
    if family not in builders:
        raise KeyError(f"no tiny config for {family!r}; known: {', '.join(builders)}")
    return builders[family]()


TINY_FAMILIES: tuple[str, ...] = (
    "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gemma3", "gpt2", "opt",
)


def tiny_model(family: str, seed: int = 0) -> PreTrainedModel:
    """A tiny random causal LM of ``family``, eval mode, float32, deterministic in ``seed``."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def tiny_input_ids(batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    """Random token ids [batch, length] in the tiny vocabulary (avoiding ids 0 and 1)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (batch, length), generator=generator)
