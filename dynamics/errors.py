"""The project's one exception hierarchy.

The CLI turns every :class:`DynamicsError` into one line on stderr and a non-zero exit
code; anything else is a bug and keeps its traceback.
"""

import contextlib


class DynamicsError(Exception):
    """Base class of every error this project raises on purpose."""

    exit_code = 1


class UserInputError(DynamicsError, ValueError):
    """A bad value given by the user (a step spec, a model name, an option)."""

    exit_code = 2


class PathError(UserInputError):
    """A path the user gave cannot be used: under a file, not writable, on a full disk, ..."""


class CheckpointError(DynamicsError):
    """A checkpoint could not be downloaded or loaded, even after retries."""


class CubeError(DynamicsError):
    """The results store is in a state the request cannot proceed from."""


class CubeInputError(CubeError):
    """The cube the user named cannot be used: missing, not a cube, its lock path unusable."""

    exit_code = 2


class DamagedCubeError(CubeInputError):
    """A cube's own files are damaged (unreadable metadata, malformed step records); nothing is changed in it."""


class CubeLockedError(CubeError):
    """Another process holds the cube's writer lock."""


class ComputationBug(DynamicsError):
    """An exception from the project's own computation: a bug, which stops a run at once.

    ``trace`` holds the formatted traceback (the CLI prints its last frames, all with
    ``-v``); the message names the unit (step or condition) and the phase it failed in.
    """

    def __init__(self, message: str, trace: str = "") -> None:
        super().__init__(message)
        self.trace = trace


def is_checkpoint_problem(exc: BaseException) -> bool:
    """Whether a unit's exception is a problem of its input or environment (a checkpoint
    that cannot be had or used, an I/O error): retried, then recorded, as opposed to a user
    error (stops with one line) or a bug in our computation (stops with a traceback)."""
    return isinstance(exc, (CheckpointError, OSError))


def failure_phase(exc: BaseException) -> str | None:
    """The phase (download, load, statistics, evaluation, ...) ``exc`` was raised in, if tagged."""
    return getattr(exc, "dynamics_phase", None)


def tag_phase(exc: BaseException, phase: str) -> None:
    """Remember the innermost phase an exception came through (kept when it is pickled)."""
    if getattr(exc, "dynamics_phase", None) is None:
        with contextlib.suppress(AttributeError):  # an exception type with __slots__: the phase stays unknown
            exc.dynamics_phase = phase  # type: ignore[attr-defined]
