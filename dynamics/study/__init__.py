"""`dynamics ablate`: the cross-model ablation study (config, driver, worker, conditions, measures)."""
