"""BLiMP and lm-eval per step, under the same conditions as TSE, checked against hand computations."""

import numpy as np
import pytest
import torch
from conftest import FAST_SCAN
from fixtures.study import write_blimp, write_lm_eval_task

from checkpoints.local_sources import LocalSuiteSource
from checkpoints.names import resolve_model
from dynamics.ablation.hooks import ablate
from dynamics.cli.main import main
from dynamics.scan.config import ScanConfig
from dynamics.scan.driver import run_scan
from dynamics.syntax.blimp import BLIMP_PARADIGMS, load_blimp
from dynamics.syntax.lmeval import lm_eval_installed
from dynamics.syntax.pairs import stratified_sample
from store import open_cube

pytestmark = pytest.mark.models

PARADIGMS = ("anaphor_gender_agreement", "determiner_noun_agreement_1")


def sentence_log_prob(model, tokenizer, sentence: str) -> float:
    """Sum of log p(token | prefix token and the tokens before), one unbatched forward pass."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([[prefix, *tokenizer(sentence, add_special_tokens=False)["input_ids"]]])
    log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
    return float(log_probs[torch.arange(ids.shape[1] - 1), ids[0, 1:]].sum())


def test_blimp_per_step_and_condition_matches_a_hand_computation(tiny_suite, tmp_path):
    blimp = write_blimp(tmp_path / "blimp", pairs=6)
    out = tmp_path / "blimp.zarr"
    run_scan(
        ScanConfig(
            model=str(tiny_suite),
            out=str(out),
            steps="0,8",
            **{**FAST_SCAN, "blimp": str(blimp), "blimp_per_paradigm": 4, "blimp_paradigms": ",".join(PARADIGMS)},
        )
    )
    ds = open_cube(out)
    assert ds["blimp_acc"].dims == ("step", "condition", "blimp_paradigm")
    assert ds["blimp_acc"].shape == (2, 3, 2) and ds["blimp_paradigm"].values.tolist() == list(PARADIGMS)
    assert ds.attrs["identity"]["benchmarks"] == {"blimp_pairs": 8, "blimp_paradigms": 2}
    pairs = load_blimp(blimp, PARADIGMS)
    sample = stratified_sample({p: {"": [x for x in pairs if x.case == p]} for p in PARADIGMS}, 4, seed=0)
    checkpoint = LocalSuiteSource(resolve_model(str(tiny_suite))).fetch(8)
    model, tokenizer = checkpoint.load_model(), checkpoint.load_tokenizer()
    masks = {
        "clean": None,
        "neg_cohort": torch.from_numpy(ds["cohort"].values),
        "neg_random": torch.from_numpy(ds["random_control"].values),
    }
    for condition, mask in masks.items():
        with (
            torch.inference_mode(),
            ablate(model, mask, mode="negative") if mask is not None else torch.inference_mode(),
        ):
            for paradigm in PARADIGMS:
                chosen = sample[paradigm][""]
                assert len(chosen) == 4
                correct = [
                    sentence_log_prob(model, tokenizer, p.good) > sentence_log_prob(model, tokenizer, p.bad)
                    for p in chosen
                ]
                stored = float(ds["blimp_acc"].sel(step=8, condition=condition, blimp_paradigm=paradigm))
                assert stored == pytest.approx(np.mean(correct)), (condition, paradigm)


def test_blimp_from_the_release_files_has_every_paradigm(shared_data, tiny_suite, tmp_path):
    out = tmp_path / "release.zarr"
    run_scan(
        ScanConfig(
            model=str(tiny_suite),
            out=str(out),
            steps="8",
            **{**FAST_SCAN, "blimp": str(shared_data / "blimp"), "blimp_per_paradigm": 1},
        )
    )
    ds = open_cube(out)
    assert ds["blimp_paradigm"].values.tolist() == list(BLIMP_PARADIGMS)
    assert ds["blimp_acc"].shape == (1, 3, 67) and np.isin(ds["blimp_acc"].values, [0.0, 1.0]).all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--blimp", "/no/such/dir", "--blimp-per-paradigm", "2"],
            "--blimp '/no/such/dir' is neither hub nor a directory",
        ),
        (["--blimp-paradigms", "not_a_paradigm"], "unknown BLiMP paradigm 'not_a_paradigm'"),
        (["--blimp-per-paradigm", "-1"], "--blimp-per-paradigm -1: expected 0 or more pairs"),
        (["--revision-template", "step{step}-{seed}"], "--revision-template 'step{step}-{seed}': expected exactly one"),
        (["--tokens-per-step", "0"], "--tokens-per-step 0: expected a positive number of tokens"),
    ],
)
def test_bad_benchmark_options_are_one_line(tiny_suite, tmp_path, capsys, args, message):
    out = tmp_path / "never.zarr"
    assert main(["scan", "--model", str(tiny_suite), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_revision_template_is_refused_for_a_local_suite(tiny_suite, tmp_path, capsys):
    assert (
        main(
            ["scan", "--model", str(tiny_suite), "--out", str(tmp_path / "x.zarr"), "--revision-template", "ckpt{step}"]
        )
        == 2
    )
    assert "applies to Hub repositories" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not lm_eval_installed(), reason="lm-eval is not installed")
def test_lm_eval_tasks_per_step(tiny_suite, tmp_path):
    write_lm_eval_task(tmp_path / "tasks", docs=6)
    out = tmp_path / "lmeval.zarr"
    run_scan(
        ScanConfig(
            model=str(tiny_suite),
            out=str(out),
            steps="4,8",
            tasks="tiny_mc",
            task_path=str(tmp_path / "tasks"),
            lmeval_limit=6,
            **FAST_SCAN,
        )
    )
    ds = open_cube(out)
    assert ds["lmeval_acc"].dims == ("step", "condition", "task") and ds["task"].values.tolist() == ["tiny_mc"]
    assert ds["lmeval_acc"].shape == (2, 3, 1)
    # accuracy over 6 documents: a multiple of 1/6 in [0, 1]
    sixths = ds["lmeval_acc"].values * 6
    np.testing.assert_allclose(sixths, np.round(sixths), atol=1e-9)
    items = ds["lmeval_item_correct"]
    assert items.dims == ("step", "condition", "lmeval_item") and items.shape == (2, 3, 6)
    assert ds["lmeval_item_doc"].values.tolist() == list(range(6)) and set(ds["lmeval_item_task"].values) == {"tiny_mc"}
    np.testing.assert_allclose(items.mean("lmeval_item").values, ds["lmeval_acc"].sel(task="tiny_mc").values, atol=1e-6)
    assert ds.attrs["identity"]["benchmarks"] == {"lmeval_tasks": ["tiny_mc"]}
    assert ds.attrs["identity"]["analysis"]["lmeval_limit"] == 6


def test_report_shows_blimp_per_condition_and_what_was_skipped(tiny_suite, tmp_path, monkeypatch):
    from dynamics.report.scan_text import report

    blimp = write_blimp(tmp_path / "blimp", pairs=4)
    out = tmp_path / "r.zarr"
    run_scan(
        ScanConfig(
            model=str(tiny_suite),
            out=str(out),
            steps="8",
            **{**FAST_SCAN, "blimp": str(blimp), "blimp_per_paradigm": 2, "blimp_paradigms": ",".join(PARADIGMS)},
        )
    )
    ds = open_cube(out)
    lines = report(ds).splitlines()
    header = next(line for line in lines if line.split()[:1] == ["step"])
    assert "tse neg_random" in header and header.index("blimp clean") > header.index("tse neg_random")
    row = next(line for line in lines if line.split()[:1] == ["8"]).split()
    # the step table's cells in header order: step, wd median, wd cohort, tse x3, blimp x3, ...
    blimp_clean = row[1 + 2 + 3]
    assert float(blimp_clean) == pytest.approx(float(ds["blimp_acc"].sel(step=8, condition="clean").mean()), abs=1e-3)
    offline = tmp_path / "offline.zarr"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_scan(ScanConfig(model=str(tiny_suite), out=str(offline), steps="8", **{**FAST_SCAN, "blimp_per_paradigm": 2}))
    text = report(open_cube(offline))
    assert "not measured: blimp (the Hub is offline; pass --blimp with a directory of <paradigm>.jsonl files)" in text
