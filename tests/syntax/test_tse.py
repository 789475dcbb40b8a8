"""The TSE generator against ../shared/specs/tse.md, its export, loaders and sampling."""

import json
import pickle
import re
from collections import OrderedDict
from itertools import product

import numpy as np
import pytest

from dynamics.errors import DynamicsError, UserInputError
from dynamics.syntax.pairs import MinimalPair, spread_evenly
from dynamics.syntax.tse import TSE_CASES, flatten_tse, generate_tse, sample_tse, tse_pairs
from dynamics.syntax.tse_io import export_tse, load_refining_tse_jsonl, load_tse_jsonl, load_tse_pickles

# The specification's tables: case -> (pairs, pairs per sub-case), in table order.
SPEC = {
    "simple_agrmt": (140, 70),
    "sent_comp": (1_680, 420),
    "vp_coord": (840, 420),
    "long_vp_coord": (400, 200),
    "prep_anim": (16_800, 4_200),
    "prep_inanim": (5_040, 1_260),
    "subj_rel": (11_200, 2_800),
    "obj_rel_across_anim": (11_200, 2_800),
    "obj_rel_within_anim": (11_200, 2_800),
    "obj_rel_across_inanim": (10_080, 2_520),
    "obj_rel_within_inanim": (10_080, 2_520),
    "obj_rel_no_comp_across_anim": (11_200, 2_800),
    "obj_rel_no_comp_within_anim": (11_200, 2_800),
    "obj_rel_no_comp_across_inanim": (10_080, 2_520),
    "obj_rel_no_comp_within_inanim": (10_080, 2_520),
    "simple_reflexives": (280, 140),
    "reflexive_sent_comp": (3_360, 840),
    "reflexives_across": (22_400, 5_600),
    "simple_npi_anim": (120, 60),
    "simple_npi_inanim": (144, 72),
    "npi_across_anim": (4_800, 2_400),
    "npi_across_inanim": (5_760, 2_880),
}
# Matched and varied preterminals from the spec's template/agree/vary columns.
NAMING = {
    "simple_agrmt": ("MS_MV", ""),
    "sent_comp": ("MS_MV", "BS"),
    "vp_coord": ("MS_MV_MV", ""),
    "long_vp_coord": ("MS_LMV_LMV", ""),
    "prep_anim": ("MS_MV", "ES"),
    "prep_inanim": ("IS_IV", "ES"),
    "subj_rel": ("MS_EV_MV", "ES"),
    "obj_rel_across_anim": ("MS_MV", "ES_EV"),
    "obj_rel_within_anim": ("ES_EV", "MS_MV"),
    "obj_rel_across_inanim": ("IS_IV", "ES_EV"),
    "obj_rel_within_inanim": ("ES_EV", "IS_IV"),
    "obj_rel_no_comp_across_anim": ("MS_MV", "ES_EV"),
    "obj_rel_no_comp_within_anim": ("ES_EV", "MS_MV"),
    "obj_rel_no_comp_across_inanim": ("IS_IV", "ES_EV"),
    "obj_rel_no_comp_within_inanim": ("ES_EV", "IS_IV"),
    "simple_reflexives": ("MS_ANPHR", ""),
    "reflexive_sent_comp": ("MS_ANPHR", "BS"),
    "reflexives_across": ("MS_ANPHR", "ES_EV"),
}
EXAMPLES = [
    ("simple_agrmt", "plur_MS_MV", ("the authors laugh", "the authors laughs")),
    (
        "prep_anim",
        "sing_MS_MV_plur_ES",
        ("the author next to the guards laughs", "the author next to the guards laugh"),
    ),
    (
        "subj_rel",
        "plur_MS_EV_MV_sing_ES",
        ("the authors that like the guard laugh", "the authors that like the guard laughs"),
    ),
    (
        "obj_rel_within_anim",
        "plur_ES_EV_sing_MS_MV",
        ("the author that the guards like laughs", "the author that the guards likes laughs"),
    ),
    (
        "reflexive_sent_comp",
        "sing_MS_ANPHR_plur_BS",
        ("the mechanics said the author hurt himself", "the mechanics said the author hurt themselves"),
    ),
    ("vp_coord", "sing_MS_MV_MV", ("the author laughs and swims", "the author laughs and swim")),
    (
        "long_vp_coord",
        "plur_MS_LMV_LMV",
        (
            "the authors know many different foreign languages and like to watch television shows",
            "the authors know many different foreign languages and likes to watch television shows",
        ),
    ),
    (
        "simple_npi_anim",
        "past",
        (
            "no authors have ever been popular",
            "the authors have ever been popular",
            "most authors have ever been popular",
        ),
    ),
    (
        "npi_across_inanim",
        "future",
        (
            "no movies that the guards like will ever be seen",
            "the movies that no guards like will ever be seen",
            "most movies that the guards like will ever be seen",
        ),
    ),
]


