"""Sentence scoring and minimal pairs, checked against a one-sentence-at-a-time slow loop."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
)

from dynamics.errors import UserInputError
from dynamics.models.modelcalls import capabilities
from dynamics.syntax.scoring import (
    Batching,
    ScoringRules,
    encode,
    prefix_token_id,
    score_pairs,
    score_sentences,
    summarize_pairs,
    token_log_probs,
)

# Calls models: also run against the lowest transformers the project declares (.ci/run).
pytestmark = pytest.mark.models

WORDS = (
    "the a no most author authors guard guards pilot pilots laugh laughs swim swims "
    "that like likes is are tall and near behind have ever been popular"
).split()
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
QUIET = Batching(progress=False)  # the default batching, without a progress bar

SENTENCES = [
    "the author laughs",
    "the authors laughs",
    "the author near the guards laughs",
    "the author near the guards laugh",
    "the pilots that like the guard swim and laugh",
    "a pilot",
    "authors",
    "the guard that the authors like is tall",
    "no authors have ever been popular",
    "the authors laughs",  # a repeat
]


def tiny_tokenizer(bos: bool = True, eos: bool = True) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>" if bos else None,
        eos_token="<eos>" if eos else None,
        pad_token="<pad>",
        unk_token="<unk>",
    )


def tiny_model(family: str = "gpt_neox", vocab_size: int = len(SPECIALS) + len(WORDS)) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "gpt_neox":
        config = GPTNeoXConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            vocab_size=vocab_size,
            initializer_range=0.3,
        )
    else:
        config = LlamaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=vocab_size,
            initializer_range=0.3,
        )
    return AutoModelForCausalLM.from_config(config).eval()


def slow_token_log_probs(model, tokenizer, sentence: str, prefix_id: int | None) -> list[float]:
    """One sentence, one unpadded forward pass, log_softmax, manual gather."""
    ids = tokenizer(sentence, add_special_tokens=False)["input_ids"]
    full = ([prefix_id] if prefix_id is not None else []) + list(ids)
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    return [float(log_probs[j - 1, full[j]]) for j in range(1, len(full))]


def slow_scores(model, tokenizer, sentences, prefix_id, reduction="sum") -> np.ndarray:
    out = []
    for s in sentences:
        lp = slow_token_log_probs(model, tokenizer, s, prefix_id)
        if reduction == "sum":
            out.append(sum(lp))
        else:
            out.append(sum(lp) / len(lp) if lp else np.nan)
    return np.array(out)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module", params=["gpt_neox", "llama"])
def model(request):
    return tiny_model(request.param)


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("batch_tokens", [1, 20, 4096])
def test_batched_scores_match_one_at_a_time(model, tokenizer, padding_side, batch_tokens):
    expected = slow_scores(model, tokenizer, SENTENCES, tokenizer.bos_token_id)
    got = score_sentences(
        model, tokenizer, SENTENCES, batching=Batching(batch_tokens, padding_side=padding_side, progress=False)
    )
    assert got.dtype == np.float64 and got.shape == (len(SENTENCES),)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # The sentences really differ: the tolerance is far below the spread of the scores.
    assert np.ptp(expected) > 1.0


def test_prefix_scores_every_token_with_bos(model, tokenizer):
    per_token = token_log_probs(
        model, encode(tokenizer, SENTENCES), tokenizer.bos_token_id, Batching(batch_tokens=64, progress=False)
    )
    for sentence, lp in zip(SENTENCES, per_token):
        n_tokens = len(sentence.split())
        assert lp.shape == (n_tokens,)
        np.testing.assert_allclose(lp, slow_token_log_probs(model, tokenizer, sentence, 1), atol=1e-4)


def test_no_prefix_leaves_first_token_unscored(model, tokenizer):
    batching = Batching(batch_tokens=30, progress=False)
    got_sum = score_sentences(model, tokenizer, SENTENCES, ScoringRules(prefix=False), batching)
    got_mean = score_sentences(model, tokenizer, SENTENCES, ScoringRules(reduction="mean", prefix=False), batching)
    np.testing.assert_allclose(got_sum, slow_scores(model, tokenizer, SENTENCES, None), atol=1e-4)
    n_scored = np.array([len(s.split()) - 1 for s in SENTENCES], dtype=float)
    one_word = n_scored == 0
    assert one_word.any()
    assert np.all(got_sum[one_word] == 0.0) and np.all(np.isnan(got_mean[one_word]))
    np.testing.assert_allclose(got_mean[~one_word], got_sum[~one_word] / n_scored[~one_word], rtol=1e-12)
    per_token = token_log_probs(model, encode(tokenizer, SENTENCES), None, QUIET)
    assert [lp.size for lp in per_token] == n_scored.astype(int).tolist()


def test_mean_divides_by_scored_count(model, tokenizer):
    total = score_sentences(model, tokenizer, SENTENCES, batching=QUIET)
    mean = score_sentences(model, tokenizer, SENTENCES, ScoringRules(reduction="mean"), QUIET)
    n_scored = np.array([len(s.split()) for s in SENTENCES], dtype=float)
    np.testing.assert_allclose(mean, total / n_scored, rtol=1e-12)
    np.testing.assert_allclose(mean, slow_scores(model, tokenizer, SENTENCES, 1, "mean"), atol=1e-4)


def test_eos_is_the_prefix_when_there_is_no_bos():
    no_bos = tiny_tokenizer(bos=False)
    assert prefix_token_id(no_bos) == no_bos.eos_token_id == 2
    assert prefix_token_id(no_bos, "<bos>") == 1
    assert prefix_token_id(no_bos, "<unk>") == 3  # SmolLM2's <|endoftext|> is also its unknown token
    with pytest.raises(UserInputError, match="neither a BOS nor an EOS"):
        prefix_token_id(tiny_tokenizer(bos=False, eos=False))
    with pytest.raises(UserInputError, match="'<nope>' is not in the tokenizer"):
        prefix_token_id(no_bos, "<nope>")
    model = tiny_model()
    got = score_sentences(model, no_bos, SENTENCES[:4], batching=QUIET)
    np.testing.assert_allclose(got, slow_scores(model, no_bos, SENTENCES[:4], 2), atol=1e-4)


@dataclass(frozen=True)
class Pair:
    good: str
    bad: str
    case: str
    intrusive: str | None = None


PAIRS = [
    Pair("the author laughs", "the author laugh", "simple"),
    Pair("the authors laugh", "the authors laughs", "simple"),
    Pair("the author near the guards laughs", "the author near the guards laugh", "prep"),
    Pair("the authors near the guard laugh", "the authors near the guard laughs", "prep"),
    Pair("the author laughs", "the author swims", "simple"),  # shares a sentence with pair 0
    Pair("the pilot that likes the guard", "the pilot", "simple"),  # bad is a prefix of good
    Pair(
        "no authors have ever been popular",
        "most authors have ever been popular",
        "npi",
        intrusive="the authors have ever been popular",
    ),
    Pair(
        "no guards have ever been popular",
        "most guards have ever been popular",
        "npi",
        intrusive="the guards have ever been popular",
    ),
]


def test_score_pairs_matches_slow_loop(model, tokenizer):
    result = score_pairs(model, tokenizer, PAIRS, batching=Batching(batch_tokens=24, progress=False), keep_pairs=True)
    good = slow_scores(model, tokenizer, [p.good for p in PAIRS], 1)
    bad = slow_scores(model, tokenizer, [p.bad for p in PAIRS], 1)
    intrusive = np.array([slow_scores(model, tokenizer, [p.intrusive], 1)[0] if p.intrusive else np.nan for p in PAIRS])
    np.testing.assert_allclose(result.good, good, atol=1e-4)
    np.testing.assert_allclose(result.bad, bad, atol=1e-4)
    np.testing.assert_allclose(result.intrusive, intrusive, atol=1e-4, equal_nan=True)
    correct = [(g > b) and (np.isnan(i) or g > i) for g, b, i in zip(good, bad, intrusive)]
    assert result.correct.tolist() == correct
    assert result.groups == ("npi", "prep", "simple")
    for name, idx in {"npi": [6, 7], "prep": [2, 3], "simple": [0, 1, 4, 5]}.items():
        g = result.groups.index(name)
        assert result.count[g] == len(idx)
        assert result.accuracy[g] == pytest.approx(np.mean([correct[i] for i in idx]))
        assert result.margin[g] == pytest.approx(np.mean(good[idx] - bad[idx]), abs=1e-4)
    assert result.overall_accuracy == pytest.approx(np.mean(correct))


def test_no_prefix_pairs_match_slow_loop(model, tokenizer):
    # NPI pairs differ in their first word: without a prefix they share nothing and run in
    # one pass, beside the others' two-pass prefix sharing, in the same batch.
    result = score_pairs(model, tokenizer, PAIRS, ScoringRules(prefix=False), QUIET, keep_pairs=True)
    for field in ("good", "bad"):
        expected = slow_scores(model, tokenizer, [getattr(p, field) for p in PAIRS], None)
        np.testing.assert_allclose(getattr(result, field), expected, atol=1e-4)


def test_shared_prefix_is_computed_once(tokenizer):
    model = tiny_model()
    assert capabilities(model).cache_keyword is not None  # probed here, before the hook counts calls
    widths = []
    # The scorer runs the decoder (``base_model``) and projects only the scored positions.
    handle = model.base_model.register_forward_hook(
        lambda module, args, kwargs, out: widths.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        pairs = [Pair("the author near the guards laughs", "the author near the guards laugh", "prep")]
        score_pairs(model, tokenizer, pairs, batching=QUIET)
    finally:
        handle.remove()
    # BOS + 'the author near the guards' once, then the two one-word suffixes.
    assert widths == [torch.Size([1, 6]), torch.Size([2, 1])]


def test_sliding_window_shorter_than_the_pairs():
    """With a window of 3 tokens the padded shared prefix would shift the window: one pass."""
    torch.manual_seed(0)
    config = MistralConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=len(SPECIALS) + len(WORDS),
        sliding_window=3,
        initializer_range=0.3,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    tokenizer = tiny_tokenizer()
    result = score_pairs(model, tokenizer, PAIRS, batching=QUIET, keep_pairs=True)
    for field in ("good", "bad"):
        expected = slow_scores(model, tokenizer, [getattr(p, field) for p in PAIRS], 1)
        np.testing.assert_allclose(getattr(result, field), expected, atol=1e-4)


class NoKeepArgument(torch.nn.Module):
    """A model whose forward takes no ``logits_to_keep``: the scorer indexes full logits."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


