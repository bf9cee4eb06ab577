"""The catalog TOML ``moa-search local serve`` writes for the models it serves.

It is a *local* catalog (``provider = "local"`` with the GGUF path), not a list of URLs: while
``local serve`` runs, ``--backend local --catalog FILE`` finds its servers and reuses them;
after it stops, the same file still works and ``--backend local`` starts its own servers. The
URLs are in the header comment for other OpenAI-compatible clients. Prices are zero: a local
call costs no money (its cost is time, measured as latency).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..inputs import write_text_atomic
from .servers import LocalServer


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def default_max_tokens(n_ctx: int) -> int:
    """Room for the prompt: an agent's default of 2048 output tokens would fill a small window,
    and an aggregator's prompt holds several answers."""
    return max(1, min(512, n_ctx // 4))


def catalog_text(servers: Sequence[LocalServer], command: str) -> str:
    lines = ["# Local llama.cpp models, written by `" + command + "`.",
             "# While it runs, `moa-search ... --backend local --catalog THIS_FILE` reuses its servers;",
             "# otherwise --backend local starts servers for these models itself.",
             "# OpenAI-compatible endpoints while it runs:"]
    lines += [f"#   {s.spec.alias} -> {s.base_url}" for s in servers]
    for s in servers:
        spec = s.spec
        lines += ["", f"[models.{_toml_str(spec.alias)}]", 'provider = "local"', f"gguf = {_toml_str(str(spec.gguf))}",
                  "input_price = 0.0", "output_price = 0.0", f"context_window = {spec.n_ctx}",
                  f"max_tokens = {default_max_tokens(spec.n_ctx)}", f"n_threads = {spec.n_threads}"]
        if spec.chat_format:
            lines.append(f"chat_format = {_toml_str(spec.chat_format)}")
    return "\n".join(lines) + "\n"


def write_catalog(path: Path, servers: Sequence[LocalServer], command: str) -> Path:
    """Written atomically, so a reader never sees half a catalog."""
    return write_text_atomic(path, catalog_text(servers, command), "catalog")
