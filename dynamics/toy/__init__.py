"""The built-in model organism: a tiny GPT-NeoX trained on a synthetic grammar, saved as a checkpoint suite."""
