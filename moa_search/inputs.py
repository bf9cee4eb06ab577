"""Reading the user's files (configs, catalogs, studies, presets, validation sets) so that every
failure — missing, unreadable, not UTF-8, not valid JSON/TOML — is one ``ConfigError`` naming the
file and, where the parser knows it, the line."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError


def read_text(path: str | Path, what: str) -> str:
    """``what`` names the kind of file in the message: "cannot read catalog: No such file…"."""
    try:
        return Path(path).read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror or exc}", source=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read {what}: not UTF-8 text", source=str(path)) from None


def parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                          source=source) from None


def parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML ({exc})", source=source) from None
