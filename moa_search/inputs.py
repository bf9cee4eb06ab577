"""Reading the user's files (configs, catalogs, studies, presets, validation sets) so that every
failure — missing, unreadable, not UTF-8, not valid JSON/TOML — is one ``ConfigError`` naming the
file and, where the parser knows it, the line; and writing files the same way, atomically."""

from __future__ import annotations

import json
import os
import tempfile
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


def write_text_atomic(path: str | Path, text: str, what: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: a reader
    never sees half a file, and a failure leaves neither half a file nor the temporary one. An
    ``OSError`` (a folder given as the file, no permission, a full disk) is one ``ConfigError``
    naming the file; ``what`` names its kind ("cannot write catalog: ...")."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigError(f"cannot write {what}: {exc.strerror or exc}", source=str(path)) from None
    return path


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
