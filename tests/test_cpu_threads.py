"""The CPU thread policy of evaluation calls (dynamics/models/cpu_threads.py) and its use by modelcalls."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fixtures.tiny_models import VOCAB, tiny_model

from dynamics.models import cpu_threads, linear_head, modelcalls
from dynamics.syntax.logprobs import token_log_probs
from dynamics.syntax.settings import Batching


@pytest.fixture(autouse=True)
def _thread_settings_end_with_the_test():
    """These tests set the process's CPU thread policy themselves: each ends with the settings it began with."""
    with cpu_threads.run_scope():
        yield


# Calls models: also run against the lowest transformers the project declares (.ci/run).
pytestmark = pytest.mark.models


class Key:
    """A stand-in for a model object (the timings are kept per object)."""


@pytest.mark.parametrize("faster", [1, 2])
def test_timed_calls_pick_the_faster_count_and_keep_it(monkeypatch, faster):
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: 2)
    cpu_threads.set_cpu_threads("timed")
    seen = []
    clock = [0.0]  # a fake clock: each call "takes" 1 s on the faster count, 30 s on the other
    monkeypatch.setattr(cpu_threads, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    def work() -> int:
        seen.append(torch.get_num_threads())
        clock[0] += 1.0 if torch.get_num_threads() == faster else 30.0
        return len(seen)

    key, before = Key(), torch.get_num_threads()
    assert cpu_threads.run_timed(key, "body", 10, 100, work) == 1  # under the threshold: not timed
    assert cpu_threads.timed_threads(key) == {}
    assert cpu_threads.run_timed(key, "body", 100, 100, work) == 5  # timed: run four times
    assert sorted(seen[1:5]) == [1, 1, 2, 2]
    assert cpu_threads.timed_threads(key) == {"body": faster}
    cpu_threads.run_timed(key, "body", 0, 100, work)  # later calls of any size on the chosen count
    assert seen[-1] == faster and len(seen) == 6
    cpu_threads.run_timed(key, "head", 100, 100, work)  # each kind is timed on its own
    assert len(seen) == 10 and set(cpu_threads.timed_threads(key)) == {"body", "head"}
    assert torch.get_num_threads() == before


def test_one_core_runs_once(monkeypatch):
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: 1)
    cpu_threads.set_cpu_threads("timed")
    calls = []
    cpu_threads.run_timed(Key(), "head", 100, 1, lambda: calls.append(torch.get_num_threads()))
    assert calls == [1]  # not timed, and on the one thread chosen


def test_a_count_and_none(monkeypatch):
    before = torch.get_num_threads()
    cpu_threads.set_cpu_threads(2)
    assert cpu_threads.run_timed(Key(), "head", 0, 1, torch.get_num_threads) == 2
    cpu_threads.set_cpu_threads(None)
    assert cpu_threads.run_timed(Key(), "head", 10**9, 1, torch.get_num_threads) == before
    assert torch.get_num_threads() == before


def test_bad_policies_are_refused():
    for bad in (0, -1, "fast", 1.5):
        with pytest.raises(ValueError, match="CPU threads"):
            cpu_threads.set_cpu_threads(bad)


@pytest.mark.parametrize("policy", [2, "timed"])
def test_projection_numbers_do_not_depend_on_the_threads(monkeypatch, policy):
    model = tiny_model("gpt_neox")
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(300, model.config.hidden_size, generator=generator)
    targets = torch.randint(0, VOCAB, (300,), generator=generator)
    before = torch.get_num_threads()
    with torch.no_grad():
        expected = modelcalls.hidden_log_probs(model, hidden, targets)
        seen = []
        original = linear_head.head_logits
        monkeypatch.setattr(
            linear_head,
            "head_logits",
            lambda *args: seen.append(torch.get_num_threads()) or original(*args),
        )
        cpu_threads.set_cpu_threads(policy)
        got = modelcalls.hidden_log_probs(model, hidden, targets)
    assert torch.get_num_threads() == before
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    if policy == 2:
        assert set(seen) == {2}
    else:
        assert set(cpu_threads.timed_threads(model)) == {"head"}
        assert set(seen) <= {1, cpu_threads.usable_cores()}


