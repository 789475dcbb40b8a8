"""The scoring API's settings (dynamics.syntax.settings): checked on creation, one line per bad value,
and the engine's per-phase rules taken from the protocol's choices."""

from __future__ import annotations

import pytest

from dynamics.config.parts import ScoringOptions
from dynamics.config.protocol import resolve_protocol
from dynamics.errors import UserInputError
from dynamics.evaluate.benchmarks import Scoring
from dynamics.syntax.settings import DEFAULT_BATCH_TOKENS, DEFAULT_MAX_BATCH_SIZE, Batching, ScoringRules


def test_the_defaults_are_the_strict_scoring_and_the_default_budget():
    assert ScoringRules() == ScoringRules("sum", "bos", "intrusive")
    batching = Batching()
    assert (batching.batch_tokens, batching.max_batch_size, batching.padding_side) == (
        DEFAULT_BATCH_TOKENS,
        DEFAULT_MAX_BATCH_SIZE,
        "right",
    )
    assert batching.device is None and batching.progress is True


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Batching(batch_tokens=0), "batch_tokens=0 and max_batch_size=256 must both be >= 1"),
        (lambda: Batching(max_batch_size=0), "batch_tokens=4096 and max_batch_size=0 must both be >= 1"),
        (lambda: Batching(padding_side="middle"), "padding_side='middle'; expected 'right' or 'left'"),
        (lambda: ScoringRules(reduction="max"), "reduction='max'; expected 'sum' or 'mean'"),
        (lambda: ScoringRules(npi="first"), "npi='first'; expected 'last' or 'intrusive'"),
        (lambda: ScoringRules.parse("median", "bos", "last"), "reduction='median'; expected 'sum' or 'mean'"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(make, message):
    with pytest.raises(UserInputError) as caught:
        make()
    assert str(caught.value) == message


def test_the_engine_scores_each_phase_by_the_protocols_choices():
    paper = Scoring.of(resolve_protocol(ScoringOptions(protocol="paper")))
    assert paper.rules("tse") == ScoringRules("mean", "auto", "last")
    assert paper.rules("blimp") == ScoringRules("sum", "auto", "last")
    strict = Scoring.of(resolve_protocol(ScoringOptions(protocol="strict", tse_reduction="mean", prefix="<eos>")))
    assert strict.rules("tse") == ScoringRules("mean", "<eos>", "intrusive")
    assert strict.rules("blimp") == ScoringRules("sum", "<eos>", "intrusive")
