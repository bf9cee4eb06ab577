"""Progress bars for long commands: items done, dollars actually paid, ETA.

Drawn on stderr (rich) so ``--json`` output on stdout stays machine-readable; silent with
``quiet`` or when stderr is not a terminal-like console that rich can draw on.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from .runner import ItemTrace

if TYPE_CHECKING:
    from .search import TrialEvent


@contextmanager
def item_progress(total: int, label: str, *, quiet: bool = False,
                  console: Console | None = None) -> Iterator[Callable[[ItemTrace], None]]:
    """Yields the ``on_item`` callback to hand to ``Runner.run_items``."""
    if quiet:
        yield lambda trace: None
        return
    spent = {"paid": 0.0, "cached": 0, "calls": 0}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("paid ${task.fields[paid]:.4f} · cache {task.fields[hits]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console or Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total, paid=0.0, hits="0/0")

        def on_item(trace: ItemTrace) -> None:
            spent["paid"] += trace.paid_usd
            spent["cached"] += trace.n_cached
            spent["calls"] += trace.n_calls
            bar.update(task, advance=1, paid=spent["paid"], hits=f"{spent['cached']}/{spent['calls']}")

        yield on_item


@contextmanager
def trial_progress(total_trials: int, *, quiet: bool = False, console: Console | None = None
                   ) -> Iterator[Callable[["TrialEvent"], None]]:
    """Yields ``on_trial`` for ``run_study``: one line per trial above a bar with spend and ETA."""
    if quiet:
        yield lambda event: None
        return
    columns = (TextColumn("trials"), BarColumn(), MofNCompleteColumn(),
               TextColumn("spent ${task.fields[spent]:.4f}{task.fields[budget]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console or Console(stderr=True), transient=True) as bar:
        task = bar.add_task("trials", total=total_trials, spent=0.0, budget="")

        def on_trial(event: "TrialEvent") -> None:
            r = event.record
            what = r.config.summary() if r.config else "-"
            if r.metrics is not None:
                what += f" · quality {100 * r.metrics.quality:.1f}% · ${r.metrics.cost_usd_per_item:.6f}/item"
            sim = " (simulated)" if r.metrics is not None and r.metrics.simulated else ""
            bar.console.print(f"trial {r.number:>3} {r.status.lower():<9} {what}{sim}"
                              + (f" · {r.note}" if r.note else ""), markup=False, highlight=False)
            budget = f" of ${event.budget_usd:.2f}" if event.budget_usd else ""
            bar.update(task, completed=event.trials_done, total=event.budget_trials,
                       spent=event.spent_usd, budget=budget)

        yield on_trial
