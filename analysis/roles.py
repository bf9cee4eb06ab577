"""Which models make good aggregators, which good proposers? (the MoA paper's Table 4 question)

For each of the paper's six models, three measurements, all on the same items:

* *alone*: the model answering by itself (1 layer);
* *as aggregator*: the six paper proposers, 2 layers, this model synthesising their answers;
* *as proposer*: this model alone in the proposer layer, sampled 6 times at temperature 0.7,
  with a fixed aggregator (Qwen1.5-110B-Chat), 2 layers. This is our operationalisation of
  "how good is it as a proposer": everything but the proposer is held fixed.

A model whose "as aggregator" bar rises well above its "alone" bar turns others' answers into a
better one; "as proposer" ranks what it contributes for a fixed aggregator to work with. The
aggregator's gain over the model alone is also tested item by item (paired bootstrap, sign test).

Run: ``python analysis/roles.py [--n-items N] [--data math] ...`` (``--help`` for all).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make `analysis` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import plotly.graph_objects as go
from scipy.stats import spearmanr

from analysis.common import (QWEN110, AnalysisOptions, AnalysisOutput, Bench, Measurement, Table,
                             base_layout, cli_main, error_y, fmt_paired, fmt_usd, markdown_table,
                             paired_dict, run_bench, short, sim_suffix, write_outputs)
from moa_search.config import PAPER_PROPOSERS, MoAConfig
from moa_search.stats import PairedResult

NAME = "roles"
ROLES: tuple[str, ...] = ("alone", "as aggregator", "as proposer")
N_PROPOSER_SAMPLES = 6


def role_configs(model: str) -> dict[str, MoAConfig]:
    """The three configs that place ``model`` alone, as aggregator and as proposer."""
    return {
        "alone": MoAConfig.single(model, temperature=0.7),
        "as aggregator": MoAConfig.uniform(PAPER_PROPOSERS, model, layers=2, temperature=0.7),
        "as proposer": MoAConfig.uniform([model] * N_PROPOSER_SAMPLES, QWEN110, layers=2,
                                         temperature=0.7),
    }


def run(opts: AnalysisOptions) -> AnalysisOutput:
    started = time.perf_counter()

    async def body(bench: Bench) -> AnalysisOutput:
        by_role: dict[str, list[Measurement]] = {role: [] for role in ROLES}
        for model in PAPER_PROPOSERS:
            for role, cfg in role_configs(model).items():
                by_role[role].append(await bench.measure(f"{short(model)} {role}", cfg))
        gains = [bench.paired(agg, alone)
                 for agg, alone in zip(by_role["as aggregator"], by_role["alone"])]
        return _outputs(bench, by_role, gains, started)

    return run_bench(opts, body)


def _rank(values: Sequence[float]) -> list[int]:
    """1 = highest value."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    ranks = [0] * len(values)
    for r, i in enumerate(order, start=1):
        ranks[i] = r
    return ranks


def _figure(bench: Bench, by_role: dict[str, list[Measurement]]) -> go.Figure:
    sim = sim_suffix(bench.simulated)
    names = [short(m) for m in PAPER_PROPOSERS]
    colors = {"alone": "#7f7f7f", "as aggregator": "#d62728", "as proposer": "#1f77b4"}
    fig = go.Figure()
    for role in ROLES:
        ms = by_role[role]
        fig.add_trace(go.Bar(x=names, y=[m.quality for m in ms], error_y=error_y(ms),
                             name=role + sim, marker_color=colors[role],
                             customdata=[[m.config.summary(), fmt_usd(m.cost_usd_per_item)] for m in ms],
                             hovertemplate="%{customdata[0]}<br>%{y:.1f}<br>%{customdata[1]}/item"
                                           "<extra></extra>"))
    fig.update_layout(barmode="group")
    fig.update_xaxes(title="model")
    fig.update_yaxes(title=f"{bench.opts.quality_name}{sim}")
    return base_layout(fig, f"Each paper model alone, as aggregator of the 6 proposers, and as "
                            f"proposer (x{N_PROPOSER_SAMPLES}, {short(QWEN110)} aggregating){sim}")


