"""Mutation check: would the tests notice if the core logic broke?

Each mutation below is one deliberate bug in a core module (the call store, stats, scoring, the
search, the runner, cost accounting, prompts, config, input validation, the report's front):
an exact snippet of the source and what it is replaced with. For each, the script applies it to
a temporary copy of the repository (never the working tree), runs the few test targets that
should catch it (``pytest -x``), and says whether they did. A *missed* mutation is a behaviour
the suite does not pin down: write the test that catches it.

    python benchmarks/mutation_check.py                 # every mutation, then the score
    python benchmarks/mutation_check.py --only store-first-answer-wins
    python benchmarks/mutation_check.py --list

The unmutated targets run first (the baseline): a mutation only counts as caught when its
targets passed without it. ``tests/test_mutation_check.py`` checks that every snippet still
occurs exactly once in its file and every target still exists, so the list cannot rot silently.
Exit status: 0 when every mutation run was caught, 1 when one was missed or the baseline fails,
2 for a usage mistake. No network, no extra dependency: only pytest, as the suite needs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
#: Not copied: environments, caches, outputs and version control; the copy holds what the tests read.
IGNORED = (".venv", ".git", "__pycache__", ".pytest_cache", "*.egg-info", "runs", ".mypy_cache")
PYTEST = ("-m", "pytest", "-x", "-q", "-p", "no:cacheprovider")


@dataclass(frozen=True)
class Mutation:
    """One planted bug: ``original`` (must occur exactly once in ``path``) becomes ``replacement``;
    ``tests`` are pytest targets (files or ``file::test`` ids) expected to fail on it."""

    name: str
    path: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    bug: str


def _m(name: str, path: str, original: str, replacement: str, tests: Sequence[str], bug: str) -> Mutation:
    return Mutation(name, path, original, replacement, tuple(tests), bug)


STORE, RUNNER, SEARCH = "tests/test_store.py", "tests/test_prompts_and_runner.py", "tests/test_search.py"

MUTATIONS: tuple[Mutation, ...] = (
    # ---- money: never pay twice, cost from reported usage ------------------------------------
    _m("store-pays-twice", "moa_search/store.py",
       "material = request.cache_key_material(endpoint_identity)",
       "material = request.cache_key_material(endpoint_identity) + repr(time.time())",
       [f"{STORE}::test_hit_is_identical_free_and_survives_reopen"],
       "the cache key is not stable, so a repeated call is never found and is paid again"),
    _m("cache-hit-is-paid", "moa_search/providers/base.py",
       "        return 0.0 if self.cached else self.cost_usd\n",
       "        return self.cost_usd\n",
       [f"{STORE}::test_hit_is_identical_free_and_survives_reopen"],
       "an answer served from the store is counted as paid"),
    _m("store-first-answer-wins", "moa_search/store.py",
       '_insert_sql("responses", _RESPONSE_FIELDS, "ON CONFLICT (key) DO NOTHING")',
       '_insert_sql("responses", _RESPONSE_FIELDS, "ON CONFLICT (key) DO UPDATE SET text = excluded.text")',
       [f"{STORE}::test_first_answer_stored_wins_when_two_connections_pay_for_one_key"],
       "a later answer for a key overwrites the first one stored"),
    _m("price-ignores-output-tokens", "moa_search/catalog.py",
       "+ completion_tokens * self.output_price) / 1e6",
       "+ completion_tokens * self.input_price) / 1e6",
       ["tests/test_catalog.py", "tests/test_openai_compat.py::test_success_text_usage_cost_and_flags"],
       "output tokens are charged at the input price"),
    _m("cached-tokens-at-input-price", "moa_search/catalog.py",
       "cached_price = self.input_price if self.cached_input_price is None else self.cached_input_price",
       "cached_price = self.input_price",
       ["tests/test_cached_prices.py::test_cached_tokens_cost_the_cache_read_price_and_a_store_hit_keeps_them"],
       "prompt tokens the provider served from its cache are charged at the full input price"),
    _m("http-cost-without-completion-usage", "moa_search/providers/openai_compat.py",
       "cost_usd=info.cost(usage.prompt_tokens, usage.completion_tokens,",
       "cost_usd=info.cost(usage.prompt_tokens, 0,",
       ["tests/test_openai_compat.py::test_success_text_usage_cost_and_flags"],
       "the HTTP provider's cost ignores the reported completion tokens"),
    _m("reply-without-usage-is-free", "moa_search/providers/openai_compat.py",
       "    if not isinstance(usage, dict):\n"
       "        raise MalformedReplyError(f\"{where} has no 'usage'; its cost cannot be counted\", endpoint=endpoint)\n",
       "    if not isinstance(usage, dict):\n"
       "        usage = {\"prompt_tokens\": 0, \"completion_tokens\": 0}\n",
       ["tests/test_openai_compat.py::test_parse_chat_reply_rejects_what_cannot_be_accounted",
        "tests/test_openai_compat.py::test_reply_without_usage_is_refused"],
       "a reply without usage is accepted as free instead of refused"),
    _m("config-cost-is-what-was-paid", "moa_search/runner.py",
       "        return sum(c.cost_usd for c in self._completions())\n",
       "        return sum(c.paid_usd for c in self._completions())\n",
       [RUNNER, "tests/test_server.py::test_a_seeded_repeat_is_served_from_the_store_and_an_unseeded_one_samples_again"],
       "a config's list cost drops to 0 when its calls come from the cache"),
    _m("eval-paid-without-judge", "moa_search/evaluate.py",
       "        return sum(t.paid_usd for t in self.traces) + self.result.judge_paid_usd\n",
       "        return sum(t.paid_usd for t in self.traces)\n",
       ["tests/test_evaluate.py"], "money paid to the judge is left out of what an evaluation paid"),
    # ---- the aggregate-and-synthesize prompt and the runner ------------------------------------
    _m("prompt-references-unnumbered", "moa_search/prompts.py",
       '        system += f"\\n{i}. {reference}"\n',
       '        system += f"\\n{reference}"\n',
       [RUNNER], "the previous layer's answers are not numbered 1., 2., ..."),
    _m("prompt-references-before-system", "moa_search/prompts.py",
       'messages[0].content + "\\n\\n" + system',
       'system + "\\n\\n" + messages[0].content',
       [RUNNER], "the references are put before an existing system message, not after it"),
    _m("runner-later-layers-see-all", "moa_search/runner.py",
       "            references = ok\n",
       "            references = references + ok\n",
       [RUNNER], "a layer sees every earlier layer's answers, not only the previous one's"),
    _m("runner-latency-sums-a-layer", "moa_search/runner.py",
       "slowest[c.layer] = max(slowest[c.layer], c.completion.latency_s)",
       "slowest[c.layer] = slowest[c.layer] + c.completion.latency_s",
       [RUNNER], "latency adds a layer's concurrent calls instead of taking the slowest"),
    _m("runner-empty-layer-goes-on", "moa_search/runner.py",
       "            if not ok:\n",
       "            if not ok and False:\n",
       [RUNNER], "a layer whose proposers all failed goes on to the aggregator"),
    _m("runner-repeated-samples-share-an-index", "moa_search/runner.py",
       "        seen[agent] += 1\n",
       "        seen[agent] += 0\n",
       [RUNNER], "one model sampled n times in a layer sends the same sample index n times"),
    # ---- configs and bad input -----------------------------------------------------------------
    _m("config-hash-depends-on-order", "moa_search/config.py",
       "tuple(layer) if ordered else tuple(sorted(layer, key=AgentSpec.sort_key))",
       "tuple(layer) if ordered else tuple(layer)",
       ["tests/test_config.py"], "the same proposers listed in another order are another config"),
    _m("config-temperature-unchecked", "moa_search/config.py",
       "        if not (0.0 <= float(self.temperature) <= 2.0) or math.isnan(self.temperature):\n",
       "        if math.isnan(self.temperature):\n",
       ["tests/test_config.py"], "a temperature outside 0..2 is accepted"),
    _m("dataset-line-numbers-off-by-one", "moa_search/datasets.py",
       "    for lineno, line in enumerate(text.splitlines(), start=1):\n",
       "    for lineno, line in enumerate(text.splitlines(), start=0):\n",
       ["tests/test_datasets.py"], "a bad line of a validation set is reported one line early"),
    _m("dataset-duplicate-ids-accepted", "moa_search/datasets.py",
       "        if item.id in first_line:\n",
       "        if False:\n",
       ["tests/test_datasets.py"], "two items with one id are both loaded"),
    # ---- statistics ----------------------------------------------------------------------------
    _m("bootstrap-ci-at-97.5", "moa_search/stats.py",
       'low, high = _bootstrap_interval(arr, confidence, n_resamples, seed, method, "two-sided")',
       'low, high = _bootstrap_interval(arr, 1 - (1 - confidence) / 2, n_resamples, seed, method, "two-sided")',
       ["tests/test_stats.py"], "the '95 %' interval is computed at 97.5 %"),
    _m("target-check-two-sided", "moa_search/stats.py",
       '_bootstrap_interval(arr, confidence, n_resamples, seed, "BCa", "greater")',
       '_bootstrap_interval(arr, confidence, n_resamples, seed, "BCa", "two-sided")',
       ["tests/test_stats.py"], "'quality >= target' uses a two-sided bound (too strict)"),
    _m("t-bound-flipped", "moa_search/stats.py",
       "    return mean + half if upper else mean - half\n",
       "    return mean - half if upper else mean + half\n",
       [f"{SEARCH}::test_early_stopping_fires_on_a_clearly_bad_config_only",
        f"{SEARCH}::test_constrained_mode_finds_the_cheapest_feasible_config",
        "tests/test_stats.py::test_mean_bound_is_the_one_sided_student_t_bound_on_the_asked_side"],
       "the stopping and target rules use the wrong side of the interval"),
    # ---- scoring -------------------------------------------------------------------------------
    _m("failed-item-scored-zero", "moa_search/scoring.py",
       'return ItemScore(trace.item_id, None, "failed", trace.error or "no answer")',
       'return ItemScore(trace.item_id, 0.0, "unparseable", trace.error or "no answer")',
       ["tests/test_scoring.py"], "a failed item is silently scored 0 instead of counted apart"),
    _m("numbers-comma-is-decimal", "moa_search/scoring.py",
       'value = float(m.group("num").replace(",", ""))',
       'value = float(m.group("num").replace(",", "."))',
       ["tests/test_scoring.py"], "'1,000' is read as 1.0"),
    _m("judge-one-order-only", "moa_search/scoring.py",
       '        preference = ((first.parsed == "a") + (second.parsed == "b")) / 2.0\n',
       '        preference = float(first.parsed == "a")\n',
       ["tests/test_scoring.py"], "the pairwise judge's position bias is not cancelled"),
    # ---- the search: budgets, duplicates, early stopping, the front ----------------------------
    _m("usd-budget-ignores-the-estimate", "moa_search/search/loop.py",
       "        if b.usd is not None and spent_usd + usd > b.usd:\n",
       "        if b.usd is not None and spent_usd > b.usd:\n",
       [f"{SEARCH}::test_usd_budget_is_never_exceeded"], "a trial starts although it would overspend"),
    _m("call-budget-ignores-the-estimate", "moa_search/search/loop.py",
       "        if b.calls is not None and spent_calls + calls > b.calls:\n",
       "        if b.calls is not None and spent_calls > b.calls:\n",
       [f"{SEARCH}::test_call_budget_is_tracked_across_resumes"],
       "a trial starts although it would exceed the call budget"),
    _m("duplicates-re-evaluated", "moa_search/search/loop.py",
       "        if source is not None:\n            return self.reuse(trial, config, source)\n",
       "        if source is not None and False:\n            return self.reuse(trial, config, source)\n",
       [f"{SEARCH}::test_duplicate_configs_are_not_re_evaluated"], "a config the study has measured is run again"),
    _m("duplicates-paid", "moa_search/search/loop.py",
       "reused_status=status, stopped_early=why, paid=False)",
       "reused_status=status, stopped_early=why, paid=True)",
       [f"{SEARCH}::test_duplicate_configs_are_not_re_evaluated"],
       "a repeat of a measured config is charged to the budget again"),
    _m("early-stopping-never-fires", "moa_search/search/fidelity.py",
       "    if not refs:\n        return None\n",
       "    if True:\n        return None\n",
       [f"{SEARCH}::test_early_stopping_fires_on_a_clearly_bad_config_only",
        f"{SEARCH}::test_the_statistical_rule_stops_what_the_certain_rule_cannot"],
       "a clearly dominated config is run on every item"),
    _m("certain-stop-forgets-items-left", "moa_search/search/fidelity.py",
       "    return (sum(values) + n_rest) / (len(values) + n_rest)\n",
       "    return (sum(values) + n_rest) / (len(values) + n_rest) if len(values) < 4 else sum(values) / len(values)\n",
       ["tests/test_certain_stop.py::test_the_certain_rule_fires_exactly_when_the_target_is_out_of_reach"],
       "a config is stopped 'for sure' on its items so far, though the items left could lift it to the target"),
    _m("certain-pareto-stop-without-margin", "moa_search/search/fidelity.py",
       "    for t, ref, theirs in no_worse_references(trials, number, others, mine, margin=DEFAULT_SLACK):\n",
       "    for t, ref, theirs in no_worse_references(trials, number, others, mine):\n",
       ["tests/test_certain_stop.py::test_pareto_certain_dominance_needs_a_reference_as_good_on_every_other_objective"],
       "a config within noise of a reference's cost or latency is stopped as surely dominated"),
    _m("merged-stages-forget-first-spend", "moa_search/search/fidelity.py",
       "paid_usd=a.paid_usd + b.paid_usd,",
       "paid_usd=b.paid_usd,",
       [f"{SEARCH}::test_merge_metrics_recomputes_from_items", f"{SEARCH}::test_usd_budget_is_never_exceeded"],
       "what the first fidelity stage paid is dropped"),
    _m("target-ignores-confidence", "moa_search/search/records.py",
       "meeting = [(r, p) for r, p in scored if p >= confidence]",
       "meeting = [(r, p) for r, p in scored if p >= 0.5]",
       [f"{SEARCH}::test_cheapest_meeting_target_honours_the_confidence_asked"],
       "'meets the target' means mean >= target, whatever confidence was asked"),
    _m("pareto-front-lists-repeats", "moa_search/search/results.py",
       "        if key not in seen:\n",
       "        if True:\n",
       [f"{SEARCH}::test_pareto_front_lists_each_non_dominated_config_once",
        "tests/test_dashboard.py::test_a_study_in_the_earlier_nested_layout_still_loads"],
       "a config evaluated once and repeated is listed twice on the Pareto front"),
    # ---- the report ----------------------------------------------------------------------------
    _m("tradeoff-line-keeps-dominated", "moa_search/report.py",
       "        if y > best:\n",
       "        if True:\n",
       ["tests/test_report.py::test_trade_off_line_joins_exactly_the_points_unbeaten_in_its_plane"],
       "the report's trade-off line passes through dominated points"),
    _m("report-highlights-every-config", "moa_search/report.py",
       "    front = sorted((r for r in result.pareto_front if r.metrics is not None), key=xv)\n",
       "    front = sorted((r for r in result.evaluated if r.metrics is not None), key=xv)\n",
       ["tests/test_report.py::test_pareto_planes_show_front_dominated_and_stopped_points"],
       "the report highlights every measured config as on the front"),
)


# ---- running ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    mutation: Mutation
    status: str  # caught | missed | timeout | stale | error
    seconds: float
    detail: str = ""


def copy_repo(dest: Path) -> Path:
    """A copy of the working tree to mutate; the original is never written."""
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*IGNORED), symlinks=True)
    return dest


def run_pytest(repo: Path, targets: Sequence[str], timeout_s: float) -> tuple[int | None, str]:
    """(exit code or None on timeout, last lines of output) of pytest on ``targets`` in ``repo``."""
    # the copy first on the path: the editable install would otherwise import the working tree
    path = [str(repo)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.Popen([sys.executable, *PYTEST, *targets], cwd=repo, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest and any server or worker it started
        proc.communicate()
        return None, f"no result after {timeout_s:g} s"
    tail = [line for line in output.splitlines() if line.strip()][-3:]
    return proc.returncode, " | ".join(tail)


def check(repo: Path, m: Mutation, timeout_s: float) -> Outcome:
    """Apply ``m`` in ``repo``, run its targets, put the file back."""
    path = repo / m.path
    started = time.perf_counter()
    try:
        source = path.read_text("utf-8")
    except OSError as exc:
        return Outcome(m, "stale", 0.0, f"{m.path}: {exc.strerror}")
    if source.count(m.original) != 1:
        return Outcome(m, "stale", 0.0, f"the snippet occurs {source.count(m.original)} times in {m.path}")
    path.write_text(source.replace(m.original, m.replacement), "utf-8")
    try:
        code, tail = run_pytest(repo, m.tests, timeout_s)
    finally:
        path.write_text(source, "utf-8")
    seconds = time.perf_counter() - started
    if code is None:
        return Outcome(m, "timeout", seconds, tail)  # the mutant hangs the tests: noticed
    # 1: a test failed; 2: collection failed (e.g. the mutant breaks an import)
    status = {0: "missed", 1: "caught", 2: "caught"}.get(code, "error")
    return Outcome(m, status, seconds, tail if status != "caught" else "")


def select(only: Sequence[str] | None) -> list[Mutation]:
    """The mutations named (all when none); ``KeyError`` names the first unknown one."""
    if not only:
        return list(MUTATIONS)
    known = {m.name: m for m in MUTATIONS}
    for name in only:
        if name not in known:
            raise KeyError(name)
    return [known[n] for n in dict.fromkeys(only)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", metavar="NAME", help="run this mutation only (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip running the unmutated targets first")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="S",
                        help="seconds before a mutant's test run counts as hung (default 600)")
    args = parser.parse_args(argv)
    try:
        chosen = select(args.only)
    except KeyError as exc:
        print(f"mutation_check: unknown mutation {exc.args[0]!r} (hint: --list shows the names)",
              file=sys.stderr)
        return 2
    if args.list:
        for m in chosen:
            print(f"{m.name:40} {m.path}\n    {m.bug}")
        return 0

    with tempfile.TemporaryDirectory(prefix="moa-mutation-") as tmp:
        repo = copy_repo(Path(tmp) / "repo")
        if not args.no_baseline:
            targets = list(dict.fromkeys(t for m in chosen for t in m.tests))
            t0 = time.perf_counter()
            code, tail = run_pytest(repo, targets, args.timeout)
            if code != 0:
                print(f"baseline: the targets fail without any mutation ({tail}); fix them first",
                      file=sys.stderr)
                return 1
            print(f"baseline: the {len(targets)} test targets pass unmutated ({time.perf_counter() - t0:.0f} s)")
        outcomes = []
        for m in chosen:
            o = check(repo, m, args.timeout)
            outcomes.append(o)
            print(f"{o.status:8} {m.name:40} {o.seconds:5.1f} s", flush=True)
            if o.detail:
                print("    " + textwrap.shorten(o.detail, 76, placeholder=" ..."), flush=True)
    caught = sum(o.status in ("caught", "timeout") for o in outcomes)
    missed = [o.mutation.name for o in outcomes if o.status == "missed"]
    broken = [o.mutation.name for o in outcomes if o.status in ("stale", "error")]
    print(textwrap.fill(f"score: {caught}/{len(outcomes)} mutations caught"
                        + (f"; missed: {', '.join(missed)}" if missed else "")
                        + (f"; could not run: {', '.join(broken)}" if broken else ""), 80))
    return 0 if caught == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
