"""Step specs: the text a user types after ``--steps`` -> an ordered list of training steps.

Grammar (terms joined by commas; the union is sorted and deduplicated):

- ``START:STOP:STEP``: every STEP from START to STOP, STOP *inclusive*
  (``0:143000:1000`` is 144 steps);
- ``N``: one step;
- ``pythia``: Pythia's 154 official revisions (0, 1, 2, 4, ..., 512, then every 1000 to 143000);
- ``log``: 0, the powers of two up to 512, then 1000, 2000, 4000, ..., 128000 and 143000;
- ``final``: the source's last step (143000 for Pythia);
- ``all``: every step the source offers (for a local suite, its sub-directories).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

from dynamics.errors import UserInputError

PYTHIA_FINAL_STEP = 143000
PYTHIA_STEPS: tuple[int, ...] = (0,) + tuple(2**k for k in range(10)) + tuple(range(1000, PYTHIA_FINAL_STEP + 1, 1000))
LOG_STEPS: tuple[int, ...] = (
    (0,) + tuple(2**k for k in range(10)) + tuple(1000 * 2**k for k in range(8)) + (PYTHIA_FINAL_STEP,)
)

_RANGE = re.compile(r"^([0-9]+):([0-9]+):([0-9]+)$")  # ASCII digits: "²".isdigit() is True, int("²") fails
#: The largest step (the cube stores steps as int64).
MAX_STEP = 2**63 - 1
#: The most steps one spec may select (every selected step is one checkpoint to fetch).
MAX_SELECTED = 1_000_000
_GRAMMAR = "START:STOP:STEP, N, a comma list, pythia, log, final or all"


def parse_steps(spec: str, available: Sequence[int] | None = None, source: str = "") -> list[int]:
    """Parse a step spec into a sorted list of unique steps.

    Args:
        spec: the step spec (see the module docstring).
        available: the steps the checkpoint source offers. When given, ``final`` and ``all``
            refer to it and every requested step must be one of them; when ``None`` (a source
            that cannot list its steps), ``final`` and ``all`` mean Pythia's schedule.
        source: the model's name, for error messages.

    Raises:
        UserInputError: a malformed spec, or a step the source does not offer (the message
            names the nearest available steps).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserInputError(f"empty step spec {spec!r}: expected {_GRAMMAR}")
    offered = sorted(set(available)) if available is not None else None
    if offered is not None and not offered:
        raise UserInputError("the checkpoint source offers no steps at all")
    steps: set[int] = set()
    for term in (t.strip() for t in spec.split(",")):
        steps.update(_parse_term(term, spec, offered))
        if len(steps) > MAX_SELECTED:
            raise UserInputError(f"step spec {spec!r} selects more than {MAX_SELECTED} steps; choose fewer")
    if offered is not None:
        offered_set = set(offered)
        for step in sorted(steps):
            if step not in offered_set:
                where = f" for {source}" if source else ""
                raise UserInputError(
                    f"step {step} has no checkpoint{where}; nearest available: {nearest_steps(step, offered)}"
                )
    return sorted(steps)


def _parse_term(term: str, spec: str, offered: list[int] | None) -> list[int]:
    if term == "pythia":
        return list(PYTHIA_STEPS)
    if term == "log":
        return list(LOG_STEPS)
    if term == "final":
        return [offered[-1] if offered else PYTHIA_FINAL_STEP]
    if term == "all":
        return list(offered) if offered else list(PYTHIA_STEPS)
    if re.fullmatch(r"[0-9]+", term):
        return [_in_range(int(term), term)]
    match = _RANGE.match(term)
    if match:
        return _parse_range(term, match)
    if term.lstrip().startswith("-") or re.search(r"(^|:)-\d", term):
        raise UserInputError(f"step spec {term!r} is negative: steps are integers >= 0")
    if not term:
        raise UserInputError(f"step spec {spec!r} has an empty term: expected {_GRAMMAR}")
    raise UserInputError(f"cannot parse step spec {term!r}: expected {_GRAMMAR}")


def _parse_range(term: str, match: re.Match[str]) -> list[int]:
    """The steps of a ``START:STOP:STEP`` term (STOP inclusive)."""
    start, stop, stride = (_in_range(int(g), term) for g in match.groups())
    if stride == 0:
        raise UserInputError(f"step spec {term!r} has STEP 0: STEP must be a positive integer")
    if stop < start:
        raise UserInputError(f"step spec {term!r} has STOP {stop} < START {start}")
    count = (stop - start) // stride + 1
    if count > MAX_SELECTED:  # refused before it is materialised (a list of 10**12 steps is a MemoryError)
        raise UserInputError(
            f"step spec {term!r} selects {count} steps, more than {MAX_SELECTED}; "
            "choose a larger STEP or a shorter range"
        )
    return list(range(start, stop + 1, stride))


def _in_range(value: int, term: str) -> int:
    if value > MAX_STEP:
        raise UserInputError(f"step spec {term!r}: {value} is too large; steps are integers from 0 to {MAX_STEP}")
    return value


def nearest_steps(step: int, offered: Sequence[int]) -> str:
    """The available steps just below and above ``step``, as text for an error message."""
    i = bisect.bisect_left(offered, step)
    near = [offered[j] for j in (i - 1, i) if 0 <= j < len(offered)]
    return ", ".join(str(s) for s in near)