def test_models_without_logits_to_keep(tokenizer):
    model = tiny_model()
    plain = score_pairs(NoKeepArgument(model), tokenizer, PAIRS, batching=QUIET, keep_pairs=True)
    fast = score_pairs(model, tokenizer, PAIRS, batching=QUIET, keep_pairs=True)
    np.testing.assert_allclose(plain.good, fast.good, atol=1e-5)
    np.testing.assert_allclose(plain.bad, fast.bad, atol=1e-5)


def test_pairs_as_mappings_with_another_group_field(tokenizer):
    model = tiny_model()
    records = [{"good": p.good, "bad": p.bad, "paradigm": p.case} for p in PAIRS[:4]]
    result = score_pairs(model, tokenizer, records, batching=QUIET, group_by="paradigm")
    assert result.group_by == "paradigm" and result.groups == ("prep", "simple")
    assert result.good is None
    ds = result.to_dataset()
    assert ds["accuracy"].dims == ("paradigm",) and ds["count"].values.tolist() == [2, 2]
    with pytest.raises(UserInputError, match="has no field 'case'"):
        score_pairs(model, tokenizer, records, batching=QUIET)


def test_summarize_pairs_counts_npi_intrusive_and_ties():
    result = summarize_pairs(
        good=np.array([-1.0, -1.0, -3.0, -2.0]),
        bad=np.array([-2.0, -2.0, -1.0, -2.0]),
        groups=["a", "b", "b", "a"],
        intrusive=np.array([np.nan, -0.5, np.nan, np.nan]),
        keep_pairs=True,
    )
    # pair 1 beats bad but loses to its intrusive sentence; pair 3 is a tie (not correct).
    assert result.correct.tolist() == [True, False, False, False]
    assert result.accuracy.tolist() == [0.5, 0.0]
    assert result.margin.tolist() == [0.5, -0.5]
    assert result.overall_accuracy == 0.25
    ds = result.to_dataset()
    assert ds.sizes == {"case": 2, "pair": 4}
    assert ds.attrs["overall_accuracy"] == 0.25
    # In a caller's order, NaN for a group that was not scored.
    np.testing.assert_array_equal(result.aligned("accuracy", ["b", "c", "a"]), [0.0, np.nan, 0.5])
    np.testing.assert_array_equal(result.aligned("margin", ["a"]), [0.5])


