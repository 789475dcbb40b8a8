"""Neuron statistics: pre-activation capture, Wasserstein distances, cohorts, drift, mapping difficulty."""