@pytest.fixture(scope="module")
def tse():
    return generate_tse()


def test_cases_counts_and_total_follow_the_spec(tse):
    assert TSE_CASES == tuple(SPEC) and len(TSE_CASES) == 22
    assert list(tse) == list(SPEC)
    assert {case: sum(map(len, subs.values())) for case, subs in tse.items()} == {
        case: total for case, (total, _) in SPEC.items()
    }
    assert sum(len(items) for subs in tse.values() for items in subs.values()) == 158_084
    for case, (_, per_subcase) in SPEC.items():
        assert {len(items) for items in tse[case].values()} == {per_subcase}, case


def test_subcase_names_follow_the_convention(tse):
    for case, (matched, varied) in NAMING.items():
        expected = (
            [f"{n}_{matched}_{a}_{varied}" for n in ("sing", "plur") for a in ("sing", "plur")]
            if varied
            else [f"sing_{matched}", f"plur_{matched}"]
        )
        assert list(tse[case]) == expected, case
    for case in ("simple_npi_anim", "simple_npi_inanim", "npi_across_anim", "npi_across_inanim"):
        assert list(tse[case]) == ["past", "future"]


@pytest.mark.parametrize(("case", "subcase", "item"), EXAMPLES)
def test_spec_examples_are_generated(tse, case, subcase, item):
    assert item in tse[case][subcase]
    other = [s for s in tse[case] if s != subcase]
    assert all(item not in tse[case][s] for s in other)


def test_sentences_are_clean_and_pairs_minimal(tse):
    word_re = re.compile(r"^[a-z]+( [a-z]+)*$")
    for case, subs in tse.items():
        for items in subs.values():
            assert len(set(items)) == len(items), case
            for item in items:
                assert all(word_re.match(s) for s in item), item
                assert len(set(item)) == len(item), item
                good, bad = item[0].split(" "), item[-1].split(" ")
                assert len(good) == len(bad)
                differing = [i for i, (g, b) in enumerate(zip(good, bad)) if g != b]
                assert len(differing) == 1, item
                g, b = good[differing[0]], bad[differing[0]]
                if len(item) == 3:  # NPI: the licensor is swapped, nothing else
                    assert differing == [0] and (g, b) in {("no", "most"), ("few", "many")}
                else:  # agreement: only the verb's or the anaphor's number flips
                    assert {g, b} == {"is", "are"} or g + "s" == b or b + "s" == g or "themselves" in {g, b}, item
                    assert g.rstrip("s") not in NOUNS, item


# ----------------------------------------------------------- an independent generator
SING_PLUR = {  # singular -> plural, written out by hand for the words these checks use
    "author": "authors",
    "pilot": "pilots",
    "guard": "guards",
    "taxi driver": "taxi drivers",
    "laughs": "laugh",
    "swims": "swim",
    "smiles": "smile",
    "is tall": "are tall",
    "is old": "are old",
    "is young": "are young",
    "is short": "are short",
    "likes": "like",
    "admires": "admire",
    "hates": "hate",
    "loves": "love",
}
MS = ["author", "pilot", "surgeon", "farmer", "manager", "customer", "officer", "teacher", "senator", "consultant"]
ES = ["guard", "chef", "architect", "skater", "dancer", "minister", "taxi driver", "assistant", "executive", "parent"]
MV = ["laughs", "swims", "smiles", "is tall", "is old", "is young", "is short"]
EV = ["likes", "admires", "hates", "loves"]
P = ["next to", "behind", "in front of", "near", "to the side of", "across from"]