def test_bad_arguments_are_one_line_errors(tokenizer):
    model = tiny_model()
    with pytest.raises(UserInputError, match="reduction='max'; expected 'sum' or 'mean'"):
        score_sentences(model, tokenizer, SENTENCES, ScoringRules(reduction="max"), QUIET)
    with pytest.raises(UserInputError, match="batch_tokens=0"):
        score_sentences(model, tokenizer, SENTENCES, batching=Batching(batch_tokens=0, progress=False))
    model.train()
    score_sentences(model, tokenizer, SENTENCES[:2], batching=QUIET)
    assert model.training  # the caller's mode is restored


def pythia_tokenizer(shared_data) -> PreTrainedTokenizerFast:
    """The real GPT-NeoX-20B tokenizer of Pythia, with its special tokens named."""
    return PreTrainedTokenizerFast(
        tokenizer_file=str(shared_data / "tokenizers" / "gpt-neox-20b.json"),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|padding|>",
    )


def test_real_pythia_tokenizer(shared_data):
    tokenizer = pythia_tokenizer(shared_data)
    model = tiny_model(vocab_size=50304)
    sentences = [
        "Who should Derek hug after shocking Richard?",
        "Who should Derek hug Richard after shocking?",
        "The authors that the guard likes laugh.",
        "no authors have ever been popular",
    ]
    assert prefix_token_id(tokenizer) == 0
    got = score_sentences(model, tokenizer, sentences, batching=Batching(batch_tokens=40, progress=False))
    np.testing.assert_allclose(got, slow_scores(model, tokenizer, sentences, 0), atol=1e-4)


