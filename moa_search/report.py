"""Plotly figures and one self-contained HTML report of a study.

A report is read later, often offline and by someone who did not run the study, so the page
carries everything it needs: plotly.js is inlined once (no CDN, no external fonts or styles), the
header restates what was searched, on what data, judged how and for how much, and every number
that comes from the simulated model world is labelled as such, in a banner and in axis titles.

Everything is read from the Optuna storage through ``search.load_result`` (and, for parameter
importances, the Optuna study itself), so a report can be written for a finished, interrupted or
still-running study. Nothing is invented to fill a chart: when a section has no data (no target,
no categories, too few trials for importances) the page says why instead.

Which trials appear where:

* *measured* configs are the full-fidelity trials, one per distinct config
  (``StudyResult.evaluated``); the study's optimum set (``StudyResult.pareto_front``, Optuna's
  ``best_trials``) is highlighted and the rest drawn faded as "dominated";
* trials stopped early by the multi-fidelity rule were measured on the first items only; their
  numbers are not comparable with full measurements, so they get their own faint trace;
* duplicates (the sampler revisiting a config) reuse earlier metrics and add no point.

Read across views: quality is in percent everywhere (as the CLI prints it); the optimum set's
points carry their trial numbers (``#N``) in both planes and in the table under them, as in
``study show``; labels are wrapped, never cut; the header names the price table the costs use.
"""

from __future__ import annotations

import html
import importlib.util
import math
import textwrap
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import optuna
import plotly.graph_objects as go
import plotly.io as pio

from .errors import MoASearchError
from .search.records import price_table, trial_metrics
from .search import (StudyResult, TargetResult, TrialRecord, confidence_at_least, load_result,
                     open_storage)
from .runner import DegradedPolicy
from .space import P_GRID
from .stats import per_category
from .study_spec import StudySpec, load_study_spec

SIMULATED_BANNER = "Simulated model world — numbers describe the simulation, not real models"

#: Plotly's client-side options: no logo link to plot.ly, so the page has no outbound link at all.
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}

_DOMINATED = {"pareto": "dominated", "constrained": "other measured configs"}
_STOPPED = "stopped early (first items only)"
_TRADEOFF = "best trade-off in this plane"
_BASELINE = "baseline"
_FRONT_NAME = {"pareto": "Pareto front", "constrained": "optimum (cheapest feasible)"}
_COLORS = {"front": "#d62728", "dominated": "#1f77b4", "stopped": "#7f7f7f", "met": "#2ca02c",
           "unmet": "#ff7f0e", "baseline": "#9467bd", "spend": "#1f77b4", "budget": "#d62728"}

#: A light template of our own: applying Plotly's named templates deep-copies a large object per
#: figure, which made building a report several times slower.
_TEMPLATE = go.layout.Template(layout=dict(
    paper_bgcolor="white", plot_bgcolor="white", font=dict(size=12),
    xaxis=dict(gridcolor="#ebebeb", zerolinecolor="#cccccc", linecolor="#999999", showline=True),
    yaxis=dict(gridcolor="#ebebeb", zerolinecolor="#cccccc", linecolor="#999999", showline=True)))

#: How the two Pareto planes read their x value from a trial's metrics.
_PLANES: dict[str, tuple[str, str, Callable[[TrialRecord], float]]] = {
    "cost": ("$ per item", "Quality vs $ cost per item",
             lambda r: r.metrics.cost_usd_per_item),  # type: ignore[union-attr]
    "latency": ("latency p50 (s)", "Quality vs latency p50",
                lambda r: r.metrics.latency_p50_s),  # type: ignore[union-attr]
}


@dataclass(frozen=True)
class Section:
    """One part of the page: a heading, its figures (named, for PNG export), and plain text.

    ``caption`` and ``notes`` are plain text (escaped when rendered): they carry the sentence a
    reader needs to interpret the figure, or the reason a figure is missing.
    """

    key: str
    title: str
    figures: tuple[tuple[str, go.Figure], ...] = ()
    caption: str = ""
    notes: tuple[str, ...] = ()
    side_by_side: bool = False
    table: tuple[tuple[str, ...], ...] = ()  # a header row, then one row per line (plain text)


# ---- small helpers ---------------------------------------------------------------------------

def _sim(result: StudyResult) -> str:
    """The suffix every axis title and caption gets when the numbers come from the simulation."""
    return " (simulated)" if result.is_simulated else ""


def _esc(text: str) -> str:
    """Escape text that Plotly renders as its pseudo-HTML (hover, tick labels, annotations)."""
    return html.escape(text, quote=False)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _pct(x: float) -> float:
    """Quality (0-1) in percent, as the CLI shows it; every quality in the report goes through it."""
    return 100 * x


def _wrap(text: str, width: int = 36) -> str:
    """A long label on several lines (``<br>``) instead of cut: the aggregator, named last in a
    config's summary, must stay readable."""
    return "<br>".join(textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)) or text


def _summary(r: TrialRecord) -> str:
    return r.config.summary() if r.config is not None else "?"


def _label(r: TrialRecord) -> str:
    """A short, unique bar label: the trial number keeps two configs with one summary apart."""
    who = "baseline" if r.number < 0 else f"#{r.number}"
    return f"{who} {_summary(r)}"


