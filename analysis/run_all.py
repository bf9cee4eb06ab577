"""Run the four analyses (and, for ``budget``, the search they compare against) in one go.

Order: the search study first (``studies/sim-demo.toml`` unless ``--study FILE`` or
``--no-study``; run only when its results are missing and only if it is a simulated study, so
this command never spends real money on a search), then diversity, depth, roles and budget,
sharing one call store so a config two analyses measure is run once. Every option of the single
analyses is accepted and passed on; ``--out-dir DIR`` writes ``DIR/<name>/`` for each (and each
analysis its block of ``DIR/README.md``, if that file has the block's markers), and
``DIR/generated_with.json`` records the package versions that made them.

``--check`` asks whether the committed outputs are what the code makes now: it regenerates
everything with the defaults into a temporary folder, from an empty call store and a fresh run of
the study, and compares byte for byte with ``analysis/`` (or ``--against DIR``), listing each file
that differs with its first differing line; exit status 1 if any does. Real-model analyses
(``local``) cannot be regenerated without their model, so for them it checks that the committed
page and summary are what the committed ``results.json`` renders to.

Run: ``python analysis/run_all.py [--n-items N] [--data math] [--no-study] ...`` or
``python analysis/run_all.py --check [--against DIR] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make `analysis` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import budget, depth, diversity, roles
from analysis.common import (ANALYSIS_DIR, PLOTLY_JS, README, build_parser, options_from_args,
                             package_versions)
from moa_search.errors import ConfigError, MoASearchError

ANALYSES = (diversity, depth, roles, budget)
#: Real-model analyses: their models do not run in CI, so ``--check`` re-renders their page and
#: summary from their committed ``results.json`` (``--render-only``) and compares those.
RENDERED_ONLY = ("local",)
VERSIONS = "generated_with.json"
#: Packages whose versions can move the committed bytes (numerics, the sampler, the pages).
PACKAGES = ("numpy", "scipy", "optuna", "plotly")
#: Options ``--check`` leaves at their defaults: the committed files are made with them.
OUTPUT_OPTIONS = ("data", "scorer", "judge_model", "n_items", "seed", "catalog", "backend",
                  "base_url", "sim_endpoint", "store", "no_store", "out_dir", "study", "runs_dir",
                  "no_study")


def ensure_study(study: Path, runs_dir: Path, quiet: bool) -> str:
    """Run ``study`` if its results are missing and it is simulated; say what happened."""
    from moa_search.study import run_study_file
    from moa_search.study_spec import load_study_spec
    spec = load_study_spec(study, runs_dir=runs_dir)
    db = spec.storage.removeprefix("sqlite:///") if spec.storage.startswith("sqlite:///") else None
    if db is None or Path(db).exists():
        return (f"study {spec.name}: using existing results in {_rel(spec.run_dir)} (made by an "
                f"earlier run: delete it to re-run the study with the current code)")
    if spec.backend != "sim":
        raise ConfigError(f"study {spec.name!r} has no results and uses backend {spec.backend!r}; "
                          f"run it yourself (`moa-search study run {study}`) if you mean to pay for it",
                          field="--study")
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not quiet:
        print(f"running study {spec.name} ({study}), simulated ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = run_study_file(study, runs_dir=runs_dir)
    return (f"study {spec.name}: ran {len(result.trials)} trials in "
            f"{time.perf_counter() - started:.1f} s")


def generate(args: argparse.Namespace) -> list[str]:
    """Run the study and the four analyses; lines saying what ran."""
    lines: list[str] = []
    extra = budget.study_options(args)
    if extra["study"] is not None:
        lines.append(ensure_study(extra["study"], args.runs_dir, args.quiet))
    for module in ANALYSES:
        opts = options_from_args(module.NAME, args, **(extra if module is budget else {}))
        if args.out_dir is not None:
            opts = replace(opts, out_dir=args.out_dir / module.NAME)
        output = module.run(opts)
        lines.append(f"{module.NAME:<9} {output.elapsed_s:6.1f} s  -> "
                     f"{_rel(output.html_path)}, {_rel(output.summary_path)}")
    root = args.out_dir or ANALYSIS_DIR
    (root / VERSIONS).write_text(json.dumps(versions(), indent=2) + "\n", encoding="utf-8")
    return lines


# ---- what made the files ---------------------------------------------------------------------

def versions() -> dict[str, str]:
    """Python and the packages that can move the committed bytes, as installed now."""
    return {"python": ".".join(platform.python_version_tuple()[:2]), **package_versions(PACKAGES)}


# ---- --check ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Difference:
    """A committed file that is not what the code makes: where, and its first differing line."""

    path: str  # as shown to the user
    line: int  # 1-based; 0 when the file is missing on one side
    committed: str | None
    regenerated: str | None

    def describe(self) -> str:
        if self.committed is None:
            return f"{self.path}: written by the code, not committed"
        if self.regenerated is None:
            return f"{self.path}: committed, but the code no longer writes it"
        return (f"{self.path}:{self.line}: differs from the regenerated file\n"
                f"  committed:   {self.committed}\n  regenerated: {self.regenerated}")


def first_difference(a: str, b: str) -> tuple[int, str, str] | None:
    """(line number, line of ``a``, line of ``b``) at the first line that differs, each cut to
    about 100 characters around the first differing character; None when equal."""
    if a == b:
        return None
    la, lb = a.split("\n"), b.split("\n")
    for i in range(max(len(la), len(lb))):
        x = la[i] if i < len(la) else "<end of file>"
        y = lb[i] if i < len(lb) else "<end of file>"
        if x != y:
            col = next((j for j, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
            start = max(0, col - 40)

            def cut(s: str) -> str:
                more = "…" if len(s) > start + 100 else ""
                return ("…" if start else "") + s[start:start + 100] + more
            return i + 1, cut(x), cut(y)
    return None  # pragma: no cover - unequal texts differ in some line


def compare_files(committed: Path, regenerated: Path, shown: str) -> Difference | None:
    if not committed.is_file() and not regenerated.is_file():
        return None
    if not committed.is_file():
        return Difference(shown, 0, None, "")
    if not regenerated.is_file():
        return Difference(shown, 0, "", None)
    found = first_difference(committed.read_text("utf-8"), regenerated.read_text("utf-8"))
    return None if found is None else Difference(shown, *found)


def compare(against: Path, fresh: Path) -> tuple[list[Difference], int]:
    """Every file of the four analyses' folders (either side), the shared plotly.js and the
    README (its generated blocks): the differences, and how many files were compared."""
    rels = [Path(PLOTLY_JS), Path(README)] if (against / README).is_file() else [Path(PLOTLY_JS)]
    for module in ANALYSES:
        found = {p.relative_to(root) for root in (against, fresh)
                 for p in (root / module.NAME).rglob("*") if p.is_file()}
        rels += sorted(found)
    diffs = [d for rel in rels
             if (d := compare_files(against / rel, fresh / rel, _shown(against, rel)))]
    return diffs, len(rels)


def check_rendered(against: Path, work: Path) -> tuple[list[Difference], list[str]]:
    """Real-model analyses: re-render each page and summary from the committed
    ``results.json`` (the analysis's own ``--render-only``) and compare."""
    diffs: list[Difference] = []
    notes: list[str] = []
    for name in RENDERED_ONLY:
        results = against / name / "results.json"
        if not results.is_file():
            notes.append(f"{name}: no committed results.json, nothing to check")
            continue
        module = importlib.import_module(f"analysis.{name}")
        out = work / name
        out.mkdir(parents=True)
        shutil.copy(results, out / "results.json")
        with contextlib.redirect_stdout(io.StringIO()):  # its "wrote ..." line
            status = module.main(["--render-only", "--out-dir", str(out), "--quiet"])
        if status != 0:
            raise MoASearchError(f"{_shown(against, Path(name))}: --render-only failed")
        rendered = [p for p in sorted(out.iterdir()) if p.name != "results.json"]
        diffs += [d for p in rendered
                  if (d := compare_files(against / name / p.name, p,
                                         _shown(against, Path(name) / p.name)))]
        notes.append(f"{name}: real-model results, checked for consistency only: "
                     f"{', '.join(p.name for p in rendered)} re-rendered from results.json")
    return diffs, notes


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    changed = [o for o in OUTPUT_OPTIONS if getattr(args, o) != parser.get_default(o)]
    if changed:
        parser.error(f"--check regenerates with the defaults, as the committed files were made; "
                     f"drop --{changed[0].replace('_', '-')}")
    against = (args.against or ANALYSIS_DIR).resolve()
    if not against.is_dir():
        parser.error(f"--against {args.against}: not a folder")
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep}: not empty; name a new or empty folder")
    if args.regenerated is not None and not (args.regenerated / budget.NAME).is_dir():
        parser.error(f"--regenerated {args.regenerated}: no regenerated analyses there "
                     f"(write them with --check --keep DIR)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="moa-analysis-check-") as tmp:
        work = Path(tmp)
        fresh = args.regenerated or args.keep or work / "analysis"
        if args.regenerated is None:
            fresh.mkdir(parents=True, exist_ok=True)
            if (against / README).is_file():
                shutil.copy(against / README, fresh / README)
            regen = argparse.Namespace(**{**vars(args), "out_dir": fresh, "runs_dir": work / "runs",
                                          "store": work / "calls.db"})
            if not args.quiet:
                print(f"regenerating into {fresh} (empty call store, fresh study run) ...",
                      file=sys.stderr, flush=True)
            generate(regen)
        diffs, n_files = compare(against, fresh)
        hint = _versions_hint(against / VERSIONS, fresh / VERSIONS)
        rendered_diffs, notes = check_rendered(against, work / "rendered")
    diffs += rendered_diffs
    elapsed = time.perf_counter() - started
    for note in notes:
        print(note)
    if not diffs:
        print(f"ok: the {n_files} committed files of {', '.join(m.NAME for m in ANALYSES)} are "
              f"what the code writes now ({elapsed:.0f} s)")
        return 0
    for d in diffs:
        print(d.describe())
    print(f"{len(diffs)} committed file(s) differ from what the code writes now ({elapsed:.0f} s). "
          f"Regenerate them with `python analysis/run_all.py` (delete runs/sim-demo first so "
          f"the study is re-run) and commit the result.")
    if hint:
        print(hint)
    return 1


def _versions_hint(committed: Path, fresh: Path) -> str:
    try:
        old = json.loads(committed.read_text("utf-8"))
        new = json.loads(fresh.read_text("utf-8"))
    except (OSError, ValueError):
        return ""
    moved = [f"{k} {old.get(k, '?')} -> {v}" for k, v in new.items() if old.get(k) != v]
    return ("The committed files were made with other package versions (" + ", ".join(moved)
            + "): that alone can change them.") if moved else ""


# ---- command line ----------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("run_all", __doc__.splitlines()[0])
    budget.add_study_arguments(parser)
    parser.set_defaults(out_dir=None)
    parser.add_argument("--check", action="store_true",
                        help="regenerate into a temporary folder and compare with the committed "
                             "files; exit 1, naming each file and line that differs")
    parser.add_argument("--against", type=Path, default=None,
                        help="with --check: the committed analysis folder (default analysis/)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="with --check: regenerate into this folder and keep it")
    parser.add_argument("--regenerated", type=Path, default=None,
                        help="with --check: compare this folder (from an earlier --check --keep "
                             "DIR) instead of regenerating")
    args = parser.parse_args(argv)
    for flag in ("against", "keep", "regenerated"):
        if getattr(args, flag) is not None and not args.check:
            parser.error(f"--{flag} goes with --check")
    if args.keep is not None and args.regenerated is not None:
        parser.error("give --keep DIR or --regenerated DIR, not both")
    try:
        if args.check:
            return check(args, parser)
        started = time.perf_counter()
        lines = generate(args)
    except MoASearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lines.append(f"total     {time.perf_counter() - started:6.1f} s")
    print("\n".join(lines))
    return 0


def _shown(against: Path, rel: Path) -> str:
    """A committed file as the user knows it: ``analysis/...`` for the real folder."""
    return str(Path(_rel(against)) / rel)


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ANALYSIS_DIR.parent))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
