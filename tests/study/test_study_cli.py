"""`dynamics ablate`: resume, identity, one-line errors, lm-eval skips, POS, report and plot."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from fixtures.study import fake_tagger, run_interrupted_study
from study.test_study import study_config, tiny_model_from

from dynamics.ablation.hooks import ablate
from dynamics.cli.main import main
from dynamics.errors import CubeError
from dynamics.report.claims import ClaimSettings, study_claims
from dynamics.report.scan_text import report
from dynamics.stats.paired import accuracy_difference
from dynamics.study.driver import run_study
from dynamics.syntax.lmeval import MISSING, lm_eval_installed, probe_tasks
from dynamics.syntax.pos import excess_surprisal, pos_surprisal
from store import open_cube


@pytest.fixture(scope="module")
def pos_study(study_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pos") / "pos.zarr"
    config = study_config(
        study_data / "llama", out, study_data, percents="10", tasks="arc_easy", layer_groups=0, pos="auto", pos_lines=3
    )
    run_study(config, tagger=fake_tagger)
    return config


@pytest.mark.slow
def test_an_interrupted_study_resumes_to_the_same_cube(study_data, tmp_path, monkeypatch):
    whole = study_config(study_data / "llama", tmp_path / "whole.zarr", study_data, layer_groups=0)
    run_study(whole)
    # one condition at a time, so nothing measured ahead is written on the way out (tests/study/test_study_together.py)
    config = study_config(
        study_data / "llama", tmp_path / "cut.zarr", study_data, layer_groups=0, conditions_per_pass=1
    )
    assert len(run_interrupted_study(monkeypatch, config, 4)) == 4
    assert int(open_cube(config.out)["done"].sum()) == 2 + 2  # clean (fills both percents), neg_top and pos_top at 5%
    summary = run_study(config)
    assert summary.skipped == [0, 1, 2] and summary.done == list(range(3, 10))
    a, b = open_cube(whole.out), open_cube(config.out)
    for name in ("tse_acc", "tse_margin", "blimp_acc", "ppl", "top_mask", "matched_mask", "wd"):
        np.testing.assert_allclose(a[name].values.astype(float), b[name].values.astype(float), rtol=1e-9, err_msg=name)
    assert run_study(config).done == []


def test_a_different_analysis_is_refused_on_the_same_cube(study_data, tmp_path):
    config = study_config(
        study_data / "llama",
        tmp_path / "s.zarr",
        study_data,
        layer_groups=0,
        tse_per_case=0,
        blimp_per_paradigm=0,
        percents="10",
    )
    run_study(config)
    other = study_config(
        study_data / "llama",
        config.out,
        study_data,
        layer_groups=0,
        tse_per_case=0,
        blimp_per_paradigm=0,
        percents="10",
        seed=1,
    )
    with pytest.raises(
        CubeError,
        match=r"was made with analysis.seed=0, this run has analysis.seed=1; use the same settings or another --out",
    ):
        run_study(other)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--percents", "0,1"], "--percents '0,1': expected comma-separated numbers in (0, 100]"),
        (["--match-percent", "3"], "--match-percent 3.0: expected one of --percents (0.5, 1, 2, 5)"),
        (["--match-high", "0.05"], "--match-high 0.05: expected a percent above --match-low, at most 100"),
        (["--lmeval-limit", "-1"], "--lmeval-limit -1: expected 0 (all) or more examples"),
        (["--blimp", "/no/such/dir"], "--blimp '/no/such/dir' is neither hub nor a directory"),
        pytest.param(["--revision", "step5"], "--revision 'step5':", marks=pytest.mark.slow),
        (["--blimp-paradigms", "nope"], "unknown BLiMP paradigm 'nope'"),
        (["--blimp", "BLIMP_DIR"], "has no adjunct_island.jsonl (65 of 67 paradigms missing); choose them with"),
        (["--tasks", ","], "--tasks ',': expected comma-separated lm-eval task names"),
        (["--conditions-per-pass", "-1"], "--conditions-per-pass -1: expected 0 (as many as fit) or more conditions"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_is_written(study_data, tmp_path, capsys, args, message):
    out = tmp_path / "bad.zarr"
    args = [str(study_data / "blimp") if a == "BLIMP_DIR" else a for a in args]
    code = main(["ablate", "--model", str(study_data / "llama"), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err and err.startswith("dynamics ablate: error: ")
    assert not out.exists()


def test_an_unknown_prefix_token_is_refused_before_the_cube_is_made(study_data, tmp_path, capsys):
    out = tmp_path / "p.zarr"
    assert (
        main(
            [
                "ablate",
                "--model",
                str(study_data / "llama"),
                "--out",
                str(out),
                "--prefix",
                "<s>",
                "--blimp-per-paradigm",
                "0",
                "--corpus",
                str(study_data / "corpus.txt"),
                "--tasks",
                "none",
            ]
        )
        == 2
    )
    assert "prefix token '<s>' is not in the tokenizer's vocabulary" in capsys.readouterr().err
    assert not out.exists()


def test_an_out_that_is_not_a_cube_name_is_refused(study_data, capsys):
    assert main(["ablate", "--model", str(study_data / "llama"), "--out", "results"]) == 2
    assert "--out 'results': a cube is a directory whose name ends in .zarr" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not lm_eval_installed(), reason="lm-eval is not installed")
def test_an_unknown_lm_eval_task_is_refused_before_anything_runs(study_data, tmp_path, capsys):
    assert (
        main(
            [
                "ablate",
                "--model",
                str(study_data / "llama"),
                "--out",
                str(tmp_path / "t.zarr"),
                "--tasks",
                "arc_easy,no_such_task_zz",
            ]
        )
        == 2
    )
    assert "--tasks: unknown lm-eval task 'no_such_task_zz'" in capsys.readouterr().err


def test_missing_lm_eval_is_one_line_and_every_task_is_skipped(monkeypatch, caplog):
    monkeypatch.setattr("dynamics.syntax.lmeval.lm_eval_installed", lambda: False)
    with caplog.at_level(logging.WARNING, logger="dynamics.syntax.lmeval"):
        plan = probe_tasks(["arc_easy", "piqa"])
    assert [r.getMessage() for r in caplog.records] == [f"{MISSING}; skipping the lm-eval tasks arc_easy, piqa"]
    assert plan.runnable == [] and plan.skipped == {"arc_easy": MISSING, "piqa": MISSING}


@pytest.mark.skipif(not lm_eval_installed(), reason="lm-eval is not installed")
def test_offline_tasks_are_skipped_with_one_line_each_and_recorded(pos_study, caplog):
    with caplog.at_level(logging.WARNING, logger="dynamics.syntax.lmeval"):
        plan = probe_tasks(["arc_easy", "piqa"])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("lm-eval task arc_easy skipped: its data cannot be loaded (")
    assert plan.runnable == [] and set(plan.skipped) == {"arc_easy", "piqa"}
    ds = open_cube(pos_study.out)
    assert ds["task"].values.tolist() == ["arc_easy"] and np.isnan(ds["lmeval_acc"].values).all()
    assert "arc_easy" in ds.attrs["provenance"]["lmeval_skipped"]


def test_pos_excess_surprisal_equals_the_direct_computation(pos_study):
    ds = open_cube(pos_study.out)
    from transformers import AutoTokenizer

    model, tokenizer = tiny_model_from(pos_study.model), AutoTokenizer.from_pretrained(pos_study.model)
    lines = [line.strip() for line in open(pos_study.corpus, encoding="utf-8").read().splitlines()][:3]
    with torch.inference_mode():
        clean = pos_surprisal(model, tokenizer, lines, tagger=fake_tagger, progress=False)
        with ablate(model, torch.from_numpy(ds["top_mask"].sel(percent=10.0).values), mode="both"):
            ablated = pos_surprisal(model, tokenizer, lines, tagger=fake_tagger, progress=False)
    direct = excess_surprisal(clean, ablated)
    for tag in ("NOUN", "DET"):
        assert float(ds["pos_excess"].sel(condition="both_top", percent=10.0, pos=tag)) == pytest.approx(
            direct.loc[tag, "excess"], rel=1e-6, abs=1e-9
        )
        assert float(ds["pos_excess"].sel(condition="clean", percent=10.0, pos=tag)) == 0.0
    assert np.isnan(float(ds["pos_excess"].sel(condition="clean", percent=10.0, pos="VERB")))


def test_report_and_plot_of_a_study_cube(pos_study, tmp_path, capsys):
    ds = open_cube(pos_study.out)
    text = report(ds)
    assert text.splitlines()[0].endswith("conditions done: 6 of 6")
    assert f"matched control: bottom m = {float(ds['matched_percent']):.4g}%" in text
    record = ds.attrs["provenance"]["protocol"]
    assert record == ds.attrs["identity"]["analysis"]["resolved_protocol"]
    assert (
        f"protocol {record['name']}: TSE {record['tse_reduction']}, BLiMP {record['blimp_reduction']}, "
        f"prefix {record['prefix']}, NPI vs {record['npi']}"
    ) in text
    row = next(line for line in text.splitlines() if line.split()[:2] == ["neg_top", "10"])
    assert float(row.split()[2]) == pytest.approx(float(ds["ppl"].sel(condition="neg_top", percent=10.0)), abs=1e-3)
    assert float(row.split()[4]) == pytest.approx(
        float(ds["tse_acc_all"].sel(condition="neg_top", percent=10.0)), abs=1e-3
    )
    assert "lm-eval tasks skipped: arc_easy" in text and "POS excess surprisal" in text
    assert "group_tse_acc" not in ds and "layer_group" not in ds.dims  # --layer-groups 0: no empty block
    assert main(["plot", pos_study.out, "--out", str(tmp_path / "figs"), "--formats", "png"]) == 0
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    # no layer groups in this study; the claims, and the differentiated pairs of its top set and control
    assert names == [
        "study_blimp_phenomena.png",
        "study_claims.png",
        "study_conditions.png",
        "study_differentiation.png",
    ]
    assert main(["report", pos_study.out]) == 0 and "Conditions" in capsys.readouterr().out


def choice_log_likelihoods(model, tokenizer, question: str, choices: list[str]) -> list[float]:
    """log p(" " + choice | question), summed over the choice's tokens: lm-eval's definition, by hand."""
    context = tokenizer(question, add_special_tokens=False)["input_ids"]
    out = []
    for choice in choices:
        whole = tokenizer(question + " " + choice, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([whole])
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
        targets = ids[0, 1:]
        scored = range(len(context) - 1, len(whole) - 1)
        out.append(float(sum(log_probs[i, targets[i]] for i in scored)))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not lm_eval_installed(), reason="lm-eval is not installed")
def test_lm_eval_scores_the_ablated_model(study_data, tmp_path):
    from fixtures.study import write_lm_eval_task
    from transformers import AutoTokenizer

    docs = write_lm_eval_task(tmp_path / "tasks")
    config = study_config(
        study_data / "llama",
        tmp_path / "lm.zarr",
        study_data,
        percents="10",
        tasks="tiny_mc",
        task_path=str(tmp_path / "tasks"),
        layer_groups=0,
        tse_per_case=0,
        blimp_per_paradigm=0,
    )
    run_study(config)
    ds = open_cube(config.out)
    model, tokenizer = tiny_model_from(config.model), AutoTokenizer.from_pretrained(config.model)
    top = torch.from_numpy(ds["top_mask"].sel(percent=10.0).values)
    expected = {}
    with torch.inference_mode():
        for condition, context in (("clean", None), ("both_top", top)):
            with ablate(model, context, mode="both") if context is not None else torch.inference_mode():
                scores = [choice_log_likelihoods(model, tokenizer, d["question"], d["choices"]) for d in docs]
            expected[condition] = scores
            acc = np.mean([int(np.argmax(s)) == d["label"] for s, d in zip(scores, docs)])
            norm = np.mean(
                [
                    int(np.argmax(np.array(s) / [len(c) for c in d["choices"]])) == d["label"]
                    for s, d in zip(scores, docs)
                ]
            )
            stored = ds.sel(condition=condition, percent=10.0, task="tiny_mc")
            assert float(stored["lmeval_acc"]) == pytest.approx(acc) and float(
                stored["lmeval_acc_norm"]
            ) == pytest.approx(norm)
            by_hand = [float(int(np.argmax(s)) == d["label"]) for s, d in zip(scores, docs)]
            items = ds["lmeval_item_correct"].sel(condition=condition, percent=10.0).values
            assert items.dtype == np.float32 and items.tolist() == by_hand  # each example's outcome, in doc order
    assert not np.allclose(expected["clean"], expected["both_top"])  # the hook is live inside lm-eval's forward passes
    assert ds["lmeval_item_task"].values.tolist() == ["tiny_mc"] * len(docs)
    assert ds["lmeval_item_doc"].values.tolist() == list(range(len(docs)))
    for condition in ("clean", "neg_top", "pos_top", "both_top", "neg_random", "neg_matched"):
        row = ds.sel(condition=condition, percent=10.0)  # the stored accuracy recomputes from the examples
        assert float(row["lmeval_item_correct"].mean()) == pytest.approx(float(row["lmeval_acc"].sel(task="tiny_mc")))
    paired_c6_on_the_stored_items(ds)


def paired_c6_on_the_stored_items(ds) -> None:  # noqa: ANN001
    """C6 of a cube with lm-eval items is accuracy_difference on them; without them, the unpaired row (on
    this tiny model the two conditions may agree on every example: tests/report/test_claims.py plants an effect)."""
    settings = ClaimSettings(n_boot=2000, seed=5)
    c6 = next(c for c in study_claims(ds, settings) if c.id == "C6")
    top, matched = (ds["lmeval_item_correct"].sel(condition=c, percent=10.0).values for c in ("neg_top", "neg_matched"))
    direct = accuracy_difference(top, matched, [str(t) for t in ds["lmeval_item_task"].values], n_boot=2000, seed=5)
    assert (c6.effect, c6.low, c6.high, c6.n, c6.p_value) == (
        direct.estimate,
        direct.low,
        direct.high,
        12,
        direct.p_value,
    )
    assert c6.effect == pytest.approx(float(np.mean(top.astype(float) - matched.astype(float))))
    older = ds.drop_vars(["lmeval_item_correct", "lmeval_item_task", "lmeval_item_doc", "lmeval_item"])
    old = next(c for c in study_claims(older, settings) if c.id == "C6")  # a cube made before the items
    acc = {
        c: float(ds["lmeval_acc"].sel(condition=c, percent=10.0, task="tiny_mc")) for c in ("neg_top", "neg_matched")
    }
    assert old.n == 1 and old.effect == pytest.approx(acc["neg_top"] - acc["neg_matched"])
    assert old.note.startswith(
        "unpaired normal approximation over tasks (lm-eval's per-example outcomes are not stored)"
    )


def test_help_lists_every_study_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ablate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0
    for expected in (
        "--percents PERCENTS",
        "(default: 0.5,1,2,5)",
        "--match-tolerance",
        "(default: 0.05)",
        "--layer-groups",
        "(default: 8)",
        "--lmeval-limit",
        "(default: 100)",
        "--full",
    ):
        assert expected in text


def test_full_lifts_every_budget_and_limit_zero_means_all():
    from dynamics.study.config import StudyConfig

    assert StudyConfig(model="m", out="o.zarr", full=True).budgets() == {
        "tse_per_case": None,
        "blimp_per_paradigm": None,
        "ppl_tokens": None,
        "lmeval_limit": None,
    }
    assert StudyConfig(model="m", out="o.zarr", lmeval_limit=0, protocol="strict").budgets() == {
        "tse_per_case": 50,
        "blimp_per_paradigm": 50,
        "ppl_tokens": 16384,
        "lmeval_limit": None,
    }
    # the paper's protocol: perplexity on the whole validation split, as the official code
    assert StudyConfig(model="m", out="o.zarr", lmeval_limit=0).budgets() == {
        "tse_per_case": 50,
        "blimp_per_paradigm": 50,
        "ppl_tokens": None,
        "lmeval_limit": None,
    }


def test_a_hub_model_is_studied_at_its_main_revision_from_an_offline_cache(study_data, tmp_path):
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--someone--tiny-llama"
    shutil.copytree(study_data / "llama", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    config = study_config(
        "someone/tiny-llama",
        tmp_path / "hub.zarr",
        study_data,
        percents="10",
        layer_groups=0,
        tse_per_case=0,
        blimp_per_paradigm=0,
        cache_dir=str(tmp_path / "hf"),
    )
    assert run_study(config).done == list(range(6))
    ds = open_cube(config.out)
    assert ds.attrs["provenance"]["revision"] == "main" and ds.attrs["provenance"]["commit"] == commit
    assert ds.attrs["identity"]["model"] == "someone/tiny-llama" and ds.attrs["identity"]["commit"] == commit
    assert (repo / "snapshots" / commit).is_dir()  # a study keeps the model it downloaded or found
    local = open_cube(run_local(study_data, tmp_path))
    np.testing.assert_allclose(ds["ppl"].values, local["ppl"].values, rtol=1e-9)


def run_local(study_data, tmp_path):
    config = study_config(
        study_data / "llama",
        tmp_path / "local.zarr",
        study_data,
        percents="10",
        layer_groups=0,
        tse_per_case=0,
        blimp_per_paradigm=0,
    )
    run_study(config)
    return config.out


def test_a_local_suite_is_studied_at_the_step_asked_for(tiny_suite, study_data, tmp_path):
    from dynamics.errors import UserInputError

    config = study_config(
        tiny_suite,
        tmp_path / "suite.zarr",
        study_data,
        percents="10",
        layer_groups=0,
        blimp_per_paradigm=0,
        revision="4",
        corpus=str(tiny_suite / "heldout.txt"),
        window=32,
    )
    assert run_study(config).done == list(range(6))
    ds = open_cube(config.out)
    assert ds.attrs["provenance"]["revision"] == "step4" and ds.attrs["identity"]["revision"] == "step4"
    with pytest.raises(UserInputError, match=r"--revision step3: .* has steps 0, 1, 2, 4, 8"):
        run_study(study_config(tiny_suite, tmp_path / "x.zarr", study_data, revision="3", blimp_per_paradigm=0))
    assert not (tmp_path / "x.zarr").exists()


def test_pos_is_skipped_with_one_line_without_spacy(study_data, tmp_path, monkeypatch, caplog):
    from dynamics.errors import UserInputError
    from dynamics.syntax import pos_tagging as pos

    def missing(*args, **kwargs):
        raise UserInputError(pos.SPACY_MISSING)

    monkeypatch.setattr(pos, "spacy_tagger", missing)
    config = study_config(
        study_data / "llama",
        tmp_path / "nopos.zarr",
        study_data,
        percents="10",
        layer_groups=0,
        tse_per_case=0,
        blimp_per_paradigm=0,
        pos="auto",
    )
    with caplog.at_level(logging.WARNING, logger="dynamics.study.driver"):
        run_study(config)
    # (the matched control may warn too: this tiny model's top set barely moves perplexity)
    assert [r.getMessage() for r in caplog.records if r.name != "dynamics.ablation.matched"] == [
        f"POS excess surprisal skipped: {pos.SPACY_MISSING}"
    ]
    ds = open_cube(config.out)
    assert "pos_excess" not in ds and ds.attrs["provenance"]["pos"] == "skipped"
