"""Running a model: loading and the run's device, dtype and threads; the one place that calls a model;
the vocabulary projection; CPU thread policy."""
