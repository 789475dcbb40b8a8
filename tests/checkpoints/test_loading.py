"""Loading refuses a model whose files do not hold the weights its config describes.

transformers loads such a model without an error (the weights it lacks are drawn at random);
:meth:`Checkpoint.load_model` reads transformers' loading info and refuses it in one line,
while what is legitimately absent (tied embeddings, buffers the model re-creates) or extra
(buffers old checkpoints carry) passes. Every tiny family, and the GGUF path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.tiny_models import N_LAYERS, TINY_FAMILIES, tiny_model
from safetensors.torch import load_file, save_file

from checkpoints.checkpoint import Checkpoint
from checkpoints.loading_info import weights_problem
from dynamics.errors import CheckpointError

pytestmark = pytest.mark.models


def saved(family: str, where: Path) -> Path:
    tiny_model(family).save_pretrained(where)
    return where


def rewrite_weights(directory: Path, change) -> None:
    """Apply ``change`` to the saved state dict (``model.safetensors``) in place."""
    weights = load_file(directory / "model.safetensors")
    change(weights)
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})


def drop_last_layer(weights: dict) -> None:
    last = f".{N_LAYERS - 1}."
    for key in [k for k in weights if last in k and (".layers." in k or ".h." in k)]:
        del weights[key]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_a_correct_checkpoint_of_every_family_loads(family, tmp_path):
    model = Checkpoint(step=0, revision=None, path=saved(family, tmp_path / family)).load_model()
    reference = tiny_model(family)
    for (name, loaded), (_, built) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(loaded, built), name


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_a_checkpoint_missing_a_layer_is_refused_in_every_family(family, tmp_path):
    directory = saved(family, tmp_path / family)
    rewrite_weights(directory, drop_last_layer)
    with pytest.raises(CheckpointError) as caught:
        Checkpoint(step=7, revision=None, path=directory).load_model()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"step 7: the weights in {directory} do not match its config: ")
    assert "missing from the files" in message and f"layers {N_LAYERS - 1})" in message


def test_a_config_claiming_more_layers_than_the_files_hold_is_refused(tmp_path):
    directory = saved("gpt_neox", tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    config["num_hidden_layers"] = 5
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing from the files.*; layers 3, 4\)"):
        Checkpoint(step=0, revision=None, path=directory).load_model()


def test_weights_of_another_shape_are_refused_naming_both_shapes(tmp_path):
    directory = saved("gpt_neox", tmp_path / "m")
    key = "gpt_neox.layers.1.mlp.dense_h_to_4h.weight"
    rewrite_weights(directory, lambda w: w.__setitem__(key, torch.zeros(64, 32)))
    with pytest.raises(CheckpointError, match=rf"another shape .*{key} is \[64, 32\] in the files, \[128, 32\]"):
        Checkpoint(step=0, revision=None, path=directory).load_model()


def test_files_with_more_layers_than_the_config_are_refused(tmp_path):
    directory = saved("llama", tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    config["num_hidden_layers"] = N_LAYERS - 1
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=rf"has no place for .*layers {N_LAYERS - 1}\)"):
        Checkpoint(step=0, revision=None, path=directory).load_model()


def test_buffers_old_checkpoints_carry_are_let_through(tmp_path):
    """Pythia's and GPT-2's published files hold attention masks and rotary frequencies as tensors."""
    for family, extra in [
        ("gpt_neox", ["gpt_neox.layers.0.attention.rotary_emb.inv_freq", "gpt_neox.layers.0.attention.masked_bias"]),
        ("gpt2", ["transformer.h.0.attn.masked_bias", "transformer.h.1.attn.bias"]),
        ("llama", ["model.layers.0.self_attn.rotary_emb.inv_freq"]),
    ]:
        directory = saved(family, tmp_path / family)
        rewrite_weights(directory, lambda w, extra=extra: w.update({k: torch.ones(4) for k in extra}))
        model = Checkpoint(step=0, revision=None, path=directory).load_model()
        assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in tiny_model(family).parameters())


def test_tied_and_buffer_keys_reported_missing_are_not_refused():
    """Loading info of an older transformers may list tied weights and buffers as missing."""
    model = tiny_model("gpt2")  # ties lm_head.weight to transformer.wte.weight
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    info = {"missing_keys": ["lm_head.weight", "transformer.h.0.attn.bias"], "unexpected_keys": []}
    assert weights_problem(model, info) is None
    info = {"missing_keys": ["lm_head.weight", "transformer.h.1.mlp.c_fc.weight"]}
    assert weights_problem(model, info) == (
        "1 weight(s) of the model are missing from the files, which transformers would fill with random values "
        "(first transformer.h.1.mlp.c_fc.weight; layers 1)"
    )
    assert weights_problem(model, {"error_msgs": ["size mismatch\n for x"]}) == (
        "transformers reported 1 loading error(s): size mismatch for x"
    )


# -- GGUF ----------------------------------------------------------------------------------------


def write_tiny_llama_gguf(path: Path, blocks: int, declared: int) -> None:
    """A float32 llama GGUF whose metadata declares ``declared`` blocks and whose tensors hold ``blocks``."""
    gguf = pytest.importorskip("gguf")
    d, ff, vocab = 32, 64, 100
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(declared)
    writer.add_context_length(128)
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    rng = np.random.default_rng(0)

    def weight(*shape: int) -> np.ndarray:
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(vocab, d))
    writer.add_tensor("output_norm.weight", np.ones(d, np.float32))
    writer.add_tensor("output.weight", weight(vocab, d))
    for i in range(blocks):
        for name, shape in [
            ("attn_norm", (d,)),
            ("ffn_norm", (d,)),
            ("attn_q", (d, d)),
            ("attn_k", (16, d)),
            ("attn_v", (16, d)),
            ("attn_output", (d, d)),
            ("ffn_gate", (ff, d)),
            ("ffn_up", (ff, d)),
            ("ffn_down", (d, ff)),
        ]:
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_gguf_file_with_every_layer_loads_and_one_missing_a_layer_is_refused(tmp_path):
    write_tiny_llama_gguf(tmp_path / "good.gguf", blocks=3, declared=3)
    write_tiny_llama_gguf(tmp_path / "short.gguf", blocks=2, declared=3)
    model = Checkpoint(step=0, revision=None, path=tmp_path, gguf_file="good.gguf").load_model()
    assert model.config.num_hidden_layers == 3
    with pytest.raises(
        CheckpointError,
        match=r"do not match its config: 9 weight\(s\) of the model are missing from the files.*; layers 2\)",
    ):
        Checkpoint(step=0, revision=None, path=tmp_path, gguf_file="short.gguf").load_model()
