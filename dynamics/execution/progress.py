"""Progress bars for every long loop: live on a terminal, a few whole lines in a log file.

tqdm redraws its bar in place with carriage returns; written to a file or a pipe that is one
"line" of hundreds of KB by the end of a long run. :func:`progress_bar` keeps tqdm's live bar
on a terminal and, elsewhere, writes one plain line (no bar, no carriage return) at most
every :data:`LOG_EVERY_PERCENT` percent of the total and at most every
:data:`LOG_INTERVAL_S` seconds, plus the first and the last: about a dozen lines a bar.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable
from typing import IO, Any

#: Non-terminal output: seconds between two lines at least (tqdm's ``mininterval``) ...
LOG_INTERVAL_S = 10.0
#: ... and percent of the total between two lines at least (tqdm's ``miniters``).
LOG_EVERY_PERCENT = 10
_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # tqdm moves the cursor between nested bars


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str | None = None,
    unit: str = "it",
    disable: bool = False,
    file: IO[str] | None = None,
    **options: Any,
) -> Any:
    """A tqdm bar over ``iterable`` (or updated by hand up to ``total``) writing to ``file`` (stderr).

    On a terminal: tqdm's own bar (``tqdm.auto``, resized with the window). Elsewhere: whole
    lines, see the module's docstring. ``options`` go to tqdm unchanged (``leave``, ``postfix``).
    """
    stream = sys.stderr if file is None else file
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if _is_terminal(stream):
        from tqdm.auto import tqdm as live

        return live(iterable, total=total, desc=desc, unit=unit, disable=disable, file=stream, **options)
    settings: dict[str, Any] = {
        "file": LineWriter(stream),
        "mininterval": LOG_INTERVAL_S,
        "miniters": max(1, math.ceil(total * LOG_EVERY_PERCENT / 100)) if total else 1,
        "maxinterval": math.inf,  # tqdm's monitor thread would otherwise force a line every 10 s
        "ascii": True,
        "dynamic_ncols": False,
        "bar_format": (
            "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
            if total
            else "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"
        ),
    }
    settings.update({k: v for k, v in options.items() if k != "dynamic_ncols"})
    return _log_bar_class()(iterable, total=total, desc=desc or unit, unit=unit, disable=disable, **settings)


def _log_bar_class() -> type:
    """A tqdm bar whose postfix and description changes wait for the next line instead of writing one each."""
    from tqdm.std import tqdm

    class LogBar(tqdm):
        def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
            super().set_postfix(ordered_dict, refresh=False, **kwargs)

        def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
            super().set_postfix_str(s, refresh=False)

        def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
            super().set_description(desc, refresh=False)

    return LogBar


def on_terminal() -> bool:
    """Whether the bars go to a terminal (stderr), where nested bars redraw in place and leave no lines."""
    return _is_terminal(sys.stderr)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LineWriter:
    """What tqdm writes, as whole lines: each in-place redraw (a carriage return, the text, padding)
    becomes one line ending in a newline; cursor moves, blank redraws and a repeat of the line before
    are dropped."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._last = ""

    def write(self, text: str) -> int:
        for part in re.split(r"[\r\n]", _ESCAPES.sub("", text)):
            line = part.rstrip()
            if line and line != self._last:
                self.stream.write(line + "\n")
                self._last = line
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:  # encoding, closed, ...: the stream's
        return getattr(self.stream, name)