def _hover(r: TrialRecord) -> str:
    """Everything needed to recognise a point: config, hash, trial, quality with CI, $, latency."""
    m = r.metrics
    assert m is not None
    ci = (f" [{_pct(m.quality_low):.1f}, {_pct(m.quality_high):.1f}]"
          if _finite(m.quality_low) and _finite(m.quality_high) else " (no CI)")
    lines = [
        f"<b>{_esc(_summary(r))}</b>",
        f"hash {r.config.config_hash if r.config else '?'}",
        "baseline" if r.number < 0 else f"trial {r.number} ({r.status})",
        f"quality {_pct(m.quality):.1f}%{ci} on {m.n_items} items",
        f"${m.cost_usd_per_item:.6f} per item",
        f"latency p50 {m.latency_p50_s:.2f} s, p95 {m.latency_p95_s:.2f} s",
    ]
    if m.n_failed or m.n_degraded:
        lines.append(f"items with failed runs {m.n_failed}, degraded {m.n_degraded}")
    if r.note:
        lines.append(_esc(r.note[:120]))
    return "<br>".join(lines)


def _error_bars(records: Sequence[TrialRecord]) -> dict[str, Any]:
    """Asymmetric quality CI bars; a point without a CI gets a zero-length bar."""
    def gap(a: float, b: float) -> float:
        return max(0.0, a - b) if _finite(a) and _finite(b) else 0.0
    return dict(type="data", symmetric=False, thickness=1.2, width=3,
                array=[_pct(gap(r.metrics.quality_high, r.metrics.quality)) for r in records],  # type: ignore[union-attr]
                arrayminus=[_pct(gap(r.metrics.quality, r.metrics.quality_low)) for r in records])  # type: ignore[union-attr]


def _base_layout(fig: go.Figure, title: str, *, height: int = 460) -> go.Figure:
    """Shared look; the legend goes under the plot, where a long one wraps without covering data."""
    fig.update_layout(title=dict(text=_esc(title), x=0.01), template=_TEMPLATE, height=height,
                      margin=dict(l=60, r=20, t=50, b=40), hovermode="closest",
                      # about 80 px under the plot area (paper units depend on the height): below the x title
                      legend=dict(orientation="h", yanchor="top", y=-80 / max(100, height - 90), xanchor="left", x=0.0))
    return fig


def _front_hashes(result: StudyResult) -> set[str]:
    return {r.config.config_hash for r in result.pareto_front if r.config is not None}


def _stopped_early(result: StudyResult) -> list[TrialRecord]:
    """Configs only measured on the first items, one per config, none that was fully measured."""
    full = {r.config.config_hash for r in result.evaluated if r.config is not None}
    seen: set[str] = set()
    out = []
    for r in result.trials:
        if r.status != "stopped_early" or r.metrics is None or r.config is None:
            continue
        h = r.config.config_hash
        if h in full or h in seen or not _finite(r.metrics.quality):
            continue
        seen.add(h)
        out.append(r)
    return out


