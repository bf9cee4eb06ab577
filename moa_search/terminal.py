"""What a command prints on an 80-column terminal: the consoles, the tables and the blocks of text.

Split from ``cli.py`` so the CLI stays thin (it parses options and runs the work) and the look of
the output lives in one place: every table goes through ``new_table``/``print_table``, so each
fits the terminal (80 columns when piped) unless ``--wide`` asks for every value on one line.
Nothing here parses options, calls a model or touches a store.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, TextIO

from rich.console import Console

from .runner import DegradedPolicy

if TYPE_CHECKING:
    from rich.table import Column, Table

    from .confirm import Confirmation
    from .evaluate import ConfigEvaluation
    from .search import StudyResult, TrialRecord
    from .stats import PairedResult


def _width(stream: TextIO) -> int | None:
    """None (rich measures: the terminal's width, or ``COLUMNS``) for a terminal or when
    ``COLUMNS`` is set; else 80. Left to itself, rich would ask stdin's terminal when output is
    piped, so a log's tables would change with the window the command was typed in."""
    return None if stream.isatty() or os.environ.get("COLUMNS", "").isdigit() else 80


out = Console(width=_width(sys.stdout))
err = Console(stderr=True, width=_width(sys.stderr))


def new_table(*columns: "str | Column", title: str | None = None) -> "Table":
    """The CLI's tables: a rule under the header and one space between columns (no box), so a
    study's seven columns leave a config 30 of 80 columns. Plain headers never wrap."""
    from rich import box
    from rich.table import Column, Table
    return Table(*(Column(c, no_wrap=True) if isinstance(c, str) else c for c in columns), title=title,
                 box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0))


def num_column(header: str) -> "Column":
    """A number column: right-aligned and never wrapped, so rich narrows text columns instead."""
    from rich.table import Column
    return Column(header, justify="right", no_wrap=True)


def text_column(header: str) -> "Column":
    """A text column that wraps (and folds a long word) to fit the width, cutting nothing."""
    from rich.table import Column
    return Column(header, overflow="fold")


def natural_width(table: "Table") -> int:
    """The width ``table`` takes with no limit: every cell on one line."""
    from rich.measure import Measurement
    return Measurement.get(out, out.options.update(max_width=1_000_000), table).maximum


def print_table(table: "Table", wide: bool = False) -> None:
    """Print at the console's width (text columns wrap), or with ``wide`` at the table's own
    width, each value whole on one line (for a log or a wide terminal)."""
    if not wide:
        out.print(table)
        return
    Console(file=out.file, width=max(out.width, natural_width(table)), force_terminal=out.is_terminal,
            no_color=out.no_color).print(table)


def _metrics_row(r: "TrialRecord") -> list[str]:
    """One row of ``print_study``'s table: a measured trial's numbers, rounded for reading."""
    m = r.metrics
    assert m is not None and r.config is not None
    return [str(r.number), r.config.summary(), _pct_ci(m.quality, m.quality_low, m.quality_high),
            f"{m.cost_usd_per_item:.6f}",
            f"{m.latency_p50_s:.2f}", f"{m.latency_p95_s:.2f}", str(m.n_items)]


def _pct_ci(q: float, low: float, high: float) -> str:
    """A quality fraction as percent with its interval; the interval is left out when there is none."""
    if q != q:  # NaN: nothing scored
        return "n/a"
    return f"{100 * q:.1f}" + ("" if low != low or high != high else f" [{100 * low:.1f}, {100 * high:.1f}]")


