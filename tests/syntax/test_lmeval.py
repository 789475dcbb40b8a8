"""lm-eval's per-example outcomes: read from its sample log, they recompute each task's stored accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.study import write_lm_eval_task

from dynamics.evaluate.phases import lmeval_items_dataset
from dynamics.syntax.lmeval import evaluate_task_outcomes, example_outcomes, lm_eval_installed


def test_example_outcomes_keep_the_none_filter_in_doc_order():
    samples = [
        {"doc_id": 2, "filter": "none", "acc": 1.0, "acc_norm": 0.0},
        {"doc_id": 0, "filter": "none", "acc": 0.0},
        {"doc_id": 0, "filter": "strict-match", "acc": 1.0},  # another filter's copy of doc 0
        {"doc_id": 1, "filter": "none", "acc": 1.0},
    ]
    docs, correct = example_outcomes(samples)
    assert docs.tolist() == [0, 1, 2] and correct.tolist() == [0.0, 1.0, 1.0] and correct.dtype == np.float32
    assert example_outcomes([{"doc_id": 0, "filter": "none", "exact_match": 1.0}]) is None  # no acc: no items
    assert example_outcomes([]) is None


def test_items_line_up_task_after_task_with_their_doc_ids():
    items = {"b": (np.array([0, 1]), np.array([1.0, 0.0])), "a": (np.array([3]), np.array([1.0]))}
    ds = lmeval_items_dataset(items, ["a", "skipped", "b"])
    assert ds["lmeval_item_correct"].values.tolist() == [1.0, 1.0, 0.0]
    assert ds["lmeval_item_task"].values.tolist() == ["a", "b", "b"]
    assert ds["lmeval_item_doc"].values.tolist() == [3, 0, 1]
    assert ds["lmeval_item_correct"].dtype == np.float32 and ds["lmeval_item_correct"].attrs["long_name"]


@pytest.mark.skipif(not lm_eval_installed(), reason="lm-eval is not installed")
def test_per_example_outcomes_recompute_the_task_accuracy(study_data, tmp_path):
    from study.test_study import tiny_model_from
    from transformers import AutoTokenizer

    docs = write_lm_eval_task(tmp_path / "tasks", docs=9)
    model = tiny_model_from(study_data / "llama")
    tokenizer = AutoTokenizer.from_pretrained(study_data / "llama")
    outcomes = evaluate_task_outcomes(model, tokenizer, ["tiny_mc"], 7, include_path=str(tmp_path / "tasks"))
    doc_ids, correct = outcomes.items["tiny_mc"]
    assert doc_ids.tolist() == list(range(7)) and set(correct.tolist()) <= {0.0, 1.0} and len(docs) == 9
    assert float(np.mean(correct, dtype=np.float64)) == pytest.approx(outcomes.metrics["tiny_mc"]["acc"], abs=1e-12)


def test_examples_that_do_not_recompute_the_accuracy_are_left_out_with_a_warning(monkeypatch, caplog):
    samples = [{"doc_id": i, "filter": "none", "acc": float(i < 2)} for i in range(4)]  # mean 0.5
    results = {
        "results": {"ok": {"acc,none": 0.5, "acc_norm,none": 0.25}, "odd": {"acc,none": 0.75}},
        "samples": {"ok": samples, "odd": samples},
    }
    monkeypatch.setattr("dynamics.syntax.lmeval._simple_evaluate", lambda *args: results)
    with caplog.at_level("WARNING", logger="dynamics.syntax.lmeval"):
        outcomes = evaluate_task_outcomes(None, None, ["ok", "odd"], 4)
    assert list(outcomes.items) == ["ok"] and outcomes.items["ok"][1].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert outcomes.metrics["odd"]["acc"] == 0.75 and np.isnan(outcomes.metrics["odd"]["acc_norm"])
    assert [r.getMessage() for r in caplog.records] == [
        "lm-eval task odd: its 4 examples' mean acc 0.5 is not its acc 0.75; its per-example outcomes are not stored"
    ]
