"""Generic JSONL / JSON / CSV: any layout, with the source field of each item field named.

Without a mapping the source uses the item fields' own names (``id``, ``prompt``,
``reference``, ``baseline_output``, ``category``); ``--prompt-field question.stem`` reads a
nested field. A record without an id gets its record number (``line-7`` / ``item-7``); integer
ids become strings. Every other field is kept in ``metadata``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from ..datasets import Item
from ._read import Row, csv_rows, json_rows, jsonl_rows
from .options import ImportOptions


def _generic(rows: Callable[[Path], Iterator[Row]]) -> Callable[[Path, ImportOptions],
                                                                 Iterator[tuple[Row, Item]]]:
    def read(path: Path, opts: ImportOptions) -> Iterator[tuple[Row, Item]]:
        for row in rows(path):
            yield row, _item(row, opts)
    return read


def _item(row: Row, opts: ImportOptions) -> Item:
    id_path = opts.id_field or "id"
    if opts.id_field is None and row.get("id", None) is None:
        item_id = f"{row.where.split()[0]}-{row.number}"
    else:
        item_id = row.item_id(id_path)
    used = {id_path, opts.prompt_field or "prompt"}
    values: dict[str, str | None] = {}
    for attr, option, default in (("reference", opts.reference_field, "reference"),
                                  ("baseline_output", opts.baseline_field, "baseline_output"),
                                  ("category", opts.category_field, "category")):
        path = option or default
        used.add(path)
        values[attr] = row.text(path, optional=option is None)  # a named field is required
    metadata = {k: v for k, v in row.data.items() if k.split(".")[0] not in
                {p.split(".")[0] for p in used}}
    return Item(id=item_id, prompt=row.text(opts.prompt_field or "prompt"), metadata=metadata,
                **values)


jsonl = _generic(jsonl_rows)
json_array = _generic(json_rows)
csv_table = _generic(csv_rows)
