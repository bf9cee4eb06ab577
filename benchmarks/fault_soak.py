"""Fault soak (issue 11): a study under kill -9 storms and under injected HTTP faults, compared with
the same study run cleanly, measured side by side in one run and printed, never asserted.

Kill storm: the study (``studies/sim-demo.toml`` made smaller, simulated world, real call store
and Optuna storage) runs in a child process that is killed with SIGKILL after a random number of
new calls, again and again, then resumed to the end. Faults: the same study against
``moa-search sim-server`` with 20 % of requests answered 429 / 500 / a hang / a malformed body,
and against a clean sim-server. For each it prints:

* results identical: the evaluated configs, their quality and the Pareto front equal the clean run's;
* calls paid twice: request keys with more than one paid answer in the call store;
* spend outside the budget: $ the call store paid for the study minus what the study books;
* zombie trials: trials left RUNNING after the resume;
* possibly billed: requests in flight at a kill (sent, never answered).

Usage: python benchmarks/fault_soak.py [--kills 10] [--seed 0] [--skip-faults]
Numbers describe the simulated world.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import signal
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna

from moa_search.search import StudyResult, load_result
from moa_search.store import CallStore
from moa_search.study import run_prefix, run_study_file, study_result
from moa_search.study_spec import load_study_spec
from runner_bench import sim_server  # this folder is on sys.path when a script in it runs

REPO = Path(__file__).resolve().parent.parent


def small_study(folder: Path, *, catalog: Path | None = None, backend: str = "sim") -> Path:
    """sim-demo with fewer items and trials, so a storm of kills fits in minutes."""
    text = (REPO / "studies" / "sim-demo.toml").read_text("utf-8")
    text = text.replace("n_items = 48", "n_items = 24").replace("trials = 36", "trials = 14")
    text = text.replace("first_items = 16", "first_items = 8")
    text = text.replace('backend = "sim"', f'backend = "{backend}"')
    if catalog is not None:
        text = text.replace("[data]", f'[catalog]\npath = "{catalog}"\n\n[data]', 1)
    path = folder / "soak.toml"
    path.write_text(text, "utf-8")
    return path


def _run(path: str, runs: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    run_study_file(path, runs_dir=runs)


def _calls(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(db, timeout=60)
    try:
        return conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


@dataclass(frozen=True)
class Outcome:
    identical: bool
    paid_twice: int
    outside_budget_usd: float
    trial_books_short_usd: float
    zombies: int
    possibly_billed: int
    kills: int
    wall_s: float


def _signature(result: StudyResult) -> tuple[object, ...]:
    evaluated = sorted((r.config.config_hash, round(r.metrics.quality, 12))  # type: ignore[union-attr]
                       for r in result.evaluated)
    front = sorted(r.config.config_hash for r in result.pareto_front)  # type: ignore[union-attr]
    return tuple(evaluated), tuple(front)


def measure(path: Path, runs: Path, reference: StudyResult, kills: int, wall_s: float) -> Outcome:
    spec = load_study_spec(path, runs_dir=runs)
    _, shown = study_result(path, runs_dir=runs)
    booked_by_trials = load_result(spec.storage, spec.name).spent_usd
    with CallStore(spec.call_store) as store:
        spend = store.spend(run_id_prefix=run_prefix(spec))
    conn = sqlite3.connect(spec.call_store)
    paid_twice = conn.execute(
        "SELECT COUNT(*) FROM (SELECT key FROM calls WHERE cached = 0 AND error IS NULL"
        " GROUP BY key HAVING COUNT(*) > 1)").fetchone()[0]
    conn.close()
    zombies = sum(1 for r in shown.trials if r.status in ("running", "waiting"))
    return Outcome(_signature(shown) == _signature(reference), paid_twice,
                   max(0.0, spend.paid_usd - shown.spent_usd),
                   max(0.0, spend.paid_usd - booked_by_trials), zombies, spend.possibly_billed_calls,
                   kills, wall_s)


def kill_storm(kills: int, seed: int) -> tuple[Outcome, StudyResult]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as clean_dir, tempfile.TemporaryDirectory() as storm_dir:
        clean = small_study(Path(clean_dir))
        reference = run_study_file(clean, runs_dir=Path(clean_dir) / "runs")
        path = small_study(Path(storm_dir))
        runs = Path(storm_dir) / "runs"
        spec = load_study_spec(path, runs_dir=runs)
        ctx = multiprocessing.get_context("fork")
        done_kills = 0
        started = time.perf_counter()
        for _ in range(kills):
            proc = ctx.Process(target=_run, args=(str(path), str(runs)))
            proc.start()
            at = _calls(spec.call_store) + rng.randint(5, 400)
            while proc.is_alive() and _calls(spec.call_store) < at:
                time.sleep(0.005)
            if not proc.is_alive():  # finished before the kill
                break
            os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
            proc.join()
            done_kills += 1
        run_study_file(path, runs_dir=runs)
        wall = time.perf_counter() - started
        return measure(path, runs, reference, done_kills, wall), reference


def http_catalog(folder: Path, base_url: str) -> Path:
    """The default catalog with every provider pointed at ``base_url`` (no keys needed)."""
    text = (REPO / "moa_search" / "data" / "catalog.toml").read_text("utf-8")
    lines = []
    for line in text.splitlines():
        if line.startswith("base_url"):  # the sim-server's hang fault outlasts a 2 s timeout
            line = f'base_url = "{base_url}"\ntimeout_s = 2'
        elif line.startswith("api_key_env"):
            continue
        lines.append(line)
    path = folder / "catalog.toml"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def faults(rate: float) -> tuple[Outcome, Outcome]:
    """The study over HTTP against a clean sim-server, then against one injecting faults."""
    each = rate / 4
    outcomes = []
    reference: StudyResult | None = None
    for args in ((), ("--fault-429", str(each), "--fault-500", str(each), "--fault-timeout", str(each),
                      "--fault-malformed", str(each))):
        with tempfile.TemporaryDirectory() as d, sim_server(0.0, *args) as url:
            folder = Path(d)
            path = small_study(folder, catalog=http_catalog(folder, url), backend="http")
            started = time.perf_counter()
            result = run_study_file(path, runs_dir=folder / "runs")
            wall = time.perf_counter() - started
            reference = reference or result
            outcomes.append(measure(path, folder / "runs", reference, 0, wall))
    return outcomes[0], outcomes[1]


def row(name: str, o: Outcome) -> str:
    return (f"{name:<26} {'yes' if o.identical else 'NO':>9} {o.paid_twice:>10} "
            f"{o.outside_budget_usd:>10.6f} {o.trial_books_short_usd:>12.6f} {o.zombies:>7} "
            f"{o.possibly_billed:>8} {o.kills:>5} {o.wall_s:>7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--skip-faults", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print(f"{'scenario (simulated)':<26} {'identical':>9} {'paid twice':>10} {'outside $':>10} "
          f"{'trials short $':>12} {'zombies':>7} {'maybe $':>8} {'kills':>5} {'wall s':>7}")
    storm, _ = kill_storm(args.kills, args.seed)
    print(row(f"kill -9 x{args.kills}", storm))
    if not args.skip_faults:
        clean, faulty = faults(args.fault_rate)
        print(row("http, no faults", clean))
        print(row(f"http, {args.fault_rate:.0%} faults", faulty))
    print("outside $: store paid minus what the study books; trials short $: store paid minus what "
          "the trials alone recorded (the ledger closes that gap); maybe $: calls possibly billed.")


if __name__ == "__main__":
    main()
