"""Progress bars for long commands: items done, dollars actually paid, ETA.

Drawn on stderr (rich) so ``--json`` output on stdout stays machine-readable; silent with
``quiet`` or when stderr is not a terminal-like console that rich can draw on.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from .runner import ItemTrace


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