def _tradeoff(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (lower x, higher y), in x order.

    Optuna's front is over *all* objectives; in a 2-D projection some of its members are beaten
    on the two plotted axes (they win on the third), so the connecting line is drawn through the
    projection's own trade-off curve (when both axes are objectives, it passes through front
    members only).
    """
    out: list[tuple[float, float]] = []
    best = -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            out.append((x, y))
            best = y
    return out


def _target_answer(result: StudyResult) -> TargetResult | None:
    return result.cheapest_meeting_target() if result.target is not None else None


# ---- 1 + 2. Pareto planes, with the target ------------------------------------------------------

def _scatter(records: Sequence[TrialRecord], xs: Sequence[float], name: str, **style: Any) -> go.Scatter:
    return go.Scatter(x=list(xs), y=[_pct(r.metrics.quality) for r in records],  # type: ignore[union-attr]
                      mode="markers", name=name, hovertext=[_hover(r) for r in records],
                      hoverinfo="text", customdata=[r.number for r in records], **style)


def _numbered(trace: go.Scatter) -> go.Scatter:
    """Trial numbers written beside the points (``#12``), to match a point across the two planes
    and to the table below them without hovering."""
    sides = ("middle right", "middle left")  # neighbours (the points come in x order) alternate sides
    trace.update(mode="markers+text", text=[f"#{n}" for n in trace.customdata],
                 textposition=[sides[i % 2] for i in range(len(trace.customdata))],
                 textfont=dict(size=11, color=_COLORS["front"]))
    return trace


def pareto_figure(result: StudyResult, plane: str) -> go.Figure:
    """Quality against cost or latency: dominated faded, the optimum set highlighted."""
    x_title, title, xv = _PLANES[plane]
    sim = _sim(result)
    front_h = _front_hashes(result)
    measured = [r for r in result.evaluated if r.metrics is not None]
    dominated = [r for r in measured if r.config is not None and r.config.config_hash not in front_h]
    front = sorted((r for r in result.pareto_front if r.metrics is not None), key=xv)
    stopped = _stopped_early(result)
    fig = go.Figure()
    fig.add_trace(_scatter(dominated, [xv(r) for r in dominated], _DOMINATED.get(result.mode, "dominated"),
                           marker=dict(color=_COLORS["dominated"], size=8, opacity=0.35),
                           error_y=dict(_error_bars(dominated), color="rgba(31,119,180,0.25)")))
    if stopped:
        fig.add_trace(_scatter(stopped, [xv(r) for r in stopped], _STOPPED,
                               marker=dict(color=_COLORS["stopped"], size=8, opacity=0.5,
                                           symbol="x-thin-open", line=dict(width=1.5))))
    curve = _tradeoff((xv(r), _pct(r.metrics.quality)) for r in measured  # type: ignore[union-attr]
                      if _finite(xv(r)) and _finite(r.metrics.quality))  # type: ignore[union-attr]
    if len(curve) > 1:
        fig.add_trace(go.Scatter(x=[p[0] for p in curve], y=[p[1] for p in curve], mode="lines",
                                 name=_TRADEOFF, line=dict(color=_COLORS["front"], width=1.5, shape="hv"),
                                 opacity=0.6, hoverinfo="skip"))
    fig.add_trace(_numbered(_scatter(front, [xv(r) for r in front], _FRONT_NAME.get(result.mode, "Pareto front"),
                                     marker=dict(color=_COLORS["front"], size=12, line=dict(color="white", width=1)),
                                     error_y=dict(_error_bars(front), color=_COLORS["front"]))))
    if result.baseline is not None and result.baseline.metrics is not None:
        b = result.baseline
        fig.add_trace(_scatter([b], [xv(b)], f"{_BASELINE}: {_esc(b.note or _summary(b))}",
                               marker=dict(color=_COLORS["baseline"], size=15, symbol="star"),
                               error_y=dict(_error_bars([b]), color=_COLORS["baseline"])))
    _add_target(fig, result, xv)
    _base_layout(fig, title + sim, height=520)
    fig.update_xaxes(title_text=_esc(x_title + sim))
    if plane == "cost" and _wide(measured, xv):
        _log_x(fig)
    fig.update_yaxes(title_text="quality (%)" + sim)
    return fig


def _wide(records: Sequence[TrialRecord], xv: Callable[[TrialRecord], float]) -> bool:
    """Costs spanning more than 20x read better on a log axis (single models vs deep MoAs)."""
    xs = [xv(r) for r in records if _finite(xv(r)) and xv(r) > 0]
    return len(xs) > 1 and max(xs) / min(xs) > 20


def _log_x(fig: go.Figure) -> None:
    """A log $ axis labelled at powers of ten in plain decimals (Plotly's default is SI, '100μ')."""
    fig.update_xaxes(type="log", dtick=1, tickformat="~g", minor=dict(ticks="outside", showgrid=True))


def _add_target(fig: go.Figure, result: StudyResult, xv: Callable[[TrialRecord], float]) -> None:
    """Target line, and a ring round the cheapest config meeting it (or the best found)."""
    answer = _target_answer(result)
    if answer is None:
        return
    fig.add_hline(y=_pct(answer.target), line_dash="dash", line_color=_COLORS["met"] if answer.met else _COLORS["unmet"],
                  annotation_text=f"target {_pct(answer.target):.1f}%{_sim(result)}",
                  annotation_position="bottom right")
    pick = answer.record if answer.met else answer.best
    if pick is None or pick.metrics is None:
        return
    name = "cheapest meeting target" if answer.met else "best found (target not met)"
    color = _COLORS["met"] if answer.met else _COLORS["unmet"]
    fig.add_trace(_scatter([pick], [xv(pick)], name,
                           marker=dict(size=24, color="rgba(0,0,0,0)", line=dict(color=color, width=3))))


def pareto_section(result: StudyResult) -> Section:
    front = len(result.pareto_front)
    measured = len(result.evaluated)
    stopped = len(_stopped_early(result))
    what = ("the Pareto-optimal configs over the study's objectives (" + ", ".join(result.objective_names) + ")"
            if result.mode == "pareto" else "the cheapest config whose quality lower bound meets the target")
    caption = (f"{measured} configs measured on every item{_sim(result)}; highlighted: {front}, {what}, "
               f"labelled with their trial numbers (#N, as in the table below and in `study show`). "
               f"Error bars: the quality confidence interval. The line joins the configs no other "
               f"config beats on both plotted axes. Hover a point for its config, hash and numbers.")
    notes = []
    if stopped:
        notes.append(f"{stopped} configs were stopped early by the multi-fidelity rule; they are drawn as "
                     f"grey crosses at their first-items numbers, which are not comparable with full "
                     f"measurements and are never on the front.")
    if not measured:
        notes.append("No config has been measured on every item yet.")
    heading = "Pareto front" if result.mode == "pareto" else "Quality against cost and latency"
    return Section("pareto", heading, (("pareto-cost", pareto_figure(result, "cost")),
                                             ("pareto-latency", pareto_figure(result, "latency"))),
                   caption, tuple(notes), side_by_side=True, table=front_table(result))


def front_table(result: StudyResult) -> tuple[tuple[str, ...], ...]:
    """The highlighted configs as rows: trial number first, quality in %, as ``study show``."""
    rows = [r for r in sorted(result.pareto_front, key=lambda r: r.number) if r.metrics is not None]
    if not rows:
        return ()
    sim = " (simulated)" if result.is_simulated else ""
    head = ("trial", "config", f"quality %{sim} [CI]", f"$ per item{sim}", f"p50 s{sim}", f"p95 s{sim}", "items")

    def ci(m: Any) -> str:
        return (f" [{_pct(m.quality_low):.1f}, {_pct(m.quality_high):.1f}]"
                if _finite(m.quality_low) and _finite(m.quality_high) else "")
    return (head, *((f"#{r.number}", _summary(r), f"{_pct(r.metrics.quality):.1f}{ci(r.metrics)}",  # type: ignore[union-attr]
                     f"{r.metrics.cost_usd_per_item:.6f}", f"{r.metrics.latency_p50_s:.2f}",  # type: ignore[union-attr]
                     f"{r.metrics.latency_p95_s:.2f}", str(r.metrics.n_items)) for r in rows))  # type: ignore[union-attr]


def target_section(result: StudyResult) -> Section | None:
    """How sure we are that each config meets the target, against its cost."""
    answer = _target_answer(result)
    if answer is None:
        return None
    sim = _sim(result)
    measured = [r for r in result.evaluated if r.metrics is not None]
    conf = [confidence_at_least(r.metrics.item_values.values(), answer.target) for r in measured]  # type: ignore[union-attr]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[r.metrics.cost_usd_per_item for r in measured], y=conf, mode="markers",  # type: ignore[union-attr]
                             name="measured configs", hoverinfo="text",
                             hovertext=[f"{_hover(r)}<br>P(quality ≥ target) {c:.3f}" for r, c in zip(measured, conf)],
                             marker=dict(color=_COLORS["dominated"], size=9, opacity=0.6)))
    pick = answer.record if answer.met else answer.best
    if pick is not None and pick.metrics is not None:
        p = confidence_at_least(pick.metrics.item_values.values(), answer.target)
        fig.add_trace(go.Scatter(x=[pick.metrics.cost_usd_per_item], y=[p], mode="markers",
                                 name="cheapest meeting target" if answer.met else "best found (target not met)",
                                 hovertext=[_hover(pick)], hoverinfo="text",
                                 marker=dict(size=16, symbol="diamond",
                                             color=_COLORS["met"] if answer.met else _COLORS["unmet"])))
    fig.add_hline(y=answer.confidence, line_dash="dash", line_color=_COLORS["budget"],
                  annotation_text=f"required confidence {answer.confidence:g}", annotation_position="bottom right")
    _base_layout(fig, f"Confidence of meeting quality ≥ {_pct(answer.target):.1f}%{sim}", height=420)
    fig.update_xaxes(title_text="$ per item" + sim)
    if _wide(measured, _PLANES["cost"][2]):
        _log_x(fig)
    fig.update_yaxes(title_text="P(true quality ≥ target)" + sim, range=[-0.03, 1.03])
    if answer.met and answer.record is not None:
        r = answer.record
        caption = (f"Target met{sim}: trial {r.number} ({_summary(r)}, hash {r.config.config_hash if r.config else '?'}) "
                   f"is the cheapest config with quality ≥ {_pct(answer.target):.1f}% at confidence "
                   f"{answer.achieved_confidence:.3f} (required {answer.confidence:g}), "
                   f"${r.metrics.cost_usd_per_item:.6f} per item.")  # type: ignore[union-attr]
    else:
        best = answer.best
        found = (f"; the best found is trial {best.number} with quality {_pct(best.metrics.quality):.1f}%"
                 if best is not None and best.metrics is not None else "")
        caption = (f"Target NOT met{sim}: no config meets quality ≥ {_pct(answer.target):.1f}% with "
                   f"confidence {answer.confidence:g}{found}.")
    if result.baseline is not None and result.baseline.metrics is not None:
        caption += (f" The target is the measured quality of the baseline {result.baseline.note or _summary(result.baseline)} "
                    f"({_pct(result.baseline.metrics.quality):.1f}%).")
    caption += " Confidence is one-sided (Student t on the per-item values), as the search computes it."
    return Section("target", "Quality target", (("target", fig),), caption)


