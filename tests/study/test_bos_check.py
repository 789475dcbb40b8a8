"""The BOS check: where the protocol puts the tokenizer's BOS on the first perplexity window only,
the study scores the second window both ways and the report says how far the choice moves it."""

from __future__ import annotations

import math

import pytest
import torch
from fixtures.study import EOS, char_tokenizer, fake_tagger
from fixtures.tiny_models import VOCAB, tiny_model
from study.test_study import study_config

from dynamics.report.study_text import study_report
from dynamics.report.tables import bos_effect_line
from dynamics.study.driver import run_study
from dynamics.syntax.bos_effect import measure_bos_effect
from store import open_cube

pytestmark = pytest.mark.models


def reference_nll(model, ids: list[int], scored_from: int) -> float:
    """Summed NLL of ``ids[scored_from:]``, each given everything before it: one plain forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    return -sum(float(log_probs[t - 1, ids[t]]) for t in range(scored_from, len(ids)))


def test_the_window_is_scored_without_and_with_bos_over_the_same_tokens() -> None:
    model = tiny_model("llama", seed=1).eval()
    windows = torch.randint(3, VOCAB, (3, 24), generator=torch.Generator().manual_seed(0))
    effect = measure_bos_effect(model, windows, [0])
    assert effect is not None
    core = windows[1, :23].tolist()  # the window less one token, so that BOS + window keeps its length
    assert (effect.window, effect.tokens, effect.lead_ids) == (1, 22, (0,))
    assert effect.ppl_without == pytest.approx(math.exp(reference_nll(model, core, 1) / 22), rel=1e-5)
    assert effect.ppl_with == pytest.approx(math.exp(reference_nll(model, [0, *core], 2) / 22), rel=1e-5)
    assert effect.ppl_without != pytest.approx(effect.ppl_with, rel=1e-6)  # BOS changes this model's numbers
    assert effect.factor == pytest.approx(effect.ppl_without / effect.ppl_with)


def test_nothing_is_compared_without_a_leading_token_or_a_second_window() -> None:
    model = tiny_model("llama").eval()
    windows = torch.randint(3, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    assert measure_bos_effect(model, windows, []) is None
    assert measure_bos_effect(model, windows[:1], [0]) is None


def record(without: float, with_bos: float) -> dict:
    return {"window": 1, "tokens": 254, "lead_ids": [1], "ppl_without_bos": without, "ppl_with_bos": with_bos}


def test_the_report_line_warns_only_when_the_choice_moves_perplexity_by_more_than_ten_percent() -> None:
    assert bos_effect_line(None) is None
    quiet = bos_effect_line(record(30.0, 29.3))
    assert quiet == (
        "BOS check (window 2, 254 tokens): perplexity 30 without BOS as the protocol scores it, "
        "29.3 with BOS in front (x1.02)"
    )
    loud = bos_effect_line(record(96.2, 29.3))
    assert loud.startswith("WARNING: BOS check (window 2, 254 tokens): perplexity 96.2 without BOS")
    assert "(x3.28)" in loud and "--window-bos every" in loud
    assert bos_effect_line(record(20.0, 29.3)).startswith("WARNING:")  # BOS can also hurt


def bos_adding_model(directory):
    """The tiny llama with the character tokenizer that puts its BOS (id 0) before every text."""
    from tokenizers import processors

    tokenizer = char_tokenizer()
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{EOS} $A", special_tokens=[(EOS, 0)]
    )
    assert tokenizer("ab")["input_ids"][0] == 0
    directory.mkdir()
    tiny_model("llama", seed=2).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("adds_bos", [True, False], ids=["llama-style", "pythia-style"])
def test_a_paper_protocol_study_records_and_reports_the_check(study_data, tmp_path, adds_bos) -> None:
    model_dir = bos_adding_model(tmp_path / "bos_llama") if adds_bos else study_data / "llama"
    config = study_config(model_dir, tmp_path / "study.zarr", study_data, protocol="paper", percents="10")
    assert not run_study(config, tagger=fake_tagger).failed
    ds = open_cube(config.out)
    stored = ds.attrs["provenance"]["bos_check"]
    text = study_report(ds)
    if not adds_bos:  # nothing to compare: no line
        assert stored is None and "BOS check" not in text
        return
    assert stored["lead_ids"] == [0] and stored["window"] == 1 and stored["tokens"] == 62  # 64-token windows
    assert stored["ppl_without_bos"] > 0 and stored["ppl_with_bos"] > 0
    assert bos_effect_line(stored) in text.splitlines()


def test_a_study_that_puts_bos_on_every_window_has_no_check(study_data, tmp_path) -> None:
    config = study_config(bos_adding_model(tmp_path / "bos_llama"), tmp_path / "s.zarr", study_data, percents="10")
    assert config.protocol == "strict"  # every window starts with BOS: nothing to warn about
    assert not run_study(config, tagger=fake_tagger).failed
    assert open_cube(config.out).attrs["provenance"]["bos_check"] is None
