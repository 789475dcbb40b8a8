"""BLiMP loading (real release files, a hub-shaped source) and accuracy aggregation."""

import json
from collections import Counter

import datasets
import numpy as np
import pytest

from dynamics.errors import DynamicsError, UserInputError
from dynamics.syntax.blimp import BLIMP_PARADIGMS, blimp_accuracy, load_blimp
from dynamics.syntax.pairs import MinimalPair

# Calls models: also run against the lowest transformers the project declares (.ci/run).
pytestmark = pytest.mark.models


def test_all_67000_real_pairs_load_with_their_fields(shared_data):
    directory = shared_data / "blimp"
    pairs = load_blimp(directory)
    assert len(pairs) == 67_000
    assert sorted(BLIMP_PARADIGMS) == sorted(p.stem for p in directory.glob("*.jsonl"))
    assert len(set(BLIMP_PARADIGMS)) == 67
    assert Counter(p.case for p in pairs) == {name: 1000 for name in BLIMP_PARADIGMS}
    assert [p.case for p in pairs[::1000]] == list(BLIMP_PARADIGMS)
    terms = Counter(p.linguistics_term for p in pairs[::1000])
    assert len(terms) == 13
    assert terms["island_effects"] == 8 and terms["anaphor_agreement"] == 2
    assert {p.field for p in pairs} >= {"syntax", "morphology", "semantics", "syntax_semantics"}
    for i, pair in enumerate(pairs):
        assert pair.good and pair.bad
        assert pair.pair_id == i % 1000 and pair.subcase == "" and pair.intrusive is None
    # the release itself has 7 pairs whose two sentences are identical; they are kept
    assert [(p.case, p.pair_id) for p in pairs if p.good == p.bad] == [
        ("passive_1", 324),
        ("passive_1", 810),
        ("principle_A_case_2", 105),
        ("principle_A_case_2", 287),
        ("principle_A_case_2", 372),
        ("principle_A_case_2", 816),
        ("principle_A_case_2", 967),
    ]
    first = json.loads((directory / "adjunct_island.jsonl").open().readline())
    assert pairs[0] == MinimalPair(
        first["sentence_good"],
        first["sentence_bad"],
        "adjunct_island",
        pair_id=0,
        linguistics_term="island_effects",
        field="syntax",
    )


def test_paradigm_subset_keeps_the_requested_order(shared_data):
    pairs = load_blimp(shared_data / "blimp", paradigms=["wh_island", "adjunct_island"])
    assert len(pairs) == 2000
    assert pairs[0].case == "wh_island" and pairs[-1].case == "adjunct_island"


def _release_rows(paradigm, n):
    return [
        {
            "sentence_good": f"Good sentence {i}.",
            "sentence_bad": f"Bad sentence {i}.",
            "field": "syntax",
            "linguistics_term": "island_effects",
            "UID": paradigm,
            "simple_LM_method": True,
            "pairID": str(i),
        }
        for i in range(n)
    ]


def test_hub_and_directory_records_are_normalized_alike(tmp_path, monkeypatch):
    rows = _release_rows("wh_island", 3)
    (tmp_path / "wh_island.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    hub_rows = [{**{k: v for k, v in r.items() if k != "pairID"}, "pair_id": int(r["pairID"])} for r in rows]
    calls = []

    def fake_load_dataset(path, name, split, cache_dir=None):
        calls.append((path, name, split))
        return hub_rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    from_hub = load_blimp("hub", paradigms=["wh_island"])
    assert calls == [("nyu-mll/blimp", "wh_island", "train")]
    assert from_hub == load_blimp(tmp_path, paradigms=["wh_island"])
    assert [p.pair_id for p in from_hub] == [0, 1, 2] and from_hub[2].good == "Good sentence 2."


def test_offline_hub_fails_with_one_line_pointing_to_a_directory(tmp_path):
    with pytest.raises(
        DynamicsError,
        match=r"could not load BLiMP paradigm 'adjunct_island' "
        r"from the Hub .*local directory",
    ) as info:
        load_blimp("hub", paradigms=["adjunct_island"], cache_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_bad_sources_and_records_are_reported(tmp_path):
    with pytest.raises(UserInputError, match="unknown BLiMP paradigm 'wh_islands'"):
        load_blimp(tmp_path, paradigms=["wh_islands"])
    with pytest.raises(UserInputError, match="neither 'hub' nor a directory"):
        load_blimp(tmp_path / "missing")
    with pytest.raises(UserInputError, match=r"wh_island.jsonl not found"):
        load_blimp(tmp_path, paradigms=["wh_island"])
    row = _release_rows("wh_island", 1)[0]
    del row["linguistics_term"]
    (tmp_path / "wh_island.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(
        DynamicsError,
        match=r"wh_island.jsonl:1: missing BLiMP field\(s\) "
        r"linguistics_term$",
    ):
        load_blimp(tmp_path, paradigms=["wh_island"])


def _pair(paradigm, term, i):
    return MinimalPair("g", "b", paradigm, pair_id=i, linguistics_term=term, field="syntax")


def test_accuracy_aggregates_by_hand():
    pairs = [
        _pair("p1", "A", 0),
        _pair("p1", "A", 1),
        _pair("p2", "A", 0),
        _pair("p2", "A", 1),
        _pair("p2", "A", 2),
        _pair("p3", "B", 0),
    ]
    correct = np.array([True, False, True, True, True, False])
    acc = blimp_accuracy(pairs, correct)
    assert acc.per_paradigm == {"p1": 0.5, "p2": 1.0, "p3": 0.0}
    # pooled over pairs: 4 of 5 in A, not the mean of paradigm means (0.75)
    assert acc.per_term == {"A": pytest.approx(0.8), "B": 0.0}
    assert acc.overall == pytest.approx(4 / 6) and acc.n_pairs == 6
    frame = acc.to_frame()
    assert frame.shape == (3 + 2 + 1, 3)
    assert frame.iloc[-1].tolist() == ["overall", "overall", pytest.approx(4 / 6)]
    assert frame[frame.level == "linguistics_term"].name.tolist() == ["A", "B"]


def test_accuracy_rejects_misaligned_or_non_boolean_input():
    pairs = [_pair("p1", "A", 0), _pair("p1", "A", 1)]
    with pytest.raises(UserInputError, match="correct has 3 values for 2 pairs"):
        blimp_accuracy(pairs, [True, False, True])
    with pytest.raises(UserInputError, match="1-d boolean array, got dtype float64"):
        blimp_accuracy(pairs, [0.3, -1.2])
