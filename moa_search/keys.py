"""API key hygiene: env var *names* are checked, and key *values* are masked in upstream text.

A key reaches this process only through an environment variable named in a catalog (or by
``--api-key-env``). Servers sometimes echo the key they were sent — in a 401 message, in a 200
body that carries an ``error`` object, in a header — and that text is then printed, stored in the
call store's ``error`` column and forwarded by ``serve`` in a 502 body. So every key value the
HTTP provider reads is remembered here, and every text that comes from an upstream passes
through ``scrub`` (diagnostic text) or ``scrub_content`` (model answers) before it goes anywhere.
The list is process-wide on purpose, like a CI system's secret masks: the places that write text
out (the store, the server, the CLI) need not know which provider read which key.
"""

from __future__ import annotations

import re
from typing import Iterable

from .errors import ConfigError

__all__ = ["ENV_NAME", "MIN_KEY_CHARS", "StreamScrubber", "check_env_name", "remember", "scrub",
           "scrub_content"]

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
"""What ``api_key_env`` must look like: an environment variable name (same rule as the preset schema)."""

MIN_KEY_CHARS = 8
"""Shorter values are not remembered: masking e.g. ``local`` would rewrite ordinary answers, and a
value that short protects nothing. The placeholder keys local servers accept are longer."""

_MASK = "***"
_known: set[str] = set()


def check_env_name(value: object, *, source: str | None = None, field: str = "api_key_env") -> str:
    """``value`` if it is empty or an env var name; else a ``ConfigError`` that never quotes it
    (a value pasted where the *name* goes is most likely the key itself)."""
    if value == "":
        return ""
    if not isinstance(value, str) or not ENV_NAME.fullmatch(value):
        raise ConfigError("expected the NAME of an environment variable (letters, digits and _, "
                          "not starting with a digit, e.g. TOGETHER_API_KEY), not the key itself; "
                          "the value is not shown", source=source, field=field)
    return value


def remember(value: str | None) -> None:
    """A key value this process has read; from now on it is masked wherever ``scrub`` runs."""
    if value and len(value) >= MIN_KEY_CHARS:
        _known.add(value)


def _secrets(secrets: str | Iterable[str] | None) -> list[str]:
    extra = [secrets] if isinstance(secrets, str) else list(secrets or ())
    # longest first: a key that contains another key is masked whole
    return sorted({s for s in (*_known, *extra) if s}, key=len, reverse=True)


def scrub_content(text: str, secrets: str | Iterable[str] | None = None) -> str:
    """Mask exact key values only: for model answers, which must otherwise stay byte-identical."""
    for secret in _secrets(secrets):
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


def scrub(text: str, secrets: str | Iterable[str] | None = None) -> str:
    """Mask every remembered key (and ``secrets``) in a diagnostic text: status lines, error
    bodies, headers. Beyond exact values, a standalone last-four of a key is masked too, since
    servers quote rejected keys as ``sk-...abcd``; answers use ``scrub_content`` instead, where
    that rule could rewrite an ordinary number."""
    text = scrub_content(text, secrets)
    for secret in _secrets(secrets):
        if len(secret) >= 8:
            text = re.sub(r"(?<![A-Za-z0-9])" + re.escape(secret[-4:]) + r"(?![A-Za-z0-9])", _MASK, text)
    return text


class StreamScrubber:
    """``scrub_content`` for an answer that arrives in pieces (a streamed reply): the last
    (longest key - 1) characters are held back until the next piece or ``flush``, so a key split
    across two pieces is still masked whole, and no piece handed on holds the start of a key.
    Nothing is held back while no key is known (the simulated world, local servers)."""

    def __init__(self) -> None:
        self._held = ""

    def feed(self, piece: str) -> str:
        """The part of the text so far that can be handed on, masked."""
        text = scrub_content(self._held + piece)
        cut = len(text) - max((len(s) - 1 for s in _known), default=0)
        cut = max(0, cut)
        self._held = text[cut:]
        return text[:cut]

    def flush(self) -> str:
        """The rest, at the end of the stream."""
        rest, self._held = self._held, ""
        return rest
