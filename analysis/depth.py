"""What does each extra MoA layer buy, and what does it cost?

Configs: the paper's six proposers in every proposer layer and Qwen1.5-110B-Chat as the final
aggregator, for 1 to 4 layers counted as the paper counts them (the aggregator's layer is a
layer): 1 layer = Qwen1.5-110B-Chat alone, 3 layers = the paper's ``MoA`` preset. Each layer
re-runs all six proposers on the previous layer's answers, so cost grows about linearly with
depth while the simulated world (like the paper) gives diminishing quality returns; latency grows
too, because layers run one after another. The table pairs each depth with the one before it,
item by item, to say whether the extra layer's gain is distinguishable from noise.

Run: ``python analysis/depth.py [--n-items N] [--data math] ...`` (``--help`` for all).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make `analysis` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.common import (QWEN110, AnalysisOptions, AnalysisOutput, Bench, Measurement, Table,
                             base_layout, cli_main, error_y, fmt_paired, fmt_usd, markdown_table,
                             paired_dict, run_bench, short, sim_suffix, write_outputs)
from moa_search.config import PAPER_PROPOSERS, MoAConfig
from moa_search.stats import PairedResult

NAME = "depth"
LAYERS: tuple[int, ...] = (1, 2, 3, 4)


def depth_config(layers: int) -> MoAConfig:
    return MoAConfig.uniform(PAPER_PROPOSERS, QWEN110, layers=layers, temperature=0.7)


def run(opts: AnalysisOptions) -> AnalysisOutput:
    started = time.perf_counter()

    async def body(bench: Bench) -> AnalysisOutput:
        ms = await bench.measure_all([(f"{n} layer{'s' if n > 1 else ''}", depth_config(n))
                                      for n in LAYERS])
        paired = [None] + [bench.paired(b, a) for a, b in zip(ms, ms[1:])]
        return _outputs(bench, ms, paired, started)

    return run_bench(opts, body)


def _figure(bench: Bench, ms: Sequence[Measurement]) -> go.Figure:
    sim = sim_suffix(bench.simulated)
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.09,
                        subplot_titles=(f"quality{sim}", f"$ per item{sim}",
                                        f"latency, critical path{sim}"))
    x = list(LAYERS)
    hover = [m.config.summary() for m in ms]
    fig.add_trace(go.Scatter(x=x, y=[m.quality for m in ms], error_y=error_y(ms), mode="lines+markers",
                             name=f"quality (95% CI){sim}", line={"color": "#d62728"},
                             hovertext=hover), row=1, col=1)
    fig.add_trace(go.Bar(x=x, y=[m.cost_usd_per_item for m in ms], name=f"$ per item{sim}",
                         marker_color="#1f77b4", hovertext=hover), row=1, col=2)
    fig.add_trace(go.Scatter(x=x, y=[m.latency_p50_s for m in ms], mode="lines+markers",
                             name=f"latency p50{sim}", line={"color": "#2ca02c"}), row=1, col=3)
    fig.add_trace(go.Scatter(x=x, y=[m.latency_p95_s for m in ms], mode="lines+markers",
                             name=f"latency p95{sim}", line={"color": "#2ca02c", "dash": "dot"}),
                  row=1, col=3)
    for col in (1, 2, 3):
        fig.update_xaxes(title="layers (aggregator's included)", dtick=1, row=1, col=col)
    fig.update_yaxes(title=f"{bench.opts.quality_name}{sim}", row=1, col=1)
    fig.update_yaxes(title=f"$ per item{sim}", tickformat="$.3f", row=1, col=2)
    fig.update_yaxes(title=f"seconds{sim}", row=1, col=3)
    return base_layout(fig, f"Depth: 6 proposers per layer, {short(QWEN110)} aggregating, 1-4 layers{sim}",
                       height=460)


def _outputs(bench: Bench, ms: Sequence[Measurement], paired: Sequence[PairedResult | None],
             started: float) -> AnalysisOutput:
    sim = sim_suffix(bench.simulated)
    rows = [[str(n), m.config.summary(), m.ci_text, fmt_paired(p),
             fmt_usd(m.cost_usd_per_item), f"{m.latency_p50_s:.1f} / {m.latency_p95_s:.1f}",
             f"{m.calls / max(1, m.n_items):.1f}"]
            for n, m, p in zip(LAYERS, ms, paired)]
    table = Table(f"{bench.opts.quality_name} and cost by depth{sim}",
                  ["layers", "config", f"quality [95% CI]{sim}", "vs one layer less, paired (points)",
                   f"$/item{sim}", f"latency p50 / p95 s{sim}", "calls/item incl. judge"], rows,
                  note="Paired differences are per-item score differences x 100 against the "
                       "config with one layer less (for the judge: raw preferences), with a paired "
                       "bootstrap CI and the sign test's p. 3 layers is the paper's MoA preset.")
    notes = [f"Paper: MoA (3 layers) 65.1 LC win rate, MoA-Lite (2 layers, Qwen1.5-72B-Chat "
             f"aggregating) 59.3; the paper reports gains shrinking with depth."]
    data = {"layers": [{"layers": n, **m.to_dict(), "paired_vs_previous": paired_dict(p)}
                       for n, m, p in zip(LAYERS, ms, paired)]}
    return write_outputs(bench, title="Depth: quality, cost and latency vs number of layers",
                         figures=[_figure(bench, ms)], tables=[table], notes=notes, data=data,
                         started=started, readme=readme_block(ms, paired))


def readme_block(ms: Sequence[Measurement], paired: Sequence[PairedResult | None]) -> str:
    """The table analysis/README.md quotes."""
    rows = [[f"{n}" + (" (MoA)" if n == 3 else ""), m.ci_text, fmt_paired(p) if p else "–",
             fmt_usd(m.cost_usd_per_item), f"{m.latency_p50_s:.1f}"]
            for n, m, p in zip(LAYERS, ms, paired)]
    return markdown_table(["layers", "quality, here", "vs one layer less, paired", "$/item",
                           "latency p50 (s)"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(run, NAME, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