# --- differences_only: the shared tokens before a pair's first difference are not projected ---

UNEQUAL_PAIRS = [
    *PAIRS,
    Pair("the authors laugh", "the authors laugh and swim", "prefix"),  # bad continues good
    Pair("the pilot is tall", "the pilots are tall", "mean_unequal"),
    Pair("the guard laughs", "the guard laughs", "tie"),  # identical sentences: never correct
]


def slow_pair_margins(model, tokenizer, pairs, prefix_id, reduction, npi):
    """Whole-sentence scores from the slow loop: (good - bad, correct) per pair."""
    good = slow_scores(model, tokenizer, [p.good for p in pairs], prefix_id, reduction)
    bad = slow_scores(model, tokenizer, [p.bad for p in pairs], prefix_id, reduction)
    intrusive = np.array(
        [
            slow_scores(model, tokenizer, [p.intrusive], prefix_id, reduction)[0]
            if p.intrusive and npi == "intrusive"
            else np.nan
            for p in pairs
        ]
    )
    correct = (good > bad) & (np.isnan(intrusive) | (good > intrusive))
    return good - bad, correct


@pytest.mark.parametrize(
    "reduction, prefix, npi", [("sum", "bos", "intrusive"), ("mean", "none", "last"), ("mean", "bos", "intrusive")]
)
def test_differences_only_gives_the_whole_scores_comparisons(model, tokenizer, reduction, prefix, npi):
    margins, correct = slow_pair_margins(
        model, tokenizer, UNEQUAL_PAIRS, 1 if prefix == "bos" else None, reduction, npi
    )
    rules, batching = ScoringRules(reduction, prefix, npi), Batching(batch_tokens=40, progress=False)
    whole = score_pairs(model, tokenizer, UNEQUAL_PAIRS, rules, batching, keep_pairs=True)
    part = score_pairs(model, tokenizer, UNEQUAL_PAIRS, rules, batching, keep_pairs=True, differences_only=True)
    assert part.correct.tolist() == whole.correct.tolist() == correct.tolist()
    assert not correct[-1]  # the tie
    np.testing.assert_allclose(part.margin, whole.margin, rtol=0, atol=2e-6)  # float32 log-probs, summed apart
    for g, name in enumerate(part.groups):
        member = [i for i, p in enumerate(UNEQUAL_PAIRS) if p.case == name]
        assert part.margin[g] == pytest.approx(np.mean(margins[member]), abs=1e-4)
    assert part.accuracy.tolist() == whole.accuracy.tolist()
    assert part.good is None and part.bad is None and part.intrusive is None  # partial sums are not scores
    assert whole.good is not None


