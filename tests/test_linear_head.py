"""The float32 Linear head's log-probabilities (dynamics/models/linear_head.py): tiled on the CPU, in
whole-row chunks elsewhere; both against ``log_softmax`` of the module's logits in float64."""

from __future__ import annotations

import threading

import pytest
import torch
from fixtures.tiny_models import VOCAB, tiny_input_ids, tiny_model

from dynamics.models import cpu_threads, linear_head, modelcalls
from dynamics.models.modelcalls import capabilities, sequence_log_probs


@pytest.fixture(autouse=True)
def _thread_settings_end_with_the_test():
    """These tests set the process's CPU thread policy themselves: each ends with the settings it began with."""
    with cpu_threads.run_scope():
        yield


# Calls models: also run against the lowest transformers the project declares (.ci/run).
pytestmark = pytest.mark.models


def expected_log_probs(model: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` of the module path's logits, in float64."""
    with torch.no_grad():
        logits = modelcalls.project(model, hidden).double()
    return torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0]


def random_rows(model: torch.nn.Module, rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, model.config.hidden_size, generator=generator) * 3
    return hidden, torch.randint(0, VOCAB, (rows,), generator=generator)


def small_tiles(monkeypatch, rows: int = 7, vocab: int = 30) -> None:
    """Tiles of ``rows x vocab`` (the tiny models' vocabulary of 100 then spans 30, 30, 30, 10)."""
    monkeypatch.setattr(linear_head, "CPU_TILE_ROWS", rows)
    monkeypatch.setattr(linear_head, "CPU_TILE_VOCAB", vocab)


def test_cpu_tiles_match_log_softmax_with_every_target_position(monkeypatch):
    """Targets in every tile (the first, the last partial one, their edges), chunks of rows
    with a partial last one: the online logsumexp equals log_softmax of whole rows."""
    model = tiny_model("gpt_neox")
    small_tiles(monkeypatch)
    hidden, _ = random_rows(model, 20, seed=0)
    targets = torch.tensor([0, 29, 30, 59, 60, 89, 90, 99] + list(range(3, 99, 8)))
    projected: list[tuple[int, int]] = []
    original = linear_head.head_logits
    monkeypatch.setattr(
        linear_head,
        "head_logits",
        lambda head, h, tf, out, first=0, last=None: (
            projected.append((h.shape[0], out.shape[1])) or original(head, h, tf, out, first, last)
        ),
    )
    monkeypatch.setattr(modelcalls, "project", None)  # the module path is never taken
    with torch.no_grad():
        got = modelcalls.hidden_log_probs(model, hidden, targets)
    monkeypatch.undo()
    assert projected == [(r, w) for r in (7, 7, 6) for w in (30, 30, 30, 10)]
    torch.testing.assert_close(got.double(), expected_log_probs(model, hidden, targets), atol=1e-5, rtol=0)


def test_cpu_tiles_agree_with_whole_rows_to_float32_rounding(monkeypatch):
    model = tiny_model("gpt_neox")
    hidden, targets = random_rows(model, 50, seed=1)
    head = model.get_output_embeddings()
    with torch.no_grad():
        whole = linear_head.whole_rows_log_probs(head, hidden, targets, (None, None, None), 9)
        small_tiles(monkeypatch, rows=16, vocab=8)
        tiled = modelcalls.hidden_log_probs(model, hidden, targets)
    torch.testing.assert_close(tiled, whole, atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(whole.double(), expected_log_probs(model, hidden, targets), atol=1e-5, rtol=0)


def test_whole_rows_are_chunked_into_one_buffer(monkeypatch):
    """The path off the CPU (run here on CPU tensors): chunks of ``step`` rows, one buffer."""
    model = tiny_model("gpt_neox")
    hidden, targets = random_rows(model, 20, seed=2)
    seen = []
    original = linear_head.log_softmax_picked_
    monkeypatch.setattr(
        linear_head, "log_softmax_picked_", lambda x, t: seen.append((x.data_ptr(), x.shape[0])) or original(x, t)
    )
    with torch.no_grad():
        got = linear_head.whole_rows_log_probs(model.get_output_embeddings(), hidden, targets, (None, None, None), 7)
    assert [rows for _, rows in seen] == [7, 7, 6] and len({ptr for ptr, _ in seen}) == 1
    torch.testing.assert_close(got.double(), expected_log_probs(model, hidden, targets), atol=1e-5, rtol=0)


def test_rows_with_non_finite_logits_follow_logsumexp(monkeypatch):
    """A row whose logit overflows to +inf gets -inf for every other target, as the module
    path's ``logsumexp`` gives (``log_softmax`` itself would give NaN), and a row holding a NaN gets NaN; both are redone on their whole
    row, and the other rows of their chunk are unaffected."""
    model = tiny_model("gpt_neox")
    small_tiles(monkeypatch)
    hidden, targets = random_rows(model, 9, seed=3)
    head = model.get_output_embeddings()
    with torch.no_grad():
        head.weight[17] = 0.0
        head.weight[17, 0] = 1e38
    hidden[:, 0] = 0.0
    hidden[2, 0] = 5.0  # its logit of word 17 is 5e38: +inf in float32
    hidden[5, 1] = float("nan")
    targets[2] = 40
    with torch.no_grad():
        got = modelcalls.hidden_log_probs(model, hidden, targets)
        module_path = modelcalls.log_probs_of(modelcalls.project(model, hidden), targets)
    expected = expected_log_probs(model, hidden, targets)
    assert got[2] == float("-inf") == module_path[2]  # target minus logsumexp = -inf
    assert torch.isnan(got[5]) and torch.isnan(module_path[5])
    fine = [0, 1, 3, 4, 6, 7, 8]
    torch.testing.assert_close(got[fine].double(), expected[fine], atol=1e-5, rtol=0)


def test_in_place_log_softmax_matches_torch():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=generator) * 30
    logits[2, 7] = float("inf")
    logits[3] = float("-inf")
    logits[4, :10] = float("-inf")
    targets = torch.tensor([0, 49, 7, 3, 12, 25])
    expected = torch.log_softmax(logits.double(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    got = linear_head.log_softmax_picked_(logits.clone(), targets)
    assert torch.isnan(got[2]) == torch.isnan(expected[2]) and torch.isnan(got[3]) == torch.isnan(expected[3])
    finite = torch.isfinite(expected)
    torch.testing.assert_close(got[finite].double(), expected[finite], atol=2e-5, rtol=0)


@pytest.mark.parametrize("tiles", [(4, 30), (512, 2048)])
def test_a_head_with_bias_and_scaling_matches_the_module(monkeypatch, tiles):
    """Bias (sliced per tile), logit scale, divisor and soft-capping as project() applies them."""
    model = tiny_model("gpt_neox")
    head = model.get_output_embeddings()
    head.bias = torch.nn.Parameter(torch.randn(head.weight.shape[0], generator=torch.Generator().manual_seed(1)))
    model.config.logit_scale, model.config.logits_scaling, model.config.final_logit_softcapping = 3.0, 2.0, 0.5
    hidden, targets = random_rows(model, 9, seed=4)
    logits = torch.tanh((hidden @ head.weight.t() + head.bias) * 3.0 / 2.0 / 0.5) * 0.5
    expected = torch.log_softmax(logits.double(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    small_tiles(monkeypatch, *tiles)
    with torch.no_grad():
        got = modelcalls.hidden_log_probs(model, hidden, targets)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


def test_log_probs_with_autograd_on_take_the_module_path():
    """Outside inference mode a head that requires grad cannot be written into a buffer: the
    module path runs, and gradients flow."""
    model = tiny_model("gpt_neox")
    hidden, targets = random_rows(model, 5, seed=5)
    hidden.requires_grad_(True)
    got = modelcalls.hidden_log_probs(model, hidden, targets)
    got.sum().backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(got.detach(), modelcalls.hidden_log_probs(model, hidden, targets), atol=1e-5, rtol=0)


def test_the_cpu_tile_is_reused_per_thread(monkeypatch):
    model = tiny_model("gpt_neox")
    seen = []
    original = linear_head.head_logits
    monkeypatch.setattr(
        linear_head,
        "head_logits",
        lambda head, h, tf, out, first=0, last=None: (
            seen.append(out.untyped_storage().data_ptr()) or original(head, h, tf, out, first, last)
        ),
    )
    hidden, targets = random_rows(model, 12, seed=6)
    with torch.no_grad():
        first = modelcalls.hidden_log_probs(model, hidden, targets)
        second = modelcalls.hidden_log_probs(model, hidden[:5], targets[:5])
        other: list[torch.Tensor] = []

        def in_another_thread() -> None:
            with torch.no_grad():  # grad mode is per thread
                other.append(modelcalls.hidden_log_probs(model, hidden, targets))

        worker = threading.Thread(target=in_another_thread)
        worker.start()
        worker.join()
    assert seen[0] == seen[1] != seen[2]  # one tile per thread, reused across calls
    assert torch.equal(first[:5], second) and torch.equal(first, other[0])
    torch.testing.assert_close(first.double(), expected_log_probs(model, hidden, targets), atol=1e-5, rtol=0)


def test_sequence_log_probs_through_the_tiles(monkeypatch):
    """The model path end to end: decoder, then the tiled head, equal to the model's own logits."""
    model = tiny_model("gpt_neox")
    capabilities(model)
    small_tiles(monkeypatch)
    ids = tiny_input_ids(2, 11)
    with torch.no_grad():
        got = sequence_log_probs(model, ids)
        logits = model(input_ids=ids).logits.double()
    expected = torch.log_softmax(logits, dim=-1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=0)


def test_the_cpu_tile_serves_calls_in_and_out_of_inference_mode():
    """The per-thread tile is made once; a call under ``no_grad`` after one under
    ``inference_mode`` (the scorer's) still writes into it. A fresh thread has no tile yet, so
    its first call, in inference mode, is the one that makes it."""
    model = tiny_model("gpt_neox")
    hidden, targets = random_rows(model, 6, seed=7)
    results: list[torch.Tensor] = []
    threads = torch.get_num_threads()

    def calls() -> None:
        # Torch applies its thread count to a new thread at the thread's first parallel op;
        # set it first, or the first product runs on OpenMP's default team and rounds differently.
        torch.set_num_threads(threads)
        with torch.inference_mode():
            results.append(modelcalls.hidden_log_probs(model, hidden, targets))
        with torch.no_grad():
            results.append(modelcalls.hidden_log_probs(model, hidden, targets))
        with torch.inference_mode():
            results.append(modelcalls.hidden_log_probs(model, hidden, targets))

    worker = threading.Thread(target=calls)
    worker.start()
    worker.join()
    assert len(results) == 3  # an error in the thread would leave fewer
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
