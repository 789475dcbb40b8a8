"""The study's same-mode conditions measured in one pass give the one-condition numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures.study import char_tokenizer
from fixtures.tiny_models import tiny_input_ids, tiny_model

from checkpoints.adapters import mlp_shape
from dynamics.lmeval import TaskPlan
from dynamics.study.conditions import Unit, study_units
from dynamics.study.measures import StudyInputs, measure_together, measure_unit
from dynamics.study.worker import groups_together
from dynamics.syntax.pairs import MinimalPair
from dynamics.syntax.tse import TSE_CASES

pytestmark = pytest.mark.models

TSE = [
    MinimalPair("the author laughs.", "the author laugh.", TSE_CASES[0]),
    MinimalPair("the authors near the guard laugh.", "the authors near the guard laughs.", TSE_CASES[1]),
    MinimalPair("no pilot has ever been tall.", "the pilot has ever been tall.", TSE_CASES[-1],
                intrusive="a pilot that no guard likes has ever been tall."),
]
BLIMP = [
    MinimalPair("craig explored that store.", "craig explored that stores.", "det_noun", linguistics_term="agreement"),
    MinimalPair("she helped herself.", "she helped himself.", "anaphor", linguistics_term="anaphora"),
]


def _inputs() -> StudyInputs:
    return StudyInputs(tokenizer=char_tokenizer(), tse=TSE, blimp=BLIMP, blimp_paradigms=("anaphor", "det_noun"),
                       ppl_windows=tiny_input_ids(batch=3, length=20, seed=2), tasks=(), task_plan=TaskPlan(),
                       lmeval_limit=None, pos_texts=[], tagger=None, batch_size=2)


@pytest.mark.parametrize("mode", ["negative", "positive"])
def test_measured_together_equals_measured_alone(mode: str) -> None:
    model, inputs = tiny_model("gpt_neox"), _inputs()
    generator = torch.Generator().manual_seed(0)
    masks = [None if mode == "negative" else torch.rand(mlp_shape(model), generator=generator) < 0.1,
             torch.rand(mlp_shape(model), generator=generator) < 0.2,
             torch.rand(mlp_shape(model), generator=generator) < 0.4]
    units = [Unit("main", {"condition": f"c{i}"}, None if m is None else f"set{i}", mode) for i, m in enumerate(masks)]
    units[2] = Unit("main", {"condition": "c2"}, "set2", mode, measures=("tse", "blimp"))  # no perplexity
    together = measure_together(model, units, masks, inputs)
    assert together[2].seconds.keys() == {"tse", "blimp"}
    for number, (unit, mask, measured) in enumerate(zip(units, masks, together)):
        alone = measure_unit(model, number, unit, mask, inputs)
        shared = measure_unit(model, number, unit, mask, inputs, measured)
        assert set(shared.data_vars) == set(alone.data_vars)
        for name in alone.data_vars:
            if name == "seconds":
                continue
            if name == "tse_margin":  # sums of float32 log-probs: see tests/test_row_ablation.py
                np.testing.assert_allclose(shared[name].values, alone[name].values, rtol=1e-6)
            else:
                np.testing.assert_array_equal(shared[name].values, alone[name].values, err_msg=name)
    assert float(together[0].parts[-1]["ppl"]) != float(together[1].parts[-1]["ppl"])


def test_mixed_modes_refused_and_groups_by_mode() -> None:
    model, inputs = tiny_model("gpt_neox"), _inputs()
    units = [Unit("main", {"condition": "a"}, None, "negative"), Unit("main", {"condition": "b"}, None, "positive")]
    with pytest.raises(ValueError, match="one ablation mode"):
        measure_together(model, units, [None, None], inputs)
    study = tuple(study_units([1.0, 2.0], 1.0, 2, True))
    groups = groups_together(study, list(range(len(study))))
    modes = [{study[n].mode for n in group} for group in groups]
    assert modes == [{"negative"}, {"positive"}, {"both"}]
    assert sorted(n for g in groups for n in g) == list(range(len(study)))
    assert groups_together(study, [0, 3]) == ()  # one unit per mode: nothing to share
