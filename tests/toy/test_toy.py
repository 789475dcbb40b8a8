"""The built-in model organism: corpus, tokenizer, schedule, a tiny suite end to end."""

from __future__ import annotations

import argparse
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from checkpoints.names import resolve_model
from checkpoints.source import open_source
from checkpoints.steps import PYTHIA_STEPS
from dynamics.config.options import add_config_arguments, config_from_args
from dynamics.errors import UserInputError
from dynamics.syntax.corpus import CorpusSpec, load_token_windows
from dynamics.syntax.tse import tse_pairs
from dynamics.toy.corpus import (
    ANIMATE_NOUNS,
    INANIMATE_NOUNS,
    INTRANSITIVE_VPS,
    PAST_TRANSITIVE_VERBS,
    generate_sentences,
    lexicon_words,
    plural,
    plural_verb,
    tse_sentences,
)
from dynamics.toy.suite import (
    EOS_TOKEN,
    HELDOUT_FILE,
    SPECIAL_TOKENS,
    SUITE_FILE,
    ToyConfig,
    build_tokenizer,
    build_toy_suite,
    checkpoint_steps,
    encode_stream,
    learning_rate_factor,
    vocabulary,
)

TINY = dict(
    hidden_size=16,
    layers=1,
    heads=2,
    context=16,
    batch_size=4,
    steps=6,
    checkpoint_every=4,
    sentences=300,
    heldout_sentences=20,
    threads=1,
    progress=False,
)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return generate_sentences(20_000, seed=0)


@pytest.fixture(scope="module")
def tse_words() -> set[str]:
    return {w for p in tse_pairs() for s in (p.good, p.bad, p.intrusive or "") for w in s.split()}


# ---------------------------------------------------------------------------- schedule
def test_schedule_has_pythias_shape() -> None:
    assert checkpoint_steps(143000, 1000) == list(PYTHIA_STEPS)
    assert checkpoint_steps(130, 50) == [0, 1, 2, 4, 8, 16, 32, 50, 100, 130]
    default = ToyConfig()
    steps = checkpoint_steps(default.steps, default.checkpoint_every)
    assert steps[0] == 0 and steps[-1] == default.steps and 20 <= len(steps) <= 30


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    config = ToyConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    factors = [learning_rate_factor(s, config) for s in range(1, 101)]
    assert factors[:10] == pytest.approx([s / 10 for s in range(1, 11)])
    assert factors[-1] == pytest.approx(0.1)
    assert factors[54] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # step 55: halfway
    assert all(a >= b for a, b in zip(factors[9:], factors[10:], strict=False))


# ---------------------------------------------------------------------------- corpus
def test_corpus_is_deterministic_for_a_seed(corpus: list[str]) -> None:
    assert generate_sentences(500, seed=0) == corpus[:500]
    assert generate_sentences(500, seed="0/train") == generate_sentences(500, seed="0/train")
    assert generate_sentences(500, seed=1) != corpus[:500]


def test_corpus_covers_every_tse_word_and_stays_in_the_lexicon(corpus: list[str], tse_words: set[str]) -> None:
    seen = {w for s in corpus for w in s.split(" ")}
    assert tse_words <= seen, sorted(tse_words - seen)
    assert seen <= lexicon_words(), sorted(seen - lexicon_words())
    assert all(s == s.lower() and "  " not in s and s.strip() == s for s in corpus)


def test_corpus_never_contains_a_held_out_or_ungrammatical_tse_sentence(corpus: list[str]) -> None:
    good = {p.good for p in tse_pairs()}
    not_good = {s for p in tse_pairs() for s in (p.bad, p.intrusive) if s}
    assert not set(corpus) & not_good  # the grammar makes no ungrammatical sentence
    overlap = set(corpus) & good
    assert overlap  # without exclusion the grammar does produce benchmark sentences...
    excluded = generate_sentences(20_000, seed=0, exclude=tse_sentences())
    assert not set(excluded) & (good | not_good)  # ...and the exclusion removes them
    assert len(excluded) == 20_000


