"""Exporters: a preset (or a bare config) rendered for another runtime.

Each exporter is its own small module because each target has its own vocabulary and its own
limits; what a target cannot express is refused with the reason, never approximated silently.

- ``archon``: Archon's JSON config (layers of ``generator`` / ``fuser`` components), both ways.
- ``moa_reference``: the command line of the reference MoA implementation (togethercomputer/MoA).
- ``standalone``: a single-file Python script that needs only httpx.

``export_text`` is the one entry point the CLI needs (``moa-search study export --format``).
"""

from __future__ import annotations

import json
from typing import Callable

from ..errors import ConfigError
from ..preset import PresetFile

EXPORT_FORMATS: tuple[str, ...] = ("preset", "archon", "moa-reference", "standalone")


def export_text(preset: PresetFile, fmt: str) -> str:
    """The preset rendered in ``fmt`` (one of ``EXPORT_FORMATS``), as the text of one file."""
    from . import archon, moa_reference, standalone

    renderers: dict[str, Callable[[PresetFile], str]] = {
        "preset": lambda p: p.to_json(),
        "archon": lambda p: json.dumps(archon.to_archon(p), indent=2) + "\n",
        "moa-reference": moa_reference.to_moa_reference,
        "standalone": standalone.to_standalone_script,
    }
    try:
        render = renderers[fmt]
    except KeyError:
        raise ConfigError(f"unknown export format {fmt!r}; expected one of {list(EXPORT_FORMATS)}",
                          field="format") from None
    return render(preset)


__all__ = ["EXPORT_FORMATS", "export_text"]
