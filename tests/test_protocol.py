"""The paper's protocol by default: each row of docs/protocol.md against the official code.

Every test re-implements the official function in a few lines (from the authors' published
``utils/``: ``tse.py``, ``blimp.py``, ``ablations.py``, ``perplexity.py``, ``IO_collection.py``)
and asserts that the tool's default gives exactly the same numbers on a tiny model.
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures.tiny_models import tiny_input_ids, tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig, PreTrainedTokenizerFast

from checkpoints.adapters import mlp_shape
from dynamics.ablation.hooks import ablate, activation_modules
from dynamics.config.identity import analysis_identity
from dynamics.config.parts import BudgetOptions, ScoringOptions
from dynamics.config.protocol import resolve_protocol
from dynamics.errors import UserInputError
from dynamics.stats.cohort import random_control_mask, top_percent_mask
from dynamics.study.config import StudyConfig
from dynamics.syntax.corpus import load_wd_and_ppl_windows, text_specs
from dynamics.syntax.scoring import Batching, ScoringRules, score_pairs
from dynamics.syntax.tse import NPI_CASES, tse_pairs

pytestmark = pytest.mark.models

WORDS = (
    "the a no most few many some author authors guard guards pilot pilots laugh laughs that like likes is are "
    "tall and near have has ever been popular will be famous seen"
).split()
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
VOCAB = {w: i for i, w in enumerate(SPECIALS + WORDS)}


def word_tokenizer(adds_bos: bool) -> PreTrainedTokenizerFast:
    """Pythia-style (adds nothing) or Llama-style (adds BOS with add_special_tokens=True)."""
    backend = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if adds_bos:
        backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def word_model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=len(VOCAB), initializer_range=0.3
    )
    config = (
        GPTNeoXConfig(**common, intermediate_size=128)
        if family == "gpt_neox"
        else LlamaConfig(**common, num_key_value_heads=2, intermediate_size=64)
    )
    return AutoModelForCausalLM.from_config(config).eval()


def paper() -> object:
    return resolve_protocol(ScoringOptions())


# --------------------------------------------------------------- the official scorers, re-implemented
def official_scores(model, tokenizer, sentences: list[str], reduction: str) -> np.ndarray:
    """utils/tse.py batched_scores (mean) and utils/blimp.py compute_logprobs (sum): the tokenizer's own
    special tokens, right padding, positions 1.. scored against the shifted ids under the attention mask."""
    enc = tokenizer(sentences, return_tensors="pt", padding=True, add_special_tokens=True)
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, :-1].double()
    targets, mask = enc["input_ids"][:, 1:], enc["attention_mask"][:, 1:].double()
    token_lp = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0] * mask
    total = token_lp.sum(dim=1)
    return (total / mask.sum(dim=1).clamp(min=1) if reduction == "mean" else total).numpy()


def known_pairs() -> list[dict]:
    """Pairs (and NPI triples) made of the tiny vocabulary."""
    return [
        {"good": "the author laughs", "bad": "the author laugh", "case": "simple_agrmt"},
        {"good": "the authors near the guard laugh", "bad": "the authors near the guard laughs", "case": "prep_anim"},
        {
            "good": "the pilot that likes the guards is tall",
            "bad": "the pilot that likes the guards are tall",
            "case": "subj_rel",
        },
        {
            "good": "no authors have ever been popular",
            "intrusive": "the authors have ever been popular",
            "bad": "most authors have ever been popular",
            "case": "simple_npi_anim",
        },
        {
            "good": "few pilots will ever be famous",
            "intrusive": "some pilots will ever be famous",
            "bad": "many pilots will ever be famous",
            "case": "simple_npi_anim",
        },
        {
            "good": "no guards that the author likes have ever been seen",
            "bad": "most guards that the author likes have ever been seen",
            "intrusive": "the guards that no author likes have ever been seen",
            "case": "npi_across_anim",
        },
    ]


# ------------------------------------------------------------------------------------------ rows
def test_the_default_protocol_is_the_papers() -> None:
    chosen = paper()
    assert chosen.record() == {
        "name": "paper",
        "tse_reduction": "mean",
        "blimp_reduction": "sum",
        "prefix": "auto",
        "npi": "last",
        "random_control": "all",
        "window_bos": "first",
        "pos_unit": "tokens",
        "wd_joiner": " ",
    }
    strict = resolve_protocol(ScoringOptions(protocol="strict"))
    assert (strict.tse_reduction, strict.prefix, strict.npi, strict.random_control, strict.window_bos) == (
        "sum",
        "bos",
        "intrusive",
        "non-top",
        "every",
    )
    # an individual option overrides the protocol's choice
    assert resolve_protocol(ScoringOptions(tse_reduction="sum", prefix="none")).record()["tse_reduction"] == "sum"
    assert resolve_protocol(ScoringOptions(protocol="strict", npi="last")).npi == "last"
    assert analysis_identity(StudyConfig(model="m", out="o.zarr"))["resolved_protocol"] == chosen.record()


@pytest.mark.parametrize("bad", [dict(protocol="loose"), dict(npi="both"), dict(tse_reduction="max"), dict(prefix=" ")])
def test_a_bad_protocol_choice_is_one_line(bad: dict) -> None:
    with pytest.raises(UserInputError) as info:
        resolve_protocol(ScoringOptions(**bad))
    assert "\n" not in str(info.value) and "expected" in str(info.value)


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
@pytest.mark.parametrize("adds_bos", [False, True], ids=["pythia-style", "llama-style"])
def test_tse_default_is_the_official_mean_with_the_tokenizers_own_first_token(family: str, adds_bos: bool) -> None:
    model, tokenizer = word_model(family), word_tokenizer(adds_bos)
    pairs = known_pairs()
    chosen = paper()
    got = score_pairs(
        model,
        tokenizer,
        pairs,
        ScoringRules.parse(chosen.tse_reduction, chosen.prefix, chosen.npi),
        Batching(batch_tokens=40, progress=False),
        keep_pairs=True,
    )
    good = official_scores(model, tokenizer, [p["good"] for p in pairs], "mean")
    bad = official_scores(model, tokenizer, [p["bad"] for p in pairs], "mean")
    np.testing.assert_allclose(got.good, good, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.bad, bad, rtol=1e-5, atol=1e-6)
    assert got.correct.tolist() == (good > bad).tolist()  # NPI: good vs the last sentence only
    assert np.isnan(got.intrusive).all()  # the official code never scores the intrusive sentence


@pytest.mark.parametrize("adds_bos", [False, True], ids=["pythia-style", "llama-style"])
def test_blimp_default_is_the_official_sum(adds_bos: bool) -> None:
    model, tokenizer = word_model("gpt_neox"), word_tokenizer(adds_bos)
    pairs = [p for p in known_pairs() if "intrusive" not in p]
    chosen = paper()
    got = score_pairs(
        model,
        tokenizer,
        pairs,
        ScoringRules.parse(chosen.blimp_reduction, chosen.prefix, chosen.npi),
        Batching(progress=False),
        keep_pairs=True,
    )
    np.testing.assert_allclose(
        got.good, official_scores(model, tokenizer, [p["good"] for p in pairs], "sum"), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        got.bad, official_scores(model, tokenizer, [p["bad"] for p in pairs], "sum"), rtol=1e-5, atol=1e-6
    )


def test_first_token_auto_scores_what_the_tokenizer_leaves_scorable() -> None:
    """Pythia-style: n - 1 scored tokens (the first has no context); Llama-style: all n (after BOS)."""
    from dynamics.syntax.scoring import encode_with_prefix

    sentence = ["the author laughs"]
    ids = [VOCAB[w] for w in sentence[0].split()]
    assert encode_with_prefix(word_tokenizer(False), sentence, "auto") == ([ids], None)
    assert encode_with_prefix(word_tokenizer(True), sentence, "auto") == ([[VOCAB["<bos>"], *ids]], None)
    assert encode_with_prefix(word_tokenizer(False), sentence, "bos") == ([ids], VOCAB["<bos>"])  # strict
    assert encode_with_prefix(word_tokenizer(False), sentence, "<eos>") == ([ids], VOCAB["<eos>"])
    assert encode_with_prefix(word_tokenizer(True), sentence, "none") == ([ids], None)


def test_npi_paper_is_good_vs_last_and_strict_needs_the_intrusive_too() -> None:
    model, tokenizer = word_model("gpt_neox"), word_tokenizer(False)
    pairs = [p for p in known_pairs() if "intrusive" in p]
    quiet = Batching(progress=False)
    strict = score_pairs(model, tokenizer, pairs, ScoringRules("sum", "bos", "intrusive"), quiet, keep_pairs=True)
    last = score_pairs(model, tokenizer, pairs, ScoringRules("sum", "bos", "last"), quiet, keep_pairs=True)
    np.testing.assert_allclose(last.good, strict.good)
    assert last.correct.tolist() == (strict.good > strict.bad).tolist()  # official: tup[0] vs tup[-1]
    assert strict.correct.tolist() == ((strict.good > strict.bad) & (strict.good > strict.intrusive)).tolist()
    # the generated benchmark's NPI tuples: the last sentence is the ungrammatical one, as the official reader takes
    npi = [p for p in tse_pairs(NPI_CASES[:1])][:3]
    assert all(p.bad.split()[0] in ("most", "many") for p in npi)


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
@pytest.mark.parametrize("mode", ["signflip", "posrelu"])
def test_activation_modes_equal_the_official_activation_replacement(family: str, mode: str) -> None:
    """utils/ablations.py patches the MLP's activation with SelectiveSignFlip / SelectivePosReLU; so does this
    test (by hand), and the logits must equal the tool's hook-based mode."""
    model = tiny_model(family)
    ids = tiny_input_ids(batch=2, length=9)
    mask = torch.rand(mlp_shape(model), generator=torch.Generator().manual_seed(3)) < 0.3
    with torch.no_grad(), ablate(model, mask, mode=mode):
        ours = model(input_ids=ids).logits
    base = F.gelu if family == "gpt_neox" else F.silu

    class Official(torch.nn.Module):
        def __init__(self, chosen: torch.Tensor) -> None:
            super().__init__()
            self.chosen = chosen

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = base(x)
            changed = torch.where(y < 0, -y, y) if mode == "signflip" else torch.where(x > 0, x, y)
            return torch.where(self.chosen, changed, y)

    mlps = [layer.mlp for layer in (model.gpt_neox.layers if family == "gpt_neox" else model.model.layers)]
    name = "act" if family == "gpt_neox" else "act_fn"
    originals = activation_modules(model)
    try:
        for layer, mlp in enumerate(mlps):
            setattr(mlp, name, Official(mask[layer]))
        with torch.no_grad():
            official = model(input_ids=ids).logits
    finally:
        for mlp, original in zip(mlps, originals):
            setattr(mlp, name, original)
    torch.testing.assert_close(ours, official, atol=1e-5, rtol=1e-5)