def test_differences_only_projects_only_the_positions_after_the_first_difference(tokenizer, monkeypatch):
    from dynamics.models import modelcalls

    model = tiny_model()
    capabilities(model)
    rows = []
    original = modelcalls.hidden_log_probs
    monkeypatch.setattr(
        "dynamics.syntax.logprobs.hidden_log_probs", lambda m, h, t: rows.append(h.shape[0]) or original(m, h, t)
    )
    pairs = [Pair("the author near the guards laughs", "the author near the guards laugh", "prep")]
    score_pairs(model, tokenizer, pairs, batching=QUIET)
    whole = sum(rows)
    rows.clear()
    score_pairs(model, tokenizer, pairs, batching=QUIET, differences_only=True)
    # BOS + 5 shared words: 5 prefix positions projected whole (plus 2 heads), none with differences_only.
    assert whole == 5 + 2 and sum(rows) == 2


@pytest.mark.parametrize("units", [None, [[0, 1], [2]]])
def test_needed_from_leaves_earlier_positions_nan(model, tokenizer, units):
    sentences = ["the author near the guards laughs", "the author near the guards laugh", "a pilot"]
    ids = encode(tokenizer, sentences)
    whole = token_log_probs(model, ids, 1, QUIET, units=units)
    part = token_log_probs(model, ids, 1, QUIET, units=units, needed_from=[3, 5, 0])
    # A unit's shared prefix is projected from its rows' smallest start (3 here) on.
    unprojected = [3, 5, 0] if units is None else [3, 3, 0]
    for got, full, start, nan in zip(part, whole, [3, 5, 0], unprojected):
        assert got.shape == full.shape
        assert np.isnan(got[:nan]).all() and not np.isnan(got[nan:]).any()
        np.testing.assert_allclose(got[start:], full[start:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("reduction, prefix, npi", [("sum", "bos", "intrusive"), ("mean", "auto", "last")])
def test_differences_only_on_real_tse_and_blimp(shared_data, reduction, prefix, npi):
    """The real Pythia tokenizer, a TSE sample and two BLiMP paradigms: the same correctness and
    margins as whole-sentence scoring, with fewer positions projected."""
    from dynamics.syntax.blimp import load_blimp
    from dynamics.syntax.tse import sample_tse, tse_pairs

    tokenizer = pythia_tokenizer(shared_data)
    model = tiny_model(vocab_size=50304)
    blimp = load_blimp(shared_data / "blimp", ["anaphor_gender_agreement", "npi_present_1"])
    pairs = sample_tse(tse_pairs(), per_case=3, seed=0) + blimp[:40] + blimp[-40:]
    rules = ScoringRules(reduction, prefix, npi)
    whole = score_pairs(model, tokenizer, pairs, rules, QUIET, keep_pairs=True)
    part = score_pairs(model, tokenizer, pairs, rules, QUIET, keep_pairs=True, differences_only=True)
    assert part.correct.tolist() == whole.correct.tolist()
    assert part.accuracy.tolist() == whole.accuracy.tolist()
    np.testing.assert_allclose(part.margin, whole.margin, rtol=0, atol=2e-5)
