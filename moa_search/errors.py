"""One exception family so the CLI can turn any user-facing failure into one clear line.

Every error raised because of *input* (a file, a field, an endpoint) is a ``MoASearchError``;
anything else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations


class MoASearchError(Exception):
    """An error the user can act on; ``str()`` is the whole message, one line."""


class ConfigError(MoASearchError):
    """A config, preset, catalog or study value is invalid. The message names the field."""

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        self.source = source
        self.field = field
        where = ": ".join(p for p in (source, field) if p)
        super().__init__(f"{where}: {message}" if where else message)


class UnknownModelError(ConfigError):
    """A model id that the catalog does not list."""


class WorkFailedError(MoASearchError):
    """The input was valid, but nothing came of the work: no item could be scored, every call
    failed. The CLI exits 1 for it (2 is for bad input); the message carries the first error."""
