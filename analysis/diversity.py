"""Does MoA gain from *more* proposers, and from *different* ones? (the MoA paper's Table 3)

Two series of 2-layer MoAs with Qwen1.5-110B-Chat aggregating, for n = 1 ... 6 proposers:

* *different models*: the first n of the paper's six proposers, in the paper's order
  (``moa_search.config.PAPER_PROPOSERS``);
* *one model sampled n times*: Qwen1.5-110B-Chat, n samples at temperature 0.7.

At n = 1 both series are the same config (one Qwen1.5-110B-Chat proposal), as in the paper.
Each point carries its bootstrap CI; at each n the two series are also compared item by item
(paired bootstrap of the per-item difference, sign test), because the series share items and
a paired test sees differences that two overlapping CIs hide.

Run: ``python analysis/diversity.py [--n-items N] [--data math] ...`` (``--help`` for all).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make `analysis` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import plotly.graph_objects as go

from analysis.common import (QWEN110, AnalysisOptions, AnalysisOutput, Bench, Measurement, Table,
                             base_layout, cli_main, error_y, fmt_paired, fmt_usd,
                             markdown_table, paired_dict, run_bench, short, sim_suffix,
                             write_outputs)
from moa_search.config import PAPER_PROPOSERS, MoAConfig
from moa_search.stats import PairedResult, paired_comparison

NAME = "diversity"
NS: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
DIFFERENT = "different models"
SAME = "one model sampled n times"
#: The MoA paper, Table 3 (AlpacaEval 2.0 LC win rate, %, real models), n -> value.
PAPER_DIFFERENT: dict[int, float] = {1: 47.8, 2: 58.8, 3: 58.0, 6: 61.3}
PAPER_SAME: dict[int, float] = {1: 47.8, 2: 54.5, 3: 56.1, 6: 56.7}
DODGE = 0.06


def different_config(n: int) -> MoAConfig:
    return MoAConfig.uniform(PAPER_PROPOSERS[:n], QWEN110, layers=2, temperature=0.7)


def same_config(n: int) -> MoAConfig:
    return MoAConfig.uniform([QWEN110] * n, QWEN110, layers=2, temperature=0.7)


def run(opts: AnalysisOptions) -> AnalysisOutput:
    started = time.perf_counter()

    async def body(bench: Bench) -> AnalysisOutput:
        alone = await bench.measure(f"{short(QWEN110)} alone", MoAConfig.single(QWEN110))
        diff = await bench.measure_all([(f"{n} different", different_config(n)) for n in NS])
        same = await bench.measure_all([(f"{short(QWEN110)} x{n}", same_config(n)) for n in NS])
        paired = [bench.paired(d, s) for d, s in zip(diff, same)]
        return _outputs(bench, alone, diff, same, paired, pooled_difference(bench, diff, same),
                        started)

    return run_bench(opts, body)


def pooled_difference(bench: Bench, diff: Sequence[Measurement],
                      same: Sequence[Measurement]) -> PairedResult | None:
    """Different vs same over n = 2..6 at once: each item's scores averaged over n, then paired.

    One number per item keeps the items independent (the five configs at one item are not),
    and averaging over five configs cuts the judge's noise, so this sees an effect that no
    single n resolves on a few hundred items.
    """
    shared = [i for i in bench.dataset.ids
              if all(i in m.values for m in (*diff[1:], *same[1:]))]
    if len(shared) < 2:
        return None
    a = [sum(m.values[i] for m in diff[1:]) / len(diff[1:]) for i in shared]
    b = [sum(m.values[i] for m in same[1:]) / len(same[1:]) for i in shared]
    return paired_comparison(a, b, seed=bench.opts.seed)


def latent_gap(a: Measurement, b: Measurement) -> float | None:
    """Simulated world: ``a``'s mean latent quality minus ``b``'s on the items both have
    (logits): the gap the world itself put between the configs, before the judge's noise."""
    shared = [i for i in a.latent if i in b.latent]
    return sum(a.latent[i] - b.latent[i] for i in shared) / len(shared) if shared else None


