"""Evaluation batches side by side on the CPU (dynamics/cpu_threads.map_batches): the order,
the caller's grad mode, one torch thread each, errors, and numbers bitwise equal to one
batch at a time for scoring, multi-condition scoring and perplexity."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from fixtures.tiny_models import VOCAB, tiny_model

from dynamics.ablation.hooks import ablate_rows
from dynamics.models import cpu_threads
from dynamics.syntax.logprobs import token_log_probs_each
from dynamics.syntax.perplexity import token_nll_each
from dynamics.syntax.settings import Batching


@pytest.fixture(autouse=True)
def _thread_settings_end_with_the_test():
    """These tests set the process's CPU thread policy themselves: each ends with the settings it began with."""
    with cpu_threads.run_scope():
        yield


# Calls models: also run against the lowest transformers the project declares (.ci/run).
pytestmark = pytest.mark.models


def test_batches_run_side_by_side_in_order_on_one_torch_thread_each():
    cpu_threads.set_batch_workers(2)
    before = torch.get_num_threads()
    seen: list[tuple[int, int]] = []
    running, most = [0], [0]
    lock = threading.Lock()

    def work(item: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        seen.append((threading.get_ident(), torch.get_num_threads()))
        time.sleep(0.02 if item % 2 else 0.05)  # later items may finish first
        with lock:
            running[0] -= 1
        return item * item

    assert list(cpu_threads.map_batches("cpu", work, range(9))) == [i * i for i in range(9)]
    assert most[0] == 2 and len({ident for ident, _ in seen}) == 2
    assert {threads for _, threads in seen} == {1}
    assert torch.get_num_threads() == before


def test_a_workers_first_matrix_product_runs_on_one_thread():
    """A fresh thread's first matrix product, before any parallel op, runs on OpenMP's default
    team unless the worker sets its torch threads: skinny products round differently there
    (on a machine with more than one core). Each worker's first batch is such a product."""
    cpu_threads.set_batch_workers(2)
    generator = torch.Generator().manual_seed(0)
    rows, weight = torch.randn(8, 6, 32, generator=generator) * 3, torch.randn(100, 32, generator=generator)
    with cpu_threads.cpu_threads(1):
        alone = [torch.mm(part, weight.t()) for part in rows]
    got = list(cpu_threads.map_batches("cpu", lambda part: torch.mm(part, weight.t()), rows))
    assert all(torch.equal(a, b) for a, b in zip(alone, got, strict=True))


def test_one_worker_or_another_device_runs_in_the_calling_thread():
    here = threading.get_ident()
    cpu_threads.set_batch_workers(1)
    assert list(cpu_threads.map_batches("cpu", lambda i: threading.get_ident(), range(3))) == [here] * 3
    cpu_threads.set_batch_workers(2)
    assert list(cpu_threads.map_batches("cuda:0", lambda i: threading.get_ident(), range(3))) == [here] * 3


def test_workers_take_the_callers_grad_and_inference_mode():
    cpu_threads.set_batch_workers(2)

    def modes(_: int) -> tuple[bool, bool]:
        return torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    with torch.inference_mode():
        assert set(cpu_threads.map_batches("cpu", modes, range(4))) == {(True, False)}
    with torch.no_grad():
        assert set(cpu_threads.map_batches("cpu", modes, range(4))) == {(False, False)}
    assert set(cpu_threads.map_batches("cpu", modes, range(4))) == {(False, True)}


def test_an_error_in_a_batch_is_raised_and_the_threads_restored():
    cpu_threads.set_batch_workers(2)
    before = torch.get_num_threads()
    done: list[int] = []

    def work(item: int) -> int:
        if item == 3:
            raise IndexError("batch 3 is broken")
        time.sleep(0.01)
        done.append(item)
        return item

    with pytest.raises(IndexError, match="batch 3 is broken"):
        list(cpu_threads.map_batches("cpu", work, range(100)))
    assert len(done) < 20  # the rest were cancelled, not all run
    assert torch.get_num_threads() == before


def test_calls_inside_workers_are_not_timed(monkeypatch):
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: 2)
    cpu_threads.set_cpu_threads("timed")
    cpu_threads.set_batch_workers(2)
    key = tiny_model("gpt_neox")
    counts = list(
        cpu_threads.map_batches(
            "cpu", lambda _: cpu_threads.run_timed(key, "head", 10**6, 1, torch.get_num_threads), range(4)
        )
    )
    assert counts == [1, 1, 1, 1] and cpu_threads.timed_threads(key) == {}


def test_usable_cores_respect_omp_num_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = cpu_threads.usable_cores()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads.usable_cores() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert cpu_threads.usable_cores() == cores


@pytest.fixture
def one_torch_thread():
    """The product's setting for a small model (``runtime.set_threads``): one torch thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sentences(count: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """``count`` minimal pairs of random lengths (shared prefix, then a difference), and their units."""
    generator = np.random.default_rng(seed)
    rows, units = [], []
    for pair in range(count):
        prefix = generator.integers(2, VOCAB, generator.integers(1, 6)).tolist()
        tail = generator.integers(2, VOCAB, generator.integers(1, 9)).tolist()
        rows += [prefix + tail, prefix + [(tail[0] + 1) % VOCAB or 2] + tail[1:]]
        units.append([2 * pair, 2 * pair + 1])
    return rows, units


@pytest.mark.parametrize("conditions", [1, 3])
def test_scores_are_bitwise_those_of_one_batch_at_a_time(monkeypatch, one_torch_thread, conditions):
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: 2)
    model = tiny_model("gpt_neox")
    rows, units = sentences(40, seed=conditions)
    layers, neurons = model.config.num_hidden_layers, model.config.intermediate_size
    masks = [
        None,
        *(torch.rand(layers, neurons, generator=torch.Generator().manual_seed(c)) < 0.2 for c in range(1, conditions)),
    ]
    results = {}
    for workers in (1, 2):
        cpu_threads.set_batch_workers(workers)
        cpu_threads.set_cpu_threads("timed")
        with ablate_rows(model, masks) as copies, torch.inference_mode():
            results[workers] = token_log_probs_each(
                model,
                rows,
                1,
                copies,
                Batching(batch_tokens=48, progress=False),
                units=units,
                needed_from=[2] * len(rows),
            )
    assert len(results[1]) == conditions
    for one, two in zip(results[1], results[2]):
        assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(one, two))
    if conditions > 1:
        assert not all(np.array_equal(a, b, equal_nan=True) for a, b in zip(results[1][0], results[1][1]))


def test_perplexity_is_bitwise_that_of_one_batch_at_a_time(monkeypatch, one_torch_thread):
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: 2)
    model = tiny_model("gpt_neox")
    windows = torch.randint(2, VOCAB, (7, 16), generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(model.config.num_hidden_layers, model.config.intermediate_size, dtype=torch.bool)
    mask[:, ::3] = True
    results = []
    for workers in (1, 2):
        cpu_threads.set_batch_workers(workers)
        with ablate_rows(model, [None, mask]) as copies, torch.inference_mode():
            results.append(token_nll_each(model, windows, copies, batch_size=2, progress=False))
    assert results[0].shape == (2, 7, 15)
    assert torch.equal(results[0], results[1])
