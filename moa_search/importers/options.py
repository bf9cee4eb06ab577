"""What a user may tell an importer beyond the file and its format."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

#: Item field -> the option naming the source field it is read from (generic formats only).
FIELD_OPTIONS = ("id_field", "prompt_field", "reference_field", "baseline_field", "category_field")


@dataclass(frozen=True)
class ImportOptions:
    """``baseline``: a second AlpacaEval file whose outputs become ``baseline_output``.
    ``*_field``: dotted source paths for the generic JSONL / JSON / CSV importers; ``None``
    means the item field's own name (``prompt``, ``id``, ...)."""

    baseline: Path | None = None
    id_field: str | None = None
    prompt_field: str | None = None
    reference_field: str | None = None
    baseline_field: str | None = None
    category_field: str | None = None

    def fields_given(self) -> list[str]:
        return [f.name for f in fields(self) if f.name in FIELD_OPTIONS
                and getattr(self, f.name) is not None]