# ---- 3. spend ----------------------------------------------------------------------------------

def _paid(r: TrialRecord) -> float:
    """What a trial spent: a duplicate reuses metrics (and their paid_usd) but paid nothing."""
    if r.metrics is None or r.status == "duplicate":
        return 0.0
    return r.metrics.paid_usd


def spend_figure(spec: StudySpec, result: StudyResult) -> go.Figure:
    sim = _sim(result)
    records = sorted(result.trials, key=lambda r: r.number)
    xs: list[int] = []
    per: list[float] = []
    text: list[str] = []
    total = 0.0
    cum: list[float] = []
    if result.baseline is not None and result.baseline.metrics is not None:
        records = [result.baseline] + records
    for r in records:
        paid = r.metrics.paid_usd if r.number < 0 and r.metrics else _paid(r)
        total += paid
        xs.append(r.number)
        per.append(paid)
        cum.append(total)
        text.append(f"{'baseline' if r.number < 0 else f'trial {r.number}'} ({r.status})<br>"
                    f"{_esc(_summary(r)) if r.config else ''}<br>paid ${paid:.4f}, total ${total:.4f}")
    fig = go.Figure()
    fig.add_trace(go.Bar(x=xs, y=per, name="paid by this trial", marker_color="rgba(31,119,180,0.35)",
                         hovertext=text, hoverinfo="text"))
    fig.add_trace(go.Scatter(x=xs, y=cum, mode="lines+markers", name="cumulative paid $",
                             line=dict(color=_COLORS["spend"], width=2, shape="hv"), marker=dict(size=5),
                             hovertext=text, hoverinfo="text"))
    if spec.budget.usd is not None:
        fig.add_hline(y=spec.budget.usd, line_dash="dash", line_color=_COLORS["budget"],
                      annotation_text=f"budget ${spec.budget.usd:g}", annotation_position="top left")
    _base_layout(fig, "Spend over trials" + sim, height=380)
    fig.update_xaxes(title_text="trial number (-1 = baseline)" if result.baseline else "trial number")
    fig.update_yaxes(title_text="$ paid" + sim, rangemode="tozero")
    return fig


