"""Revision names of a checkpoint suite: a template (``step{step}``) matched against the repo's refs.

A Hub repository's checkpoints are branches (or tags) whose names follow one pattern per
suite: Pythia's ``step1000``, OLMo's ``stage1-step1000-tokens4B``. A
:class:`RevisionTemplate` turns such names into training steps (and, where the name carries
them, tokens seen), so that the scan can verify every requested step against what the
repository really has, once, before anything is downloaded (:func:`index_revisions`).

Template fields: ``{step}`` (required) and ``{tokens}`` (optional). A unit letter right
after ``{tokens}`` (``K``, ``M``, ``B`` or ``T``, any case) scales the number:
``tokens{tokens}B`` reads ``tokens4B`` as 4,000,000,000 tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dynamics.errors import UserInputError

DEFAULT_TEMPLATE = "step{step}"
PYTHIA_TOKENS_PER_STEP = 2_097_152  # 1024 sequences x 2048 tokens per optimizer step
_UNITS = {"k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}
_FIELD = re.compile(r"\{(\w*)\}")


@dataclass(frozen=True)
class RevisionTemplate:
    """A revision naming pattern such as ``step{step}`` or ``stage1-step{step}-tokens{tokens}B``."""

    text: str = DEFAULT_TEMPLATE
    pattern: re.Pattern = field(init=False, repr=False, compare=False)
    token_unit: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = _FIELD.findall(self.text)
        unknown = [n for n in names if n not in ("step", "tokens")]
        if unknown or names.count("step") != 1 or names.count("tokens") > 1:
            raise UserInputError(
                f"--revision-template {self.text!r}: expected exactly one {{step}} and at most one "
                "{tokens} field, e.g. step{step} or stage1-step{step}-tokens{tokens}B"
            )
        regex, unit, last = "", 1, 0
        for match in _FIELD.finditer(self.text):
            regex += re.escape(self.text[last : match.start()]) + rf"(?P<{match.group(1)}>\d+)"
            last = match.end()
            if match.group(1) == "tokens" and last < len(self.text):
                unit = _UNITS.get(self.text[last].lower(), 1)
        regex += re.escape(self.text[last:])
        object.__setattr__(self, "pattern", re.compile(regex))
        object.__setattr__(self, "token_unit", unit)

    @property
    def needs_listing(self) -> bool:
        """True when a step's revision name cannot be written without the repo's refs (``{tokens}``)."""
        return "{tokens}" in self.text

    def format(self, step: int) -> str:
        """The revision name of ``step`` (only for templates without ``{tokens}``)."""
        if self.needs_listing:
            raise UserInputError(f"--revision-template {self.text!r} needs the repository's refs to name step {step}")
        return self.text.format(step=step)

    def parse(self, name: str) -> tuple[int, int | None] | None:
        """``(step, tokens or None)`` of a revision name that fits the template, else None."""
        match = self.pattern.fullmatch(name)
        if match is None:
            return None
        tokens = match.groupdict().get("tokens")
        return int(match["step"]), (int(tokens) * self.token_unit if tokens is not None else None)


@dataclass(frozen=True)
class RevisionIndex:
    """The steps a repository offers under a template: step -> revision name, and tokens where named."""

    template: RevisionTemplate
    revisions: Mapping[int, str]
    tokens: Mapping[int, int] = field(default_factory=dict)
    where: str = ""  # "the Hub" or the cache's refs/ folder, for messages
    verified: bool = True  # False: a known schedule stands in for a listing that could not be made

    @property
    def steps(self) -> list[int]:
        return sorted(self.revisions)


def index_revisions(
    names: Iterable[str], template: RevisionTemplate, where: str = "", verified: bool = True
) -> RevisionIndex:
    """Match every ref name against ``template``; two names of one step keep the first in sorted order."""
    revisions: dict[int, str] = {}
    tokens: dict[int, int] = {}
    for name in sorted(set(names)):
        parsed = template.parse(name)
        if parsed is None or parsed[0] in revisions:
            continue
        step, seen = parsed
        revisions[step] = name
        if seen is not None:
            tokens[step] = seen
    return RevisionIndex(template, revisions, tokens, where, verified)


def tokens_of_steps(
    steps: Iterable[int], per_step: int | None, named: Mapping[int, int] | None = None
) -> dict[int, int]:
    """Tokens seen at each step: from the revision names where they carry them, else ``step * per_step``;
    -1 where neither is known."""
    named = named or {}
    return {s: named.get(s, s * per_step if per_step else -1) for s in steps}


def cached_ref_names(repo_dir: Path) -> list[str]:
    """The revision names a Hugging Face cache holds for a repository (``refs/<name>``, nested names too)."""
    refs = repo_dir / "refs"
    if not refs.is_dir():
        return []
    return sorted(str(p.relative_to(refs)) for p in refs.rglob("*") if p.is_file())


def hub_ref_names(repo_id: str) -> dict[str, str]:
    """A Hub repository's branch and tag names, each with the commit it names now (one request)."""
    from huggingface_hub import HfApi

    refs = HfApi().list_repo_refs(repo_id)
    return {r.name: r.target_commit for r in [*refs.branches, *refs.tags]}