def test_random_control_is_drawn_from_all_neurons_of_the_layer() -> None:
    """utils/ablations.py: np.random.choice(range(n), size=len(top), replace=False) per layer, so the control may
    share neurons with the top set; the tool draws the same way (seeded instead of unseeded)."""
    scores = torch.rand(3, 40, generator=torch.Generator().manual_seed(0))
    top = top_percent_mask(scores, 50)
    pool = paper().random_control
    overlaps = []
    for seed in range(5):
        control = random_control_mask(top, seed, pool=pool)
        assert control.sum(dim=1).tolist() == top.sum(dim=1).tolist()
        generator = torch.Generator().manual_seed(seed)  # the same draw written out: randperm over all n
        for layer in range(3):
            chosen = torch.randperm(40, generator=generator)[: int(top[layer].sum())]
            assert set(torch.nonzero(control[layer]).flatten().tolist()) == set(chosen.tolist())
        overlaps.append(bool((control & top).any()))
    assert any(overlaps)
    assert not (random_control_mask(top, 0, pool="non-top") & top).any()  # strict


def _fake_wikitext(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    rng = np.random.default_rng(0)
    splits = {
        split: [" ".join(rng.choice(WORDS, size=int(rng.integers(0, 12)))) for _ in range(rows)]
        for split, rows in (("train", 600), ("validation", 120), ("test", 80))
    }
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, split, **k: {"text": splits[split]})
    return splits