def print_study(result: "StudyResult", degraded: DegradedPolicy | None = None, wide: bool = False) -> None:
    """The front, the target answer, the trial and spend counts, and the items faults touched
    (``degraded``: the study's ``[scorer] degraded`` policy, named when given). ``wide``: each
    config whole on one line however wide the table."""
    sim = " (simulated world)" if result.is_simulated else ""
    table = new_table(num_column("trial"), text_column("config"), num_column("quality % [95% CI]"),
                      num_column("$/item"), num_column("p50 s"), num_column("p95 s"), num_column("n"),
                      title=f"Pareto front of study {result.study_name}{sim}: "
                            f"{', '.join(f'{d} {o}' for o, d in zip(result.objective_names, result.directions))}")
    for r in sorted(result.pareto_front, key=lambda r: r.metrics.cost_usd_per_item if r.metrics else 0):
        if r.metrics is not None:
            table.add_row(*_metrics_row(r))
    print_table(table, wide)
    if result.target is not None:
        t = result.cheapest_meeting_target()
        out.print(("[green]target met[/green]: " if t.met else "[yellow]target not met[/yellow]: ") + t.message,
                  highlight=False)
    ran = sum(1 for r in result.trials if r.counted)
    dups = sum(1 for r in result.trials if r.status == "duplicate")
    out.print(f"{len(result.trials)} trials ({ran} evaluated, {dups} repeats of an evaluated config served "
              f"free, {len(result.evaluated)} distinct configs at full fidelity) · spent ${result.spent_usd:.4f}{sim} in {result.spent_calls} paid calls"
              + (f" · stopped: {result.stop_reason}" if result.stop_reason else ""), markup=False)
    measured = [r.metrics for r in result.trials if r.counted and r.metrics is not None]
    policy = "" if degraded is None else (f" ({'failed' if degraded is DegradedPolicy.FAIL else 'scored'}: "
                                          f"[scorer] degraded = \"{degraded.value}\")")
    out.print(f"items with failed runs {sum(m.n_failed for m in measured)}, degraded "
              f"{sum(m.n_degraded for m in measured)}{policy}", markup=False)


def study_json(result: "StudyResult") -> dict[str, object]:
    """``study run/show --json``: every trial and the front unrounded, for scripts rather than eyes."""
    def rec(r: "TrialRecord") -> dict[str, object]:
        m = r.metrics
        return {"trial": r.number, "status": r.status, "config_hash": r.config.config_hash if r.config else None,
                "summary": r.config.summary() if r.config else None,
                "quality": m.quality if m else None, "quality_ci": [m.quality_low, m.quality_high] if m else None,
                "cost_usd_per_item": m.cost_usd_per_item if m else None,
                "latency_p50_s": m.latency_p50_s if m else None, "latency_p95_s": m.latency_p95_s if m else None,
                "n_items": m.n_items if m else None, "n_failed": m.n_failed if m else None,
                "n_degraded": m.n_degraded if m else None}
    out_json: dict[str, object] = {"study": result.study_name, "simulated": result.is_simulated,
                                   "spent_usd": result.spent_usd, "spent_calls": result.spent_calls,
                                   "stop_reason": result.stop_reason,
                                   "pareto_front": [rec(r) for r in result.pareto_front],
                                   "trials": [rec(r) for r in result.trials]}
    if result.target is not None:
        t = result.cheapest_meeting_target()
        out_json["cheapest_meeting_target"] = {"met": t.met, "trial": t.record.number if t.record else None,
                                               "confidence": t.achieved_confidence, "message": t.message}
    return out_json


def print_confirmation(conf: "Confirmation", result: "StudyResult", wide: bool = False) -> None:
    """The held-out block: each config's dev and held-out quality, each minus the baseline item
    by item, the target rule on held-out values, and what the check paid now."""
    sim = "; simulated world" if conf.simulated else ""
    table = new_table("", text_column("config"), num_column("dev % [95% CI]"), num_column("held-out % [95% CI]"),
                      num_column("$/item"), title=f"held-out ({conf.n_items} items the search never saw{sim})")
    for c in conf.configs:
        table.add_row(c.label, c.summary, _pct_ci(c.dev_quality, c.dev_quality_low, c.dev_quality_high),
                      _pct_ci(c.quality, c.quality_low, c.quality_high),
                      f"{c.cost_usd_per_item:.6f}" if c.config_hash else "n/a")
    print_table(table, wide)
    for c in conf.configs:
        if c.vs_baseline is not None:
            out.print(paired_line(c.vs_baseline, c.label, "baseline"), markup=False, highlight=False)
        if c.target_confidence is not None and conf.target is not None:
            verdict = "meets" if c.target_confidence >= conf.target_confidence else "does not meet"
            out.print(f"{c.label} {verdict} quality >= {conf.target:.4g} on held-out items: confidence "
                      f"{c.target_confidence:.3f} (the study asks {conf.target_confidence:g})",
                      markup=False, highlight=False)
    pick = result.cheapest_meeting_target() if result.mode == "constrained" and result.target is not None else None
    if pick is not None and pick.met and pick.record is not None and pick.record.config is not None and \
            pick.record.config.config_hash not in {c.config_hash for c in conf.configs}:
        out.print(f"note: the pick, trial {pick.record.number}, is not among the configs checked here; "
                  f"`moa-search study confirm FILE` checks it", markup=False, highlight=False)
    out.print(f"held-out check: {conf.calls} calls, {conf.cached_calls} served from the call store, "
              f"paid ${conf.paid_usd:.4f}{' (simulated)' if conf.simulated else ''} (outside the "
              f"study's budget)", markup=False, highlight=False)


