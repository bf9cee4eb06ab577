"""The evaluator the search uses: what an evaluation says it paid is what the call store logged
as paid, judge calls included, and running it again pays nothing. The simulated world (its judge
included) through a real SQLite call store."""

from __future__ import annotations

from pathlib import Path

import pytest

from moa_search.catalog import Catalog
from moa_search.config import MoAConfig
from moa_search.datasets import answer_key_pairs, builtin_dataset
from moa_search.evaluate import DatasetEvaluator
from moa_search.providers.simulated import AnswerKey, SimulatedProvider
from moa_search.store import CallStore

JUDGE = "gpt-4-turbo-2024-04-09"


async def test_paid_is_what_the_store_logged_judge_included(tmp_path: Path) -> None:
    items = builtin_dataset("instruct").subsample(6, seed=0)
    ids = [i.id for i in items]
    provider = SimulatedProvider(Catalog.default(), answer_key=AnswerKey.from_pairs(answer_key_pairs(items)), seed=0)
    config = MoAConfig.uniform(["Qwen/Qwen1.5-72B-Chat", "databricks/dbrx-instruct"], "Qwen/Qwen1.5-110B-Chat",
                               layers=2)
    with CallStore(tmp_path / "calls.db") as store:
        evaluator = DatasetEvaluator(provider, store, items, "pairwise_judge", {"judge_model": JUDGE})
        first = await evaluator.evaluate_items(config, ids, "run-1")
        logged = store.spend(run_id="run-1")
        judge_paid = sum(c.paid_usd for c in store.calls(run_id="run-1", role="judge", limit=None))
        again = await evaluator.evaluate_items(config, ids, "run-2")
        repeat = store.spend(run_id="run-2")
    await provider.aclose()

    assert judge_paid > 0 and first.result.judge_paid_usd == pytest.approx(judge_paid)
    assert first.paid_usd == pytest.approx(logged.paid_usd)  # the config's calls and the judge's
    assert first.to_trial_metrics().paid_usd == pytest.approx(logged.paid_usd)
    # the same evaluation again: every call served from the store, nothing paid, same list cost
    assert (repeat.calls, repeat.cached_calls, repeat.paid_usd) == (logged.calls, logged.calls, 0.0)
    assert again.paid_usd == 0.0 and again.cost_usd_per_item == pytest.approx(first.cost_usd_per_item)
