"""The `dynamics` command line. Each sub-command's options come from its config dataclass.

User errors become one line on stderr and exit code 2 (1 for other expected failures,
130 for Ctrl-C, 143 for SIGTERM); they never print a traceback.

Building the parser and checking plain option values import nothing heavy (no torch,
transformers, xarray, zarr, dask or datasets): `dynamics --help` and a rejected value answer
at once; a command's own modules are imported when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from checkpoints import hub_status
from dynamics import __version__
from dynamics.config.options import add_config_arguments, config_from_args
from dynamics.config.paths import explain_os_error
from dynamics.errors import ComputationBug, DynamicsError
from dynamics.execution.executor import last_frames, one_line

log = logging.getLogger("dynamics")

#: Exit code of a run stopped by SIGTERM (128 + the signal's number, as a shell reports it).
SIGTERM_EXIT = 128 + signal.SIGTERM


@dataclass(frozen=True)
class Command:
    """A sub-command: its config (its options), what runs it, its line in ``--help``, and the checks
    of plain option values that run before ``run``'s heavy modules are imported."""

    config: type
    run: Callable[[Any], int]
    summary: str
    check: Callable[[Any], object] | None = None
    unit: str = "step"  # what an interrupted run keeps


def _commands() -> dict[str, Command]:
    from dynamics.cli.commands import (
        PlotConfig,
        ReportConfig,
        StepsConfig,
        TseExportConfig,
        run_ablate_command,
        run_plot,
        run_report,
        run_scan_command,
        run_steps,
        run_toy,
        run_tse_export,
    )
    from dynamics.scan.config import ScanConfig, check_scan_options
    from dynamics.study.config import StudyConfig, check_study_options
    from dynamics.toy.config import ToyConfig

    return {
        "scan": Command(
            ScanConfig, run_scan_command, "stream a model's checkpoints into a cube (resumable)", check_scan_options
        ),
        "ablate": Command(
            StudyConfig,
            run_ablate_command,
            "the ablation study and its controls on one model (resumable)",
            check_study_options,
            unit="condition",
        ),
        "toy": Command(ToyConfig, run_toy, "train the built-in model organism into a local checkpoint suite"),
        "plot": Command(PlotConfig, run_plot, "draw a cube's figures (PNG and PDF)"),
        "report": Command(ReportConfig, run_report, "print a cube's headline numbers"),
        "steps": Command(StepsConfig, run_steps, "list the training steps a step spec selects"),
        "tse export": Command(TseExportConfig, run_tse_export, "write the built-in TSE benchmark as pickle or JSONL"),
    }


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C is: the same paths keep every finished unit and release the lock."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """For the command's duration, SIGTERM raises :class:`Terminated` in the main thread.

    A second SIGTERM while the first is being handled is ignored, so that the cleanup (the
    last records, the lock) is not cut short; SIGKILL still stops the process.
    """
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    received = False

    def interrupt(signum: int, frame: object) -> None:
        nonlocal received
        if not received:
            received = True
            raise Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (pointing at --help) instead of a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="dynamics",
        description="Training dynamics of Wasserstein neurons and negative pre-activations over model checkpoints.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, Any] = {}
    for name, command in _commands().items():
        group, _, action = name.partition(" ")
        where = sub
        if action:  # a two-word command such as `tse export`
            if group not in groups:
                groups[group] = sub.add_parser(group, help=f"{group} commands").add_subparsers(
                    dest="action", metavar="ACTION", required=True
                )
            where, name = groups[group], action
        p = where.add_parser(name, help=command.summary, description=command.config.__doc__)
        p.set_defaults(command_key=f"{group} {action}".strip())
        add_config_arguments(p, command.config)
    return parser


def _one_handler_for_library_logs() -> None:
    """huggingface_hub prints its warnings through a handler of its own *and* ours: keep only ours."""
    import huggingface_hub.utils.logging  # noqa: F401 - adds its handler on import; removed below

    logging.getLogger("huggingface_hub").handlers.clear()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="dynamics: %(message)s",
    )
    return _run(_commands()[args.command_key], args)


def _run(command: Command, args: argparse.Namespace) -> int:
    """Run ``command``; every expected failure is one line on stderr and its exit code."""
    name = f"dynamics {args.command_key}"
    config: Any = None
    try:
        hub_status.forget()  # a new run: the Hub is tried again (once)
        config = config_from_args(command.config, args)
        if command.check is not None:
            command.check(config)  # plain values: one line now, before the command's modules are imported
        _one_handler_for_library_logs()
        with _sigterm_as_interrupt():  # inside the try: a SIGTERM is handled as Ctrl-C is, below
            return command.run(config)
    except ComputationBug as exc:
        trace = exc.trace if args.verbose else last_frames(exc.trace)
        print(trace.rstrip(), file=sys.stderr)
        print(f"{name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except DynamicsError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        how, code = ("terminated (SIGTERM)", SIGTERM_EXIT) if isinstance(exc, Terminated) else ("interrupted", 130)
        print(
            f"{name}: {how}; every completed {command.unit} is kept, re-run the same command to resume",
            file=sys.stderr,
        )
        return code
    except BrokenPipeError:  # `dynamics report CUBE | head`: the reader left, nothing is wrong
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep Python's exit flush from failing again
        return 0
    except OSError as exc:  # on a path the user gave (a disk that filled up, ...): their input, exit 2
        told = explain_os_error(exc, _user_paths(config))
        if args.verbose and not told:
            log.exception("the error in full")
        print(f"{name}: error: {told or one_line(exc)}", file=sys.stderr)
        return 2 if told else 1


#: The config fields that name files or directories the user chose.
PATH_FIELDS = ("out", "cube", "directory", "corpus", "cache_dir", "task_path", "blimp", "model")


def _user_paths(config: Any) -> list[str]:
    values = [getattr(config, name, None) for name in PATH_FIELDS]
    flat = [v for value in values for v in (value if isinstance(value, list) else [value])]  # plot takes several cubes
    return [v for v in flat if isinstance(v, str) and v]


if __name__ == "__main__":
    sys.exit(main())