def test_corpus_follows_agreement_reflexive_and_npi_rules(corpus: list[str]) -> None:
    singular = {n for n in (*ANIMATE_NOUNS, *INANIMATE_NOUNS) if " " not in n}
    plurals = {plural(n) for n in singular}
    intransitive_sg = {v for v in INTRANSITIVE_VPS if " " not in v}
    intransitive_pl = {plural_verb(v) for v in intransitive_sg}
    checked = {"agreement": 0, "reflexive": 0}
    for sentence in corpus:
        words = sentence.split(" ")
        if (
            len(words) == 3
            and words[0] == "the"
            and words[1] in singular | plurals
            and words[2] in (intransitive_sg | intransitive_pl)
        ):
            assert (words[1] in plurals) == (words[2] in intransitive_pl), sentence
            checked["agreement"] += 1
        if (
            len(words) == 4
            and words[0] == "the"
            and words[2] in PAST_TRANSITIVE_VERBS
            and words[3].endswith(("self", "selves"))
        ):
            assert (words[1] in plurals) == (words[3] == "themselves"), sentence
            checked["reflexive"] += 1
        if "ever" in words and "every" not in words:
            assert words[0] in ("no", "few"), sentence
    assert checked["agreement"] > 20 and checked["reflexive"] > 20
    licensed = [s for s in corpus if s.split(" ")[0] in ("no", "few") and re.search(r" (have|will) ", s)]
    assert 0 < sum(" ever " in s for s in licensed) < len(licensed)  # ever is optional where licensed
    assert any(re.search(r"^(the|most|many|some) \w+ that (no|few) ", s) for s in corpus)  # intrusive-like frames


def test_corpus_rejects_a_negative_count() -> None:
    with pytest.raises(UserInputError, match="sentence count -1"):
        generate_sentences(-1, seed=0)


