"""Readers for the official task file formats, with errors that name the file and the line.

- JSON Lines (SuperGLUE ``train.jsonl`` / ``val.jsonl``): one JSON object per line.
- TSV with a header (GLUE ``train.tsv`` / ``dev.tsv``): tab-separated, no quoting (GLUE sentences
  contain bare quote characters, so ``csv``'s quoting must be off).
- One JSON document (SQuAD ``*-v1.1.json``, DROP ``drop_dataset_*.json``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rmpeft.errors import RmpeftError


class DataFileError(RmpeftError):
    """A missing or malformed data file; the message names the file (and the line when known)."""


def where(path: Path, line: int | None = None) -> str:
    """``path`` or ``path:line`` for error messages."""
    return f"{path}:{line}" if line is not None else str(path)


def require_file(path: Path, hint: str = "") -> Path:
    """``path`` if it is a file, else a :class:`DataFileError` naming it."""
    if not path.is_file():
        raise DataFileError(f"missing data file {path}" + (f" ({hint})" if hint else ""))
    return path


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSON Lines file."""
    with open(require_file(path), encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFileError(f"{where(path, lineno)}: malformed JSON line ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataFileError(f"{where(path, lineno)}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_tsv(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, row)`` for each data row of a headed TSV file that has at least ``columns``."""
    with open(require_file(path), encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise DataFileError(f"{where(path, 1)}: empty file, expected a header with {', '.join(columns)}")
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataFileError(f"{where(path, 1)}: header lacks column(s) {', '.join(missing)} "
                                f"(found: {', '.join(header)})")
        for row in reader:
            lineno = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise DataFileError(f"{where(path, lineno)}: expected {len(header)} tab-separated fields, "
                                    f"found {len(row)}")
            yield lineno, dict(zip(header, row))


def read_json(path: Path) -> Any:
    """The JSON document in ``path``."""
    with open(require_file(path), encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise DataFileError(f"{where(path, e.lineno)}: malformed JSON ({e.msg})") from None


def field(obj: Any, key: str, path: Path, line: int | None = None, kind: type | tuple[type, ...] = str,
          item: str = "") -> Any:
    """``obj[key]`` checked for presence and type; errors name the file, the line and the record."""
    loc = where(path, line) + (f" ({item})" if item else "")
    if not isinstance(obj, dict) or key not in obj:
        raise DataFileError(f"{loc}: missing field '{key}'")
    value = obj[key]
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataFileError(f"{loc}: field '{key}' should be {expected}, got {type(value).__name__}")
    return value
