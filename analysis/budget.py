"""The cost-quality frontier: what does each extra dollar per item buy?

Points, all measured on the same items with the same scorer:

* every model in the catalog, alone;
* the paper's presets: MoA, MoA-Lite and MoA w/ GPT-4o;
* optionally a search's Pareto front: the configs a ``moa-search study`` found, re-measured here
  so they are comparable (a study may have searched another set with another scorer). With
  ``--study FILE`` that study's results are required; without it, ``studies/sim-demo.toml``'s
  results are used if ``runs/`` holds them (``moa-search study run studies/sim-demo.toml``, or
  ``python analysis/run_all.py``, which runs it when missing); ``--no-study`` leaves it out.

The Pareto set (no other point is at most as expensive and at least as good, one of them
strictly) is computed over all points on mean quality and $ per item, and highlighted. Means
only: a point just off the front may be indistinguishable from one on it (see the CIs).

Run: ``python analysis/budget.py [--study studies/sim-demo.toml] [--n-items N] ...``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make `analysis` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import plotly.graph_objects as go

from analysis.common import (ROOT, AnalysisOptions, AnalysisOutput, Bench, Measurement, Table,
                             base_layout, cli_main, error_y, fmt_usd, markdown_table, run_bench,
                             short, sim_suffix, write_outputs)
from moa_search.config import BUILTIN_PRESETS, MoAConfig
from moa_search.errors import ConfigError, UnknownModelError

NAME = "budget"
DEFAULT_STUDY = ROOT / "studies" / "sim-demo.toml"
DEFAULT_RUNS_DIR = ROOT / "runs"
PRESET_LABELS: dict[str, str] = {"moa": "MoA", "moa-lite": "MoA-Lite", "moa-gpt4o": "MoA w/ GPT-4o"}
#: AlpacaEval 2.0 LC win rates (%) of real models from the MoA paper (Tables 2-3); the
#: simulated world is calibrated to these (see moa_search.providers.simulated).
PAPER_LC: dict[str, float] = {"MoA": 65.1, "MoA w/ GPT-4o": 65.7, "MoA-Lite": 59.3,
                              "gpt-4o-2024-05-13": 57.5, "gpt-4-turbo-2024-04-09": 55.0}
KIND_STYLE: dict[str, dict[str, Any]] = {
    "single model": {"color": "#1f77b4", "symbol": "circle"},
    "paper preset": {"color": "#d62728", "symbol": "diamond"},
    "search front": {"color": "#2ca02c", "symbol": "square"},
}


@dataclass(frozen=True)
class Point:
    """A measured config on the frontier plot, with where it came from."""

    kind: str  # a KIND_STYLE key
    measurement: Measurement
    also: str = ""  # other labels of the same config (a study may re-find a preset or a single)


def pareto_mask(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (cost, quality) pairs: True where no other pair is cheaper-or-equal and better-or-
    equal with at least one strict. Pairs with a NaN are never on the front."""
    out = []
    for i, (c, q) in enumerate(points):
        if math.isnan(c) or math.isnan(q):
            out.append(False)
            continue
        dominated = any(j != i and c2 <= c and q2 >= q and (c2 < c or q2 > q)
                        for j, (c2, q2) in enumerate(points) if not (math.isnan(c2) or math.isnan(q2)))
        out.append(not dominated)
    return out


def study_front(study: Path | None, runs_dir: Path,
                required: bool) -> tuple[list[tuple[str, MoAConfig]], str]:
    """(label, config) for a study's Pareto front, and a sentence saying what was used.

    ``required`` (an explicit ``--study``): missing results are an error; otherwise they are
    skipped with a note, so the analysis runs on a fresh checkout.
    """
    if study is None:
        return [], "No search front: --no-study."
    from moa_search.study import study_result
    from moa_search.study_spec import load_study_spec
    spec = load_study_spec(study, runs_dir=runs_dir)
    db = spec.storage.removeprefix("sqlite:///") if spec.storage.startswith("sqlite:///") else None
    if db is not None and not Path(db).exists():
        msg = (f"no results for study {spec.name!r} in {_relative(spec.run_dir)}; run "
               f"`moa-search study run {_relative(study)}` first")
        if required:
            raise ConfigError(msg, field="--study")
        return [], f"No search front: {msg}."
    _, result = study_result(study, runs_dir=runs_dir)
    front = [(f"search #{r.number}", r.config) for r in result.pareto_front if r.config is not None]
    searched = spec.data.builtin or str(spec.data.path)
    return front, (f"Search front: the {len(front)} Pareto-optimal configs of study {spec.name!r} "
                   f"({_relative(Path(spec.source))}; searched on {searched} with {spec.scorer.name}, objectives "
                   f"{', '.join(result.objective_names)}), re-measured here on this analysis's items.")


