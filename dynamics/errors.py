"""The project's one exception hierarchy.

The CLI turns every :class:`DynamicsError` into one line on stderr and a non-zero exit
code; anything else is a bug and keeps its traceback.
"""


class DynamicsError(Exception):
    """Base class of every error this project raises on purpose."""

    exit_code = 1


class UserInputError(DynamicsError, ValueError):
    """A bad value given by the user (a step spec, a model name, an option)."""

    exit_code = 2


class CheckpointError(DynamicsError):
    """A checkpoint could not be downloaded or loaded, even after retries."""


class CubeError(DynamicsError):
    """The results store is in a state the request cannot proceed from."""


class CubeLockedError(CubeError):
    """Another process holds the cube's writer lock."""
