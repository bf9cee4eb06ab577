"""Progress bars for long commands: items done, dollars actually paid, ETA; for a study, a bar
of trials and, inside each trial, a bar of its items.

Drawn on stderr (rich) so ``--json`` output on stdout stays machine-readable; silent with
``quiet`` or when stderr is not a terminal-like console that rich can draw on.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .runner import ItemTrace

if TYPE_CHECKING:
    from .search import TrialEvent


@dataclass
class _Tally:
    """What the items so far cost: paid $ (cache hits are free), calls, and how many were cached;
    simulated dollars say so, as every number the project shows does."""

    paid: float = 0.0
    calls: int = 0
    cached: int = 0
    simulated: bool = False

    def add(self, trace: ItemTrace) -> None:
        self.paid += trace.paid_usd
        self.calls += trace.n_calls
        self.cached += trace.n_cached
        self.simulated = self.simulated or trace.simulated

    def info(self, label_simulated: bool = True) -> str:
        return (f"calls {self.calls} ({self.cached} cached) · paid ${self.paid:.4f}"
                + _sim(self.simulated and label_simulated))


def _sim(simulated: bool) -> str:
    return " (simulated)" if simulated else ""


def _bar(console: Console | None) -> Progress:
    """Every bar of this module: label, bar, n/total, the task's ``info`` text, ETA (no elapsed
    time: a study's two bars must fit 80 columns); on stderr unless told otherwise, and gone once
    done (the command's own output follows)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console or Console(stderr=True), transient=True)


@contextmanager
def item_progress(total: int, label: str, *, quiet: bool = False,
                  console: Console | None = None) -> Iterator[Callable[[ItemTrace], None]]:
    """Yields the ``on_item`` callback to hand to ``Runner.run_items``."""
    if quiet:
        yield lambda trace: None
        return
    spent = _Tally()
    with _bar(console) as bar:
        task = bar.add_task(label, total=total, info=spent.info())

        def on_item(trace: ItemTrace) -> None:
            spent.add(trace)
            bar.update(task, advance=1, info=spent.info())

        yield on_item


class TrialProgress:
    """``on_trial`` for ``run_study`` (one line per trial above a bar with spend and ETA), and
    ``items``: the ``ItemProgress`` of ``DatasetEvaluator``, a second bar inside each trial
    (items done, calls, spend). That bar appears once a stage has run ``show_after_s`` (a fast
    simulated trial would only flicker) and is removed when the stage ends."""

    def __init__(self, bar: Progress | None, show_after_s: float = 1.0) -> None:
        self.bar = bar
        self.show_after_s = show_after_s
        self.task = bar.add_task("trials", total=None, info="spent $0.0000") if bar else None
        self.simulated = False  # known from the first measured trial

    def __call__(self, event: "TrialEvent") -> None:
        if self.bar is None or self.task is None:
            return
        r = event.record
        what = r.config.summary() if r.config else "-"
        if r.metrics is not None:
            what += f" · quality {100 * r.metrics.quality:.1f}% · ${r.metrics.cost_usd_per_item:.6f}/item"
        self.simulated = self.simulated or (r.metrics is not None and r.metrics.simulated)
        sim = _sim(r.metrics is not None and r.metrics.simulated)
        self.bar.console.print(f"trial {r.number:>3} {r.status.lower():<9} {what}{sim}"
                               + (f" · {r.note}" if r.note else ""), markup=False, highlight=False)
        budget = f" of ${event.budget_usd:.2f}" if event.budget_usd else ""
        self.bar.update(self.task, completed=event.trials_done, total=event.budget_trials,
                        info=f"spent ${event.spent_usd:.4f}{budget}{_sim(self.simulated)}")

    @contextmanager
    def items(self, label: str, total: int) -> Iterator[Callable[[ItemTrace], None]]:
        """Yields the ``on_item`` callback of one evaluation of ``total`` items."""
        bar = self.bar
        if bar is None:
            yield lambda trace: None
            return
        spent = _Tally()
        # Its spend is not labelled: the trials bar under it says "(simulated)" for both, and
        # 80 columns hold no second label (rich would cut the item count to make room).
        task = bar.add_task(f"  {label} items", total=total, info=spent.info(False), visible=self.show_after_s <= 0)

        def show() -> None:
            with suppress(KeyError):  # the stage ended (its task removed) just as the timer fired
                bar.update(task, visible=True)

        timer = threading.Timer(self.show_after_s, show)
        timer.daemon = True
        if self.show_after_s > 0:
            timer.start()

        def on_item(trace: ItemTrace) -> None:
            spent.add(trace)
            bar.update(task, advance=1, info=spent.info(False))

        try:
            yield on_item
        finally:
            timer.cancel()
            if any(t.id == task and t.visible for t in bar.tasks):
                bar.refresh()  # its last state is drawn once, however fast the stage was
            bar.remove_task(task)


@contextmanager
def trial_progress(total_trials: int, *, quiet: bool = False, console: Console | None = None,
                   show_after_s: float = 1.0) -> Iterator[TrialProgress]:
    """Yields the ``TrialProgress`` of a study run: pass it as ``on_trial`` and its ``items`` as
    the evaluator's ``ItemProgress``. Silent with ``quiet``."""
    if quiet:
        yield TrialProgress(None)
        return
    with _bar(console) as bar:
        progress = TrialProgress(bar, show_after_s)
        bar.update(progress.task, total=total_trials)  # type: ignore[arg-type]
        yield progress