NOUNS = {
    *MS,
    *ES,
    "driver",
    "movie",
    "book",
    "game",
    "song",
    "picture",
    "painting",
    "novel",
    "poem",
    "show",
    "mechanic",
    "banker",
}


def plural(word):
    return SING_PLUR.get(word, word + "s")


def test_prep_anim_matches_an_independent_expansion(tse):
    for subject, attractor in product(("sing", "plur"), repeat=2):
        expected = []
        for ms, p, es, mv in product(MS, P, ES, MV):
            s = ms if subject == "sing" else plural(ms)
            e = es if attractor == "sing" else plural(es)
            good_v, bad_v = (mv, plural(mv)) if subject == "sing" else (plural(mv), mv)
            expected.append((f"the {s} {p} the {e} {good_v}", f"the {s} {p} the {e} {bad_v}"))
        assert tse["prep_anim"][f"{subject}_MS_MV_{attractor}_ES"] == expected


def test_obj_rel_within_anim_matches_an_independent_expansion(tse):
    for subject, attractor in product(("sing", "plur"), repeat=2):
        expected = []
        for ms, es, ev, mv in product(MS, ES, EV, MV):
            m, v = (ms, mv) if attractor == "sing" else (plural(ms), plural(mv))
            e = es if subject == "sing" else plural(es)
            good_v, bad_v = (ev, plural(ev)) if subject == "sing" else (plural(ev), ev)
            expected.append((f"the {m} that the {e} {good_v} {v}", f"the {m} that the {e} {bad_v} {v}"))
        assert tse["obj_rel_within_anim"][f"{subject}_ES_EV_{attractor}_MS_MV"] == expected


def test_vp_coord_pairs_two_different_verb_phrases(tse):
    for subject in ("sing", "plur"):
        expected = []
        for ms, (i, v1), (j, v2) in product(MS, enumerate(MV), enumerate(MV)):
            if i == j:
                continue
            if subject == "sing":
                expected.append((f"the {ms} {v1} and {v2}", f"the {ms} {v1} and {plural(v2)}"))
            else:
                s, w1 = plural(ms), plural(v1)
                expected.append((f"the {s} {w1} and {plural(v2)}", f"the {s} {w1} and {v2}"))
        assert tse["vp_coord"][f"{subject}_MS_MV_MV"] == expected


def test_npi_across_anim_matches_an_independent_expansion(tse):
    licensors = [("no", "the", "most"), ("few", "some", "many")]
    past = ["been popular", "been famous", "had children"]
    future = ["be popular", "be famous", "have children"]
    drivers = {"taxi driver": "drivers"}
    for tense, aux, phrases in (("past", "have", past), ("future", "will", future)):
        expected = []
        for (no, _, most), ms, es, ev, vp in product(licensors, MS, ES, EV, phrases):
            m, e, v = plural(ms), drivers.get(es, plural(es)), plural(ev)
            rest = f"{v} {aux} ever {vp}"
            expected.append(
                (f"{no} {m} that the {e} {rest}", f"the {m} that {no} {e} {rest}", f"{most} {m} that the {e} {rest}")
            )
        assert tse["npi_across_anim"][tense] == expected


# ------------------------------------------------------------------- API behaviour
def test_generation_is_deterministic_and_returns_fresh_copies():
    first = generate_tse(["simple_agrmt"])
    first["simple_agrmt"]["sing_MS_MV"].clear()
    assert generate_tse(["simple_agrmt"]) == generate_tse(["simple_agrmt"])
    assert len(generate_tse(["simple_agrmt"])["simple_agrmt"]["sing_MS_MV"]) == 70


def test_unknown_case_is_one_clear_line():
    with pytest.raises(UserInputError, match=r"unknown TSE case 'prep_animal'") as info:
        generate_tse(["prep_animal"])
    assert "\n" not in str(info.value) and "prep_anim" in str(info.value)


def test_flat_view_keeps_order_ids_and_intrusive(tse):
    pairs = tse_pairs(["simple_agrmt", "simple_npi_anim"])
    assert len(pairs) == 140 + 120
    assert pairs[0] == MinimalPair("the author laughs", "the author laugh", "simple_agrmt", "sing_MS_MV", 0)
    npi = [p for p in pairs if p.case == "simple_npi_anim"]
    assert npi[0].intrusive == "the authors have ever been popular"
    assert npi[0].bad == "most authors have ever been popular"
    assert npi[0].uid == "simple_npi_anim/past/0" and npi[-1].pair_id == 59
    assert flatten_tse(tse) == tse_pairs()