def _latent_text(gap: float | None) -> str:
    return "n/a" if gap is None else f"{gap:+.2f}"


def _figures(bench: Bench, alone: Measurement, diff: Sequence[Measurement],
             same: Sequence[Measurement]) -> list[go.Figure]:
    sim = sim_suffix(bench.simulated)
    qname = bench.opts.quality_name
    fig = go.Figure()
    # The two series are nudged apart on x so that their error bars do not hide each other.
    for name, ms, color, dx in ((DIFFERENT, diff, "#d62728", -DODGE), (SAME, same, "#1f77b4", DODGE)):
        fig.add_trace(go.Scatter(
            x=[n + dx for n in NS], y=[m.quality for m in ms], error_y=error_y(ms), name=name + sim,
            mode="lines+markers", line={"color": color},
            customdata=[[n, m.config.summary(), fmt_usd(m.cost_usd_per_item), m.ci_text]
                        for n, m in zip(NS, ms)],
            hovertemplate="n=%{customdata[0]}: %{customdata[3]}<br>%{customdata[1]}<br>"
                          "%{customdata[2]}/item<extra></extra>"))
    fig.add_hline(y=alone.quality, line_dash="dash", line_color="#7f7f7f",
                  annotation_text=f"{short(QWEN110)} alone{sim}", annotation_position="bottom right")
    if bench.opts.scorer == "length_controlled":
        # The paper's real numbers, for the shape: the simulated levels differ (see the README).
        for name, paper, color in (("paper Table 3, different (real models)", PAPER_DIFFERENT, "#d62728"),
                                   ("paper Table 3, same model (real models)", PAPER_SAME, "#1f77b4")):
            fig.add_trace(go.Scatter(x=list(paper), y=list(paper.values()), name=name,
                                     mode="lines+markers", opacity=0.45,
                                     line={"color": color, "dash": "dot"}, marker={"symbol": "x"}))
    fig.update_xaxes(title="number of proposers n (2 layers, Qwen1.5-110B-Chat aggregating)",
                     dtick=1)
    fig.update_yaxes(title=f"{qname}{sim}")
    base_layout(fig, f"Quality vs number of proposers: different models vs one model sampled "
                     f"n times{sim}")

    cost = go.Figure()
    for name, ms, color in ((DIFFERENT, diff, "#d62728"), (SAME, same, "#1f77b4")):
        cost.add_trace(go.Scatter(x=list(NS), y=[m.cost_usd_per_item for m in ms], name=name + sim,
                                  mode="lines+markers", line={"color": color}))
    cost.update_xaxes(title="number of proposers n", dtick=1)
    cost.update_yaxes(title=f"$ per item{sim}", tickformat="$.4f")
    base_layout(cost, f"Cost per item vs number of proposers{sim}", height=380)
    return [fig, cost]


