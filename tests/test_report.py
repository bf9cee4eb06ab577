"""The HTML report, written for real (small) studies run with the formula-world evaluator.

The tests read the figures back out of the generated page (the JSON Plotly is given) and check
what a reader would see: which points are on which trace, axis titles, lines, captions.
"""

from __future__ import annotations

import dataclasses
import html
import importlib.util
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Sequence

import plotly
import pytest

from moa_search.errors import MoASearchError
from moa_search.report import SIMULATED_BANNER, build_report_html, write_study_report
from moa_search.search import StudyResult, TrialMetrics, prepare_study, run_study
from moa_search.study_spec import StudySpec
from tests.test_search import ITEMS, FormulaEvaluator, formula_estimate, make_spec

CATEGORIES = {item: ("algebra", "geometry", "words")[n % 3] for n, item in enumerate(ITEMS)}


class RealWorldFormulaEvaluator(FormulaEvaluator):
    """The formula world with its metrics marked as *not* simulated (as an HTTP study's are)."""

    async def evaluate(self, config: Any, item_ids: Sequence[str], *, trial_number: int) -> TrialMetrics:
        metrics = await super().evaluate(config, item_ids, trial_number=trial_number)
        return dataclasses.replace(metrics, simulated=False)


# ---- reading the page back ---------------------------------------------------------------------

def figures(page: str) -> dict[str, dict[str, Any]]:
    """Every figure on the page by div id: the data and layout passed to ``Plotly.newPlot``."""
    decoder = json.JSONDecoder()
    out = {}
    for m in re.finditer(r'Plotly\.newPlot\(\s*"(fig-[\w-]+)",\s*', page):
        data, end = decoder.raw_decode(page, m.end())
        comma = re.compile(r"\s*,\s*").match(page, end)
        assert comma is not None
        layout, _ = decoder.raw_decode(page, comma.end())
        out[m.group(1)] = {"data": data, "layout": layout}
    return out