# --------------------------------------------------------------- export and loaders
@pytest.mark.parametrize("fmt", ["pickle", "jsonl"])
def test_export_then_load_round_trips(tmp_path, tse, fmt):
    paths = export_tse(tmp_path / "out", format=fmt)
    assert [p.name for p in paths] == [f"{case}.{fmt}" for case in TSE_CASES]
    loaded = (load_tse_pickles if fmt == "pickle" else load_tse_jsonl)(tmp_path / "out")
    assert loaded == tse and list(loaded) == list(tse)
    assert all(list(loaded[c]) == list(tse[c]) for c in tse)


def test_export_layouts(tmp_path):
    export_tse(tmp_path, format="pickle", cases=["simple_npi_anim"])
    with (tmp_path / "simple_npi_anim.pickle").open("rb") as f:
        content = pickle.load(f)
    assert list(content) == ["past", "future"] and content["past"][0] == EXAMPLES[7][2]
    export_tse(tmp_path, format="jsonl", cases=["simple_agrmt", "simple_npi_anim"])
    line = json.loads((tmp_path / "simple_agrmt.jsonl").read_text().splitlines()[0])
    assert line == {
        "sentence_good": "the author laughs",
        "sentence_bad": "the author laugh",
        "case": "simple_agrmt",
        "subcase": "sing_MS_MV",
    }
    npi = json.loads((tmp_path / "simple_npi_anim.jsonl").read_text().splitlines()[0])
    assert npi["sentence_intrusive"] == "the authors have ever been popular"


def test_export_refuses_to_overwrite_different_files(tmp_path):
    cases = ["simple_agrmt", "vp_coord"]
    export_tse(tmp_path, cases=cases)
    export_tse(tmp_path, cases=cases)  # identical content: accepted without overwrite
    target = tmp_path / "vp_coord.pickle"
    target.write_bytes(pickle.dumps({"x": [("a", "b")]}))
    with pytest.raises(UserInputError, match="vp_coord.pickle already exists") as info:
        export_tse(tmp_path, cases=cases)
    assert "\n" not in str(info.value)
    assert load_tse_pickles(tmp_path)["vp_coord"] == {"x": [("a", "b")]}
    export_tse(tmp_path, cases=cases, overwrite=True)
    assert load_tse_pickles(tmp_path) == generate_tse(cases)
    with pytest.raises(UserInputError, match="format 'csv'"):
        export_tse(tmp_path, format="csv")


def test_pickle_loader_reads_old_protocols_and_rejects_classes(tmp_path):
    data = {"sing_MS_MV": [("the author laughs", "the author laugh")]}
    (tmp_path / "simple_agrmt.pickle").write_bytes(pickle.dumps(data, protocol=0))
    (tmp_path / "mine.pickle").write_bytes(pickle.dumps({"s": [["a b", "a c"]]}, protocol=2))
    # what Python 2's pickle.dump(protocol=2) writes for {'past': [('a', 'b')]} (byte strings)
    py2 = b"\x80\x02}q\x00U\x04pastq\x01]q\x02U\x01aU\x01b\x86q\x03as."
    (tmp_path / "simple_npi_anim.pickle").write_bytes(py2)
    loaded = load_tse_pickles(tmp_path)
    assert list(loaded) == ["simple_agrmt", "simple_npi_anim", "mine"]
    assert loaded["simple_agrmt"] == data and loaded["mine"] == {"s": [("a b", "a c")]}
    assert loaded["simple_npi_anim"] == {"past": [("a", "b")]}
    (tmp_path / "evil.pickle").write_bytes(pickle.dumps(OrderedDict(s=[("a", "b")])))
    with pytest.raises(DynamicsError, match=r"evil.pickle is not a readable TSE pickle"):
        load_tse_pickles(tmp_path)
    (tmp_path / "evil.pickle").write_bytes(pickle.dumps({"s": [("a",)]}))
    with pytest.raises(DynamicsError, match=r"evil.pickle \[s\]: expected \(good, bad\)"):
        load_tse_pickles(tmp_path)


