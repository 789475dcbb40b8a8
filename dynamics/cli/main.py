"""The `dynamics` command line. Each sub-command's options come from its config dataclass.

User errors become one line on stderr and exit code 2 (1 for other expected failures,
130 for Ctrl-C); they never print a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from dynamics import __version__
from dynamics.config.options import add_config_arguments, config_from_args
from dynamics.config.paths import explain_os_error
from dynamics.errors import ComputationBug, DynamicsError
from dynamics.execution.executor import last_frames, one_line

log = logging.getLogger("dynamics")


def _commands() -> dict[str, tuple[type, Callable[[Any], int], str]]:
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
    from dynamics.scan.config import ScanConfig
    from dynamics.study.config import StudyConfig
    from dynamics.toy.suite import ToyConfig

    return {
        "scan": (ScanConfig, run_scan_command, "stream a model's checkpoints into a cube (resumable)"),
        "ablate": (StudyConfig, run_ablate_command, "the ablation study and its controls on one model (resumable)"),
        "toy": (ToyConfig, run_toy, "train the built-in model organism into a local checkpoint suite"),
        "plot": (PlotConfig, run_plot, "draw a cube's figures (PNG and PDF)"),
        "report": (ReportConfig, run_report, "print a cube's headline numbers"),
        "steps": (StepsConfig, run_steps, "list the training steps a step spec selects"),
        "tse export": (TseExportConfig, run_tse_export, "write the built-in TSE benchmark as pickle or JSONL"),
    }


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
    for name, (cls, _, summary) in _commands().items():
        group, _, action = name.partition(" ")
        where = sub
        if action:  # a two-word command such as `tse export`
            if group not in groups:
                groups[group] = sub.add_parser(group, help=f"{group} commands").add_subparsers(
                    dest="action", metavar="ACTION", required=True
                )
            where, name = groups[group], action
        p = where.add_parser(name, help=summary, description=cls.__doc__)
        p.set_defaults(command_key=f"{group} {action}".strip())
        add_config_arguments(p, cls)
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
    _one_handler_for_library_logs()
    cls, run, _ = _commands()[args.command_key]
    config: Any = None
    try:
        config = config_from_args(cls, args)
        return run(config)
    except ComputationBug as exc:
        trace = exc.trace if args.verbose else last_frames(exc.trace)
        print(trace.rstrip(), file=sys.stderr)
        print(f"dynamics {args.command_key}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except DynamicsError as exc:
        print(f"dynamics {args.command_key}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            f"dynamics {args.command_key}: interrupted; every completed step is kept, re-run the same command to resume",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:  # `dynamics report CUBE | head`: the reader left, nothing is wrong
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep Python's exit flush from failing again
        return 0
    except OSError as exc:  # on a path the user gave (a disk that filled up, ...): their input, exit 2
        told = explain_os_error(exc, _user_paths(config))
        if args.verbose and not told:
            log.exception("the error in full")
        print(f"dynamics {args.command_key}: error: {told or one_line(exc)}", file=sys.stderr)
        return 2 if told else 1


#: The config fields that name files or directories the user chose.
PATH_FIELDS = ("out", "cube", "directory", "corpus", "cache_dir", "task_path", "blimp", "model")


def _user_paths(config: Any) -> list[str]:
    values = [getattr(config, name, None) for name in PATH_FIELDS]
    flat = [v for value in values for v in (value if isinstance(value, list) else [value])]  # plot takes several cubes
    return [v for v in flat if isinstance(v, str) and v]


if __name__ == "__main__":
    sys.exit(main())
