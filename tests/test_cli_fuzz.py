"""Every CLI command against a table of bad values: one line, exit code 2, nothing written.

Each attack runs ``dynamics.cli.main.main`` in this process (a few through ``python -m
dynamics.cli`` to prove the real entry point) inside a workspace holding a tiny toy suite,
a scanned cube, damaged copies of it, a file, a read-only directory, a lock path that is a
directory and an offline Hub cache. For each attack: exit code 2, exactly one line on
stderr (log warnings count: the CLI prints them there), no traceback, and the workspace
listing (names, sizes, modification times) unchanged.

Run as a script (``python tests/test_cli_fuzz.py``) it prints the outcome table of the
issue "Fail well" (attacks / clear line / traceback / silently wrong / data lost / other)
for whatever ``dynamics`` is importable (``PYTHONPATH=<another checkout>`` for a before/after).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

HUGE = "99999999999999999999999"
FAST = ["--wd-tokens", "64", "--ppl-tokens", "32", "--tse-per-case", "1"]
#: The smallest study: two percents, no tasks, BLiMP, POS or layer groups.
ABLATE_FAST = [
    "--percents",
    "1,2",
    "--match-percent",
    "1",
    "--tasks",
    "none",
    "--blimp-per-paradigm",
    "0",
    "--pos",
    "off",
    "--layer-groups",
    "0",
    *FAST,
]
ROOT = os.geteuid() == 0  # root writes into read-only directories: those attacks say nothing as root


@dataclass(frozen=True)
class Attack:
    name: str
    argv: tuple[str, ...]  # {ws}, {suite}, {cube}, {hub} are filled from the workspace
    subprocess: bool = False
    needs_non_root: bool = False


def _scan(*extra: str, out: str = "{ws}/new.zarr") -> tuple[str, ...]:
    return ("scan", "--model", "{suite}", "--out", out, "--steps", "8", *FAST, *extra)


def _ablate(*extra: str, out: str = "{ws}/study.zarr") -> tuple[str, ...]:
    return (
        "ablate",
        "--model",
        "{suite}",
        "--out",
        out,
        "--corpus",
        "{suite}/heldout.txt",
        *ABLATE_FAST,
        *extra,
    )


ATTACKS: list[Attack] = [
    # scan: numbers
    Attack("scan --seed -1", _scan("--seed", "-1")),
    Attack("scan --memory-budget-gib inf", _scan("--memory-budget-gib", "inf")),
    Attack("scan --memory-budget-gib nan", _scan("--memory-budget-gib", "nan")),
    Attack("scan --memory-budget-gib -1", _scan("--memory-budget-gib", "-1")),
    Attack("scan --cohort-percent 1e-9 (no neuron)", _scan("--cohort-percent", "1e-9")),
    Attack("scan --cohort-percent 0", _scan("--cohort-percent", "0")),
    Attack("scan --cohort-percent 150", _scan("--cohort-percent", "150")),
    Attack("scan --cohort-percent nan", _scan("--cohort-percent", "nan")),
    Attack("scan --window 256 (context 32)", _scan("--window", "256")),
    Attack("scan --window 1", _scan("--window", "1")),
    Attack("scan --batch-size 0", _scan("--batch-size", "0")),
    Attack("scan --threads -1", _scan("--threads", "-1")),
    Attack("scan --retries 0", _scan("--retries", "0")),
    Attack("scan --seed huge", _scan("--seed", HUGE)),
    Attack("scan --threads 99999999999", _scan("--threads", "99999999999")),
    Attack("scan --wd-corpus wikitext2:bogus (no such split)", _scan("--wd-corpus", "wikitext2:bogus")),
    # scan: steps
    Attack("scan --steps ²", _scan("--steps", "²")),
    Attack("scan --steps 0:1000000000000:1", _scan("--steps", "0:1000000000000:1")),
    Attack("scan --steps huge", _scan("--steps", HUGE)),
    Attack("scan --steps 3 (not in the suite)", _scan("--steps", "3")),
    Attack("scan --steps 5:1:1", _scan("--steps", "5:1:1")),
    Attack("scan --reference-step 3", _scan("--reference-step", "3")),
    Attack(
        "scan huge step on a Hub id",
        ("scan", "--model", "acme/tiny", "--cache-dir", "{hub}", "--out", "{ws}/hub.zarr", "--steps", HUGE, *FAST),
    ),
    # scan: model and corpus
    Attack("scan --corpus missing file", _scan("--corpus", "{ws}/nope.txt")),
    Attack("scan --corpus empty file", _scan("--corpus", "{ws}/empty.txt")),
    Attack("scan --corpus binary file", _scan("--corpus", "{ws}/binary.txt")),
    Attack("scan --corpus a directory", _scan("--corpus", "{ws}")),
    Attack("scan --model mistyped Hub id", ("scan", "--model", "acme/missing", "--out", "{ws}/m.zarr", *FAST)),
    Attack("scan --model missing directory", ("scan", "--model", "{ws}/nope/suite", "--out", "{ws}/m.zarr")),
    Attack("scan --device tpu", _scan("--device", "tpu")),
    Attack(
        "scan ² on the toy alias (nothing trained)", ("scan", "--model", "toy", "--out", "{ws}/t.zarr", "--steps", "²")
    ),
    # scan: where the cube goes
    Attack("scan --out under a file", _scan(out="{ws}/afile/x.zarr")),
    Attack("scan --out in a read-only directory", _scan(out="{ws}/ro/x.zarr"), needs_non_root=True),
    Attack("scan --out in /proc", _scan(out="/proc/x.zarr")),
    Attack("scan --out in /sys", _scan(out="/sys/x.zarr")),
    Attack("scan --out without .zarr", _scan(out="{ws}/x")),
    Attack("scan --out empty", _scan(out="")),
    Attack("scan lock path is a directory", _scan(out="{ws}/locked.zarr")),
    Attack("scan --out a file named .zarr", _scan(out="{ws}/file.zarr")),
    Attack("scan resume: corrupt zarr.json", _scan(out="{ws}/bad_json.zarr")),
    Attack("scan resume: corrupt step record", _scan(out="{ws}/bad_record.zarr")),
    Attack("scan resume: corrupt step chunk", _scan(out="{ws}/bad_step.zarr")),
    Attack("scan resume: corrupt variable metadata", _scan(out="{ws}/bad_array.zarr")),
    # ablate
    Attack("ablate --percents 1e-9 (no neuron)", _ablate("--percents", "1e-9", "--match-percent", "1e-9")),
    Attack("ablate --group-percent 1e-9", _ablate("--layer-groups", "1", "--group-percent", "1e-9")),
    Attack("ablate --percents 0", _ablate("--percents", "0")),
    Attack("ablate --percents abc", _ablate("--percents", "abc")),
    Attack("ablate --match-percent 3 (not a percent)", _ablate("--match-percent", "3")),
    Attack("ablate --window 256 (context 32)", _ablate("--window", "256")),
    Attack("ablate --seed -1", _ablate("--seed", "-1")),
    Attack("ablate --match-tolerance nan", _ablate("--match-tolerance", "nan")),
    Attack("ablate --memory-budget-gib inf", _ablate("--memory-budget-gib", "inf")),
    Attack("ablate --corpus empty file", _ablate("--corpus", "{ws}/empty.txt")),
    Attack("ablate --out under a file", _ablate(out="{ws}/afile/s.zarr")),
    Attack("ablate --out in /proc", _ablate(out="/proc/s.zarr")),
    # toy
    Attack("toy --out under a file", ("toy", "--out", "{ws}/afile/t")),
    Attack("toy --out in /proc", ("toy", "--out", "/proc/t")),
    Attack("toy --out in a read-only directory", ("toy", "--out", "{ws}/ro/t"), needs_non_root=True),
    Attack("toy --out an existing file", ("toy", "--out", "{ws}/afile")),
    Attack("toy --hidden-size 0", ("toy", "--out", "{ws}/t", "--hidden-size", "0")),
    Attack("toy --heads 3", ("toy", "--out", "{ws}/t", "--heads", "3")),
    Attack("toy --learning-rate inf", ("toy", "--out", "{ws}/t", "--learning-rate", "inf")),
    Attack("toy --seed -1", ("toy", "--out", "{ws}/t", "--seed", "-1")),
    Attack("toy --threads 99999999999", ("toy", "--out", "{ws}/t", "--threads", "99999999999")),
    # report
    Attack("report a missing cube", ("report", "{ws}/nope.zarr")),
    Attack("report a file", ("report", "{ws}/afile")),
    Attack("report a corrupt zarr.json", ("report", "{ws}/bad_json.zarr")),
    Attack("report a corrupt step record", ("report", "{ws}/bad_record.zarr")),
    Attack("report --check a corrupt zarr.json", ("report", "--check", "{ws}/bad_json.zarr")),
    Attack("report a corrupt data chunk", ("report", "{ws}/bad_chunk.zarr")),
    Attack("report a corrupt step chunk", ("report", "{ws}/bad_step.zarr")),
    Attack("report --check a corrupt step chunk", ("report", "--check", "{ws}/bad_step.zarr")),
    Attack("report a corrupt variable metadata", ("report", "{ws}/bad_array.zarr")),
    # plot
    Attack("plot --out under a file", ("plot", "{cube}", "--out", "{ws}/afile/figs")),
    Attack("plot --out in /proc", ("plot", "{cube}", "--out", "/proc/figs")),
    Attack("plot --out in a read-only directory", ("plot", "{cube}", "--out", "{ws}/ro/figs"), needs_non_root=True),
    Attack("plot --formats bmp", ("plot", "{cube}", "--out", "{ws}/figs", "--formats", "bmp")),
    Attack("plot a corrupt zarr.json", ("plot", "{ws}/bad_json.zarr", "--out", "{ws}/figs")),
    Attack("plot a corrupt step record", ("plot", "{ws}/bad_record.zarr", "--out", "{ws}/figs")),
    Attack("plot a corrupt data chunk", ("plot", "{ws}/bad_chunk.zarr", "--out", "{ws}/figs")),
    Attack("plot a corrupt step chunk", ("plot", "{ws}/bad_step.zarr", "--out", "{ws}/figs")),
    Attack("plot a corrupt variable metadata", ("plot", "{ws}/bad_array.zarr", "--out", "{ws}/figs")),
    # steps
    Attack("steps 0:1000000000000:1", ("steps", "0:1000000000000:1")),
    Attack("steps ²", ("steps", "²")),
    Attack("steps huge on a Hub id", ("steps", HUGE, "--model", "acme/tiny")),
    Attack("steps empty", ("steps", "")),
    Attack("steps ² on the toy alias (nothing trained)", ("steps", "²", "--model", "toy")),
    Attack("steps -5", ("steps", "-5")),
    Attack("steps 0:10:0", ("steps", "0:10:0")),
    Attack("steps --model missing directory", ("steps", "all", "--model", "{ws}/nope/suite")),
    # tse export
    Attack("tse export under a file", ("tse", "export", "{ws}/afile/tse")),
    Attack("tse export in /proc", ("tse", "export", "/proc/tse")),
    Attack("tse export an existing file", ("tse", "export", "{ws}/afile")),
    Attack("tse export in a read-only directory", ("tse", "export", "{ws}/ro/tse"), needs_non_root=True),
    # the real entry point
    Attack("subprocess: steps ²", ("steps", "²"), subprocess=True),
    Attack("subprocess: scan --out in /proc", _scan(out="/proc/x.zarr"), subprocess=True),
    Attack("subprocess: toy --out under a file", ("toy", "--out", "{ws}/afile/t"), subprocess=True),
    Attack("subprocess: report a corrupt zarr.json", ("report", "{ws}/bad_json.zarr"), subprocess=True),
]


# -- the workspace ----------------------------------------------------------------------------


def build_suite(out: Path) -> Path:
    """The tests' tiny toy suite (as tests/conftest.py ``tiny_suite``)."""
    from fixtures.toy import build_tiny_suite

    return build_tiny_suite(out)