def test_loaders_reject_missing_or_empty_directories(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        load_tse_pickles(tmp_path / "nope")
    with pytest.raises(UserInputError, match=r"no TSE pickle files \(\*\.pickle\)"):
        load_tse_pickles(tmp_path)
    with pytest.raises(UserInputError, match=r"no TSE JSONL files"):
        load_tse_jsonl(tmp_path)


def test_refining_tse_jsonl(tmp_path):
    rows = [
        {"sentence_good": "the author laughs", "sentence_bad": "the author laugh", "label": "sing_MS_MV"},
        {"sentence_good": "the authors laugh", "sentence_bad": "the authors laughs", "label": "plur_MS_MV"},
    ]
    path = tmp_path / "simple_agrmt_all.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = {
        "simple_agrmt": {
            "sing_MS_MV": [("the author laughs", "the author laugh")],
            "plur_MS_MV": [("the authors laugh", "the authors laughs")],
        }
    }
    assert load_refining_tse_jsonl(tmp_path) == expected
    assert load_refining_tse_jsonl(path) == expected
    path.write_text(json.dumps({"sentence_good": "a", "label": "x"}) + "\n")
    with pytest.raises(
        DynamicsError,
        match=r"simple_agrmt_all.jsonl:1: missing field\(s\) "
        r"sentence_bad$",
    ):
        load_refining_tse_jsonl(path)
    path.write_text("{not json\n")
    with pytest.raises(DynamicsError, match=r"simple_agrmt_all.jsonl:1: not a JSON line"):
        load_refining_tse_jsonl(path)


# ----------------------------------------------------------------------- sampling
def test_sample_spreads_evenly_over_subcases(tse):
    sample = sample_tse(tse, per_case=10, seed=3)
    assert list(sample) == list(tse)
    for case, subs in sample.items():
        sizes = [len(items) for items in subs.values()]
        assert sum(sizes) == 10 and max(sizes) - min(sizes) <= 1, case
        assert list(subs) == list(tse[case])
        for sub, items in subs.items():
            positions = [tse[case][sub].index(item) for item in items]
            assert positions == sorted(set(positions))  # a subset, in original order
    assert sorted(len(v) for v in sample["prep_anim"].values()) == [2, 2, 3, 3]


def test_sample_is_seeded_stable_and_keeps_small_cases(tse):
    a = sample_tse(tse, per_case=1000, seed=0)
    assert a == sample_tse(tse, per_case=1000, seed=0)
    assert a != sample_tse(tse, per_case=1000, seed=1)
    assert a["simple_agrmt"] == tse["simple_agrmt"] and a["vp_coord"] == tse["vp_coord"]
    assert {len(v) for v in a["sent_comp"].values()} == {250}
    assert sum(len(items) for subs in a.values() for items in subs.values()) == (
        140 + 840 + 400 + 280 + 120 + 144 + 16 * 1000
    )
    alone = sample_tse({"prep_anim": tse["prep_anim"]}, per_case=1000, seed=0)
    assert alone["prep_anim"] == a["prep_anim"]  # independent of the other cases
    flat = sample_tse(flatten_tse(tse), per_case=1000, seed=0)
    assert [(p.good, p.bad) for p in flat] == [
        (item[0], item[-1]) for subs in a.values() for items in subs.values() for item in items
    ]
    with pytest.raises(UserInputError, match="per_case must be a positive integer, got 0"):
        sample_tse(tse, per_case=0)


def test_spread_evenly_fills_small_groups_first():
    rng = np.random.default_rng(0)
    assert spread_evenly([1, 10, 10], 9, rng) == [1, 4, 4]
    assert spread_evenly([1, 10, 10], 100, rng) == [1, 10, 10]
    for _ in range(50):
        sizes = rng.integers(0, 12, size=rng.integers(1, 7)).tolist()
        total = int(rng.integers(0, 60))
        quota = spread_evenly(sizes, total, rng)
        assert sum(quota) == min(total, sum(sizes))
        assert all(0 <= q <= s for q, s in zip(quota, sizes))
        open_quota = [q for q, s in zip(quota, sizes) if q < s]
        # a group below its size never has 2+ fewer draws than any other group
        assert all(q >= max(quota) - 1 for q in open_quota)