def _outputs(bench: Bench, alone: Measurement, diff: Sequence[Measurement],
             same: Sequence[Measurement], paired: Sequence[PairedResult | None],
             pooled: PairedResult | None, started: float) -> AnalysisOutput:
    sim = sim_suffix(bench.simulated)
    judged = bench.opts.scorer == "length_controlled"
    gaps = [latent_gap(d, s) for d, s in zip(diff, same)]
    latent = any(g is not None for g in gaps)
    headers = ["n", f"{DIFFERENT}{sim}", f"{SAME}{sim}", "different - same, paired (points)"]
    headers += ["different - same, world's latent gap (logits)"] if latent else []
    headers += ["$/item different", "$/item same"]
    if judged:
        headers += ["paper: different", "paper: same"]
    rows = []
    for n, d, s, p, g in zip(NS, diff, same, paired, gaps):
        row = [str(n), d.ci_text, s.ci_text, fmt_paired(p)] + ([_latent_text(g)] if latent else [])
        row += [fmt_usd(d.cost_usd_per_item), fmt_usd(s.cost_usd_per_item)]
        if judged:
            row += [f"{PAPER_DIFFERENT[n]:.1f}" if n in PAPER_DIFFERENT else "-",
                    f"{PAPER_SAME[n]:.1f}" if n in PAPER_SAME else "-"]
        rows.append(row)
    rows.append([f"{NS[1]}-{NS[-1]} pooled", "", "", fmt_paired(pooled)]
                + [""] * (len(headers) - 4))
    table = Table(f"{bench.opts.quality_name}, mean [95% bootstrap CI]{sim}", headers, rows,
                  note=f"{short(QWEN110)} alone (1 layer): {alone.ci_text}{sim}. Paired differences "
                       f"are per-item score differences x 100 (for the judge: raw preferences, not "
                       f"LC), with a paired bootstrap CI and the sign test's p; the pooled row "
                       f"averages each item's scores over n = {NS[1]}..{NS[-1]} first."
                       + (" The latent gap is the simulated world's own difference between "
                          "the final answers' latent qualities (logits; 0.1 moves a pairwise win "
                          "rate by at most 2.5 points), read from the answers' footers: the "
                          "effect on these items before the judge's noise." if latent else ""))
    notes = [f"Different models at n: the first n of {', '.join(short(m) for m in PAPER_PROPOSERS)}; "
             f"all agents at temperature 0.7.",
             "At n = 1 both series are the same config, so they coincide by construction."]
    if judged:
        notes.append("Paper columns are the MoA paper's Table 3 (AlpacaEval 2.0 LC win rates of real "
                     "models); compare shapes, not levels (see analysis/README.md).")
    data = {"alone": alone.to_dict(),
            "series": {DIFFERENT: [{"n": n, **m.to_dict()} for n, m in zip(NS, diff)],
                       SAME: [{"n": n, **m.to_dict()} for n, m in zip(NS, same)]},
            "paired_different_minus_same": [{"n": n, **(paired_dict(p) or {}),
                                             "latent_gap_logits": g}
                                            for n, p, g in zip(NS, paired, gaps)],
            "pooled_different_minus_same": paired_dict(pooled),
            "paper_table3": {"different": PAPER_DIFFERENT, "same": PAPER_SAME}}
    return write_outputs(bench, title="Proposer diversity and count (MoA paper, Table 3)",
                         figures=_figures(bench, alone, diff, same), tables=[table], notes=notes,
                         data=data, started=started,
                         readme=readme_block(alone, diff, same, paired, gaps, pooled, judged))


def readme_block(alone: Measurement, diff: Sequence[Measurement], same: Sequence[Measurement],
                 paired: Sequence[PairedResult | None], gaps: Sequence[float | None],
                 pooled: PairedResult | None, judged: bool) -> str:
    """The table and the pooled line that analysis/README.md quotes."""
    latent = any(g is not None for g in gaps)
    headers = ["n", "different models, here", "one model ×n, here", "different − same, paired"]
    headers += ["world's latent gap (logits)"] if latent else []
    headers += ["paper: different", "paper: same"] if judged else []
    rows = []
    for n, d, s, p, g in zip(NS, diff, same, paired, gaps):
        same_config = d.config.config_hash == s.config.config_hash
        row = [str(n), d.ci_text, s.ci_text, "0 (same config)" if same_config else fmt_paired(p)]
        row += [("0" if same_config else _latent_text(g))] if latent else []
        row += [f"{PAPER_DIFFERENT[n]:.1f}" if n in PAPER_DIFFERENT else "–",
                f"{PAPER_SAME[n]:.1f}" if n in PAPER_SAME else "–"] if judged else []
        rows.append(row)
    return (markdown_table(headers, rows) + "\n\n"
            f"Pooled over n = {NS[1]}…{NS[-1]} (each item's scores averaged over n, then paired): "
            f"{fmt_paired(pooled)}. {short(QWEN110)} alone: {alone.ci_text}.")


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(run, NAME, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
