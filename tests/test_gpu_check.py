"""scripts/gpu_check.py on CPU: the planted Hub cache, then the real commands and the table they yield."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

from dynamics.bench.planted_hub import SHAPES, build_hub_cache, repo_dir  # noqa: E402

REPO = "EleutherAI/pythia-14m"  # the tiny shape's repository
STEPS = (142000, 143000)


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), *args], capture_output=True, text=True, timeout=900
    )


def table_rows(markdown: str, first_cell: str) -> list[list[str]]:
    """The cells of the markdown table rows whose first cell starts with ``first_cell``."""
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("|")
    ]
    return [r for r in rows if r[0].startswith(first_cell)]


@pytest.mark.parametrize("shape, published", [("pythia-1.4b", 1_414_647_808), ("pythia-6.9b", 6_857_302_016)])
def test_shapes_have_pythias_parameter_counts(shape, published):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from dynamics.bench.planted_hub import pythia_config

    with torch.device("meta"):
        model = GPTNeoXForCausalLM(GPTNeoXConfig.from_dict(pythia_config(SHAPES[shape])))
    assert sum(p.numel() for p in model.parameters()) == SHAPES[shape].parameters() == published  # Pythia paper


def test_the_planted_cache_is_read_by_the_hub_client_and_transformers(shared_data, tmp_path):
    from huggingface_hub import scan_cache_dir, snapshot_download
    from safetensors import safe_open
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = tmp_path / "hub"
    tokenizer_file = shared_data / "tokenizers" / "gpt-neox-20b.json"
    build_hub_cache(cache, SHAPES["tiny"], tokenizer_file, STEPS, "cpu")
    (repo,) = scan_cache_dir(cache).repos
    assert repo.repo_id == REPO
    assert sorted(ref for rev in repo.revisions for ref in rev.refs) == ["step142000", "step143000"]
    paths = [Path(snapshot_download(REPO, revision=f"step{s}", cache_dir=cache, local_files_only=True)) for s in STEPS]
    weights = [p / "model.safetensors" for p in paths]
    for w in weights:  # LFS files are stored under their sha256
        assert w.is_symlink() and w.resolve().name == hashlib.sha256(w.read_bytes()).hexdigest()
    assert (paths[0] / "tokenizer.json").resolve() == (paths[1] / "tokenizer.json").resolve()  # one blob, shared
    with safe_open(weights[0], "pt") as a, safe_open(weights[1], "pt") as b:
        name = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
        first, second = a.get_tensor(name), b.get_tensor(name)
    assert str(first.dtype) == "torch.float16" and first.shape == (256, 64)
    change = (second.float() - first.float()).std().item()
    assert 0.0005 < change < 0.002 and 0.015 < first.float().std().item() < 0.025  # 5% noise on N(0, 0.02)

    model = AutoModelForCausalLM.from_pretrained(paths[1])
    assert model.config.model_type == "gpt_neox" and model.config.num_hidden_layers == 2
    assert model.config.use_parallel_residual and model.config.vocab_size == 50304
    tokenizer = AutoTokenizer.from_pretrained(paths[1])
    text = "The keys to the cabinet are on the table."
    assert tokenizer(text)["input_ids"] == Tokenizer.from_file(str(tokenizer_file)).encode(text).ids
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == 0


def test_bad_arguments_are_one_line_and_exit_2_before_anything_is_written(tmp_path):
    work = tmp_path / "work"
    # Inputs that exist whether or not ../shared/data is present, so the --skip-build check is the one that fails.
    tokenizer, corpus, blimp = tmp_path / "tokenizer.json", tmp_path / "corpus.txt", tmp_path / "blimp"
    tokenizer.write_text("{}")
    corpus.write_text("text\n")
    blimp.mkdir()
    proc = run_check(
        "--shape",
        "tiny",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "out"),
        "--work",
        str(work),
        "--tokenizer",
        str(tokenizer),
        "--corpus",
        str(corpus),
        "--blimp",
        str(blimp),
        "--skip-build",
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"gpu_check.py: error: --skip-build, but {work}/hf_home/hub lacks {REPO} step(s) "
        "142000, 143000; run without --skip-build (see gpu_check.py --help)"
    )
    proc = run_check(
        "--out",
        str(tmp_path / "out"),
        "--tokenizer",
        str(tokenizer),
        "--corpus",
        str(corpus),
        "--blimp",
        str(blimp),
        "--device",
        "tpu",
    )
    assert proc.returncode == 2 and proc.stderr.strip().startswith("gpu_check.py: error: --device 'tpu' is not one of")
    assert not (tmp_path / "out").exists() and not work.exists()


@pytest.mark.slow
def test_tiny_check_runs_both_commands_and_tables_finite_numbers(shared_data, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    fast_ablate = "--percents 1 --layer-groups 0 --blimp-paradigms anaphor_gender_agreement,adjunct_island"
    proc = run_check(
        "--shape", "tiny", "--device", "cpu", "--out", str(out), "--work", str(work), "--ablate-args", fast_ablate
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    markdown = (out / "gpu_check.md").read_text()
    assert markdown.rstrip().endswith("**verdict: PASS**")
    assert "`dynamics scan`: exit code 0" in markdown and "`dynamics ablate`: exit code 0" in markdown
    assert (out / "scan.log").read_text().startswith("$ ") and (out / "ablate.log").exists()

    header = table_rows(markdown, "step")[0]
    assert header[:7] == ["step", "status", "download s", "load s", "statistics s", "evaluation s", "total s"]
    steps = {r[0]: r for r in table_rows(markdown, "14")}
    assert sorted(steps) == ["142000", "143000"]
    for row in steps.values():
        assert row[1] == "done" and row[-1] == ""
        seconds, tse, ppl = [float(c) for c in row[2:7]], [float(c) for c in row[7:10]], [float(c) for c in row[10:13]]
        assert math.isclose(sum(seconds[:4]), seconds[4], abs_tol=0.21)  # total = sum of the rounded phases
        assert all(0.0 <= t <= 1.0 for t in tse)
        assert all(1e4 < p < 2e5 for p in ppl)  # random weights: about the vocabulary size (50,304)

    # clean; neg_top, pos_top, both_top and neg_random at 1%; the matched control (no layer groups)
    assert "conditions: 6 done, 0 failed, 0 not run, of 6" in markdown
    study = {r[0]: r for r in table_rows(markdown, "clean") + table_rows(markdown, "neg_")}
    assert sorted(study) == ["clean", "neg_matched 1%", "neg_random 1%", "neg_top 1%"]
    for row in study.values():
        assert row[1] == "done"
        assert 0.0 <= float(row[2]) <= 1.0 and 0.0 <= float(row[3]) <= 1.0 and 1e4 < float(row[4]) < 2e5

    # A corrupt checkpoint makes its step fail: the check says so, with the reason, and exits 1.
    blob = (repo_dir(work / "hf_home" / "hub", REPO) / "refs" / "step142000").read_text()
    weights = (repo_dir(work / "hf_home" / "hub", REPO) / "snapshots" / blob / "model.safetensors").resolve()
    weights.write_bytes(weights.read_bytes()[:1000])
    proc = run_check(
        "--shape", "tiny", "--device", "cpu", "--out", str(out), "--work", str(work), "--skip-build", "--only", "scan"
    )
    assert proc.returncode == 1, proc.stdout[-3000:]
    markdown = (out / "gpu_check.md").read_text()
    steps = {r[0]: r for r in table_rows(markdown, "14")}
    assert steps["142000"][1] == "failed" and "142000" in steps["142000"][-1]
    assert steps["143000"][1] == "done"
    assert "`dynamics scan`: exit code 1" in markdown and markdown.rstrip().endswith("**verdict: FAIL**")
    assert "## dynamics ablate" not in markdown
