"""Readers shared by the importers: rows of a JSONL, JSON or CSV file, each with where it came
from, so that every error an importer raises names the file, the line (or array item) and the
field."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from .. import inputs
from ..datasets import json_type
from ..errors import ConfigError

_MISSING = object()


@dataclass(frozen=True)
class Row:
    """One record of a source file and its place in it (``where`` is "line 3" or "item 3")."""

    source: str
    where: str
    number: int
    data: Mapping[str, Any]

    def fail(self, message: str, fld: str | None = None) -> ConfigError:
        return ConfigError(message, source=self.source,
                           field=f"{self.where}: {fld}" if fld else self.where)

    def get(self, path: str, default: Any = _MISSING) -> Any:
        """The value at a dotted path (``question.stem``); missing is an error unless a default
        is given."""
        value: Any = self.data
        for part in path.split("."):
            if not isinstance(value, Mapping) or part not in value:
                if default is not _MISSING:
                    return default
                raise self.fail("missing required field", path)
            value = value[part]
        return value

    def text(self, path: str, *, optional: bool = False) -> str | None:
        """A non-empty string field (numbers are written as text, so ``42`` becomes ``"42"``)."""
        value = self.get(path, None if optional else _MISSING)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.fail(f"expected a string, got {json_type(value)}", path)
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail("expected a finite number", path)
        value = value if isinstance(value, str) else _number_text(value)
        if not value.strip():
            if optional:
                return None
            raise self.fail("expected a non-empty string, got an empty one", path)
        return value

    def item_id(self, path: str) -> str:
        """An id: a string, or an integer written as a string (``81`` -> ``"81"``)."""
        value = self.get(path)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.fail(f"expected a string or an integer id, got {json_type(value)}", path)
        text = value if isinstance(value, str) else str(value)
        if not text.strip():
            raise self.fail("expected a non-empty id", path)
        return text


def _number_text(value: float) -> str:
    return str(int(value)) if isinstance(value, int) or value.is_integer() else repr(value)


def read_text(path: Path) -> str:
    """The file's text; a leading byte-order mark (spreadsheet CSV exports) is dropped."""
    return inputs.read_text(path, "source file").removeprefix("\ufeff")


def jsonl_rows(path: Path) -> Iterator[Row]:
    """One row per non-blank line; each must be a JSON object."""
    source = str(path)
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid JSON ({exc.msg} at column {exc.colno}); expected one "
                              f"JSON object per line", source=source, field=f"line {lineno}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"expected a JSON object, got {json_type(raw)}", source=source,
                              field=f"line {lineno}")
        yield Row(source, f"line {lineno}", lineno, raw)


def json_rows(path: Path) -> Iterator[Row]:
    """One row per element of a top-level JSON array of objects (AlpacaEval's layout)."""
    source = str(path)
    try:
        raw = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON ({exc.msg}) at column {exc.colno}", source=source,
                          field=f"line {exc.lineno}") from None
    if not isinstance(raw, list):
        raise ConfigError(f"expected a JSON array of objects, got {json_type(raw)}", source=source)
    for index, obj in enumerate(raw, start=1):
        if not isinstance(obj, dict):
            raise ConfigError(f"expected an object, got {json_type(obj)}", source=source,
                              field=f"item {index}")
        yield Row(source, f"item {index}", index, obj)


def csv_rows(path: Path, *, columns: tuple[str, ...] | None = None) -> Iterator[Row]:
    """One row per CSV record, keyed by the header row (or by ``columns`` for a headerless file);
    every row must have as many cells as there are names. Line numbers are where a record
    starts, counting quoted newlines."""
    source = str(path)
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    names = columns
    start = 1
    try:
        for record in reader:
            lineno, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue
            if names is None:
                names = tuple(c.strip() for c in record)
                continue
            if len(record) != len(names):
                raise ConfigError(f"expected {len(names)} cells ({', '.join(names)}), got "
                                  f"{len(record)}", source=source, field=f"line {lineno}")
            yield Row(source, f"line {lineno}", lineno, dict(zip(names, record)))
    except csv.Error as exc:
        raise ConfigError(f"invalid CSV: {exc}", source=source,
                          field=f"line {reader.line_num}") from None
