"""The one evaluation engine: ablation conditions x benchmarks (TSE, BLiMP, perplexity, lm-eval, POS)
-> one labelled dataset, passes planned within a token budget. The scan calls it once per step,
the study once per group of conditions."""
