"""Readers for the sampling parameters of an OpenAI chat request, shared by our two servers
(``serve`` and the ``sim-server``) so both accept and refuse exactly the same values.

Each reader takes the request body and returns the parameter's value (None or the empty tuple
when the client left it out or sent ``null``, OpenAI's "use the default"), or raises
``ParamError`` naming the parameter; each server turns that into its own OpenAI-style 400.
The ranges are OpenAI's documented ones.
"""

from __future__ import annotations

from typing import Any

MAX_STOP = 4
"""OpenAI accepts up to four stop sequences."""


class ParamError(Exception):
    """A parameter has a value the server cannot take; ``param`` is its name."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ParamError(name, f"{name} must be a number in {low:g} .. {high:g}, got {value!r}")
    return float(value)


def temperature(body: dict[str, Any]) -> float | None:
    return _number(body, "temperature", 0.0, 2.0)


def top_p(body: dict[str, Any]) -> float | None:
    return _number(body, "top_p", 0.0, 1.0)


def max_tokens(body: dict[str, Any]) -> int | None:
    """``max_completion_tokens`` (OpenAI's current name) or ``max_tokens`` (the older one); both
    are accepted, and must agree when both are sent."""
    values = {}
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParamError(name, f"{name} must be an integer >= 1, got {value!r}")
        values[name] = value
    if len(set(values.values())) > 1:
        raise ParamError("max_tokens", f"'max_tokens' ({values['max_tokens']}) and 'max_completion_tokens' "
                         f"({values['max_completion_tokens']}) disagree; send one")
    return next(iter(values.values()), None)


def stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else value
    if (not isinstance(values, list) or len(values) > MAX_STOP
            or not all(isinstance(s, str) and s for s in values)):
        raise ParamError("stop", f"'stop' must be a non-empty string or a list of up to {MAX_STOP} "
                         f"of them, got {value!r}")
    return tuple(values)


def seed(body: dict[str, Any]) -> int | None:
    value = body.get("seed")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -2**63 <= value < 2**63:
        raise ParamError("seed", f"'seed' must be a 64-bit integer, got {value!r}")
    return value


def stream(body: dict[str, Any]) -> tuple[bool, bool]:
    """(stream, include usage in a last chunk). ``stream_options`` takes ``include_usage`` only,
    and only with ``stream: true`` (as OpenAI)."""
    on = body.get("stream")
    if on is not None and not isinstance(on, bool):
        raise ParamError("stream", f"'stream' must be a boolean, got {on!r}")
    options = body.get("stream_options")
    if options is None:
        return bool(on), False
    if not isinstance(options, dict):
        raise ParamError("stream_options", "'stream_options' must be an object")
    if not on:
        raise ParamError("stream_options", "'stream_options' is only allowed with 'stream': true")
    for name, value in options.items():
        if name != "include_usage":
            raise ParamError(f"stream_options.{name}", f"'stream_options.{name}' is not supported "
                             "(only include_usage is)")
        if value is not None and not isinstance(value, bool):
            raise ParamError("stream_options.include_usage",
                             f"'stream_options.include_usage' must be a boolean, got {value!r}")
    return True, bool(options.get("include_usage"))
