"""`dynamics scan` and `dynamics ablate` accept and refuse the same values for the options they share:
one table drives both commands (one definition per option, one parser, one range check)."""

from __future__ import annotations

import dataclasses

import pytest

from dynamics.cli.main import main
from dynamics.scan.config import ScanConfig
from dynamics.study.config import StudyConfig

# (option values, the message both commands must end their one line with)
REFUSED = [
    (["--blimp-per-paradigm", "-1"], "--blimp-per-paradigm -1: expected 0 or more pairs"),
    (["--lmeval-limit", "-1"], "--lmeval-limit -1: expected 0 (all) or more examples"),
    (["--blimp-paradigms", "no_such_paradigm"], "unknown BLiMP paradigm 'no_such_paradigm'"),
    (["--blimp-paradigms", " , "], "--blimp-paradigms ' , ': expected all or comma-separated BLiMP paradigm names"),
    (["--tse-per-case", "-2"], "--tse-per-case -2: expected 0 or more pairs"),
    (["--wd-tokens", "1"], "--wd-tokens 1: expected at least 2 tokens"),
    (["--window", "1"], "--window 1: expected at least 2 tokens"),
    (["--seed", "-1"], "--seed -1: expected a whole number from 0 to 4294967295"),
    (["--batch-size", "0"], "--batch-size 0: expected at least 1"),
    (["--threads", "-1"], "--threads -1: expected 0 (auto) or 1 to 1024"),
    (["--memory-budget-gib", "-1"], "--memory-budget-gib -1.0: expected 0 (auto) or a positive, finite number of GiB"),
    (["--prefix", " "], "--prefix '': expected auto, none, bos or a token string"),
]


def run(command, tiny_suite, tmp_path, values, capsys):
    out = tmp_path / f"{command}.zarr"
    code = main([command, "--model", str(tiny_suite), "--out", str(out), *values])
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines, out


@pytest.mark.parametrize("values, message", REFUSED, ids=[" ".join(v) for v, _ in REFUSED])
def test_both_commands_refuse_a_bad_shared_value_with_the_same_line(tiny_suite, tmp_path, capsys, values, message):
    for command in ("scan", "ablate"):
        code, lines, out = run(command, tiny_suite, tmp_path, values, capsys)
        assert code == 2 and len(lines) == 1, (command, lines)
        assert lines[0].startswith(f"dynamics {command}: error: ") and message in lines[0], (command, lines)
        assert not out.exists()


def test_both_commands_accept_paradigms_with_spaces_around_the_commas(tiny_suite, tmp_path, capsys):
    """Both get past --blimp-paradigms 'a, b' and stop at the next check, a --task-path that is not there."""
    values = ["--blimp-paradigms", "anaphor_gender_agreement, adjunct_island", "--task-path", str(tmp_path / "none")]
    for command in ("scan", "ablate"):
        code, lines, _ = run(command, tiny_suite, tmp_path, values, capsys)
        assert code == 2 and "--task-path" in lines[-1] and "is not a directory" in lines[-1], (command, lines)


def test_the_shared_options_are_one_definition():
    """Every option both commands have comes from one field definition (same help, same flags), a
    different default only where a command redefaults it."""
    scan = {f.name: f for f in dataclasses.fields(ScanConfig)}
    study = {f.name: f for f in dataclasses.fields(StudyConfig)}
    own = {"corpus"}  # what the text is differs: the scan's default is a suite's heldout text
    for name in (set(scan) & set(study)) - own:
        a, b = scan[name].metadata, study[name].metadata
        assert a.get("identity") == b.get("identity"), name
        assert a.get("choices") == b.get("choices"), name