def spend_section(spec: StudySpec, result: StudyResult) -> Section:
    b = spec.budget
    budget = f"budget ${b.usd:g}" if b.usd is not None else "no $ budget"
    caption = (f"Paid ${result.spent_usd:.4f} in {result.spent_calls} calls{_sim(result)} ({budget}). "
               f"Calls served from the call store are free, so re-runs and duplicates cost nothing.")
    return Section("spend", "Spend over trials", (("spend", spend_figure(spec, result)),), caption)


# ---- 4. cost split -----------------------------------------------------------------------------

def _shown_configs(result: StudyResult) -> tuple[list[TrialRecord], str]:
    """The optimum set, or when it is empty (no feasible config) the best config found."""
    front = [r for r in result.pareto_front if r.metrics is not None]
    if front:
        return front, _FRONT_NAME.get(result.mode, "Pareto front") + " configs"
    answer = _target_answer(result)
    if answer is not None and answer.best is not None:
        return [answer.best], "the best config found (no config is feasible)"
    return [], ""


def cost_split_figure(result: StudyResult, records: Sequence[TrialRecord], by: str) -> go.Figure:
    """Stacked $ per item: one horizontal bar per config (cheapest on top), one colour per model
    (or role). Horizontal, because config labels name models and are too long for an x axis."""
    sim = _sim(result)
    records = sorted(records, key=lambda r: (r.metrics.cost_usd_per_item, r.number))  # type: ignore[union-attr]
    parts = [r.metrics.cost_by_model if by == "model" else r.metrics.cost_by_role for r in records]  # type: ignore[union-attr]
    totals: Counter[str] = Counter()
    for p in parts:
        totals.update({k: v for k, v in p.items()})
    labels = [_wrap(_esc(_label(r))) for r in records]  # wrapped, never cut: the aggregator is named last
    full = [_esc(_label(r)) for r in records]
    lines = max((label.count("<br>") + 1 for label in labels), default=1)
    fig = go.Figure()
    for key, total in totals.most_common():
        if total <= 0:  # a role no shown config pays for (e.g. no judge) would be an empty legend entry
            continue
        fig.add_trace(go.Bar(y=labels, x=[p.get(key, 0.0) for p in parts], name=_esc(key), orientation="h",
                             customdata=full,
                             hovertemplate=f"{_esc(key)}<br>%{{customdata}}<br>$%{{x:.6f}} per item<extra></extra>"))
    _base_layout(fig, f"$ per item by {by}{sim}", height=140 + (20 + 16 * lines) * len(records))
    fig.update_layout(barmode="stack", showlegend=True,
                      legend=dict(orientation="v", y=1, x=1.01, xanchor="left", yanchor="top"))
    fig.update_xaxes(title_text="$ per item" + sim)
    fig.update_yaxes(autorange="reversed", automargin=True)
    return fig


def cost_section(result: StudyResult) -> Section:
    records, which = _shown_configs(result)
    if not records:
        return Section("cost-split", "Cost split", notes=("No measured config to split yet.",))
    caption = (f"List $ per item of the {which}{_sim(result)}, split by model and by role "
               f"(proposer / aggregator / judge). Judge calls appear under the role only.")
    return Section("cost-split", "Cost split by model and by role",
                   (("cost-by-model", cost_split_figure(result, records, "model")),
                    ("cost-by-role", cost_split_figure(result, records, "role"))), caption)


# ---- 5. per category ---------------------------------------------------------------------------

def category_figure(result: StudyResult, records: Sequence[TrialRecord],
                    categories: Mapping[str, str]) -> go.Figure:
    """Grouped bars of per-category quality with bootstrap CIs, one colour per config."""
    sim = _sim(result)
    fig = go.Figure()
    for r in records:
        items = sorted(r.metrics.item_values.items())  # type: ignore[union-attr]
        est = per_category([v for _, v in items], [categories[k] for k, _ in items])
        cats = list(est)
        fig.add_trace(go.Bar(
            x=[_esc(c) for c in cats], y=[_pct(est[c].mean) for c in cats], name=_esc(_label(r)),
            error_y=dict(type="data", symmetric=False,
                         array=[_pct(max(0.0, est[c].high - est[c].mean)) if est[c].has_interval else 0.0 for c in cats],
                         arrayminus=[_pct(max(0.0, est[c].mean - est[c].low)) if est[c].has_interval else 0.0 for c in cats]),
            customdata=[est[c].n for c in cats],
            hovertemplate=f"{_esc(_label(r))}<br>%{{x}}: %{{y:.1f}}% on %{{customdata}} items<extra></extra>"))
    _base_layout(fig, "Quality by item category" + sim, height=420)
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="category", automargin=True)
    fig.update_yaxes(title_text="quality (%)" + sim, range=[0, 105])
    return fig


def distribution_figure(result: StudyResult, records: Sequence[TrialRecord]) -> go.Figure:
    """Share of items at each quality level, per config: the spread behind the mean.

    A histogram rather than a box plot, because most scorers give 0/1 per item, where quartiles
    are interpolation artefacts; with graded scores (a judge's grade) it shows their shape.
    """
    sim = _sim(result)
    fig = go.Figure()
    for r in records:
        vals = [_pct(v) for v in r.metrics.item_values.values()]  # type: ignore[union-attr]
        fig.add_trace(go.Histogram(x=vals, name=_esc(_label(r)), histnorm="percent",
                                   xbins=dict(start=-5, end=105, size=10),
                                   hovertemplate=f"{_esc(_label(r))}<br>quality %{{x}}%: %{{y:.1f}}% of items<extra></extra>"))
    _base_layout(fig, "Per-item quality distribution" + sim, height=420)
    fig.update_layout(barmode="group", showlegend=True)
    fig.update_xaxes(title_text="item quality (%)" + sim, range=[-5, 105], dtick=10)
    fig.update_yaxes(title_text="% of items")
    return fig


