"""BLiMP loading (real release files, a hub-shaped source) and accuracy aggregation."""

import errno
import json
import re
from collections import Counter

import datasets
import numpy as np
import pytest

from checkpoints import hub_status
from dynamics.errors import UserInputError
from dynamics.syntax import hub_data
from dynamics.syntax.blimp import (
    BLIMP_PARADIGMS,
    blimp_accuracy,
    check_blimp_source,
    hub_blimp_skip_reason,
    load_blimp,
)
from dynamics.syntax.hub_data import HubDataUnavailable
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


@pytest.fixture
def online(monkeypatch):
    """The Hub as if reachable: no offline variables, a fresh run; returns the reachability requests made."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    hub_status.forget()
    asked = []
    monkeypatch.setattr(hub_data, "_ask_the_hub", lambda: asked.append("HEAD"))
    yield asked
    hub_status.forget()


def test_hub_and_directory_records_are_normalized_alike(tmp_path, monkeypatch, online):
    rows = _release_rows("wh_island", 3)
    (tmp_path / "wh_island.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    hub_rows = [{**{k: v for k, v in r.items() if k != "pairID"}, "pair_id": int(r["pairID"])} for r in rows]
    calls = []

    def fake_load_dataset(path, name, split, cache_dir=None):
        calls.append((path, name, split))
        return hub_rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    from_hub = load_blimp("hub", paradigms=["wh_island"])
    assert calls == [("nyu-mll/blimp", "wh_island", "train")] and online == ["HEAD"]
    assert from_hub == load_blimp(tmp_path, paradigms=["wh_island"])
    assert [p.pair_id for p in from_hub] == [0, 1, 2] and from_hub[2].good == "Good sentence 2."


def counting_load_dataset(monkeypatch):
    """``datasets.load_dataset`` replaced by one that counts its calls and finds no network."""
    calls = []

    def no_network(path, name, split, cache_dir=None):
        calls.append(name)
        raise ConnectionError("Couldn't reach 'nyu-mll/blimp' on the Hub ([Errno -2] Name or service not known)")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    return calls


def test_offline_hub_is_not_even_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    calls = counting_load_dataset(monkeypatch)
    monkeypatch.setattr(hub_data, "_ask_the_hub", lambda: calls.append("HEAD"))
    with pytest.raises(HubDataUnavailable, match=r"^BLiMP from the Hub \(nyu-mll/blimp\): the Hub is offline") as info:
        load_blimp("hub", paradigms=["adjunct_island"], cache_dir=tmp_path)
    assert "\n" not in str(info.value) and calls == []


def test_a_hub_without_network_is_tried_once_per_run(monkeypatch, online):
    calls = counting_load_dataset(monkeypatch)
    with pytest.raises(HubDataUnavailable, match=r"could not load BLiMP paradigm 'adjunct_island' from the Hub"):
        load_blimp("hub", paradigms=["adjunct_island", "wh_island"])
    assert calls == ["adjunct_island"] and online == ["HEAD"]
    assert "Name or service not known" in hub_status.unreachable_reason()
    for _ in range(3):  # every later request of the run gives up at once, asking nothing
        with pytest.raises(HubDataUnavailable, match=r"the Hub cannot be reached \(ConnectionError: "):
            load_blimp("hub", paradigms=["wh_island"])
    assert calls == ["adjunct_island"] and online == ["HEAD"]


def test_a_failed_reachability_request_asks_datasets_nothing(monkeypatch, online):
    calls = counting_load_dataset(monkeypatch)

    def refused():
        raise OSError(errno.ECONNREFUSED, "Connection refused")

    monkeypatch.setattr(hub_data, "_ask_the_hub", refused)
    with pytest.raises(
        HubDataUnavailable,
        match=r"the Hub cannot be reached \(ConnectionRefusedError: \[Errno 111\] Connection refused",
    ):
        load_blimp("hub")
    assert calls == []


def test_a_local_suite_asks_the_hub_nothing_unless_given_a_directory():
    reason = hub_blimp_skip_reason("hub", "local_suite")
    assert reason is not None and "pass --blimp DIR" in reason
    assert hub_blimp_skip_reason("hub", "hub") is None and hub_blimp_skip_reason("/data/blimp", "local_suite") is None


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
        UserInputError,
        match=r"wh_island.jsonl:1: missing BLiMP field\(s\) "
        r"linguistics_term$",
    ):
        load_blimp(tmp_path, paradigms=["wh_island"])


GOOD_LINE = json.dumps(_release_rows("wh_island", 1)[0]).encode()


@pytest.mark.parametrize(
    "content, message",
    [
        (
            GOOD_LINE + b"\n" + GOOD_LINE.replace(b"Good", b"G\xe9od") + b"\n",
            r":2: not UTF-8 text \(byte \d+ of the line\)",
        ),
        (GOOD_LINE + b"\n\n" + GOOD_LINE[:-5] + b"\n", r":3: not a JSON line \("),
        (b"[1, 2]\n", r":1: a list, expected a JSON object with the fields sentence_good, sentence_bad, UID"),
        (
            GOOD_LINE.replace(b'"Good sentence 0."', b'"  "') + b"\n",
            r":1: sentence_good '  ': expected a non-empty sentence",
        ),
        (
            GOOD_LINE.replace(b'"Bad sentence 0."', b"null") + b"\n",
            r":1: sentence_bad None: expected a non-empty sentence",
        ),
        (GOOD_LINE.replace(b'"pairID": "0"', b'"pairID": "x7"') + b"\n", r":1: pairID 'x7': expected a whole number"),
        (
            GOOD_LINE.replace(b'"UID": "wh_island"', b'"UID": "adjunct_island"') + b"\n",
            r":1: UID 'adjunct_island' differs",
        ),
        (b"", r": no BLiMP pairs \(the file is empty\)"),
        (b"\n  \n", r": no BLiMP pairs \(the file is empty\)"),
    ],
    ids=[
        "invalid UTF-8",
        "not JSON",
        "not an object",
        "blank sentence",
        "null sentence",
        "bad pair id",
        "wrong UID",
        "empty file",
        "blank lines only",
    ],
)
def test_every_defect_of_a_release_file_is_one_line_naming_file_and_line(tmp_path, content, message):
    (tmp_path / "wh_island.jsonl").write_bytes(content)
    for check in (
        lambda: load_blimp(tmp_path, ["wh_island"]),
        lambda: check_blimp_source(str(tmp_path), ["wh_island"]),
    ):
        with pytest.raises(UserInputError, match=re.escape(str(tmp_path / "wh_island.jsonl")) + message) as info:
            check()
        assert "\n" not in str(info.value)


def test_a_directory_is_checked_file_by_file_and_read_again_when_a_file_changes(tmp_path):
    with pytest.raises(UserInputError, match=r"--blimp '.*' has no adjunct_island.jsonl \(1 of 2 paradigms missing\)"):
        (tmp_path / "wh_island.jsonl").write_text(json.dumps(_release_rows("wh_island", 1)[0]) + "\n")
        check_blimp_source(str(tmp_path), ["wh_island", "adjunct_island"])
    with pytest.raises(UserInputError, match=r"--blimp '.*nope' is neither hub nor a directory"):
        check_blimp_source(str(tmp_path / "nope"), ["wh_island"])
    check_blimp_source("hub", ["wh_island"])  # the Hub is checked when it is loaded
    assert len(load_blimp(tmp_path, ["wh_island"])) == 1
    (tmp_path / "wh_island.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _release_rows("wh_island", 4)))
    assert len(load_blimp(tmp_path, ["wh_island"])) == 4


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
