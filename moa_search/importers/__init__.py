"""Importers: published benchmark files (and generic JSONL / JSON / CSV) -> validation sets;
other runtimes' configs -> MoA configs (``CONFIG_IMPORTERS``: ``archon``).

``import_file(path, format)`` reads a file in a registered format and returns a ``Dataset``;
``moa-search data import`` writes it as the project's JSONL, and a study's ``[data] source`` /
``format`` imports it on the fly. Dispatch is by the ``IMPORTERS`` registry (format name ->
``Importer``), so a new layout is one function and one row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..datasets import Dataset, Item
from ..errors import ConfigError
from . import archon, benchmarks, generic
from ._read import Row
from .options import FIELD_OPTIONS, ImportOptions

__all__ = ["CONFIG_IMPORTERS", "FIELD_OPTIONS", "IMPORTERS", "ImportOptions", "Importer", "import_file"]


@dataclass(frozen=True)
class Importer:
    """A format: how to read it, and which options it takes (field mappings / a baseline)."""

    name: str
    read: Callable[[Path, ImportOptions], Iterator[tuple[Row, Item]]]
    takes_fields: bool = False
    takes_baseline: bool = False


IMPORTERS: dict[str, Importer] = {imp.name: imp for imp in (
    Importer("gsm8k", benchmarks.gsm8k),
    Importer("arc", benchmarks.ai2_choice),
    Importer("openbookqa", benchmarks.ai2_choice),
    Importer("mmlu", benchmarks.mmlu),
    Importer("alpacaeval", benchmarks.alpacaeval, takes_baseline=True),
    Importer("alpacaeval_annotations", benchmarks.alpacaeval_annotations),
    Importer("mtbench", benchmarks.mtbench),
    Importer("jsonl", generic.jsonl, takes_fields=True),
    Importer("json", generic.json_array, takes_fields=True),
    Importer("csv", generic.csv_table, takes_fields=True),
)}


CONFIG_IMPORTERS: dict[str, Callable[..., archon.ArchonImport]] = {"archon": archon.read_archon_file}
"""Runtime name -> reader of one config file (path, catalog, prompt_style=...) for ``moa-search import``."""


def import_file(path: str | Path, fmt: str, options: ImportOptions | None = None, *,
                name: str | None = None) -> Dataset:
    """Read ``path`` as format ``fmt``. Every error names the file, the line and the field;
    two records with one id are an error naming both lines."""
    path, opts = Path(path), options or ImportOptions()
    importer = IMPORTERS.get(fmt)
    if importer is None:
        raise ConfigError(f"unknown format {fmt!r}; available: {', '.join(IMPORTERS)}",
                          field="format")
    given = opts.fields_given()
    if given and not importer.takes_fields:
        raise ConfigError(f"field mappings ({', '.join(given)}) apply to the jsonl, json and csv "
                          f"formats, not {fmt!r}", field="format")
    if opts.baseline is not None and not importer.takes_baseline:
        raise ConfigError(f"a baseline file applies to the alpacaeval format, not {fmt!r}",
                          field="baseline")
    items: list[Item] = []
    first: dict[str, str] = {}
    for row, item in importer.read(path, opts):
        if item.id in first:
            raise row.fail(f"duplicate id {item.id!r} (first at {first[item.id]})", "id")
        first[item.id] = row.where
        items.append(item)
    if not items:
        raise ConfigError("the file has no records", source=str(path))
    return Dataset(name or path.stem, tuple(items), str(path))
