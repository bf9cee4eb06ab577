"""Run the four analyses (and, for ``budget``, the search they compare against) in one go.

Order: the search study first (``studies/sim-demo.toml`` unless ``--study FILE`` or
``--no-study``; run only when its results are missing and only if it is a simulated study, so
this command never spends real money on a search), then diversity, depth, roles and budget,
sharing one call store so a config two analyses measure is run once. Every option of the single
analyses is accepted and passed on; ``--out-dir DIR`` writes ``DIR/<name>/`` for each.

Run: ``python analysis/run_all.py [--n-items N] [--data math] [--no-study] ...``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make `analysis` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import budget, depth, diversity, roles
from analysis.common import ANALYSIS_DIR, build_parser, options_from_args
from moa_search.errors import ConfigError, MoASearchError

ANALYSES = (diversity, depth, roles, budget)


def ensure_study(study: Path, runs_dir: Path, quiet: bool) -> str:
    """Run ``study`` if its results are missing and it is simulated; say what happened."""
    from moa_search.study import run_study_file
    from moa_search.study_spec import load_study_spec
    spec = load_study_spec(study, runs_dir=runs_dir)
    db = spec.storage.removeprefix("sqlite:///") if spec.storage.startswith("sqlite:///") else None
    if db is None or Path(db).exists():
        return f"study {spec.name}: using existing results"
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("run_all", __doc__.splitlines()[0])
    budget.add_study_arguments(parser)
    parser.set_defaults(out_dir=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    lines: list[str] = []
    try:
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
    except MoASearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lines.append(f"total     {time.perf_counter() - started:6.1f} s")
    print("\n".join(lines))
    return 0


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ANALYSIS_DIR.parent))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