@pytest.mark.parametrize("adds_bos", [False, True], ids=["pythia-style", "llama-style"])
def test_wd_windows_from_train_and_perplexity_windows_from_validation(
    monkeypatch: pytest.MonkeyPatch, adds_bos: bool
) -> None:
    """IO_collection.collect_IO_from_dataset: " ".join(train), tokenized once, windows of L every L // 2 tokens,
    256 of them; perplexity.load_wikitext2_dataset: "\\n\\n".join(validation), tokenized once, every full
    non-overlapping window. Only the first window of each starts with the tokenizer's BOS."""
    splits = _fake_wikitext(monkeypatch)
    tokenizer, window = word_tokenizer(adds_bos), 8
    train = tokenizer(" ".join(splits["train"]))["input_ids"]
    official_wd = [train[i : i + window] for i in range(0, len(train) - window, window // 2)][:256]
    valid = tokenizer("\n\n".join(splits["validation"]))["input_ids"]
    official_ppl = [valid[i : i + window] for i in range(0, len(valid), window) if i + window <= len(valid)]
    assert len(official_wd) == 256 and len(train) > 256 * window // 2 + window  # the budget, not the text, limits
    chosen = paper()
    wd_spec, ppl_spec, one = text_specs(BudgetOptions(), chosen, "wikitext2", window)
    assert not one and (wd_spec.split, ppl_spec.split) == ("train", "validation")
    wd, ppl, _ = load_wd_and_ppl_windows(wd_spec, ppl_spec, tokenizer, one)
    assert wd.tolist() == official_wd
    assert ppl.tolist() == official_ppl
    assert (ppl[:, 0] == 1).tolist() == [adds_bos] + [False] * (len(ppl) - 1)


def test_strict_windows_each_start_with_bos_where_the_tokenizer_adds_one(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_wikitext(monkeypatch)
    strict = resolve_protocol(ScoringOptions(protocol="strict"))
    for adds_bos in (False, True):
        tokenizer = word_tokenizer(adds_bos)
        wd_spec, ppl_spec, one = text_specs(BudgetOptions(wd_tokens=64, ppl_tokens=64), strict, "wikitext2", 8)
        wd, ppl, _ = load_wd_and_ppl_windows(wd_spec, ppl_spec, tokenizer, one)
        assert wd.shape == ppl.shape == (8, 8)
        assert bool((ppl[:, 0] == 1).all()) == adds_bos and bool((wd[:, 0] == 1).all()) == adds_bos
        if not adds_bos:  # Pythia-style: exactly the windows from before --protocol (no special token anywhere)
            valid = tokenizer(
                "\n\n".join(datasets.load_dataset("wikitext", split="validation")["text"]), add_special_tokens=False
            )["input_ids"]
            assert ppl.flatten().tolist() == valid[:64]


def _official_tags(text: str, offsets: list, special: list, tagger) -> list[str]:  # noqa: ANN001
    """utils/tagging.py align_pos_with_pretokenized, for one window (offsets relative to its slice)."""
    spans = [(s, e, p) for s, e, p in tagger(text)]
    tags = []
    for (start, end), is_special in zip(offsets, special):
        if is_special or end <= start:
            tags.append("SPECIAL")
            continue
        best, overlap_best = "X", 0
        for s0, s1, p in spans:
            if s0 >= end:
                break
            overlap = max(0, min(end, s1) - max(start, s0))
            if overlap > overlap_best:
                best, overlap_best = p, overlap
        if overlap_best == 0:
            for s0, s1, p in spans:
                if s0 <= start < s1:
                    best, overlap_best = p, s1 - s0
                    break
        tags.append(best if overlap_best > 0 else "X")
    return tags


def test_pos_excess_per_model_token_inside_the_perplexity_windows(tmp_path) -> None:
    """The study's default POS excess surprisal: every token of the perplexity windows tagged as the official
    tagging does (tagger on each window's covering text, largest character overlap), mean ablated - clean NLL."""
    from fixtures.study import CORPUS, fake_tagger, save_tiny_model, write_blimp

    from dynamics.study.driver import run_study
    from dynamics.syntax.pos import UPOS
    from store import open_cube

    tagger = fake_tagger  # whitespace words: long ones NOUN, short ones DET

    model_dir = save_tiny_model("llama", tmp_path / "llama")
    write_blimp(tmp_path / "blimp")
    (tmp_path / "wd.txt").write_text(CORPUS * 12, encoding="utf-8")
    ppl_text = "".join(f"line {i} of the held out text, with several longer wording choices.\n" for i in range(40))
    (tmp_path / "ppl.txt").write_text(ppl_text, encoding="utf-8")
    config = StudyConfig(
        model=str(model_dir),
        out=str(tmp_path / "s.zarr"),
        wd_corpus=str(tmp_path / "wd.txt"),
        ppl_corpus=str(tmp_path / "ppl.txt"),
        corpus=str(tmp_path / "wd.txt"),
        window=64,
        wd_tokens=512,
        ppl_tokens=256,
        percents="10",
        match_percent=10.0,
        match_iterations=2,
        tse_per_case=0,
        blimp=str(tmp_path / "blimp"),
        blimp_per_paradigm=0,
        tasks="none",
        layer_groups=0,
        pos="auto",
        threads=1,
    )
    assert resolve_protocol(config).pos_unit == "tokens"
    run_study(config, tagger=tagger)
    ds = open_cube(config.out)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    enc = tokenizer(ppl_text, return_offsets_mapping=True, return_special_tokens_mask=True, add_special_tokens=True)
    ids, offsets, special = enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"]
    windows, tags = [], []
    for k in range(4):
        sl = slice(k * 64, k * 64 + 64)
        spans = [(s, e) for (s, e), m in zip(offsets[sl], special[sl]) if m == 0 and e > s]
        first, last = min(s for s, _ in spans), max(e for _, e in spans)
        relative = [(max(0, s - first), max(0, e - first)) if e > s else (0, 0) for s, e in offsets[sl]]
        tags += _official_tags(ppl_text[first:last], relative, special[sl], tagger)[1:]
        windows.append(ids[sl])
    x = torch.tensor(windows)

    def nll() -> np.ndarray:
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=x).logits[:, :-1].double(), dim=-1)
        return (-lp.gather(-1, x[:, 1:, None])[..., 0]).reshape(-1).numpy()

    clean = nll()
    with ablate(model, torch.from_numpy(ds["top_mask"].sel(percent=10.0).values), mode="both"):
        ablated = nll()
    for tag in ("NOUN", "DET"):
        chosen = np.array(tags) == tag
        assert chosen.any()
        got = float(ds["pos_excess"].sel(condition="both_top", percent=10.0, pos=tag))
        assert got == pytest.approx(float(np.mean(ablated[chosen] - clean[chosen])), rel=1e-4, abs=1e-6)
    assert set(tags) <= {"NOUN", "DET", "X"} and "VERB" in UPOS
    assert ds.attrs["provenance"]["pos"] == "every token of 4 perplexity windows"