def build_workspace(ws: Path, suite: Path) -> dict[str, str]:
    """Files every attack may meet; returns the placeholders of :data:`ATTACKS`."""
    from dynamics.cli.main import main
    from tests.fixtures.hub import model_files, plant_hub_commit

    ws.mkdir(parents=True, exist_ok=True)
    (ws / "afile").write_text("a file, not a directory\n")
    (ws / "file.zarr").write_text("a file named like a cube\n")
    (ws / "empty.txt").write_text("")
    (ws / "binary.txt").write_bytes(bytes(range(128, 256)) * 8)
    (ws / "ro").mkdir()
    (ws / "ro").chmod(0o555)
    (ws / "locked.zarr.lock").mkdir()
    cube = ws / "good.zarr"
    with _quiet():
        assert main(["scan", "--model", str(suite), "--out", str(cube), "--steps", "4,8", *FAST]) == 0
    shutil.copytree(cube, ws / "bad_json.zarr")
    (ws / "bad_json.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gro')
    shutil.copytree(cube, ws / "bad_record.zarr")
    meta = json.loads((ws / "bad_record.zarr" / "zarr.json").read_text())
    meta["attributes"]["steps"]["8"] = "done"
    (ws / "bad_record.zarr" / "zarr.json").write_text(json.dumps(meta))
    for name, variable in (("bad_chunk", "wd"), ("bad_step", "step")):  # every chunk of one variable: garbage
        shutil.copytree(cube, ws / f"{name}.zarr")
        for chunk in (ws / f"{name}.zarr" / variable / "c").rglob("*"):
            if chunk.is_file():
                chunk.write_bytes(b"not a zstd frame")
    shutil.copytree(cube, ws / "bad_array.zarr")
    (ws / "bad_array.zarr" / "wd" / "zarr.json").write_text("{not json")
    commit = "0123456789abcdef0123456789abcdef01234567"
    plant_hub_commit(ws / "hub", "acme/tiny", commit, model_files(suite / "step8"), refs=["main"])
    return {"ws": str(ws), "suite": str(suite), "cube": str(cube), "hub": str(ws / "hub")}


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with (size, mtime) for files, (-1, 0) for directories and links."""
    seen: dict[str, tuple[int, int]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            stat = path.stat()
            seen[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
        else:
            seen[str(path.relative_to(root))] = (-1, 0)
    return seen


# -- running one attack -----------------------------------------------------------------------


@dataclass
class Outcome:
    code: int | None
    stderr: str
    traceback: bool
    created: list[str]
    changed: list[str]  # existing entries removed or modified: data lost

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def verdict(self) -> str:
        if self.changed:
            return "data lost"
        if self.traceback:
            return "traceback"
        if self.code == 0:
            return "silently wrong"
        if self.code == 2 and len(self.lines) == 1 and not self.created:
            return "clear line"
        return "other"


@contextlib.contextmanager
def _quiet():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = [logging.NullHandler()]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.handlers, _ = saved
        root.setLevel(saved[1])


def _in_process(argv: list[str]) -> tuple[int | None, str, bool]:
    from dynamics.cli.main import main

    err = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    handler = logging.StreamHandler(err)  # what the CLI's basicConfig does outside pytest
    handler.setFormatter(logging.Formatter("dynamics: %(message)s"))
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    traceback = False
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                code: int | None = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception as exc:  # noqa: BLE001 - what a user would see as a traceback
                traceback, code = True, None
                err.write(f"Traceback (most recent call last):\n  {type(exc).__name__}: {exc}\n")
    finally:
        root.handlers = saved[0]
        root.setLevel(saved[1])
    return code, err.getvalue(), traceback or "Traceback" in err.getvalue()


def _subprocess(argv: list[str], cwd: str) -> tuple[int | None, str, bool]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # Run where no checkout is (``-m`` puts the working directory first on sys.path): the installed
    # package, or the checkout PYTHONPATH names.
    done = subprocess.run(
        [sys.executable, "-m", "dynamics.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=cwd,
    )
    return done.returncode, done.stderr, "Traceback" in done.stderr


def run_attack(attack: Attack, places: dict[str, str]) -> Outcome:
    ws = Path(places["ws"])
    argv = [part.format(**places) for part in attack.argv]
    before = listing(ws)
    code, stderr, traceback = _subprocess(argv, str(ws)) if attack.subprocess else _in_process(argv)
    after = listing(ws)
    return Outcome(
        code,
        stderr,
        traceback,
        created=sorted(set(after) - set(before)),
        changed=sorted(k for k in before if after.get(k) != before[k]),
    )


# -- the test ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def places(tiny_suite, tmp_path_factory, monkeypatch_module):
    ws = tmp_path_factory.mktemp("fuzz")
    # Nothing may be built or downloaded: the toy alias and the Hub cache point into the workspace.
    monkeypatch_module.setenv("DYNAMICS_CACHE_DIR", str(ws / "cache"))
    return build_workspace(ws, tiny_suite)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_table_is_big_enough():
    commands = {a.argv[0] for a in ATTACKS}
    assert len(ATTACKS) >= 40
    assert commands == {"scan", "ablate", "toy", "report", "plot", "steps", "tse"}


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_every_bad_value_is_one_line_and_exit_2(attack: Attack, places):
    if attack.needs_non_root and ROOT:
        pytest.skip("running as root: a read-only directory is writable")
    outcome = run_attack(attack, places)
    assert not outcome.traceback, outcome.stderr
    assert outcome.code == 2, outcome.stderr
    assert len(outcome.lines) == 1, outcome.stderr
    assert outcome.lines[0].startswith(f"dynamics {attack.argv[0]}"), outcome.lines[0]
    assert not outcome.created, outcome.created
    assert not outcome.changed, outcome.changed


def table(outcomes: list[tuple[Attack, Outcome]]) -> str:
    kinds = ["clear line", "traceback", "silently wrong", "data lost", "other"]
    counts = {k: sum(1 for _, o in outcomes if o.verdict() == k) for k in kinds}
    rows = [
        "| attacks tried | " + " | ".join(kinds) + " |",
        "|" + "---|" * (len(kinds) + 1),
        f"| {len(outcomes)} | " + " | ".join(str(counts[k]) for k in kinds) + " |",
        "",
    ]
    for attack, outcome in outcomes:
        if outcome.verdict() != "clear line":
            last = outcome.lines[-1][:150] if outcome.lines else ""
            rows.append(
                f"- {attack.name}: {outcome.verdict()} (exit {outcome.code}, {len(outcome.lines)} lines, "
                f"created {len(outcome.created)}) {last}"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    import tempfile

    sys.path.append(str(Path(__file__).resolve().parents[1]))  # PYTHONPATH (another checkout) first
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DYNAMICS_CACHE_DIR"] = str(Path(tmp) / "ws" / "cache")
        with _quiet():
            suite = build_suite(Path(tmp) / "suite")
        places = build_workspace(Path(tmp) / "ws", suite)
        results = [(a, run_attack(a, places)) for a in ATTACKS if not (a.needs_non_root and ROOT)]
        print(table(results))