def _outputs(bench: Bench, by_role: dict[str, list[Measurement]],
             gains: Sequence[PairedResult | None],
             started: float) -> AnalysisOutput:
    sim = sim_suffix(bench.simulated)
    agg_rank = _rank([m.quality for m in by_role["as aggregator"]])
    prop_rank = _rank([m.quality for m in by_role["as proposer"]])
    alone_rank = _rank([m.quality for m in by_role["alone"]])
    rows = []
    for i, model in enumerate(PAPER_PROPOSERS):
        alone, agg, prop = (by_role[r][i] for r in ROLES)
        rows.append([short(model), f"{alone.ci_text} (#{alone_rank[i]})",
                     f"{agg.ci_text} (#{agg_rank[i]})", fmt_paired(gains[i]),
                     f"{prop.ci_text} (#{prop_rank[i]})", fmt_usd(agg.cost_usd_per_item)])
    table = Table(f"{bench.opts.quality_name}, mean [95% bootstrap CI] (rank){sim}",
                  ["model", f"alone{sim}", f"as aggregator{sim}", "aggregator gain over alone, paired (points)",
                   f"as proposer{sim}", f"$/item as aggregator{sim}"], rows,
                  note=f"As aggregator: the paper's 6 proposers, 2 layers, this model aggregating. "
                       f"As proposer: this model sampled {N_PROPOSER_SAMPLES}x at T 0.7, "
                       f"{short(QWEN110)} aggregating, 2 layers. Paired gains are per-item score "
                       f"differences x 100 (for the judge: raw preferences), paired bootstrap CI, "
                       f"sign-test p.")
    rho = spearmanr([m.quality for m in by_role["alone"]],
                    [m.quality for m in by_role["as aggregator"]]).statistic
    # Gains ranked on the paired differences, the same numbers as the table's gain column.
    gain = [g.mean_diff if g is not None else float("nan") for g in gains]
    best_gain = max(range(len(gain)), key=lambda i: gain[i])
    least_gain = min(range(len(gain)), key=lambda i: gain[i])
    notes = [f"Here{sim}: rank correlation (Spearman) between quality alone and as aggregator "
             f"{rho:.2f}; largest paired aggregator gain over alone: "
             f"{short(PAPER_PROPOSERS[best_gain])}, smallest: {short(PAPER_PROPOSERS[least_gain])}; "
             f"best as aggregator: "
             f"{short(PAPER_PROPOSERS[agg_rank.index(1)])}; best as proposer: "
             f"{short(PAPER_PROPOSERS[prop_rank.index(1)])}.",
             "The paper (Table 4) finds GPT-4o, Qwen1.5 and LLaMA-3 effective in both roles and "
             "WizardLM-2-8x22B a strong proposer but a weaker aggregator. The simulated world cannot show "
             "that split: there a model's aggregation ability is a function of its one skill number "
             "(its own answer, its focus on the best references; moa_search.providers.simulated), "
             "so its aggregator ranks differ from its skill ranks only by noise."]
    data = {"models": [{"model": m, **{role: by_role[role][i].to_dict() for role in ROLES},
                        "aggregator_gain_over_alone": paired_dict(gains[i]),
                        "rank_alone": alone_rank[i], "rank_as_aggregator": agg_rank[i],
                        "rank_as_proposer": prop_rank[i]}
                       for i, m in enumerate(PAPER_PROPOSERS)],
            "spearman_alone_vs_aggregator": rho}
    readme = (markdown_table(["model", "alone (rank)", "as aggregator (rank)",
                              "aggregator gain, paired", "as proposer (rank)"],
                             [row[:5] for row in rows])
              + f"\n\nSpearman rank correlation, alone vs as aggregator: {rho:.2f}.")
    return write_outputs(bench, title="Roles: which models are good aggregators, which good proposers",
                         figures=[_figure(bench, by_role)], tables=[table], notes=notes, data=data,
                         started=started, readme=readme)


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(run, NAME, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
