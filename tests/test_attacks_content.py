"""Issue #21, attacks on the cube's identity by content: an input edited in place between two runs
is refused in one line naming it (exit 2, nothing written), the stored hash is never overwritten,
and an unchanged input resumes."""

from __future__ import annotations

import json
import re
import shutil

from fixtures.study import BLIMP_TINY, write_blimp

from dynamics.cli.main import main
from store import open_cube

FAST = ["--wd-tokens", "512", "--ppl-tokens", "64", "--tse-per-case", "1", "--cohort-percent", "5", "--threads", "1"]


def scan(tiny_suite, out, steps, *extra):
    return main(["scan", "--model", str(tiny_suite), "--steps", steps, "--out", str(out), *FAST, *extra])


def test_a_corpus_edited_in_place_then_the_cube_extended_is_refused(tiny_suite, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    shutil.copy(tiny_suite / "heldout.txt", corpus)
    out = tmp_path / "c.zarr"
    assert scan(tiny_suite, out, "0,8", "--corpus", str(corpus), "--reference-step", "8") == 0
    stored = dict(open_cube(out).attrs["content"])
    capsys.readouterr()
    corpus.write_text(corpus.read_text().replace("the", "a"))  # edited in place
    code = scan(tiny_suite, out, "0,1,8", "--corpus", str(corpus), "--reference-step", "8")
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert "was made with another WD text (its token ids)" in lines[0] and stored["wd_tokens"][:12] in lines[0]
    ds = open_cube(out)
    assert dict(ds.attrs["content"]) == stored  # never overwritten
    assert ds["step"].values.tolist() == [0, 8]  # step 1 was not measured on the other text


def test_blimp_files_with_good_and_bad_swapped_then_the_cube_extended_are_refused(tiny_suite, tmp_path, capsys):
    blimp = write_blimp(tmp_path / "blimp")
    out = tmp_path / "b.zarr"
    options = ["--blimp", str(blimp), "--blimp-per-paradigm", "2", "--blimp-paradigms", ",".join(BLIMP_TINY)]
    assert scan(tiny_suite, out, "0,8", *options) == 0
    capsys.readouterr()
    path = blimp / f"{BLIMP_TINY[0]}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row["sentence_good"], row["sentence_bad"] = row["sentence_bad"], row["sentence_good"]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    code = scan(tiny_suite, out, "0,1,8", *options)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "was made with another BLiMP sample (its sentences)" in lines[0], lines
    assert open_cube(out)["step"].values.tolist() == [0, 8]


def test_unchanged_inputs_resume_and_record_their_hashes_once(tiny_suite, tmp_path):
    out = tmp_path / "u.zarr"
    assert scan(tiny_suite, out, "0,8") == 0
    first = dict(open_cube(out).attrs["content"])
    assert {"wd_tokens", "tse", "tokenizer"} <= set(first)
    assert scan(tiny_suite, out, "0,1,8") == 0
    ds = open_cube(out)
    assert ds["step"].values.tolist() == [0, 1, 8] and dict(ds.attrs["content"]) == first


def test_blimp_sentences_longer_than_the_context_are_refused_before_work(tiny_suite, tmp_path, capsys):
    """Attack: 3 BLiMP pairs of 200,000 words ran for 5 minutes with no progress; now one line, exit 2."""
    blimp = write_blimp(tmp_path / "blimp")
    path = blimp / f"{BLIMP_TINY[0]}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row["sentence_good"] = " ".join(["the author"] * 100_000)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "long.zarr"
    options = ["--blimp", str(blimp), "--blimp-per-paradigm", "2", "--blimp-paradigms", ",".join(BLIMP_TINY)]
    code = scan(tiny_suite, out, "8", *options)
    progress = re.compile(r"^[^:]+: +\d+%[ |]")  # the capture's progress lines before the refusal
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not progress.match(line)]
    assert code == 2 and len(lines) == 1, lines
    assert f"BLiMP item {BLIMP_TINY[0]}/" in lines[0] and "tokens; the model's context is" in lines[0]
    assert not out.exists()