def _relative(path: Path) -> str:
    """Repository-relative when inside it: committed summaries carry no machine paths."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def run(opts: AnalysisOptions) -> AnalysisOutput:
    started = time.perf_counter()
    study: Path | None = opts.extra.get("study")
    runs_dir: Path = opts.extra.get("runs_dir", DEFAULT_RUNS_DIR)
    front_configs, study_note = study_front(study, runs_dir, bool(opts.extra.get("study_required")))

    async def body(bench: Bench) -> AnalysisOutput:
        points: list[Point] = []
        by_hash: dict[str, int] = {}
        notes = [study_note]

        async def add(kind: str, label: str, cfg: MoAConfig) -> None:
            if cfg.config_hash in by_hash:  # the same config under another name: one point
                i = by_hash[cfg.config_hash]
                p = points[i]
                points[i] = Point(p.kind, p.measurement, ", ".join(filter(None, (p.also, label))))
                return
            by_hash[cfg.config_hash] = len(points)
            points.append(Point(kind, await bench.measure(label, cfg)))

        for model in bench.catalog.models:
            await add("single model", short(model), MoAConfig.single(model))
        for name, label in PRESET_LABELS.items():
            await add("paper preset", label, BUILTIN_PRESETS[name].config)
        for label, cfg in front_configs:
            try:
                await add("search front", label, cfg)
            except UnknownModelError as exc:
                notes.append(f"{label} ({cfg.summary()}) left out: {exc}")
        return _outputs(bench, points, notes, started)

    return run_bench(opts, body)


def _figure(bench: Bench, points: Sequence[Point], on_front: Sequence[bool]) -> go.Figure:
    sim = sim_suffix(bench.simulated)
    fig = go.Figure()
    for kind, style in KIND_STYLE.items():
        group = [p for p in points if p.kind == kind]
        if not group:
            continue
        ms = [p.measurement for p in group]
        fig.add_trace(go.Scatter(
            x=[m.cost_usd_per_item for m in ms], y=[m.quality for m in ms], error_y=error_y(ms),
            mode="markers+text", name=kind + sim, text=[m.label for m in ms],
            textposition="top center", textfont={"size": 10},
            marker={"color": style["color"], "symbol": style["symbol"], "size": 10},
            customdata=[[m.config.summary(), fmt_usd(m.cost_usd_per_item), m.ci_text, p.also]
                        for m, p in zip(ms, group)],
            hovertemplate="%{customdata[0]}<br>quality %{customdata[2]}<br>%{customdata[1]}/item"
                          "<br>%{customdata[3]}<extra></extra>"))
    front = sorted((p.measurement for p, f in zip(points, on_front) if f),
                   key=lambda m: m.cost_usd_per_item)
    fig.add_trace(go.Scatter(
        x=[m.cost_usd_per_item for m in front], y=[m.quality for m in front],
        mode="lines+markers", name=f"Pareto set (quality vs $){sim}", line={"shape": "hv",
                                                                           "color": "#ff7f0e"},
        marker={"size": 18, "color": "rgba(0,0,0,0)", "line": {"color": "#ff7f0e", "width": 2}},
        hoverinfo="skip"))
    fig.update_xaxes(title=f"$ per item, log scale{sim}", type="log")
    fig.update_yaxes(title=f"{bench.opts.quality_name}{sim}")
    return base_layout(fig, f"Cost-quality frontier: single models, paper presets and search front{sim}",
                       height=600)


def _outputs(bench: Bench, points: Sequence[Point], notes: list[str], started: float) -> AnalysisOutput:
    sim = sim_suffix(bench.simulated)
    on_front = pareto_mask([(p.measurement.cost_usd_per_item, p.measurement.quality) for p in points])
    order = sorted(range(len(points)), key=lambda i: points[i].measurement.cost_usd_per_item)
    rows, readme_rows = [], []
    for i in order:
        p, m = points[i], points[i].measurement
        label = m.label + (f" (= {p.also})" if p.also else "")
        rows.append([label, p.kind, m.config.summary(), m.ci_text, fmt_usd(m.cost_usd_per_item),
                     f"{m.latency_p50_s:.1f}", "yes" if on_front[i] else ""])
        shown = f"{m.label}: {m.config.summary()}" if p.kind == "search front" else m.label
        readme_rows.append([shown + (f" (= {p.also})" if p.also else ""), m.ci_text,
                            fmt_usd(m.cost_usd_per_item), "yes" if on_front[i] else ""])
    tables = [Table(f"Every point, cheapest first{sim}",
                    ["label", "kind", "config", f"{bench.opts.quality_name} [95% CI]{sim}",
                     f"$/item{sim}", f"latency p50 s{sim}", "Pareto"], rows)]
    if bench.opts.scorer == "length_controlled":
        by_label = {p.measurement.label: p.measurement for p in points}
        by_label.update({m.config.models[0]: m for m in by_label.values()
                         if not m.config.proposer_layers})
        paper_rows = [[name, by_label[name].ci_text if name in by_label else "-", f"{value:.1f}"]
                      for name, value in PAPER_LC.items()]
        tables.append(Table(f"Against the paper (AlpacaEval 2.0 LC win rate, real models){sim}",
                            ["config", f"here{sim}", "paper"], paper_rows,
                            note="The paper measured real models on AlpacaEval's 805 prompts; these are "
                                 "simulated, on 150 synthetic prompts (about ±6 points of sampling "
                                 "noise): compare orderings first (see analysis/README.md)."))
    data = {"points": [{**p.measurement.to_dict(), "kind": p.kind, "also": p.also,
                        "pareto": on_front[i]} for i, p in enumerate(points)],
            "notes": notes}
    readme = markdown_table(["point", "quality, here", "$/item", "Pareto"], readme_rows)
    return write_outputs(bench, title="Budget: the cost-quality frontier",
                         figures=[_figure(bench, points, on_front)], tables=tables, notes=notes,
                         data=data, started=started, readme=readme)


def add_study_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", type=Path, default=None,
                   help="study file whose Pareto front to add (default: studies/sim-demo.toml if "
                        "runs/ holds its results)")
    p.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR,
                   help="where studies keep their results (default runs/)")
    p.add_argument("--no-study", action="store_true", help="leave out the search front")


def study_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.no_study and args.study is not None:
        raise ConfigError("give --study FILE or --no-study, not both", field="--study")
    study = None if args.no_study else (args.study or DEFAULT_STUDY)
    return {"study": study, "runs_dir": args.runs_dir, "study_required": args.study is not None}


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(run, NAME, __doc__.splitlines()[0], argv, add_arguments=add_study_arguments,
                    extra=study_options)


if __name__ == "__main__":
    sys.exit(main())
