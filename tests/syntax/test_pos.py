"""POS surprisal: alignment by character offsets and excess surprisal, with a fake tagger (the spaCy tagger and
per-token tags: test_pos_tagging.py)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, GPTNeoXConfig, PreTrainedTokenizerFast

from dynamics.errors import UserInputError
from dynamics.syntax.pos import align_tokens_to_words, excess_surprisal, pos_surprisal, word_surprisals

# Calls models: also run against the lowest transformers the project declares (.ci/run).
pytestmark = pytest.mark.models

TAGS = {
    "the": "DET",
    "a": "DET",
    "author": "NOUN",
    "authors": "NOUN",
    "guard": "NOUN",
    "guards": "NOUN",
    "taxi-driver": "NOUN",
    "laughs": "VERB",
    "laugh": "VERB",
    "likes": "VERB",
    "near": "ADP",
    "that": "PRON",
    ".": "PUNCT",
    "tall": "ADJ",
    "is": "AUX",
}
TEXTS = [
    "the author near the taxi-driver laughs.",
    "the authors that the guard likes laugh.",
    "a guard is tall.",
]


def fake_tagger(text: str) -> list[tuple[int, int, str]]:
    """Words are runs of letters and hyphens, or a period; tags from a fixed table."""
    return [(m.start(), m.end(), TAGS[m.group()]) for m in re.finditer(r"[\w-]+|\.", text)]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level over \\w+ and punctuation runs: 'taxi-driver' is three tokens."""
    words = ["<pad>", "<bos>", "<eos>", "<unk>", "taxi", "-", "driver"] + [w for w in TAGS if "-" not in w]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def tiny_model(seed: int, vocab_size: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=vocab_size,
        initializer_range=0.3,
    )
    return AutoModelForCausalLM.from_config(config).eval()


def slow_token_surprisals(model, tokenizer, text: str) -> list[float]:
    ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    return [-float(log_probs[j - 1, ids[j]]) for j in range(1, len(ids))]


def test_alignment_handles_leading_spaces_subwords_and_gaps():
    text = "the taxi-driver  laughs."
    words = [(0, 3, "DET"), (4, 15, "NOUN"), (17, 23, "VERB"), (23, 24, "PUNCT")]
    # Offsets as a byte-level BPE with leading spaces reports them (SmolLM2 style), with
    # a whitespace-only token and a token spanning the end of a word and the period.
    tokens = [(0, 3), (3, 8), (8, 9), (9, 15), (15, 16), (16, 20), (20, 24)]
    assert align_tokens_to_words(text, tokens, words) == [0, 1, 1, 1, 2, 2, 2]
    # A token the tagger left uncovered goes to the next word; none after it: -1.
    assert align_tokens_to_words("x the", [(0, 1), (2, 5)], [(2, 5, "DET")]) == [0, 0]
    assert align_tokens_to_words("the x", [(0, 3), (4, 5)], [(0, 3, "DET")]) == [0, -1]


def test_word_surprisal_sums_its_tokens():
    text = "the taxi-driver laughs"
    words = [(0, 3, "DET"), (4, 15, "NOUN"), (16, 22, "VERB")]
    tokens = [(0, 3), (4, 8), (8, 9), (9, 15), (16, 22)]
    table = word_surprisals(text, tokens, [np.nan, 1.0, 2.0, 4.0, 0.5], words, text_index=7)
    assert table["word"].tolist() == ["the", "taxi-driver", "laughs"]
    assert table["n_tokens"].tolist() == [1, 3, 1]
    assert np.isnan(table["surprisal"][0])  # its only token is unscored
    assert table["surprisal"][1:].tolist() == [7.0, 0.5]
    assert table["text"].tolist() == [7, 7, 7]


def test_pos_surprisal_matches_slow_token_loop():
    tokenizer = tiny_tokenizer()
    model = tiny_model(0, len(tokenizer))
    table = pos_surprisal(model, tokenizer, TEXTS, tagger=fake_tagger, batch_tokens=16, progress=False)
    assert len(table) == sum(len(fake_tagger(t)) for t in TEXTS)
    for i, text in enumerate(TEXTS):
        token_surprisal = slow_token_surprisals(model, tokenizer, text)
        rows = table[table["text"] == i]
        # tokens: one per word except 'taxi-driver' (three); independent word-by-word sums
        expected, k = [], 0
        for word in rows["word"]:
            n = 3 if word == "taxi-driver" else 1
            expected.append(sum(token_surprisal[k : k + n]))
            k += n
        assert k == len(token_surprisal)
        np.testing.assert_allclose(rows["surprisal"].to_numpy(), expected, atol=1e-4)


def test_excess_surprisal_is_the_mean_difference_per_pos():
    tokenizer = tiny_tokenizer()
    clean_model, ablated_model = tiny_model(0, len(tokenizer)), tiny_model(1, len(tokenizer))
    clean = pos_surprisal(clean_model, tokenizer, TEXTS, tagger=fake_tagger, progress=False)
    ablated = pos_surprisal(ablated_model, tokenizer, TEXTS, tagger=fake_tagger, progress=False)
    excess = excess_surprisal(clean, ablated)
    assert excess.index.tolist() == sorted({pos for t in TEXTS for _, _, pos in fake_tagger(t)})
    for pos, row in excess.iterrows():
        diffs = [a - c for a, c, p in zip(ablated["surprisal"], clean["surprisal"], clean["pos"]) if p == pos]
        assert row["count"] == len(diffs)
        assert row["excess"] == pytest.approx(np.mean(diffs))
    assert excess.loc["DET", "count"] == 5
    assert abs(excess["excess"]).max() > 0.1  # two different models: not a vacuous zero


def test_excess_surprisal_rejects_different_words():
    a = pd.DataFrame(
        {"text": [0], "start": [0], "end": [3], "word": ["the"], "pos": ["DET"], "surprisal": [1.0], "n_tokens": [1]}
    )
    b = a.assign(start=[1])
    with pytest.raises(UserInputError, match="list different words"):
        excess_surprisal(a, b)


def test_real_pythia_tokenizer_offsets(shared_data):
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(shared_data / "tokenizers" / "gpt-neox-20b.json"),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
    )
    model = tiny_model(0, 50304)
    text = "the author near the taxi-driver laughs."
    table = pos_surprisal(model, tokenizer, [text], tagger=fake_tagger, progress=False)
    token_surprisal = slow_token_surprisals(model, tokenizer, text)
    assert table["n_tokens"].sum() == len(token_surprisal)
    assert table["surprisal"].sum() == pytest.approx(sum(token_surprisal), abs=1e-4)
    assert table.loc[table["word"] == "taxi-driver", "n_tokens"].item() >= 2