def _categories_usable(records: Sequence[TrialRecord], categories: Mapping[str, str] | None) -> str | None:
    """None when the categories cover every plotted item and split them; else why not."""
    if categories is None:
        return "no item categories were available for this dataset"
    ids = {k for r in records for k in r.metrics.item_values}  # type: ignore[union-attr]
    missing = ids - set(categories)
    if missing:
        return f"the dataset does not give a category for {len(missing)} of the {len(ids)} items measured"
    if len({categories[k] for k in ids}) < 2:
        return "all measured items are in one category"
    return None


def category_section(result: StudyResult, categories: Mapping[str, str] | None) -> Section:
    records, which = _shown_configs(result)
    if not records:
        return Section("categories", "Quality by category", notes=("No measured config yet.",))
    why_not = _categories_usable(records, categories)
    if why_not is None:
        caption = (f"Mean quality per item category for the {which}{_sim(result)}, with 95% bootstrap "
                   f"intervals (categories from the dataset, joined on item ids).")
        return Section("categories", "Quality by category",
                       (("categories", category_figure(result, records, categories or {})),), caption)
    caption = (f"Distribution of per-item quality of the {which}{_sim(result)}. "
               f"Per-category quality is not shown: {why_not}.")
    return Section("categories", "Per-item quality", (("item-quality", distribution_figure(result, records)),),
                   caption)


# ---- 6. parameter importances ------------------------------------------------------------------

def _quality_of(t: optuna.trial.FrozenTrial) -> float:
    m = trial_metrics(t)
    return float(m.quality) if m is not None else math.nan


def param_importances(result: StudyResult) -> tuple[dict[str, float] | None, str]:
    """Optuna's importances of the search parameters for quality, or why they cannot be had.

    fANOVA when scikit-learn is installed (it needs it); otherwise Optuna's default PED-ANOVA,
    which ranks parameters by how much they matter for reaching the top of the quality range
    (it assumes lower is better, so it is given minus quality). Only full-fidelity trials count.
    """
    try:
        study = optuna.load_study(study_name=result.study_name,
                                  storage=open_storage(result.storage_url, create=False))
    except Exception as exc:  # a report must still render without importances
        return None, f"the Optuna study could not be opened ({exc})"
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if _finite(_quality_of(t))]
    if len(done) < 2:
        return None, f"importances need at least 2 trials measured on every item; this study has {len(done)}"
    # A parameter with one value over these trials (a space fixing it, or a sampler that never
    # varied it) explains nothing; Optuna would still rank it, so it is left out.
    values: dict[str, set[str]] = {}
    for t in done:
        for p, v in t.params.items():
            values.setdefault(p, set()).add(repr(v))
    params = {p for p, seen in values.items() if len(seen) > 1}
    constant = sorted(set(values) - params)
    if len(params) < 2:
        grid = "; with the grid sampler every config is one categorical choice" if P_GRID in values else ""
        return None, (f"only {len(params)} parameter varied across these trials "
                      f"({', '.join(sorted(params)) or 'none'}){grid}, so there is nothing to rank")
    if importlib.util.find_spec("sklearn") is not None:
        evaluator: optuna.importance.BaseImportanceEvaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        target, name = _quality_of, "fANOVA"
    else:
        q = min(0.5, max(0.1, 3 / len(done)))  # at least ~3 trials in the top quantile
        evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=q)
        target, name = (lambda t: -_quality_of(t)), f"PED-ANOVA (top {q:.0%} of quality)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study, evaluator=evaluator, target=target,
                                                            params=sorted(params))
    except Exception as exc:  # small or degenerate studies make the evaluators fail
        return None, f"Optuna could not compute importances ({type(exc).__name__}: {exc})"
    if not found or not all(_finite(v) for v in found.values()):
        return None, "Optuna returned no usable importances (quality may not vary across trials)"
    left_out = f". Left out, with one value in every trial: {', '.join(constant)}" if constant else ""
    return dict(found), f"{name} on {len(done)} trials measured on every item{_sim(result)}{left_out}"


