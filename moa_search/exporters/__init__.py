"""Exporters: a preset (or a bare config) rendered for another runtime.

Each exporter is its own small module because each target has its own vocabulary and its own
limits; what a target cannot express is refused with the reason, never approximated silently.

- ``archon``: Archon's JSON config (layers of ``generator`` / ``fuser`` components); the
  import direction is ``importers.archon``.
- ``moa_reference``: the command line of the reference MoA implementation (togethercomputer/MoA).
- ``standalone``: a single-file Python script that needs only httpx.

``export_text`` is the one entry point the CLI needs (``moa-search study export --format``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import ConfigError
from ..preset import PresetFile

EXPORT_FORMATS: tuple[str, ...] = ("preset", "archon", "moa-reference", "standalone")
EXPORT_SUFFIXES: dict[str, str] = {"preset": ".json", "archon": ".archon.json", "moa-reference": ".sh",
                                   "standalone": ".py"}


def export_text(preset: PresetFile, fmt: str, *, allow_prompt_change: bool = False,
                model_types: Mapping[str, str] | None = None) -> str:
    """The preset rendered in ``fmt`` (one of ``EXPORT_FORMATS``), as the text of one file.
    ``allow_prompt_change`` and ``model_types`` are Archon's (see ``archon.to_archon``)."""
    from . import archon, moa_reference, standalone

    def to_archon(p: PresetFile) -> str:
        data = archon.to_archon(p, model_types=model_types, allow_prompt_change=allow_prompt_change)
        return json.dumps(data, indent=2) + "\n"

    renderers: dict[str, Callable[[PresetFile], str]] = {
        "preset": lambda p: p.to_json(),
        "archon": to_archon,
        "moa-reference": moa_reference.to_moa_reference,
        "standalone": standalone.to_standalone_script,
    }
    try:
        render = renderers[fmt]
    except KeyError:
        raise ConfigError(f"unknown export format {fmt!r}; expected one of {list(EXPORT_FORMATS)}",
                          field="format") from None
    return render(preset)


def write_export(path: str | Path, preset: PresetFile, fmt: str, **options: Any) -> Path:
    """``export_text`` written atomically (a preset through ``write_preset``, which validates it
    and refuses key values); nothing is written when the export is refused."""
    from ..inputs import write_text_atomic
    from ..preset import write_preset
    if fmt == "preset":
        return write_preset(path, preset)
    return write_text_atomic(path, export_text(preset, fmt, **options), f"{fmt} export")


__all__ = ["EXPORT_FORMATS", "EXPORT_SUFFIXES", "export_text", "write_export"]
