"""Ablation of chosen MLP neurons by sign: the modes, the hooks (one condition, or one per row block),
and the perplexity-matched control."""
