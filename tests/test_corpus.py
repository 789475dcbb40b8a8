"""Token windows: exact ids, budget, hashing, sources and their errors."""

from __future__ import annotations

import hashlib
import logging
import struct
from pathlib import Path

import datasets
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from dynamics.errors import UserInputError
from dynamics.syntax.corpus import CorpusError, CorpusSpec, corpus_hash, load_token_windows, read_corpus_text


def _text(n_lines: int = 400) -> str:
    # Lines of varied length so windows straddle line breaks.
    return "".join(" ".join(f"w{(7 * i + j) % 50}" for j in range(1 + i % 9)) + "\n" for i in range(n_lines))


@pytest.fixture
def word_tokenizer() -> Tokenizer:
    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(50)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(_text(), encoding="utf-8")
    return path


class CharTokenizer:
    """A duck-typed tokenizer without a fast backend: one id per character."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([1] if add_special_tokens else []) + [ord(c) for c in text]


def test_windows_are_the_leading_tokens(word_tokenizer: Tokenizer, text_file: Path) -> None:
    full = word_tokenizer.encode(text_file.read_text()).ids
    assert len(text_file.read_text()) > 4096  # long enough that only a prefix is tokenized
    windows = load_token_windows(CorpusSpec(source=str(text_file), window=16, token_budget=70), word_tokenizer)
    assert windows.dtype == torch.long and windows.shape == (4, 16)  # 70 // 16
    assert windows.flatten().tolist() == full[:64]


def test_all_windows_drop_the_partial_one(word_tokenizer: Tokenizer, text_file: Path) -> None:
    full = word_tokenizer.encode(text_file.read_text()).ids
    windows = load_token_windows(CorpusSpec(source=str(text_file), window=100, token_budget=None), word_tokenizer)
    assert len(full) % 100 != 0
    assert windows.shape == (len(full) // 100, 100)
    assert windows.flatten().tolist() == full[: len(full) // 100 * 100]


def test_budget_below_one_window_gives_one(word_tokenizer: Tokenizer, text_file: Path) -> None:
    windows = load_token_windows(CorpusSpec(source=str(text_file), window=32, token_budget=5), word_tokenizer)
    assert windows.shape == (1, 32)


def test_short_text_warns_and_keeps_what_there_is(word_tokenizer: Tokenizer, tmp_path: Path, caplog) -> None:
    path = tmp_path / "short.txt"
    path.write_text("w1 w2 w3 w4 w5 w6 w7\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="dynamics.syntax.corpus"):
        windows = load_token_windows(CorpusSpec(source=str(path), window=3, token_budget=30), word_tokenizer)
    assert windows.tolist() == [[2, 3, 4], [5, 6, 7]]
    assert "gives 2 windows of 3 tokens, fewer than the 10" in caplog.text


def test_text_shorter_than_one_window(word_tokenizer: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt"
    path.write_text("w1 w2 w3\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="has only 3 tokens, fewer than one window of 2048"):
        load_token_windows(CorpusSpec(source=str(path)), word_tokenizer)


def test_transformers_and_duck_typed_tokenizers(word_tokenizer: Tokenizer, text_file: Path) -> None:
    spec = CorpusSpec(source=str(text_file), window=8, token_budget=40)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=word_tokenizer)
    assert torch.equal(load_token_windows(spec, wrapped), load_token_windows(spec, word_tokenizer))
    chars = load_token_windows(spec, CharTokenizer())
    assert chars.flatten().tolist() == [ord(c) for c in text_file.read_text()[:40]]  # no special token added


def test_corpus_hash_is_sha256_of_int64_little_endian() -> None:
    windows = torch.tensor([[1, 2, 300], [70000, 5, 6]])
    expected = hashlib.sha256(struct.pack("<6q", 1, 2, 300, 70000, 5, 6)).hexdigest()
    assert corpus_hash(windows) == expected
    assert corpus_hash(windows.to(torch.int32)) == expected
    changed = windows.clone()
    changed[1, 2] = 7
    assert corpus_hash(changed) != expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(window=0), "corpus window 0 must be a positive number"),
        (dict(token_budget=0), "token budget 0 must be a positive number"),
        (dict(split="dev"), "WikiText-2 split 'dev' is unknown; use one of train, validation, test"),
    ],
)
def test_bad_spec(kwargs: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        CorpusSpec(**kwargs)


def test_bad_source(word_tokenizer: Tokenizer, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(UserInputError) as info:
        load_token_windows(CorpusSpec(source=missing), word_tokenizer)
    assert str(info.value) == f"corpus {missing!r} is neither 'wikitext2' nor an existing text file"


def test_wikitext2_rows_are_joined_with_blank_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = ["", " = Title = \n", "", " Some text . \n"]
    calls = []

    def fake_load_dataset(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append((args, kwargs))
        return {"text": rows}

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert read_corpus_text(CorpusSpec(split="validation")) == "\n\n = Title = \n\n\n\n\n Some text . \n"
    assert calls == [(("wikitext", "wikitext-2-raw-v1"), {"split": "validation"})]


def test_unreachable_wikitext_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (OfflineModeIsEnabled)\ntraceback noise")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CorpusError) as info:
        read_corpus_text(CorpusSpec())
    assert str(info.value) == (
        "could not load WikiText-2 (test) through datasets: Couldn't reach 'wikitext' on the Hub "
        "(OfflineModeIsEnabled); offline, pass --corpus PATH to a local text file"
    )


def test_real_offline_datasets(word_tokenizer: Tokenizer) -> None:
    """With HF_DATASETS_OFFLINE=1 (conftest) the real call either finds a cache or fails in one line."""
    try:
        windows = load_token_windows(CorpusSpec(window=64, token_budget=128), word_tokenizer)
    except CorpusError as exc:
        assert "--corpus PATH" in str(exc) and "\n" not in str(exc)
    else:
        assert windows.shape == (2, 64)


def test_pythia_tokenizer_on_wikitext_file(shared_data: Path) -> None:
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(shared_data / "tokenizers" / "gpt-neox-20b.json"))
    path = shared_data / "wikitext-2" / "test.txt"
    spec = CorpusSpec(source=str(path))
    windows = load_token_windows(spec, tokenizer)
    assert windows.shape == (32, 2048)  # 65,536 // 2,048
    text = path.read_text(encoding="utf-8")
    full = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(full) > 65536
    assert windows.flatten().tolist() == full[:65536]
    assert text.startswith(tokenizer.decode(windows[:2].flatten().tolist()))  # no BOS, nothing inserted
    assert corpus_hash(windows) == corpus_hash(load_token_windows(spec, tokenizer))
    assert spec.to_attrs() == {
        "source": str(path),
        "split": "test",
        "window": 2048,
        "token_budget": 65536,
        "stride": None,
        "joiner": "\n\n",
        "window_bos": "none",
        "start": 0,
    }


# ----------------------------------------------------------------- disjoint WD and perplexity texts
def test_one_file_for_both_gives_disjoint_token_ranges(word_tokenizer: Tokenizer, text_file: Path) -> None:
    from dynamics.config.parts import BudgetOptions, ScoringOptions
    from dynamics.config.protocol import resolve_protocol
    from dynamics.syntax.corpus import load_wd_and_ppl_windows, text_specs

    full = word_tokenizer.encode(text_file.read_text()).ids
    for protocol, stride in (("paper", 8), ("strict", 16)):
        chosen = resolve_protocol(ScoringOptions(protocol=protocol))
        wd_spec, ppl_spec, one = text_specs(BudgetOptions(wd_tokens=64, ppl_tokens=48), chosen, str(text_file), 16)
        assert one and ppl_spec is not None
        wd, ppl, used = load_wd_and_ppl_windows(wd_spec, ppl_spec, word_tokenizer, one)
        assert wd.tolist() == [full[k * stride : k * stride + 16] for k in range(4)]
        end = 3 * stride + 16  # the last WD window's end: perplexity starts there
        assert used.start == end and ppl.flatten().tolist() == full[end : end + 48]


def test_overlapping_files_warn_loudly_and_a_bad_corpus_is_one_line(tmp_path: Path, caplog) -> None:
    from dynamics.config.parts import BudgetOptions
    from dynamics.syntax.corpus import check_texts

    wd, ppl = tmp_path / "wd.txt", tmp_path / "ppl.txt"
    sentence = "the same long sentence of more than ten words appears in both texts here"
    wd.write_text(f"alpha beta gamma\n{sentence}\n= = History = =\nzeta eta theta\n", encoding="utf-8")
    ppl.write_text(f"{sentence} and more words\n{sentence}\n= = History = =\n{sentence} too\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="dynamics.syntax.corpus"):
        check_texts(BudgetOptions(wd_corpus=str(wd), ppl_corpus=str(ppl)), "wikitext2")
    # the heading is not compared (fewer than 10 words): 1 of the 3 long lines is shared
    assert (
        f"OVERLAPPING TEXTS: 1 of the 3 lines (of 10+ words) of the perplexity corpus {str(ppl)!r} also occur"
        in caplog.text
    )
    caplog.clear()
    ppl.write_text("iota kappa\n= = History = =\nlambda mu\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="dynamics.syntax.corpus"):
        check_texts(BudgetOptions(wd_corpus=str(wd), ppl_corpus=str(ppl)), "wikitext2")
        check_texts(BudgetOptions(), "wikitext2")  # train vs validation: disjoint by construction
    assert caplog.text == ""
    with pytest.raises(UserInputError) as info:
        check_texts(BudgetOptions(ppl_corpus="wikitext2:dev"), "wikitext2")
    assert str(info.value) == (
        "corpus 'wikitext2:dev': WikiText-2 split 'dev' is unknown; use one of train, validation, test"
    )
    with pytest.raises(UserInputError, match="corpus 'nope.txt' is neither wikitext2"):
        check_texts(BudgetOptions(wd_corpus="nope.txt"), "wikitext2")


def test_strict_windows_lead_with_the_tokenizers_bos(text_file: Path) -> None:
    from tokenizers import processors

    vocab = {"[UNK]": 0, "<s>": 1, **{f"w{i}": i + 2 for i in range(50)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    full = backend.encode(text_file.read_text(), add_special_tokens=False).ids
    every = load_token_windows(
        CorpusSpec(source=str(text_file), window=8, token_budget=24, window_bos="every"), backend
    )
    assert every.tolist() == [[1, *full[k * 7 : k * 7 + 7]] for k in range(3)]
    first = load_token_windows(
        CorpusSpec(source=str(text_file), window=8, token_budget=24, window_bos="first"), backend
    )
    assert first.flatten().tolist() == [1, *full[:23]]
