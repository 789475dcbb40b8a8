"""Issue #21's attacks on the command line: a quick CLI, quiet progress, checked BLiMP input,
an offline toy quickstart and SIGTERM handled like Ctrl-C. One test (or case) per attack.

Each drives the real entry point (``dynamics.cli.main.main`` in this process, or ``python -m
dynamics.cli`` in a subprocess) on the tests' tiny toy suite, and asserts what a user sees:
the exit code, the one line on stderr, what was written, what was asked of the network.
Nothing asserts wall-clock time: "fast" is what is imported, "quiet" is lines counted with a
fake clock, "offline" is requests counted.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynamics.cli.main import main
from store import open_cube

HEAVY = ("torch", "transformers", "xarray", "zarr", "dask", "datasets")
FAST = ["--wd-tokens", "64", "--ppl-tokens", "32", "--tse-per-case", "1"]
PARADIGMS = ("anaphor_gender_agreement", "determiner_noun_agreement_1")


# -- helpers ------------------------------------------------------------------------------------


def run_in_process(argv: list[str]) -> tuple[int, list[str]]:
    """``main(argv)`` with log records on the captured stderr, as the CLI prints them; (exit code, stderr lines)."""
    err = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("dynamics: %(message)s"))
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        root.handlers = saved[0]
        root.setLevel(saved[1])
    return code, [line for line in err.getvalue().splitlines() if line.strip()]


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with (size, mtime) of files: what a run wrote, or changed."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
        for p in sorted(root.rglob("*"))
    }


def blimp_rows(paradigm: str, pairs: int = 3) -> list[dict]:
    return [
        {
            "sentence_good": f"the author laughs {i} .",
            "sentence_bad": f"the author laugh {i} .",
            "UID": paradigm,
            "linguistics_term": "agreement",
            "field": "morphology",
            "pairID": str(i),
        }
        for i in range(pairs)
    ]


def write_blimp(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for paradigm in PARADIGMS:
        lines = [json.dumps(r) for r in blimp_rows(paradigm)]
        (directory / f"{paradigm}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def scan_argv(suite: Path, out: Path, *extra: str) -> list[str]:
    return ["scan", "--model", str(suite), "--out", str(out), "--steps", "8", *FAST, *extra]


def ablate_argv(suite: Path, out: Path, *extra: str) -> list[str]:
    return [
        "ablate",
        "--model",
        str(suite),
        "--out",
        str(out),
        "--corpus",
        str(suite / "heldout.txt"),
        "--percents",
        "1",
        "--match-percent",
        "1",
        "--match-iterations",
        "2",
        "--tasks",
        "none",
        "--pos",
        "off",
        "--layer-groups",
        "0",
        *FAST,
        *extra,
    ]


@pytest.fixture
def no_network(monkeypatch):
    """The environment of a first hour without the offline variables, on a machine whose Hub cannot
    be reached: every name lookup, connection and ``datasets.load_dataset`` call is counted and fails."""
    import datasets

    from checkpoints import hub_status

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    asked: list[str] = []

    def no_lookup(host, *args, **kwargs):
        asked.append(f"getaddrinfo {host}")
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def no_dataset(path, *args, **kwargs):
        asked.append(f"load_dataset {path}")
        raise ConnectionError(f"Couldn't reach {path!r} on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    monkeypatch.setattr(datasets, "load_dataset", no_dataset)
    hub_status.forget()
    yield asked
    hub_status.forget()


# -- a fast, quiet CLI --------------------------------------------------------------------------

QUICK_PATHS = {
    "dynamics --help": (["--help"], 0, None),
    "dynamics scan --help": (["scan", "--help"], 0, None),
    "dynamics ablate --help": (["ablate", "--help"], 0, None),
    "dynamics toy --help": (["toy", "--help"], 0, None),
    "scan --cohort-percent 0 (rejected)": (
        ["scan", "--model", "toy", "--out", "x.zarr", "--cohort-percent", "0"],
        2,
        "dynamics scan: error: --cohort-percent 0.0: expected a percent in (0, 100]",
    ),
    "ablate --percents 0 (rejected)": (
        ["ablate", "--model", "toy", "--out", "x.zarr", "--percents", "0"],
        2,
        "dynamics ablate: error: --percents '0': expected comma-separated numbers in (0, 100], e.g. 0.5,1,2,5",
    ),
    "toy --heads 3 (rejected)": (
        ["toy", "--out", "t", "--heads", "3"],
        2,
        "dynamics toy: error: --heads 3 must divide --hidden-size 128",
    ),
}
PROBE = """
import json, runpy, sys
heavy = json.loads(sys.argv[2])
sys.argv = ["dynamics", *json.loads(sys.argv[1])]
code = 0
try:
    runpy.run_module("dynamics.cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print("HEAVY " + json.dumps([m for m in heavy if m in sys.modules]))
sys.exit(code)
"""


@pytest.mark.parametrize("attack", list(QUICK_PATHS))
def test_help_and_a_rejected_value_import_nothing_heavy(attack, tmp_path):
    """Attack: `dynamics --help` and a rejected bad value take 15-27 s at load 10 (everything is
    imported up front). What they import is the load-independent measure of "under 2 s"."""
    argv, code, line = QUICK_PATHS[attack]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # no checkout here: the package PYTHONPATH names, or the installed one
        env={**os.environ, "HF_HUB_OFFLINE": "1", "DYNAMICS_CACHE_DIR": str(tmp_path / "cache")},
        timeout=300,
    )
    heavy = json.loads(done.stdout.rsplit("HEAVY ", 1)[1])
    assert heavy == [], f"{attack} imported {heavy}"
    assert done.returncode == code, done.stderr
    if line is None:
        assert "usage: dynamics" in done.stdout and done.stderr == ""
    else:
        assert done.stderr.strip().splitlines() == [line]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no toy suite trained


def test_progress_written_to_a_file_is_a_few_whole_lines(tmp_path, capsys):
    """Attack: progress bars written to a file become single lines of hundreds of KB (tqdm's carriage
    returns). The toy training's bar, the product's path, on a stderr that is not a terminal."""
    from fixtures.toy import build_tiny_suite

    build_tiny_suite(tmp_path / "suite", progress=True, steps=40, checkpoint_every=40)
    err = capsys.readouterr().err
    bar = [line for line in err.splitlines() if line.startswith("toy training")]
    assert "\r" not in err and err.endswith("\n")
    assert bar[0].startswith("toy training:   0% 0/40") and bar[-1].startswith("toy training: 100% 40/40")
    assert 2 <= len(bar) <= 12  # at most one line per 10% (and per 10 s), the first and the last


def test_a_long_bar_to_a_file_writes_a_line_per_ten_percent_and_ten_seconds(monkeypatch):
    """The rule behind the attack above, on a fake clock: 1000 updates 1 s apart -> 0%, 10%, ..., 100%."""
    import tqdm.std

    from dynamics.execution.progress import progress_bar

    now = [0.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
    out = io.StringIO()
    with progress_bar(total=1000, desc="scan toy", unit="step", file=out) as bar:
        for i in range(1000):
            now[0] += 1.0
            bar.update()
            bar.set_postfix_str(f"step {i}")  # shown on the next line, never a line of its own
    lines = out.getvalue().splitlines(keepends=True)
    assert all(line.endswith("\n") and "\r" not in line for line in lines)
    percents = [line.split()[2] for line in lines]
    assert percents[:11] == [f"{p}%" for p in range(0, 101, 10)] and len(lines) <= 12
    assert lines[5].startswith("scan toy:  50% 500/1000 [08:20<08:20,  1.00step/s, step 498]")
    fast = io.StringIO()  # a quick bar: its first and last line only
    for _ in progress_bar(range(500), desc="quick", file=fast):
        now[0] += 0.001
    assert [line.split()[1] for line in fast.getvalue().splitlines()] == ["0%", "100%"]


def test_a_bar_on_a_terminal_stays_live():
    from dynamics.execution.progress import LineWriter, progress_bar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    with progress_bar(total=3, desc="live", file=screen) as bar:
        bar.update(3)
    assert "\r" in screen.getvalue() and not isinstance(bar.fp, LineWriter)


# -- BLiMP input checked before any work -------------------------------------------------------

GOOD = json.dumps(blimp_rows(PARADIGMS[1], 1)[0])
BAD_FILES = {
    "empty sentences": (GOOD + "\n" + GOOD.replace('"the author laughs 0 ."', '""') + "\n").encode(),
    "an empty paradigm file": b"",
    "invalid UTF-8": (GOOD + "\n").encode() + b'{"sentence_good": "caf\xe9"}\n',
    "a row missing a field": (GOOD + "\n" + GOOD.replace('"field": "morphology", ', "") + "\n").encode(),
    "a line that is not JSON": (GOOD + "\n" + GOOD[:-9] + "\n").encode(),
}
BAD_LINE = {
    "empty sentences": ":2: sentence_good '': expected a non-empty sentence",
    "an empty paradigm file": ": no BLiMP pairs (the file is empty); expected one JSON object per line",
    "invalid UTF-8": ":2: not UTF-8 text (byte 23 of the line); expected UTF-8 JSON lines",
    "a row missing a field": ":2: missing BLiMP field(s) field",
    "a line that is not JSON": ":2: not a JSON line (",
}


@pytest.mark.parametrize("command", ["scan", "ablate"])
@pytest.mark.parametrize("defect", list(BAD_FILES))
def test_a_bad_blimp_file_is_one_line_naming_file_and_line(defect, command, tiny_suite, tmp_path):
    """Attacks: BLiMP pairs with empty sentences stored as accuracy 0.0; an empty paradigm file stored
    as NaN with no line; invalid UTF-8 a traceback; a row missing a field or a line that is not JSON
    exit 1 where the README promises 2. Each: exit 2, one line naming file and line, nothing written."""
    blimp = write_blimp(tmp_path / "blimp")
    bad = blimp / f"{PARADIGMS[1]}.jsonl"
    bad.write_bytes(BAD_FILES[defect])
    before = listing(tmp_path)
    argv = scan_argv if command == "scan" else ablate_argv
    code, lines = run_in_process(
        argv(tiny_suite, tmp_path / "out" / "c.zarr", "--blimp", str(blimp), "--blimp-paradigms", ",".join(PARADIGMS))
    )
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"dynamics {command}: error: {bad}{BAD_LINE[defect]}"), lines
    assert listing(tmp_path) == before  # no cube, no directory for it


# -- the toy quickstart asks nothing of the Hub -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("command", ["scan", "ablate"])
def test_a_toy_quickstart_and_its_resume_ask_nothing_of_the_hub(command, no_network, tiny_suite, tmp_path):
    """Attack: every toy quickstart scan (even a resume with nothing to do) spends ~23 s and 11 lines
    retrying the Hub for BLiMP. A local suite with the default --blimp hub: no request, no line."""
    out = tmp_path / "toy.zarr"
    argv = (scan_argv if command == "scan" else ablate_argv)(tiny_suite, out, "--blimp-per-paradigm", "2")
    for run in ("first", "resume"):
        code, lines = run_in_process(argv)
        assert code == 0, (run, lines)
        said = [line for line in lines if any(word in line.lower() for word in ("blimp", "hub", "retry", "reach"))]
        assert said == [], (run, said)  # not a line about BLiMP or the Hub
        assert no_network == [], (run, no_network)
    ds = open_cube(out)
    if command == "scan":
        assert ds.attrs["provenance"]["benchmarks_skipped"]["blimp"].startswith("a local suite is measured offline")
    else:
        assert (
            "blimp_acc_all" not in ds and "tse_acc_all" in ds
        )  # measured without BLiMP, as with --blimp-per-paradigm 0


# -- SIGTERM is Ctrl-C --------------------------------------------------------------------------


def _done_units(cube: Path) -> set[str]:
    try:
        records = json.loads((cube / "zarr.json").read_text())["attributes"].get("steps", {})
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return set()
    return {unit for unit, record in records.items() if record.get("status") == "done"}


SIGTERM_RUNS = {
    # conditions and steps long enough to be stopped among them
    "ablate": (("--blimp-per-paradigm", "0", "--percents", "1,2,5,10", "--layer-groups", "2"), "condition"),
    "scan": (("--steps", "all", "--wd-tokens", "512", "--ppl-tokens", "64"), "step"),
}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(SIGTERM_RUNS))
def test_sigterm_keeps_every_finished_unit_and_the_lock_goes(command, tiny_suite, tmp_path):
    """Attack: SIGTERM during `ablate` exits 143 with no line and leaves its lock file; conditions
    already measured were lost. Now (ablate and scan): exit 143, one last line, no lock, every
    finished unit kept, and a re-run resumes after them."""
    out = tmp_path / f"{command}.zarr"
    extra, unit = SIGTERM_RUNS[command]
    argv = (ablate_argv if command == "ablate" else scan_argv)(tiny_suite, out, *extra)
    argv[argv.index("--tse-per-case") + 1] = "20"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynamics.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 300  # a generous bound on waiting for the first unit, not a timing
    while not _done_units(out):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no unit was done in 300 s"
        time.sleep(0.05)
    seen = _done_units(out)
    proc.send_signal(signal.SIGTERM)
    printed, err = proc.communicate(timeout=120)
    kept = _done_units(out)
    if proc.returncode == 0:  # the run finished before the signal landed: nothing to interrupt
        assert "0 already done, 0 failed" in printed
        return
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == (
        f"dynamics {command}: terminated (SIGTERM); every completed {unit} is kept, re-run the same command to resume"
    )
    assert "Traceback" not in err
    assert not Path(f"{out}.lock").exists()
    assert seen <= kept  # every unit done when the signal came is still done (and any finished since)
    again = subprocess.run(
        [sys.executable, "-m", "dynamics.cli", *argv], capture_output=True, text=True, env=env, timeout=600
    )
    assert again.returncode == 0, again.stderr
    assert f"{len(kept)} already done" in again.stdout
