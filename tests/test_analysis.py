"""The analyses under analysis/: each runs end to end on a few items of the simulated world and
writes a page, a summary and JSON holding the series its question needs.

Tiny item counts make the numbers noise, so the assertions are about structure and about
relations that hold item by item whatever the noise: shared configs agree, more layers cost
more and take longer, the Pareto set is exactly the non-dominated points.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `analysis` is a folder of scripts beside the package, not installed
    sys.path.insert(0, str(ROOT))

from analysis import budget, depth, diversity, roles, run_all  # noqa: E402
from analysis.common import (DEFAULT_JUDGE, DEFAULT_STORE, AnalysisOptions, build_parser,  # noqa: E402
                             options_from_args, readme_markers, rounded, stable)
from moa_search.config import BUILTIN_PRESETS, PAPER_PROPOSERS  # noqa: E402
from moa_search import scoring  # noqa: E402
from moa_search.errors import ConfigError  # noqa: E402

N_ITEMS = 8


@pytest.fixture(autouse=True)
def fewer_lc_resamples(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each LC interval refits its regression 200 times (~1 s a config); 20 keep the code path
    and the interval, and the tests' time, while the assertions here do not depend on it."""
    real = scoring.lc_win_rate_ci
    monkeypatch.setattr(scoring, "lc_win_rate_ci",
                        lambda *a, **kw: real(*a, **{**kw, "n_resamples": 20}))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One call store for the module, as the analyses share one: shared configs hit the cache."""
    return tmp_path_factory.mktemp("store") / "calls.db"


def options(name: str, tmp_path: Path, store: Path, **kw: object) -> AnalysisOptions:
    return AnalysisOptions(name=name, n_items=N_ITEMS, store=store, out_dir=tmp_path / name,
                           quiet=True, **kw)  # type: ignore[arg-type]


def table_rows(summary: str) -> list[list[str]]:
    """Body rows of every markdown table in a summary, as cells."""
    rows = []
    for line in summary.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def check_files(out, n_figures: int) -> tuple[str, str]:
    html = out.html_path.read_text("utf-8")
    summary = out.summary_path.read_text("utf-8")
    assert json.loads(out.json_path.read_text("utf-8"))["simulated"] is True
    # offline and light: plotly.js loaded once from the shared local copy, one plot per figure
    assert html.count("window.PlotlyConfig") == 1
    assert html.count("Plotly.newPlot(") == n_figures == len(out.figures)
    assert re.findall(r"<script[^>]*\ssrc=\"([^\"]+)\"", html) == ["../plotly.min.js"]
    shared = out.html_path.parent.parent / "plotly.min.js"
    assert shared.stat().st_size > 1e6 and "Plotly" in shared.read_text("utf-8")[:5000]
    assert out.html_path.stat().st_size < 1e6
    # simulated numbers are labelled as such everywhere they appear
    assert "(simulated model world)" in summary.splitlines()[0]
    for fig in out.figures:
        assert "simulated" in fig.layout.title.text
        assert "simulated" in fig.layout.yaxis.title.text
    return html, summary


def test_diversity_has_both_series_over_six_proposer_counts(tmp_path: Path, store: Path) -> None:
    out = diversity.run(options("diversity", tmp_path, store))
    _, summary = check_files(out, n_figures=2)
    series = out.data["series"]
    for name in (diversity.DIFFERENT, diversity.SAME):
        assert [p["n"] for p in series[name]] == [1, 2, 3, 4, 5, 6]
    # n = 1 is one config in both series, so both the config and its measurement agree
    first_diff, first_same = series[diversity.DIFFERENT][0], series[diversity.SAME][0]
    assert first_diff["config_hash"] == first_same["config_hash"]
    assert first_diff["quality"] == first_same["quality"]
    # the "different" series really adds different models, the other one repeats Qwen1.5-110B
    assert len(diversity.different_config(6).proposer_layers[0]) == 6
    assert set(diversity.different_config(6).models) == set(PAPER_PROPOSERS)
    assert diversity.same_config(6).models == (diversity.QWEN110,)
    traces = {t.name: t for t in out.figures[0].data}
    measured = [t for n, t in traces.items() if n.startswith((diversity.DIFFERENT, diversity.SAME))]
    assert len(measured) == 2
    for t in measured:
        assert [round(x) for x in t.x] == [1, 2, 3, 4, 5, 6] and len(t.y) == 6
        assert len(t.error_y.array) == 6
    assert sum("paper Table 3" in n for n in traces) == 2  # the paper's shape, for comparison
    rows = table_rows(summary)
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4", "5", "6", "2-6 pooled"]
    assert out.data["pooled_different_minus_same"]["n"] == N_ITEMS
    assert rows[1][-2:] == ["47.8", "47.8"] and rows[6][-2:] == ["61.3", "56.7"]


def test_depth_costs_and_latency_grow_with_layers(tmp_path: Path, store: Path) -> None:
    begin, end = readme_markers("depth")
    readme = tmp_path / "README.md"  # the README beside the output folders gets the table
    readme.write_text(f"# before\n\n{begin}\nstale\n{end}\n\nafter\n", encoding="utf-8")
    out = depth.run(options("depth", tmp_path, store))
    _, summary = check_files(out, n_figures=1)
    text = readme.read_text("utf-8")
    assert text.startswith(f"# before\n\n{begin}\n| layers |") and text.endswith(f"{end}\n\nafter\n")
    assert "stale" not in text
    block = table_rows(text.split(begin)[1].split(end)[0])
    assert [r[0] for r in block[1:]] == ["1", "2", "3 (MoA)", "4"]
    # the same numbers as the summary's table, formatted the same way
    assert [r[1] for r in block[1:]] == [r[2] for r in table_rows(summary)[1:]]
    assert [r[3] for r in block[1:]] == [r[4] for r in table_rows(summary)[1:]]
    layers = out.data["layers"]
    assert [p["layers"] for p in layers] == [1, 2, 3, 4]
    costs = [p["cost_usd_per_item"] for p in layers]
    assert all(a < b for a, b in zip(costs, costs[1:]))
    latencies = [p["latency_p50_s"] for p in layers]
    assert all(a < b for a, b in zip(latencies, latencies[1:]))  # layers run one after another
    assert layers[2]["config_hash"] == BUILTIN_PRESETS["moa"].config.config_hash
    assert layers[0]["paired_vs_previous"] is None and layers[1]["paired_vs_previous"]["n"] == N_ITEMS
    assert [r[0] for r in table_rows(summary)[1:]] == ["1", "2", "3", "4"]


def test_roles_places_each_paper_model_in_three_roles(tmp_path: Path, store: Path) -> None:
    out = roles.run(options("roles", tmp_path, store))
    _, summary = check_files(out, n_figures=1)
    models = out.data["models"]
    assert [m["model"] for m in models] == list(PAPER_PROPOSERS)
    for key in ("rank_alone", "rank_as_aggregator", "rank_as_proposer"):
        assert sorted(m[key] for m in models) == [1, 2, 3, 4, 5, 6]
    bars = out.figures[0].data
    assert [b.type for b in bars] == ["bar"] * 3 and all(len(b.y) == 6 for b in bars)
    # Qwen1.5-110B aggregating the six is the diversity analysis's n = 6 config
    qwen = models[0]
    assert qwen["as aggregator"]["config_hash"] == diversity.different_config(6).config_hash
    assert qwen["as proposer"]["config_hash"] == diversity.same_config(6).config_hash
    names = [r[0] for r in table_rows(summary)[1:]]
    assert names == [p.rsplit("/", 1)[-1] for p in PAPER_PROPOSERS]


def test_budget_marks_exactly_the_non_dominated_points(tmp_path: Path, store: Path) -> None:
    out = budget.run(options("budget", tmp_path, store))
    _, summary = check_files(out, n_figures=1)
    points = out.data["points"]
    labels = [p["label"] for p in points]
    assert {"MoA", "MoA-Lite", "MoA w/ GPT-4o"} <= set(labels)
    assert len(points) == 10 + 3  # every catalog model alone, the three presets, no study
    assert any("No search front" in n for n in out.data["notes"])

    def dominates(a: dict, b: dict) -> bool:
        return (a["cost_usd_per_item"] <= b["cost_usd_per_item"] and a["quality"] >= b["quality"]
                and (a["cost_usd_per_item"] < b["cost_usd_per_item"] or a["quality"] > b["quality"]))
    for p in points:
        assert p["pareto"] == (not any(dominates(q, p) for q in points if q is not p))
    assert min(points, key=lambda p: p["cost_usd_per_item"])["pareto"]
    assert max(points, key=lambda p: p["quality"])["pareto"]
    front_trace = out.figures[0].data[-1]
    assert len(front_trace.x) == sum(p["pareto"] for p in points)
    rows = table_rows(summary)
    paper = {r[0]: r[-1] for r in rows if r[0] in budget.PAPER_LC}
    assert paper == {k: f"{v:.1f}" for k, v in budget.PAPER_LC.items()}


def test_results_json_and_figures_hold_stable_numbers(tmp_path: Path, store: Path) -> None:
    """What a file holds is rounded once, by one rule, so last-digit float noise (another CPU,
    another summation order) cannot reach the committed bytes."""
    out = budget.run(options("budget", tmp_path, store, extra={"study": None}))
    text = out.json_path.read_text("utf-8")
    assert json.loads(text) == out.data == stable(out.data)
    floats = re.findall(r'"(\w+)": (-?\d+\.\d+(?:e-?\d+)?)', text)
    assert floats
    for key, number in floats:  # dollars keep 6 significant digits, everything else 4
        digits = len(f"{float(number):e}".split("e")[0].replace(".", "").rstrip("0"))
        assert digits <= (6 if "usd" in key else 4), (key, number)
    html = out.html_path.read_text("utf-8")
    plotted = [float(x) for x in re.findall(r'"(?:x|y|array|arrayminus)":\[([^\]]*)\]', html)
               for x in x.split(",") if x]  # type: ignore[misc]
    assert plotted and all(x == rounded(x) for x in plotted)


def test_rounding_is_one_rule_and_idempotent() -> None:
    # the issue's example: two machines' last digits, one written number
    assert rounded(59.291228922023656) == rounded(59.29122892202366) == 59.29
    assert rounded(0.000768912345, 6) == 0.000768912 and rounded(0.0) == 0.0
    assert math.isnan(rounded(math.nan))
    data = {"quality": 44.16868757106459, "cost_usd_per_item": 0.0007689123456,
            "series": [{"latency_p50_s": 9.349999999999, "n": 3, "ok": True}],
            "low": math.nan, "paper": {1: 47.8}, "pair": (1.23456, "a")}
    once = stable(data)
    assert once == {"quality": 44.17, "cost_usd_per_item": 0.000768912,
                    "series": [{"latency_p50_s": 9.35, "n": 3, "ok": True}],
                    "low": None, "paper": {1: 47.8}, "pair": [1.235, "a"]}
    assert stable(once) == once


def test_pareto_mask_handles_ties_and_missing_values() -> None:
    pts = [(1.0, 50.0), (1.0, 50.0), (2.0, 60.0), (2.0, 55.0), (3.0, 60.0), (math.nan, 99.0)]
    assert budget.pareto_mask(pts) == [True, True, True, False, False, False]


def test_budget_study_front_missing_results(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    configs, note = budget.study_front(budget.DEFAULT_STUDY, runs, required=False)
    assert configs == [] and "moa-search study run" in note
    with pytest.raises(ConfigError, match="study run"):
        budget.study_front(budget.DEFAULT_STUDY, runs, required=True)
    assert budget.study_front(None, runs, required=False) == ([], "No search front: --no-study.")


def test_options_defaults_and_data_specific_scorers() -> None:
    parse = build_parser("diversity", "test").parse_args
    o = options_from_args("diversity", parse([]))
    assert (o.data, o.scorer, o.judge_model, o.store) == ("instruct", "length_controlled",
                                                          DEFAULT_JUDGE, DEFAULT_STORE)
    assert o.out_dir == ROOT / "analysis" / "diversity" and o.n_items is None
    assert o.quality_name.startswith("LC win rate")
    math_opts = options_from_args("depth", parse(["--data", "math", "--no-store"]))
    assert (math_opts.scorer, math_opts.store, math_opts.is_judged) == ("numeric", None, False)
    with pytest.raises(ConfigError, match="--scorer"):
        options_from_args("depth", parse(["--data", "mine.jsonl"]))
    with pytest.raises(ConfigError, match="--backend http"):
        options_from_args("depth", parse(["--base-url", "http://127.0.0.1:9"]))


def test_math_data_is_scored_numerically_without_paper_columns(tmp_path: Path, store: Path) -> None:
    out = depth.run(options("depth", tmp_path, store, data="math", scorer="numeric"))
    _, summary = check_files(out, n_figures=1)
    assert out.data["quality_name"] == "accuracy (%)"
    assert "judge" not in out.data["description"] and "data: math" in out.data["description"]
    assert all(0.0 <= p["quality"] <= 100.0 for p in out.data["layers"])


def test_scripts_run_from_the_command_line(tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # two of the four keep it fast; the wiring (options passed on, one folder each) is shared
    monkeypatch.setattr(run_all, "ANALYSES", (depth, budget))
    args = ["--n-items", "4", "--store", str(store), "--out-dir", str(tmp_path / "all"), "-q"]
    assert run_all.main(args + ["--no-study"]) == 0
    printed = capsys.readouterr().out
    for name in ("depth", "budget"):
        assert (tmp_path / "all" / name / "summary.md").exists()
        assert re.search(rf"^{name}\s+[\d.]+ s", printed, re.MULTILINE)
    assert "4 of 150 items" in (tmp_path / "all" / "depth" / "summary.md").read_text("utf-8")
    assert run_all.main(args + ["--no-study", "--study", "x.toml"]) == 2
    assert depth.main(["--backend", "sim", "--base-url", "http://127.0.0.1:9"]) == 2
    assert "error: " in capsys.readouterr().err