# ---------------------------------------------------------------------------- tokenizer
def test_tokenizer_covers_tse_and_round_trips(tse_words: set[str]) -> None:
    tokenizer = build_tokenizer()
    vocab = tokenizer.get_vocab()
    assert tse_words <= set(vocab)
    assert [vocab[t] for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert tokenizer.bos_token == tokenizer.eos_token == EOS_TOKEN and tokenizer.pad_token_id == 1
    sentence = "the taxi drivers that the author likes are twenty three years old"
    ids = tokenizer(sentence, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(sentence.split()) and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == sentence
    assert tokenizer.convert_ids_to_tokens(ids) == sentence.split()
    # the training stream and the tokenizer agree, EOS included
    text = f"{EOS_TOKEN} the author laughs {EOS_TOKEN} no authors have ever been popular {EOS_TOKEN}"
    stream = encode_stream(
        ["the author laughs", "no authors have ever been popular"], {w: i for i, w in enumerate(vocabulary())}
    )
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == stream.tolist()
    assert tokenizer("purple", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]


# ---------------------------------------------------------------------------- the suite
@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("toy") / "suite"
    return build_toy_suite(out, ToyConfig(**TINY)), ToyConfig(**TINY)


def test_tiny_suite_has_the_schedule_and_loads(tiny_suite) -> None:
    out, config = tiny_suite
    schedule = checkpoint_steps(config.steps, config.checkpoint_every)
    assert schedule == [0, 1, 2, 4, 6]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(f"step{s}" for s in schedule)
    assert open_source(resolve_model(str(out))).available_steps() == schedule
    model = AutoModelForCausalLM.from_pretrained(out / "step6")
    tokenizer = AutoTokenizer.from_pretrained(out / "step0")
    assert model.config.model_type == "gpt_neox" and model.config.hidden_act == "gelu"
    assert model.config.intermediate_size == 4 * config.hidden_size == 64
    assert model.config.vocab_size == len(tokenizer) == len(vocabulary())
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.pad_token is not None
    sentence = "no taxi drivers that the authors like have ever been popular"
    assert tokenizer.decode(tokenizer(sentence, add_special_tokens=False)["input_ids"]) == sentence
    manifest = json.loads((out / SUITE_FILE).read_text())
    assert manifest["seed"] == 0 and manifest["checkpoint_steps"] == schedule
    assert manifest["config"]["hidden_size"] == 16 and manifest["corpus"]["train_sentences"] == 300
    assert set(manifest["heldout_loss"]) == {str(s) for s in schedule}


def test_heldout_text_tokenizes_like_training_and_its_loss_is_recorded(tiny_suite) -> None:
    out, config = tiny_suite
    tokenizer = AutoTokenizer.from_pretrained(out / "step6")
    lines = (out / HELDOUT_FILE).read_text().splitlines()
    assert len(lines) == config.heldout_sentences and all(line.startswith(EOS_TOKEN + " ") for line in lines)
    windows = load_token_windows(
        CorpusSpec(source=str(out / HELDOUT_FILE), window=config.context, token_budget=None), tokenizer
    )
    assert windows[0, 0] == tokenizer.eos_token_id and not (windows == tokenizer.unk_token_id).any()
    # the recorded held-out loss, recomputed independently from the saved step
    model = AutoModelForCausalLM.from_pretrained(out / "step6").eval()
    ids = tokenizer("".join(line + "\n" for line in lines), add_special_tokens=False)["input_ids"] + [0]
    n = (len(ids) - 1) // config.context
    nll = []
    with torch.no_grad():
        for w in range(n):
            chunk = torch.tensor([ids[w * config.context : (w + 1) * config.context + 1]])
            logits = model(input_ids=chunk[:, :-1]).logits[0]
            nll.append(F.cross_entropy(logits, chunk[0, 1:], reduction="none"))
    expected = float(torch.cat(nll).mean())
    assert json.loads((out / SUITE_FILE).read_text())["heldout_loss"]["6"] == pytest.approx(expected, rel=1e-4)


def test_same_seed_gives_bitwise_identical_weights(tiny_suite, tmp_path) -> None:
    out, config = tiny_suite
    again = build_toy_suite(tmp_path / "again", config)
    other = build_toy_suite(tmp_path / "other", ToyConfig(**(TINY | {"seed": 1})))
    for step in (0, 6):
        name = f"step{step}/model.safetensors"
        assert (again / name).read_bytes() == (out / name).read_bytes()
        assert (other / name).read_bytes() != (out / name).read_bytes()
    assert (again / HELDOUT_FILE).read_text() == (out / HELDOUT_FILE).read_text()


def test_loss_decreases(tmp_path) -> None:
    config = ToyConfig(
        hidden_size=32,
        layers=1,
        heads=4,
        context=32,
        batch_size=8,
        steps=60,
        checkpoint_every=30,
        warmup_steps=5,
        sentences=2000,
        heldout_sentences=100,
        threads=1,
        progress=False,
    )
    out = build_toy_suite(tmp_path / "learn", config)
    manifest = json.loads((out / SUITE_FILE).read_text())
    heldout = manifest["heldout_loss"]
    assert heldout["0"] == pytest.approx(math.log(len(vocabulary())), abs=0.3)  # near uniform at init
    assert heldout["60"] < heldout["30"] < 0.8 * heldout["0"]
    assert manifest["train_loss"]["60"] < manifest["train_loss"]["1"]


def test_bad_requests_are_one_clear_line(tiny_suite, tmp_path) -> None:
    out, config = tiny_suite
    with pytest.raises(UserInputError, match=r"not empty; .*--overwrite"):
        build_toy_suite(out, config)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match="not a directory"):
        build_toy_suite(tmp_path / "file", config)
    with pytest.raises(UserInputError, match="--heads 3 must divide --hidden-size 16"):
        ToyConfig(hidden_size=16, heads=3)
    with pytest.raises(UserInputError, match="--steps 0: expected a positive integer"):
        ToyConfig(steps=0)


def test_overwrite_replaces_only_the_suite(tiny_suite, tmp_path) -> None:
    out, config = tiny_suite
    target = tmp_path / "suite"
    build_toy_suite(target, config)
    (target / "notes.txt").write_text("mine")
    (target / "step999").mkdir()
    build_toy_suite(target, ToyConfig(**(TINY | {"overwrite": True, "steps": 2, "checkpoint_every": 2})))
    assert sorted(p.name for p in target.iterdir()) == sorted(
        ["notes.txt", "step0", "step1", "step2", HELDOUT_FILE, SUITE_FILE]
    )


def test_config_generates_the_cli_options() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, ToyConfig)
    args = parser.parse_args(["-o", "suite", "--steps", "10", "--no-exclude-tse", "--learning-rate", "1e-3"])
    assert config_from_args(ToyConfig, args) == ToyConfig(out="suite", steps=10, exclude_tse=False, learning_rate=1e-3)
    assert "(default: 600)" in parser.format_help()
