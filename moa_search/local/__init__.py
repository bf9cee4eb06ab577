"""Local models: llama.cpp servers that moa-search starts, reuses and stops itself.

``discover`` finds GGUF weights, ``servers`` runs the server processes, ``state`` records the
servers of a running ``moa-search local serve`` for reuse, ``catalog_file`` writes a catalog for
them, ``provider`` is ``--backend local``, ``serve`` is the ``local serve`` command, and
``machine`` says what CPU real-model numbers were measured on. This file imports none of them,
so the CLI can read the defaults below without loading httpx.
"""

from pathlib import Path

DEFAULT_N_CTX = 4096
"""``local serve``'s window: the shipped local catalog's, so that catalog reuses its servers."""
DEFAULT_CATALOG_OUT = Path("runs/local/catalog.toml")

__all__ = ["DEFAULT_CATALOG_OUT", "DEFAULT_N_CTX"]
