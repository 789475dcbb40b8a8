"""Benchmark and GPU-check support importable by the thin entry points in scripts/: a random-weight
Pythia-shaped checkpoint planted as an offline Hub cache, and the GPU check's tables."""