def paired_line(paired: "PairedResult", a: str = "A", b: str = "B") -> str:
    """``a - b`` item by item on one line: points with the CI, who was better, the sign test."""
    return (f"{a} - {b} on {paired.n} paired items: {100 * paired.mean_diff:+.1f} points "
            f"[{100 * paired.diff.low:+.1f}, {100 * paired.diff.high:+.1f}] {int(100 * paired.diff.confidence)}% CI; "
            f"{a} better on {paired.wins}, {b} on {paired.losses}, tied {paired.ties}; "
            f"sign test p = {paired.sign_test_p:.3g}")


def print_evaluation(ev: "ConfigEvaluation") -> None:
    """One config's evaluation (``eval``, each side of ``compare``): quality with its interval,
    what happened to the items, cost and latency; simulated numbers say so."""
    r = ev.result
    sim = " (simulated)" if ev.simulated else ""
    q = r.quality
    out.print(f"{ev.config.summary()} [{ev.config.config_hash}]{sim}", markup=False)
    if r.n_scored:
        out.print(f"  quality ({r.scorer}, {r.headline}): {100 * q.mean:.1f}% "
                  f"[{100 * q.low:.1f}, {100 * q.high:.1f}] {int(100 * q.confidence)}% CI, "
                  f"n={r.n_scored}/{r.n} scored", markup=False)
    else:
        out.print(f"  quality ({r.scorer}): none, n=0/{r.n} scored", markup=False)
    if r.win_rate is not None:
        out.print(f"  win rate vs baseline {r.win_rate:.1f} ± {r.win_rate_se:.1f} (s.e.) · "
                  f"length-controlled {r.lc_win_rate:.1f}", markup=False)
        if r.lc_note:
            out.print(f"  (length-controlled: {r.lc_note})", markup=False)
        out.print(f"  wins {r.n_wins}, draws {r.n_draws}, losses {r.n_losses} (vs baseline)",
                  markup=False)
    counts = ", ".join(f"{k} {v}" for k, v in r.counts.items() if v)
    fate = "failed" if ev.degraded_policy is DegradedPolicy.FAIL else "scored"
    out.print(f"  items: {counts}; degraded {ev.n_degraded} ({fate}, --degraded "
              f"{ev.degraded_policy.value})", markup=False)
    for cat, est in sorted(r.per_category.items()):
        out.print(f"    {cat:<14} {100 * est.mean:5.1f}%  (n={est.n})", markup=False)
    for turn, est in r.per_turn.items():  # multi-turn items (MT-Bench): each turn's score
        out.print(f"    {f'turn {turn}':<14} {100 * est.mean:5.1f}%  (n={est.n})", markup=False)
    out.print(f"  cost ${ev.cost_usd_per_item:.6f}/item{sim} · judge ${r.judge_cost_usd:.4f} total · "
              f"paid now ${ev.paid_usd:.4f}", markup=False)
    out.print(f"  latency p50 {ev.latency_percentile(50):.2f} s · p95 {ev.latency_percentile(95):.2f} s "
              f"(critical path{sim})", markup=False)


def print_wrapped(text: str, indent: str) -> None:
    """A long message at the console's width, continuation lines indented under it (paths and
    other long words are never split, so one may still overrun)."""
    import textwrap
    out.print(textwrap.fill(text, width=out.width, subsequent_indent=indent, break_long_words=False,
                            break_on_hyphens=False), markup=False, highlight=False, soft_wrap=True)


def print_lines(lines: list[str]) -> None:
    """Lines already laid out (``catalog`` listings): printed as they are, never re-wrapped."""
    for line in lines:
        out.print(line, markup=False, highlight=False, soft_wrap=True)