def test_timed_on_a_single_usable_core_runs_on_one_thread(monkeypatch):
    """One usable core (an affinity of one, ``OMP_NUM_THREADS=1``) while torch runs on two: the
    timed call and every later one run on the one thread chosen, not on the process's two."""
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: 1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cpu_threads.set_cpu_threads("timed")
        seen = [cpu_threads.run_timed(Key(), "head", 100, 1, torch.get_num_threads)]
        key = Key()
        seen += [cpu_threads.run_timed(key, "head", 100, 1, torch.get_num_threads) for _ in range(2)]
        assert seen == [1, 1, 1]
        assert torch.get_num_threads() == 2
    finally:
        cpu_threads.set_cpu_threads(None)
        torch.set_num_threads(before)


@pytest.mark.parametrize("tiles", [(512, 2048), (64, 30)])
def test_the_projection_is_bitwise_the_same_on_one_thread_and_on_every_core(monkeypatch, tiles):
    """What lets the timing choose freely: the head's numbers do not depend on the count."""
    monkeypatch.setattr(linear_head, "CPU_TILE_ROWS", tiles[0])
    monkeypatch.setattr(linear_head, "CPU_TILE_VOCAB", tiles[1])
    model = tiny_model("gpt_neox")
    generator = torch.Generator().manual_seed(6)
    results = []
    with torch.no_grad():
        for rows in (7, 300):
            hidden = torch.randn(rows, model.config.hidden_size, generator=generator)
            targets = torch.randint(0, VOCAB, (rows,), generator=generator)
            for threads in (1, cpu_threads.usable_cores()):
                cpu_threads.set_cpu_threads(threads)
                results.append(modelcalls.hidden_log_probs(model, hidden, targets))
    assert torch.equal(results[0], results[1]) and torch.equal(results[2], results[3])


def test_decoder_calls_are_not_timed(monkeypatch):
    """Scoring under the timed policy runs each decoder call once and gives the same numbers."""
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: 2)
    model = tiny_model("gpt_neox")
    modelcalls.capabilities(model)
    rows = [[5, 6, 7, 8, 9], [5, 6, 7, 8, 10]]
    whole = token_log_probs(model, rows, None, Batching(progress=False), units=[[0, 1]])
    widths = []
    model.base_model.register_forward_hook(
        lambda module, args, kwargs, out: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    cpu_threads.set_cpu_threads("timed")
    timed = token_log_probs(model, rows, None, Batching(progress=False), units=[[0, 1]])
    assert widths == [4, 1]  # the shared prefix once, then the suffixes on its cache
    assert "body" not in cpu_threads.timed_threads(model)
    for a, b in zip(timed, whole):
        assert np.array_equal(a, b)


def test_a_run_scope_restores_every_thread_setting():
    before = (torch.get_num_threads(), cpu_threads.cpu_policy(), cpu_threads.batch_workers())
    with cpu_threads.run_scope():
        torch.set_num_threads(1 if before[0] != 1 else 2)
        cpu_threads.set_cpu_threads("timed")
        cpu_threads.set_batch_workers(3)
    assert (torch.get_num_threads(), cpu_threads.cpu_policy(), cpu_threads.batch_workers()) == before
    with pytest.raises(RuntimeError), cpu_threads.run_scope():  # an exception too
        cpu_threads.set_batch_workers(2)
        raise RuntimeError("boom")
    assert cpu_threads.batch_workers() == before[2]


def test_an_in_process_scan_leaves_the_thread_settings_as_it_found_them(tiny_suite, tmp_path):
    """A small model's scan runs torch on one thread with batches side by side (--threads 0); once it
    returns, the process is as before (what once made a later test's rounding depend on test order)."""
    from conftest import FAST_SCAN

    from dynamics.scan.config import ScanConfig
    from dynamics.scan.driver import run_scan

    before = (torch.get_num_threads(), cpu_threads.cpu_policy(), cpu_threads.batch_workers())
    config = ScanConfig(model=str(tiny_suite), out=str(tmp_path / "t.zarr"), steps="8", threads=0, **FAST_SCAN)
    assert run_scan(config).done == [8]
    assert (torch.get_num_threads(), cpu_threads.cpu_policy(), cpu_threads.batch_workers()) == before
