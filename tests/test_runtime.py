"""Defaults that fit the device: the checkpoint's own dtype on CUDA (bfloat16 where float16
overflows), float32 on the CPU, and a capture budget sized from free device memory."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures.study import save_tiny_model

from checkpoints.checkpoint import Checkpoint
from dynamics.models import cpu_threads, runtime
from dynamics.models.runtime import auto_dtype, capture_budget, checkpoint_dtype, load_checkpoint_model


@pytest.fixture(autouse=True)
def _thread_settings_end_with_the_test():
    """These tests set the process's CPU thread policy themselves: each ends with the settings it began with."""
    with cpu_threads.run_scope():
        yield


pytestmark = pytest.mark.models


def _checkpoint(tmp_path, declared: str | None) -> Checkpoint:
    directory = save_tiny_model("gpt_neox", tmp_path / "model")
    config = json.loads((directory / "config.json").read_text())
    config.pop("torch_dtype", None)
    config.pop("dtype", None)
    if declared is not None:
        config["torch_dtype"] = declared
    (directory / "config.json").write_text(json.dumps(config))
    return Checkpoint(step=7, revision=None, path=directory)


@pytest.mark.parametrize(
    "declared, cuda, cpu",
    [
        ("float16", "float16", "float32"),
        ("bfloat16", "bfloat16", "float32"),
        ("float32", "float32", "float32"),
        (None, "float32", "float32"),
    ],
)
def test_auto_dtype_is_the_checkpoints_own_on_cuda_and_float32_on_cpu(tmp_path, declared, cuda, cpu):
    checkpoint = _checkpoint(tmp_path, declared)
    assert checkpoint_dtype(checkpoint) == declared
    assert auto_dtype(checkpoint, "cuda") == cuda and auto_dtype(checkpoint, "cuda:1") == cuda
    assert auto_dtype(checkpoint, "cpu") == cpu


def test_auto_loads_float32_on_the_cpu(tmp_path):
    model = load_checkpoint_model(_checkpoint(tmp_path, "float16"), "cpu", "auto")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_float16_that_overflows_is_loaded_in_bfloat16(tmp_path, monkeypatch):
    checkpoint = _checkpoint(tmp_path, "float16")
    from safetensors.torch import load_file, save_file

    weights_file = checkpoint.path / "model.safetensors"
    tensors = load_file(weights_file)
    # Every weight fits float16, but each logit is 30 x 100 x 32 = 96,000 > 65,504.
    tensors["gpt_neox.final_layer_norm.bias"] = torch.full_like(tensors["gpt_neox.final_layer_norm.bias"], 100.0)
    head = next(name for name in tensors if name.startswith(("embed_out", "lm_head")))
    tensors[head] = torch.full_like(tensors[head], 30.0)
    save_file(tensors, weights_file, metadata={"format": "pt"})
    monkeypatch.setattr(runtime, "auto_dtype", lambda checkpoint, device: "float16")  # as on CUDA
    model = load_checkpoint_model(checkpoint, "cpu", "auto")
    assert next(model.parameters()).dtype == torch.bfloat16
    as_asked = load_checkpoint_model(checkpoint, "cpu", "float16")  # an explicit dtype is kept as it is
    assert next(as_asked.parameters()).dtype == torch.float16


def test_capture_budget(monkeypatch):
    assert capture_budget(1.5, "cpu") == int(1.5 * 2**30)
    assert capture_budget(0, "cpu") == 2 * 2**30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100 * 2**30, 140 * 2**30))
    assert capture_budget(0, "cuda") == 50 * 2**30  # half of what is free after loading
    assert capture_budget(3, "cuda") == 3 * 2**30


def _neox_on_meta(**shape):  # noqa: ANN003, ANN202
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(GPTNeoXConfig(**shape))


PYTHIA_14M = dict(num_hidden_layers=6, hidden_size=128, num_attention_heads=4, intermediate_size=512, vocab_size=50304)


def test_evaluation_flops_count_the_weights() -> None:
    """Body: two FLOPs per weight of the layers' matrix products; head: two per unembedding weight."""
    model = _neox_on_meta(**PYTHIA_14M)
    body, head = runtime.evaluation_flops(model)
    layer_weights = sum(
        p.numel() for name, p in model.gpt_neox.layers.named_parameters() if name.endswith(".weight") and p.ndim == 2
    )
    assert body == 2 * layer_weights
    assert head == 2 * model.get_output_embeddings().weight.numel() == 2 * 128 * 50304


def test_thread_policy_one_thread_for_small_models_whatever_the_vocabulary() -> None:
    assert runtime.threads_for(_neox_on_meta(**PYTHIA_14M), available=8) == 1  # head 85% of the FLOPs: still one
    big = _neox_on_meta(
        num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072, vocab_size=50304
    )  # Pythia-160m's shape
    assert runtime.threads_for(big, available=8) == 8
    before = torch.get_num_threads()
    try:
        runtime.set_threads(0, _neox_on_meta(**PYTHIA_14M))
        assert torch.get_num_threads() == 1
        assert cpu_threads.cpu_policy() == "timed"  # the evaluation's threads are measured
        assert cpu_threads.batch_workers() == cpu_threads.usable_cores()  # batches side by side
        runtime.set_threads(2, big)
        assert torch.get_num_threads() == 2
        assert cpu_threads.cpu_policy() is None  # as given, everywhere
        assert cpu_threads.batch_workers() == 1
        runtime.set_threads(0, _neox_on_meta(**PYTHIA_14M))
        runtime.set_threads(0, big)
        assert cpu_threads.cpu_policy() is None and cpu_threads.batch_workers() == 1
    finally:
        torch.set_num_threads(before)
        cpu_threads.set_cpu_threads(None)
