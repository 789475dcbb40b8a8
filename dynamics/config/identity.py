"""The identity of a cube: what its numbers depend on, derived from the options' ``identity`` metadata.

A cube records its identity when it is made (:class:`store.cube.CubeWriter`); a run that would
add to it must have the same one, else it is refused in one line naming the first difference.
``analysis`` holds every option marked ``identity=True`` (:func:`dynamics.config.options.identity_settings`)
and the resolved scoring protocol, so a new option is in the identity the moment it is defined.

Cubes made by earlier versions stay resumable (:func:`settle_identity`): an option that did not
exist then compares equal to a stored cube when it has its default now; an option no longer in
the identity is not compared; and the scan's earlier layout (the resolved protocol under
``protocol``) is read as today's (``resolved_protocol``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dynamics.config.options import identity_defaults, identity_settings
from dynamics.config.protocol import resolve_protocol

#: The layout of ``identity["analysis"]`` written by this version (absent: an earlier one).
IDENTITY_VERSION = 2
#: Top-level identity keys a cube made before them lacks: compared when the stored identity has them.
NEW_KEYS = ("identity_version", "texts")


def analysis_identity(config: Any) -> dict[str, Any]:
    """The options a cube's numbers depend on, and the protocol they resolve to."""
    return {**identity_settings(config), "resolved_protocol": resolve_protocol(config).record()}


def _legacy(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored identity in today's layout (earlier scans kept the resolved protocol under ``protocol``)."""
    out = copy.deepcopy(dict(stored))
    analysis = out.get("analysis")
    if isinstance(analysis, dict) and isinstance(analysis.get("protocol"), dict):
        analysis["resolved_protocol"] = analysis.pop("protocol")
    return out


def kept_elsewhere(stored: Mapping[str, Any]) -> tuple[str, ...]:
    """Options the earlier scan layout identified by a top-level key instead: the lm-eval tasks that
    ran (``benchmarks.lmeval_tasks``, compared as a top-level key)."""
    benchmarks = stored.get("benchmarks")
    return ("tasks",) if isinstance(benchmarks, Mapping) and benchmarks.get("lmeval_tasks") else ()


def equivalent(stored: Mapping[str, Any], current: Mapping[str, Any], defaults: Mapping[str, Any]) -> bool:
    """Whether a cube made with ``stored`` holds numbers comparable to a run with ``current``.

    Every key of ``current`` must match: top-level keys exactly (one of :data:`NEW_KEYS` only when the
    stored identity has it); in ``analysis``, a key the stored identity lacks must have its
    default (``defaults``) now. Stored keys ``current`` no longer has are not compared, but a stored
    top-level key this run lacks (e.g. benchmarks measured before and not now) is a difference.
    """
    stored = _legacy(stored)
    for key in stored:
        if key not in current and key not in NEW_KEYS:
            return False
    for key, value in current.items():
        if key in NEW_KEYS and key not in stored:
            continue
        if key == "analysis" and isinstance(value, Mapping) and isinstance(stored.get(key), Mapping):
            before = stored[key]
            for name, now in value.items():
                if name not in before and name in kept_elsewhere(stored):
                    continue  # the earlier layout identified it by another key, compared below
                if (before[name] if name in before else defaults.get(name, object())) != now:
                    return False
        elif stored.get(key) != value:
            return False
    return True


def settle_identity(path: str | Path, current: dict[str, Any], config_class: type) -> dict[str, Any]:
    """The identity to open the cube at ``path`` with: its stored one when a run with ``current`` may
    add to it (:func:`equivalent`), else ``current`` (which the writer then refuses, naming the first
    difference). A new cube gets ``current``."""
    from store.cube import read_identity

    stored = read_identity(path)
    if not stored or stored == current:
        return current
    return stored if equivalent(stored, current, identity_defaults(config_class)) else current
