"""TSE files: export of the generated benchmark and loaders of the original releases.

Same layout as :mod:`dynamics.syntax.tse`::

    {case: {sub-case: [(good, bad), ...]}}          # agreement cases
    {case: {"past" | "future": [(good, intrusive, bad), ...]}}   # NPI cases
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from dynamics.errors import DynamicsError, UserInputError
from dynamics.syntax.tse import TSE_CASES, TseData, check_cases, generated_case
from store.safe_files import write_files_together

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- export


def _case_bytes(case: str, format: str) -> bytes:
    subcases = generated_case(case)
    if format == "pickle":
        return pickle.dumps({sub: list(items) for sub, items in subcases.items()}, protocol=4)
    lines = []
    for subcase, items in subcases.items():
        for item in items:
            record = {"sentence_good": item[0], "sentence_bad": item[-1]}
            if len(item) == 3:
                record["sentence_intrusive"] = item[1]
            record |= {"case": case, "subcase": subcase}
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return "".join(lines).encode("utf-8")


def export_tse(
    directory: str | os.PathLike,
    format: Literal["pickle", "jsonl"] = "pickle",
    overwrite: bool = False,
    cases: Iterable[str] | None = None,
) -> list[Path]:
    """Write the generated benchmark, one file per case.

    ``pickle`` writes the original layout, ``<case>.pickle`` holding ``{sub-case: [tuples]}``;
    ``jsonl`` writes ``<case>.jsonl`` with one item per line (``sentence_good``,
    ``sentence_bad``, ``sentence_intrusive`` for NPI items, ``case``, ``subcase``). An
    existing file with the same content is left as it is; nothing is written when any
    existing file differs, unless ``overwrite``. The files are written all or none: a full
    disk is one line naming the file and leaves the directory as it was.

    Args:
        directory: Output folder, created when missing.
        format: ``"pickle"`` or ``"jsonl"``.
        overwrite: Replace existing files whose content differs.
        cases: Cases to write, default all 22.

    Returns:
        The paths of the case files, in case order.

    Raises:
        UserInputError: Unknown format or case, or an existing different file without
            ``overwrite``; PathError (one) for a full disk.
    """
    if format not in ("pickle", "jsonl"):
        raise UserInputError(f"unknown TSE export format {format!r}; expected pickle or jsonl")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserInputError(f"TSE export target {directory} exists and is not a directory")
    contents = {directory / f"{case}.{format}": _case_bytes(case, format) for case in check_cases(cases)}
    changed = {path: data for path, data in contents.items() if not path.is_file() or path.read_bytes() != data}
    if not overwrite:
        for path in changed:
            if path.exists():
                raise UserInputError(
                    f"{path} already exists with different content; pass overwrite=True (--overwrite) to replace it"
                )
    # All files or none: each through a fresh O_EXCL temporary file (a planted link is never followed),
    # renamed into place once every one is whole; a full disk leaves nothing of this export behind.
    write_files_together(changed)
    log.info("wrote %d of %d TSE %s files to %s", len(changed), len(contents), format, directory)
    return list(contents)


# --------------------------------------------------------------------------- loaders


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and strings only: a TSE pickle names no class, so any
    global a file asks for is refused instead of being imported and run."""

    def find_class(self, module: str, name: str) -> type:
        raise pickle.UnpicklingError(f"it refers to {module}.{name}")


def _case_files(directory: str | os.PathLike, suffix: str, what: str) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise UserInputError(f"TSE directory {directory} does not exist or is not a directory")
    files = sorted(directory.glob(f"*{suffix}"), key=_case_order)
    if not files:
        raise UserInputError(f"no {what} files (*{suffix}) in {directory}")
    return files


def _case_name(path: Path) -> str:
    stem = path.stem
    return stem[: -len("_all")] if stem.endswith("_all") else stem


def _case_order(path: Path) -> tuple[int, str]:
    case = _case_name(path)
    return (TSE_CASES.index(case) if case in TSE_CASES else len(TSE_CASES), path.name)


def _check_item(item: object, where: str) -> tuple[str, ...]:
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3) or not all(isinstance(s, str) for s in item):
        raise DynamicsError(f"{where}: expected (good, bad) or (good, intrusive, bad) strings, got {str(item)[:80]!r}")
    return tuple(item)


def load_tse_pickles(directory: str | os.PathLike) -> TseData:
    """Read a directory of the original generator's ``<case>.pickle`` files.

    Only plain containers and strings are unpickled; a file that names any class is
    refused.

    Returns:
        ``{case: {sub-case: [tuples]}}``, known cases in :data:`TSE_CASES` order first.

    Raises:
        UserInputError: The directory is missing or holds no ``.pickle`` file.
        DynamicsError: A file is not a TSE pickle.
    """
    data: TseData = {}
    for path in _case_files(directory, ".pickle", "TSE pickle"):
        try:
            with path.open("rb") as f:
                content = _DataOnlyUnpickler(f, encoding="utf-8").load()
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            TypeError,
            AttributeError,
            IndexError,
            UnicodeDecodeError,
        ) as exc:
            raise DynamicsError(f"{path} is not a readable TSE pickle: {exc}") from None
        if not isinstance(content, dict) or not all(
            isinstance(k, str) and isinstance(v, list) for k, v in content.items()
        ):
            raise DynamicsError(f"{path}: expected a dict sub-case -> list of tuples, got {type(content).__name__}")
        data[path.stem] = {
            sub: [_check_item(item, f"{path} [{sub}]") for item in items] for sub, items in content.items()
        }
    return data


def load_tse_jsonl(path_or_dir: str | os.PathLike) -> TseData:
    """Read TSE JSONL: this module's export or the refining-TSE variant.

    Each line needs ``sentence_good`` and ``sentence_bad``, and a sub-case in ``subcase``
    or ``label``; ``sentence_intrusive`` makes a triple. The case is the line's ``case``
    field, else the file name (``<case>_all.jsonl`` or ``<case>.jsonl``).

    Args:
        path_or_dir: One ``.jsonl`` file or a directory of them.

    Returns:
        ``{case: {sub-case: [tuples]}}``, known cases in :data:`TSE_CASES` order first.

    Raises:
        UserInputError: The path is missing or the directory holds no ``.jsonl`` file.
        DynamicsError: A line is not JSON or lacks a required field.
    """
    path = Path(path_or_dir)
    if path.is_file():
        files = [path]
    else:
        files = _case_files(path, ".jsonl", "TSE JSONL")
    data: TseData = {}
    for file in files:
        with file.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    case, subcase, item = _jsonl_item(line, file, number)
                    data.setdefault(case, {}).setdefault(subcase, []).append(item)
    return data


#: The refining-TSE reader is the general JSONL reader (``label`` names the sub-case).
load_refining_tse_jsonl = load_tse_jsonl


def _jsonl_item(line: str, file: Path, number: int) -> tuple[str, str, tuple[str, ...]]:
    where = f"{file}:{number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DynamicsError(f"{where}: not a JSON line ({exc.msg})") from None
    if not isinstance(record, dict):
        raise DynamicsError(f"{where}: expected a JSON object")
    missing = [k for k in ("sentence_good", "sentence_bad") if k not in record]
    if "subcase" not in record and "label" not in record:
        missing.append("label")
    if missing:
        raise DynamicsError(f"{where}: missing field(s) {', '.join(missing)}")
    subcase = str(record.get("subcase", record.get("label")))
    sentences = [record["sentence_good"], record["sentence_bad"]]
    if "sentence_intrusive" in record:
        sentences.insert(1, record["sentence_intrusive"])
    return str(record.get("case", _case_name(file))), subcase, _check_item(sentences, where)
