"""The attributes of every variable the engine returns: one text per variable, whoever stores it."""

from __future__ import annotations

from typing import Any

VARIABLES: dict[str, dict[str, Any]] = {
    "tse_acc": {"long_name": "TSE accuracy per case: pairs whose good sentence beats what it is judged against"},
    "tse_margin": {"units": "nats", "long_name": "TSE mean log p(good) - log p(bad) per case"},
    "tse_acc_all": {"long_name": "TSE accuracy over all pairs"},
    "tse_item_margin": {
        "units": "nats",
        "long_name": "each TSE pair's log p(good) minus the score it is judged against (NPI under "
        "--npi intrusive: the lower of its margins over bad and intrusive); correct when above 0",
    },
    "blimp_acc": {"long_name": "BLiMP accuracy per paradigm (sampled pairs, the protocol's BLiMP score)"},
    "blimp_term_acc": {"long_name": "BLiMP accuracy per phenomenon (linguistics_term), pooled"},
    "blimp_acc_all": {"long_name": "BLiMP accuracy over all pairs"},
    "blimp_item_margin": {
        "units": "nats",
        "long_name": "each BLiMP pair's log p(good) - log p(bad) (the protocol's BLiMP score); correct when above 0",
    },
    "ppl": {"long_name": "perplexity on the corpus windows"},
    "ppl_window_nll": {
        "units": "nats",
        "long_name": "summed negative log-likelihood of each perplexity window's predicted tokens "
        "(window_tokens of them)",
    },
    "lmeval_acc": {"long_name": "lm-eval acc,none (NaN: skipped, see attrs lmeval_skipped)"},
    "lmeval_acc_norm": {"long_name": "lm-eval acc_norm,none (NaN where not reported)"},
    "lmeval_item_correct": {
        "long_name": "each lm-eval example's acc (1 correct, 0 not; NaN: not run), the outcomes whose mean is "
        "lmeval_acc of its task (lmeval_item_task, lm-eval doc id lmeval_item_doc)",
    },
    "pos_surprisal": {"units": "nats", "long_name": "mean surprisal per POS"},
    "pos_excess": {
        "units": "nats",
        "long_name": "mean surprisal per POS minus the clean model's, same tokens or words",
    },
    "pos_window_excess": {
        "units": "nats",
        "long_name": "summed excess surprisal (ablated - clean) of each perplexity window's tokens per POS "
        "(per-token POS only)",
    },
    "pos_window_count": {"long_name": "scored tokens of each perplexity window per POS (per-token POS only)"},
    "eval_seconds": {"units": "s", "long_name": "seconds of each evaluation phase (shared passes split equally)"},
}


def attrs(name: str) -> dict[str, Any]:
    """A copy of the attributes of variable ``name``."""
    return dict(VARIABLES[name])