def trace(fig: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [t for t in fig["data"] if t.get("name") == name]
    assert len(matches) == 1, f"{name!r} not among {[t.get('name') for t in fig['data']]}"
    return matches[0]


def names(fig: dict[str, Any]) -> list[str]:
    return [t.get("name") for t in fig["data"]]


def axis_title(fig: dict[str, Any], axis: str) -> str:
    return fig["layout"][axis]["title"]["text"]


def hlines(fig: dict[str, Any]) -> list[float]:
    return [s["y0"] for s in fig["layout"].get("shapes", ()) if s.get("y0") == s.get("y1")]


class _Fetches(HTMLParser):
    """Collects every URL the browser would fetch or link to, and the script tags."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "action", "data", "poster")]


# ---- studies -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pareto_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudySpec, StudyResult]:
    """Three objectives, multi-fidelity on (so a bad aggregator is stopped early), a $ budget."""
    spec = make_spec(tmp_path_factory.mktemp("pareto"), name="pareto",
                     space={"models": ["w-small-1", "w-small-2", "w-small-3", "w-mid"],
                            "aggregators": ["w-mid", "w-strong-cheap", "w-strong-pricey", "w-weak-pricey"],
                            "layers": [1, 3], "proposers": [1, 4]},
                     budget={"trials": 8, "usd": 5.0},
                     fidelity={"enabled": True, "first_items": 10, "confidence": 0.9})
    return spec, run_study(spec, FormulaEvaluator(), ITEMS, cost_estimate=formula_estimate)


@pytest.fixture(scope="module")
def constrained_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudySpec, StudyResult]:
    """Cheapest config matching a measured baseline (w-mid): target line and pick."""
    spec = make_spec(tmp_path_factory.mktemp("constrained"), name="constrained",
                     objectives={"mode": "constrained", "target": {"baseline": "w-mid"}},
                     space={"models": ["w-small-1"], "aggregators": ["w-mid", "w-strong-cheap"],
                            "layers": [1, 2], "proposers": [1, 1]},
                     budget={"trials": 4}, sampler={"name": "grid"})  # all 4 configs
    return spec, run_study(spec, FormulaEvaluator(), ITEMS, cost_estimate=formula_estimate)


@pytest.fixture(scope="module")
def pareto_page(pareto_study: tuple[StudySpec, StudyResult]) -> str:
    return build_report_html(*pareto_study, item_categories=CATEGORIES)


# ---- tests -------------------------------------------------------------------------------------

def test_pareto_planes_show_front_dominated_and_stopped_points(pareto_study, pareto_page) -> None:
    _, result = pareto_study
    figs = figures(pareto_page)
    front = {r.number for r in result.pareto_front}
    measured = {r.number for r in result.evaluated}
    stopped = {r.number for r in result.trials if r.status == "stopped_early"}
    assert front and measured - front and stopped  # the fixture exercises every trace
    for key, x_title, pick in (("fig-pareto-cost", "$ per item", lambda m: m.cost_usd_per_item),
                               ("fig-pareto-latency", "latency p50 (s)", lambda m: m.latency_p50_s)):
        fig = figs[key]
        on_front = trace(fig, "Pareto front")
        assert sorted(on_front["customdata"]) == sorted(front)
        assert len(on_front["x"]) == len(result.pareto_front)
        by_number = {r.number: r for r in result.trials}
        assert on_front["x"] == [pick(by_number[n].metrics) for n in on_front["customdata"]]
        assert on_front["y"] == [100 * by_number[n].metrics.quality for n in on_front["customdata"]]  # in %
        assert on_front["text"] == [f"#{n}" for n in on_front["customdata"]]  # numbered, in both planes
        assert "text" in on_front["mode"]
        dominated = trace(fig, "dominated")
        assert set(dominated["customdata"]) == measured - front
        assert dominated["marker"]["opacity"] < 1
        assert set(trace(fig, "stopped early (first items only)")["customdata"]) <= stopped
        # error bars are the quality CI
        r = by_number[on_front["customdata"][0]]
        assert on_front["error_y"]["array"][0] == pytest.approx(100 * (r.metrics.quality_high - r.metrics.quality))
        hover = on_front["hovertext"][0]
        assert r.config.config_hash in hover and f"trial {r.number}" in hover and "per item" in hover
        assert axis_title(fig, "xaxis") == f"{x_title} (simulated)"
        assert axis_title(fig, "yaxis") == "quality (%) (simulated)"
        assert not hlines(fig)  # no target in this study


def test_trade_off_line_joins_exactly_the_points_unbeaten_in_its_plane(pareto_study, pareto_page) -> None:
    """The line is the plane's own 2-D front: every measured point no other point beats on both
    axes (cheaper or as cheap, and better or as good), and no other point, in x order."""
    _, result = pareto_study
    figs = figures(pareto_page)
    for key, pick in (("fig-pareto-cost", lambda m: m.cost_usd_per_item),
                      ("fig-pareto-latency", lambda m: m.latency_p50_s)):
        points = {(pick(r.metrics), 100 * r.metrics.quality) for r in result.evaluated}
        unbeaten = {p for p in points
                    if not any(q != p and q[0] <= p[0] and q[1] >= p[1] for q in points)}
        assert 1 < len(unbeaten) < len(points), "the study must have dominated points in this plane"
        line = trace(figs[key], "best trade-off in this plane")
        assert line["mode"] == "lines"
        drawn = list(zip(line["x"], line["y"]))
        assert sorted(drawn) == sorted(unbeaten)
        assert line["x"] == sorted(line["x"])


def test_simulated_banner_appears_only_for_simulated_studies(pareto_page, tmp_path: Path) -> None:
    assert SIMULATED_BANNER in pareto_page and "(simulated)" in pareto_page
    spec = make_spec(tmp_path, name="real", budget={"trials": 2})
    result = run_study(spec, RealWorldFormulaEvaluator(), ITEMS, cost_estimate=formula_estimate)
    assert not result.is_simulated
    page = build_report_html(spec, result)
    assert SIMULATED_BANNER not in page and "(simulated)" not in page
    assert axis_title(figures(page)["fig-pareto-cost"], "yaxis") == "quality (%)"


def test_target_line_and_the_cheapest_config_meeting_it(constrained_study) -> None:
    spec, result = constrained_study
    answer = result.cheapest_meeting_target()
    assert answer.met and answer.record is not None
    page = build_report_html(spec, result)
    figs = figures(page)
    for key in ("fig-pareto-cost", "fig-pareto-latency"):
        fig = figs[key]
        assert hlines(fig) == [pytest.approx(100 * result.target)]
        assert trace(fig, "cheapest meeting target")["customdata"] == [answer.record.number]
        assert trace(fig, "optimum (cheapest feasible)")["customdata"] == [r.number for r in result.pareto_front]
        assert any(n.startswith("baseline") for n in names(fig))
    target = figs["fig-target"]
    assert hlines(target) == [pytest.approx(result.target_confidence)]
    assert len(trace(target, "measured configs")["x"]) == len(result.evaluated)
    assert f"confidence {answer.achieved_confidence:.3f}" in page
    assert "Target met" in page


def test_an_unmet_target_is_said_and_the_best_found_shown(constrained_study) -> None:
    spec, result = constrained_study
    unreachable = dataclasses.replace(result, target=0.999)
    page = build_report_html(spec, unreachable)
    fig = figures(page)["fig-pareto-cost"]
    best = unreachable.cheapest_meeting_target().best
    assert trace(fig, "best found (target not met)")["customdata"] == [best.number]
    assert "Target NOT met" in page and "no config meets" in page


def test_spend_is_cumulative_and_ends_at_the_studys_spend(pareto_study, pareto_page,
                                                          constrained_study) -> None:
    spec, result = pareto_study
    fig = figures(pareto_page)["fig-spend"]
    cum = trace(fig, "cumulative paid $")["y"]
    assert cum == sorted(cum) and cum[-1] == pytest.approx(result.spent_usd)
    assert trace(fig, "cumulative paid $")["x"] == sorted(r.number for r in result.trials)
    assert hlines(fig) == [spec.budget.usd]
    # the baseline's spend comes first (trial -1); a duplicate of it pays nothing
    spec, result = constrained_study
    fig = figures(build_report_html(spec, result))["fig-spend"]
    line = trace(fig, "cumulative paid $")
    assert line["x"][0] == -1 and line["y"][0] == pytest.approx(result.baseline.metrics.paid_usd)
    assert line["y"][-1] == pytest.approx(result.spent_usd)
    assert not hlines(fig)  # no $ budget


def test_cost_split_stacks_model_and_role_costs_of_front_configs(pareto_study, pareto_page) -> None:
    _, result = pareto_study
    figs = figures(pareto_page)
    for key, split in (("fig-cost-by-model", "cost_by_model"), ("fig-cost-by-role", "cost_by_role")):
        fig = figs[key]
        assert fig["layout"]["barmode"] == "stack"
        expected_keys = {k for r in result.pareto_front for k, v in getattr(r.metrics, split).items() if v > 0}
        assert set(names(fig)) == expected_keys
        labels = fig["data"][0]["y"]
        assert len(labels) == len(result.pareto_front)
        for r in result.pareto_front:
            i = next(i for i, label in enumerate(labels) if label.startswith(f"#{r.number} "))
            assert all(t["orientation"] == "h" for t in fig["data"])
            stacked = sum(t["x"][i] for t in fig["data"])
            assert stacked == pytest.approx(sum(getattr(r.metrics, split).values()))


def test_per_category_quality_when_categories_are_known(pareto_study, pareto_page) -> None:
    spec, result = pareto_study
    fig = figures(pareto_page)["fig-categories"]
    assert len(fig["data"]) == len(result.pareto_front)
    r = result.pareto_front[0]
    bars = fig["data"][0]
    assert bars["x"] == ["algebra", "geometry", "words"]
    algebra = [v for k, v in r.metrics.item_values.items() if CATEGORIES[k] == "algebra"]
    assert bars["y"][0] == pytest.approx(100 * sum(algebra) / len(algebra))
    # without categories: the per-item distribution instead, and the page says why
    page = build_report_html(spec, result)
    figs = figures(page)
    assert "fig-categories" not in figs
    assert len(figs["fig-item-quality"]["data"]) == len(result.pareto_front)
    assert "Per-category quality is not shown: no item categories" in page


def test_parameter_importances_or_a_note(pareto_study, pareto_page, tmp_path: Path) -> None:
    _, result = pareto_study
    fig = figures(pareto_page)["fig-importance"]
    bars = fig["data"][0]
    assert bars["orientation"] == "h" and len(bars["y"]) >= 2
    assert sum(bars["x"]) == pytest.approx(1.0)
    assert {"layers", "aggregator"} <= set(bars["y"])
    # a study with nothing measured yet still renders, with notes instead of figures
    spec = make_spec(tmp_path, name="empty")
    prepare_study(spec, FormulaEvaluator(), ITEMS, cost_estimate=formula_estimate)
    page = build_report_html(spec, dataclasses.replace(result, study_name="empty", storage_url=spec.storage,
                                                       trials=(), pareto_front=()))
    assert "fig-importance" not in figures(page)
    assert "Not computed: importances need at least 2 trials" in page
    assert "No config has been measured on every item yet." in page


def test_the_page_is_self_contained(pareto_page) -> None:
    parser = _Fetches()
    parser.feed(pareto_page)
    assert not [u for u in parser.urls if re.match(r"\s*(https?:)?//", u, re.I)]
    assert "link" not in parser.tags and "iframe" not in parser.tags
    assert "url(http" not in pareto_page and "@import" not in pareto_page
    assert not re.search(r"<script[^>]*\bsrc=", pareto_page)
    # plotly.js inlined exactly once, then every figure reuses it
    version = plotly.offline.get_plotlyjs_version()
    assert pareto_page.count(f"plotly.js v{version}") == 1
    assert len(figures(pareto_page)) == 7  # no target section in this study


def test_header_states_what_was_searched(pareto_study, pareto_page) -> None:
    spec, result = pareto_study
    for text in ("Study", "pareto", "built-in &#x27;math&#x27;", "numeric", "maximize quality",
                 "minimize cost", "minimize latency", f"{len(result.trials)} trials",
                 f"${result.spent_usd:.4f}", "$5"):
        assert text in pareto_page, text


def test_write_study_report_creates_parents_and_refuses_pngs_without_kaleido(pareto_study,
                                                                              tmp_path: Path) -> None:
    spec, result = pareto_study
    study_file = Path(spec.source)
    out = tmp_path / "deep" / "er" / "report.html"
    runs = spec.run_dir.parent
    assert write_study_report(study_file, out, runs_dir=runs) == out
    page = out.read_text("utf-8")
    assert sorted(trace(figures(page)["fig-pareto-cost"], "Pareto front")["customdata"]) == \
        sorted(r.number for r in result.pareto_front)
    if importlib.util.find_spec("kaleido") is not None:
        pytest.skip("kaleido is installed here")
    other = tmp_path / "other.html"
    with pytest.raises(MoASearchError, match="pip install kaleido"):
        write_study_report(study_file, other, runs_dir=runs, png_dir=tmp_path / "png")
    assert not other.exists() and not (tmp_path / "png").exists()


def _front_rows(page: str) -> list[list[str]]:
    table = re.search(r'<table class="trials">(.*?)</table>', page, re.S)
    assert table is not None, "the Pareto section has no table"
    return [re.findall(r"<t[hd]>(.*?)</t[hd]>", row) for row in re.findall(r"<tr>(.*?)</tr>", table.group(1))]


def test_the_front_table_numbers_its_trials_as_the_plots_do(pareto_study, pareto_page) -> None:
    _, result = pareto_study
    head, *rows = _front_rows(pareto_page)
    assert head[0] == "trial" and head[2].startswith("quality %")
    plotted = set(trace(figures(pareto_page)["fig-pareto-cost"], "Pareto front")["text"])
    assert {row[0] for row in rows} == plotted == {f"#{r.number}" for r in result.pareto_front}
    for row in rows:
        r = next(r for r in result.pareto_front if f"#{r.number}" == row[0])
        assert row[2].startswith(f"{100 * r.metrics.quality:.1f} [")  # quality in %, with its CI


def test_bar_labels_are_wrapped_never_cut(pareto_study, pareto_page) -> None:
    """Each cost bar's label holds the whole config, the aggregator (named last) included."""
    _, result = pareto_study
    labels = figures(pareto_page)["fig-cost-by-model"]["data"][0]["y"]
    assert any("<br>" in label for label in labels), "the fixture must have a label long enough to wrap"
    whole = {html.unescape(label.replace("<br>", " ")) for label in labels}
    assert whole == {f"#{r.number} {r.config.summary()}" for r in result.pareto_front}
    assert not any("…" in label for label in labels)


def test_the_price_table_is_named(pareto_study, pareto_page) -> None:
    _, result = pareto_study
    recorded = {r.price_table for r in result.trials if r.metrics is not None}
    assert recorded and all(recorded)  # every measured trial recorded where its prices came from
    row = re.search(r"<tr><th>Prices</th><td>(.*?)</td></tr>", pareto_page)
    assert row is not None and row.group(1) == "; ".join(sorted(recorded))


def test_a_constant_parameter_is_left_out_of_the_importances(tmp_path: Path) -> None:
    """Trials that all share one temperature: it explains nothing, so it is not ranked."""
    import optuna
    from optuna.distributions import CategoricalDistribution, IntDistribution
    from moa_search.report import param_importances
    from moa_search.search.records import metric_attrs

    storage = f"sqlite:///{tmp_path / 'imp.db'}"
    study = optuna.create_study(study_name="imp", storage=storage, directions=["maximize", "minimize"])
    dists = {"layers": IntDistribution(1, 3), "aggregator": CategoricalDistribution(["a", "b"]),
             "temperature": CategoricalDistribution([0.2, 0.7])}
    for n in range(12):
        layers, agg = 1 + n % 3, "ab"[n % 2]
        q = 0.5 + 0.1 * layers + (0.05 if agg == "b" else 0.0)
        m = TrialMetrics(quality=q, quality_low=q - 0.1, quality_high=q + 0.1, n_items=4, item_values={},
                         cost_usd_per_item=0.001 * layers, paid_usd=0.0, latency_p50_s=1.0,
                         latency_p95_s=2.0, calls=4, cached_calls=0)
        study.add_trial(optuna.trial.create_trial(
            values=[q, m.cost_usd_per_item], params={"layers": layers, "aggregator": agg, "temperature": 0.7},
            distributions=dists, user_attrs={"status": "complete", **metric_attrs(m)}))
    result = StudyResult("imp", storage, "pareto", ("quality", "cost"), ("maximize", "minimize"), (), (),
                         0.0, 0, None, 0.9, None, True)
    found, how = param_importances(result)
    assert found is not None and set(found) == {"layers", "aggregator"}
    assert how.endswith("Left out, with one value in every trial: temperature")


def _chromium() -> str | None:
    import shutil
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(importlib.util.find_spec("playwright") is None or _chromium() is None,
                    reason="needs Playwright (PyPI) and a Chromium binary; neither is in the test extra")
def test_the_page_renders_in_a_browser_without_errors_and_with_whole_labels(pareto_study, pareto_page,
                                                                            tmp_path: Path) -> None:
    """A real headless Chromium opens the file offline: no JavaScript error, no request leaves the
    file, every figure is drawn, front points carry their numbers and bar labels sit inside the plot."""
    from playwright.sync_api import sync_playwright

    _, result = pareto_study
    path = tmp_path / "report.html"
    path.write_text(pareto_page, encoding="utf-8")
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("request", lambda req: requests.append(req.url))
            page.goto(path.as_uri())
            page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length"
                                   f" >= {2 * len(figures(pareto_page))}", timeout=30_000)
            numbers = page.eval_on_selector_all("#fig-pareto-cost .textpoint text", "els => els.map(e => e.textContent)")
            ticks = page.eval_on_selector_all(
                "#fig-cost-by-model .ytick text",
                "els => els.map(e => ({text: e.textContent, left: e.getBoundingClientRect().left,"
                " box: e.closest('.js-plotly-plot').getBoundingClientRect().left}))")
        finally:
            browser.close()
    assert not errors, errors
    assert all(u.startswith(("file:", "data:", "about:")) for u in requests), requests
    assert sorted(numbers) == sorted(f"#{r.number}" for r in result.pareto_front)
    assert len(ticks) == len(result.pareto_front)
    assert all(t["left"] >= t["box"] for t in ticks), ticks  # no label runs off the figure's left edge
    drawn = " ".join(t["text"] for t in ticks)
    for r in result.pareto_front:
        assert r.config.aggregator.model in drawn  # the aggregator, named last, is on screen
