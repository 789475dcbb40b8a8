"""The cube identity is derived from the options' ``identity`` metadata, and cubes made by earlier
versions (their hand-kept lists, frozen below as they were) still resume."""

from __future__ import annotations

import dataclasses

import pytest

from dynamics.config.identity import IDENTITY_VERSION, analysis_identity, equivalent
from dynamics.config.options import config_dict, identity_defaults
from dynamics.config.protocol import resolve_protocol
from dynamics.scan.config import ScanConfig
from dynamics.study.config import StudyConfig

CUBE_COMMANDS = (ScanConfig, StudyConfig)


def legacy_scan_analysis(config: ScanConfig) -> dict:
    """What ScanConfig.analysis() stored before identity_version 2 (an allow-list, frozen here)."""
    keys = ("wd_corpus", "ppl_corpus", "window", "wd_tokens", "wd_stride", "ppl_tokens", "tse_per_case")
    keys += ("cohort_percent", "cohort_scope", "stepwise", "seed", "dtype")
    extra = tuple(k for k in ("matched", "mapping_difficulty") if getattr(config, k))
    extra += ("lmeval_limit",) if config.tasks.strip().lower() != "none" else ()
    return {**{k: getattr(config, k) for k in keys + extra}, "protocol": resolve_protocol(config).record()}


def legacy_study_analysis(config: StudyConfig) -> dict:
    """What StudyConfig.analysis() stored before identity_version 2 (a deny-list, frozen here)."""
    skip = {"model", "out", "revision", "overwrite", "retries", "cache_dir", "device", "threads", "batch_size"}
    skip |= {
        "memory_budget_gib",
        "conditions_per_pass",
        "executor",
        "scheduler",
        "workers",
        "task_retries",
        "resources",
    }
    values = {k: v for k, v in config_dict(config).items() if k not in skip}
    return {**values, "resolved_protocol": resolve_protocol(config).record()}


@pytest.mark.parametrize("command", CUBE_COMMANDS, ids=lambda c: c.__name__)
def test_every_option_of_a_cube_command_says_whether_it_is_identity(command):
    unmarked = [f.name for f in dataclasses.fields(command) if not isinstance(f.metadata.get("identity"), bool)]
    assert unmarked == []


@pytest.mark.parametrize("command", CUBE_COMMANDS, ids=lambda c: c.__name__)
def test_the_identity_holds_exactly_the_marked_options_and_the_resolved_protocol(command):
    config = command(model="m", out="o.zarr")
    marked = {f.name for f in dataclasses.fields(command) if f.metadata["identity"]}
    identity = analysis_identity(config)
    assert set(identity) == marked | {"resolved_protocol"}
    assert identity["resolved_protocol"] == resolve_protocol(config).record()
    assert {"seed", "tse_per_case", "wd_tokens", "tasks", "blimp_per_paradigm"} <= marked
    assert not {"threads", "device", "out", "batch_size", "executor", "cache_dir"} & marked


def scan_identity(config, analysis):
    identity = {"model": "m", "reference_step": 8, "corpus": "wikitext2", "analysis": analysis, "derived": {}}
    if config.tasks != "none":  # the lm-eval tasks that ran, as the scan's plan records them
        identity["benchmarks"] = {"lmeval_tasks": config.tasks.split(",")}
    return identity


@pytest.mark.parametrize(
    "options",
    [{}, {"matched": True}, {"tasks": "arc_easy", "lmeval_limit": 50}, {"mapping_difficulty": True, "seed": 3}],
)
def test_a_scan_cube_of_the_earlier_layout_resumes_with_the_same_options(options):
    config = ScanConfig(model="m", out="o.zarr", **options)
    stored = scan_identity(config, legacy_scan_analysis(config))
    current = {**scan_identity(config, analysis_identity(config)), "identity_version": IDENTITY_VERSION}
    assert equivalent(stored, current, identity_defaults(ScanConfig))


@pytest.mark.parametrize(
    "changed", [{"cohort_percent": 2.0}, {"seed": 1}, {"tse_per_case": 7}, {"protocol": "strict"}, {"npi": "intrusive"}]
)
def test_a_scan_cube_of_the_earlier_layout_refuses_other_numbers(changed):
    before = ScanConfig(model="m", out="o.zarr")
    after = ScanConfig(model="m", out="o.zarr", **changed)
    stored = scan_identity(before, legacy_scan_analysis(before))
    current = scan_identity(after, analysis_identity(after))
    assert not equivalent(stored, current, identity_defaults(ScanConfig))


def test_an_option_the_earlier_cube_did_not_know_matches_only_at_its_default():
    config = ScanConfig(model="m", out="o.zarr")
    stored = scan_identity(config, legacy_scan_analysis(config))
    assert "blimp_per_paradigm" not in stored["analysis"]  # not in the earlier allow-list
    moved = ScanConfig(model="m", out="o.zarr", blimp_per_paradigm=20)
    assert not equivalent(stored, scan_identity(moved, analysis_identity(moved)), identity_defaults(ScanConfig))


@pytest.mark.parametrize("options", [{}, {"percents": "1,2", "match_percent": 2.0}, {"layer_groups": 0}])
def test_a_study_cube_of_the_earlier_layout_resumes_and_refuses_as_it_should(options):
    config = StudyConfig(model="m", out="o.zarr", **options)
    stored = {"model": "m", "analysis": legacy_study_analysis(config), "units": 9}
    current = {"model": "m", "analysis": analysis_identity(config), "units": 9, "identity_version": IDENTITY_VERSION}
    defaults = identity_defaults(StudyConfig)
    assert equivalent(stored, current, defaults)
    other = StudyConfig(model="m", out="o.zarr", **{**options, "group_percent": 5.0})
    assert not equivalent(stored, {**current, "analysis": analysis_identity(other)}, defaults)
    assert not equivalent(stored, {**current, "units": 10}, defaults)


def test_benchmarks_measured_before_and_not_now_are_a_difference():
    config = ScanConfig(model="m", out="o.zarr")
    stored = {**scan_identity(config, analysis_identity(config)), "benchmarks": {"blimp_pairs": 670}}
    assert not equivalent(stored, scan_identity(config, analysis_identity(config)), identity_defaults(ScanConfig))