def importance_section(result: StudyResult) -> Section:
    found, how = param_importances(result)
    if found is None:
        return Section("importance", "Parameter importances", notes=(f"Not computed: {how}.",))
    names = list(found)[::-1]  # largest at the top of a horizontal bar chart
    fig = go.Figure(go.Bar(x=[found[n] for n in names], y=[_esc(n) for n in names], orientation="h",
                           marker_color=_COLORS["dominated"], name="importance", showlegend=False,
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    _base_layout(fig, "Parameter importances for quality" + _sim(result), height=max(260, 60 + 28 * len(names)))
    fig.update_xaxes(title_text="importance (normalised, sums to 1)")
    fig.update_yaxes(title_text="parameter", automargin=True)
    uses = " 'use:<model>' says whether a model is among the proposers." if any(n.startswith("use:") for n in names) else ""
    caption = (f"Optuna's {how}.{uses} Importances describe this study's trials (where the "
               f"sampler looked), not causal effects.")
    return Section("importance", "Parameter importances", (("importance", fig),), caption)


# ---- the page ----------------------------------------------------------------------------------

def build_sections(spec: StudySpec, result: StudyResult, *,
                   item_categories: Mapping[str, str] | None = None) -> list[Section]:
    """Every section in page order (the target section only when the study has a target)."""
    sections = [pareto_section(result), target_section(result), spend_section(spec, result),
                cost_section(result), category_section(result, item_categories), importance_section(result)]
    return [s for s in sections if s is not None]


def _status_counts(result: StudyResult) -> str:
    counts = Counter(r.status for r in result.trials)
    parts = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.most_common())
    return f"{len(result.trials)} trials" + (f": {parts}" if parts else "")


def _faults_text(spec: StudySpec, result: StudyResult) -> str:
    """Items that faults touched, over the evaluated trials, and what the policy made of them."""
    measured = [r.metrics for r in result.trials if r.counted and r.metrics is not None]
    fate = "failed, not scored" if spec.scorer.degraded is DegradedPolicy.FAIL else "scored anyway"
    return (f"items with failed runs {sum(m.n_failed for m in measured)}; degraded (an agent lost) "
            f"{sum(m.n_degraded for m in measured)}: {fate} ([scorer] degraded = "
            f"\"{spec.scorer.degraded.value}\")")


def _dataset_text(spec: StudySpec) -> str:
    d = spec.data
    name = f"built-in '{d.builtin}'" if d.builtin else str(d.path)
    extra = []
    if d.dev_fraction < 1.0:
        extra.append(f"dev fraction {d.dev_fraction:g}, split seed {d.split_seed}")
    if d.n_items is not None:
        extra.append(f"{d.n_items} items")
    return name + (f" ({'; '.join(extra)})" if extra else "")


def _objectives_text(spec: StudySpec, result: StudyResult) -> str:
    o = spec.objectives
    if result.mode == "constrained":
        text = "constrained: minimise $ per item subject to quality ≥ target"
    else:
        text = "Pareto: " + ", ".join(f"{d} {n}" for n, d in zip(result.objective_names, result.directions))
    if result.target is not None:
        origin = f" (measured quality of baseline {o.target.baseline})" if o.target and o.target.baseline else ""
        text += f"; target quality {_pct(result.target):.1f}%{origin} at confidence {result.target_confidence:g}"
    return text


def _header_rows(spec: StudySpec, result: StudyResult) -> list[tuple[str, str]]:
    b = spec.budget
    budget = [f"{b.trials} trials"] + ([f"${b.usd:g}"] if b.usd is not None else []) \
        + ([f"{b.calls} calls"] if b.calls is not None else [])
    scorer = spec.scorer.name + (f" {dict(spec.scorer.options)}" if spec.scorer.options else "")
    if spec.scorer.name == "length_controlled":  # issue 12: say when LC is not alpaca_eval's
        scorer += " (LC win rate: approximate unless every item has metadata.instruction_difficulty)"
    rows = [
        ("Study", result.study_name),
        ("Description", spec.description or "—"),
        ("Dataset", _dataset_text(spec)),
        ("Scorer", scorer),
        ("Objectives", _objectives_text(spec, result)),
        ("Backend", f"{spec.backend}" + (" (simulated model world)" if result.is_simulated else "")),
        ("Sampler", f"{spec.sampler.name}, seed {spec.seed}"),
        ("Trials", _status_counts(result)),
        ("Faults", _faults_text(spec, result)),
        ("Spend", f"${result.spent_usd:.4f} in {result.spent_calls} paid calls{_sim(result)}; "
                  f"budget {', '.join(budget)}"),
        ("Prices", _prices_text(spec, result)),
        ("Storage", result.storage_url),
    ]
    if result.stop_reason:
        rows.append(("Stopped because", result.stop_reason))
    return rows


def _prices_text(spec: StudySpec, result: StudyResult) -> str:
    """The price tables the costs came from, as each trial recorded them when it ran; for a study
    run before trials recorded it, the study's catalog as it prices those models now."""
    tables = sorted({r.price_table for r in result.trials if r.metrics is not None and r.price_table})
    if tables:
        return "; ".join(tables)
    models = sorted({m for r in result.trials if r.config is not None for m in r.config.models})
    try:
        return price_table(spec.load_catalog(), models) + " (the catalog today; not recorded by the trials)"
    except MoASearchError as exc:
        return f"not recorded by the trials, and the catalog cannot be read now: {exc}"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #222;
       background: #fafafa; line-height: 1.45; }
main { max-width: 1400px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 1.6em; margin: 0.4em 0 0.3em; }
h2 { font-size: 1.25em; margin: 1.6em 0 0.3em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.banner { background: #fff3cd; border: 2px solid #e0a800; color: #5c4400; font-weight: 600;
          padding: 10px 16px; border-radius: 6px; margin: 8px 0 12px; font-size: 1.05em; }
table.facts { border-collapse: collapse; background: #fff; font-size: 0.95em; }
table.facts th { text-align: left; padding: 3px 14px 3px 8px; color: #555; font-weight: 600;
                 vertical-align: top; white-space: nowrap; }
table.facts td { padding: 3px 8px; }
table.facts tr:nth-child(odd) { background: #f3f5f7; }
.caption { color: #333; margin: 0.3em 0 0.6em; max-width: 110ch; }
.note { color: #6b4e00; background: #fffaf0; border-left: 4px solid #e0a800; padding: 6px 10px;
        margin: 0.4em 0; max-width: 110ch; }
.figs { display: grid; grid-template-columns: 1fr; gap: 12px; }
.figs.two { grid-template-columns: 1fr 1fr; }
.fig { background: #fff; border: 1px solid #e3e3e3; border-radius: 4px; min-width: 0; }
table.trials { border-collapse: collapse; background: #fff; font-size: 0.92em; margin-top: 10px; }
table.trials th, table.trials td { padding: 3px 10px; text-align: right; border-bottom: 1px solid #eee; }
table.trials td { white-space: nowrap; }
table.trials td:nth-child(2) { white-space: normal; min-width: 22em; }
table.trials th:nth-child(2), table.trials td:nth-child(2) { text-align: left; }
footer { color: #777; font-size: 0.85em; margin-top: 3em; }
"""


def _figure_html(name: str, fig: go.Figure, with_js: bool) -> str:
    """One figure; plotly.js is inlined with the first figure only (the page stays offline)."""
    return pio.to_html(fig, full_html=False, include_plotlyjs=with_js, include_mathjax=False,
                       div_id=f"fig-{name}", config=PLOTLY_CONFIG, default_width="100%",
                       default_height=f"{fig.layout.height or 450}px")


def _section_html(s: Section, first: bool) -> str:
    out = [f'<section id="{html.escape(s.key)}"><h2>{html.escape(s.title)}</h2>']
    if s.caption:
        out.append(f'<p class="caption">{html.escape(s.caption)}</p>')
    out += [f'<p class="note">{html.escape(n)}</p>' for n in s.notes]
    if s.figures:
        out.append(f'<div class="figs{" two" if s.side_by_side and len(s.figures) > 1 else ""}">')
        for i, (name, fig) in enumerate(s.figures):
            out.append(f'<div class="fig">{_figure_html(name, fig, first and i == 0)}</div>')
        out.append("</div>")
    if s.table:
        head, *rows = s.table
        out.append('<table class="trials"><thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in head)
                   + "</tr></thead><tbody>")
        out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
        out.append("</tbody></table>")
    out.append("</section>")
    return "\n".join(out)


def render_html(spec: StudySpec, result: StudyResult, sections: Sequence[Section], title: str) -> str:
    """The page: header facts, the simulated banner when it applies, then every section."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>",
             f"<h1>{html.escape(title)}</h1>"]
    if result.is_simulated:
        parts.append(f'<div class="banner" role="alert">{html.escape(SIMULATED_BANNER)}</div>')
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in _header_rows(spec, result))
    parts.append(f'<table class="facts">{rows}</table>')
    js_pending = True
    for s in sections:
        parts.append(_section_html(s, js_pending))
        js_pending = js_pending and not s.figures
    parts.append("<footer>Written by moa_search.report from the Optuna storage; plotly.js is embedded, "
                 "so this file opens offline.</footer></main></body></html>")
    return "\n".join(parts)


def build_report_html(spec: StudySpec, result: StudyResult, *, title: str | None = None,
                      item_categories: Mapping[str, str] | None = None) -> str:
    """The whole report as one self-contained HTML string.

    ``item_categories`` (item id -> category, e.g. from the dataset) enables the per-category
    section; ``TrialMetrics`` itself carries per-item values keyed by item id but no categories.
    """
    sections = build_sections(spec, result, item_categories=item_categories)
    return render_html(spec, result, sections, title or f"MoA search report: {result.study_name}")


def dataset_categories(spec: StudySpec) -> Mapping[str, str] | None:
    """Item id -> category from the study's dataset, or None when it cannot be read now."""
    try:
        d = spec.data
        dataset = d.load()
    except (MoASearchError, OSError):
        return None
    return {item.id: item.category_or_default for item in dataset}


def _require_kaleido() -> None:
    if importlib.util.find_spec("kaleido") is None:
        raise MoASearchError("writing PNG images needs plotly's static image engine: run "
                             "`pip install kaleido` (the HTML report itself needs nothing extra)")


def write_study_report(study_file: str | Path, out: str | Path, *, runs_dir: str | Path | None = None,
                       png_dir: Path | None = None) -> Path:
    """Load the study named in ``study_file`` from its storage and write the HTML report to ``out``.

    With ``png_dir``, every figure is also written there as ``<name>.png`` (needs kaleido; this
    is checked before anything is written, so a missing engine leaves no half-made output).
    """
    if png_dir is not None:
        _require_kaleido()
    spec = load_study_spec(study_file, runs_dir=runs_dir)
    result = load_result(spec.storage, spec.name)
    sections = build_sections(spec, result, item_categories=dataset_categories(spec))
    page = render_html(spec, result, sections, f"MoA search report: {result.study_name}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, "utf-8")
    if png_dir is not None:
        _write_pngs(sections, Path(png_dir))
    return out


def _write_pngs(sections: Sequence[Section], png_dir: Path) -> list[Path]:
    png_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for s in sections:
        for name, fig in s.figures:
            path = png_dir / f"{name}.png"
            try:
                fig.write_image(str(path), width=1100, height=int(fig.layout.height or 450), scale=2)
            except Exception as exc:  # kaleido >= 1 also needs a Chrome it can drive
                raise MoASearchError(f"could not write {path}: {type(exc).__name__}: {exc}") from None
            written.append(path)
    return written
