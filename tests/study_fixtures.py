"""Inputs for end-to-end studies on tiny random models: a character tokenizer, saved models,
a small BLiMP directory and a corpus file (all offline, built in well under a second)."""

from __future__ import annotations

import json
import string
from pathlib import Path

from tiny_models import VOCAB, tiny_model

EOS = "<|endoftext|>"
CHARACTERS = string.ascii_lowercase + string.digits + " .,'!?-;:\"()@\n"
BLIMP_TINY = ("anaphor_gender_agreement", "determiner_noun_agreement_1")


def char_tokenizer():
    """A fast tokenizer with one token per (lower-cased) character: ids below the tiny VOCAB."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {EOS: 0, "<unk>": 1, **{c: i + 2 for i, c in enumerate(CHARACTERS)}}
    assert len(vocab) <= VOCAB
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOS, eos_token=EOS, unk_token="<unk>",
                                   pad_token=EOS)


def save_tiny_model(family: str, directory: Path, seed: int = 0) -> Path:
    """A tiny random model of ``family`` with the character tokenizer, saved as a model directory."""
    directory.mkdir(parents=True, exist_ok=True)
    tiny_model(family, seed=seed).save_pretrained(directory)
    char_tokenizer().save_pretrained(directory)
    return directory


CORPUS = (
    "The cat sat on the mat and looked at the birds outside the window.\n"
    "Researchers measured the distance between the two cities in the old maps.\n"
    "A quiet river runs through the valley, where farmers grow wheat and corn.\n"
    "She said that the meeting would start at nine, but nobody arrived before ten.\n"
)


def write_corpus(directory: Path, repeats: int = 20) -> Path:
    path = directory / "corpus.txt"
    path.write_text(CORPUS * repeats, encoding="utf-8")
    return path


def write_blimp(directory: Path, pairs: int = 6) -> Path:
    """Two BLiMP paradigm files with ``pairs`` records each, in the release's format."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = {
        "anaphor_gender_agreement": ("anaphora", "Katherine can't help herself.", "Katherine can't help himself."),
        "determiner_noun_agreement_1": ("determiner_noun_agreement", "Craig explored that grocery store.",
                                        "Craig explored that grocery stores."),
    }
    for paradigm, (term, good, bad) in rows.items():
        with open(directory / f"{paradigm}.jsonl", "w", encoding="utf-8") as f:
            for i in range(pairs):
                record = {"sentence_good": good.replace(".", f" {i}."), "sentence_bad": bad.replace(".", f" {i}."),
                          "UID": paradigm, "linguistics_term": term, "field": "morphology", "pairID": str(i)}
                f.write(json.dumps(record) + "\n")
    return directory


def write_lm_eval_task(directory: Path, docs: int = 12) -> list[dict]:
    """A local multiple-choice lm-eval task ``tiny_mc`` (JSON data, no download); returns its docs."""
    directory.mkdir(parents=True, exist_ok=True)
    stems = [("the cat sat on the", ["mat", "sky", "idea"]), ("a river runs through the", ["valley", "moon", "cup"]),
             ("she said that the", ["meeting", "tree", "blue"]), ("farmers grow wheat and", ["corn", "cars", "ten"])]
    rows = [{"question": stems[i % 4][0], "choices": stems[i % 4][1], "label": i % 3} for i in range(docs)]
    (directory / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (directory / "tiny_mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {directory / 'data.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n", encoding="utf-8")
    return rows
