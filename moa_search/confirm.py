"""Held-out confirmation: the chosen config(s) re-measured on items the search never saw.

A study picks its config on the dev items, so the pick's dev quality is optimistic: of many
noisy measurements the search keeps the one that looked best (the winner's curse). Here the
pick (or the Pareto front, or ``--trial`` choices) and the study's baseline are evaluated on the
split's held-out items, through the study's own provider and call store (a repeat is served from
the store, never paid twice), each config is compared with the baseline item by item
(``stats.paired_comparison``), and a summary is written to the study's Optuna storage beside the
trials, so ``study show`` prints it next to the dev numbers.

Storage: Optuna study user attributes, flat (scalars only) and small (< 1 KB each), so any
Optuna storage holds them and optuna-dashboard lists them: ``heldout`` (the summary: items,
spend, which configs) and one ``heldout:<slug>`` per config (``trial-12``, ``baseline``). A
later confirmation overwrites them; stale per-config keys are ignored because the summary names
the current ones.

The baseline: the config of ``[objectives] target = { baseline = ... }`` when the study has one;
else, for a scorer that judges against the items' ``baseline_output`` (a win rate), those
outputs themselves, whose win rate against themselves is 0.5 on every item by definition (no
call is made for them). Held-out spend runs under the call-store run ids ``confirm:<study>/``,
apart from the study's ``study:<study>/``, so it does not count against the search's budget.
"""

from __future__ import annotations

import asyncio
import datetime
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

from .config import MoAConfig
from .errors import ConfigError, MoASearchError, WorkFailedError
from .runner import ItemTrace
from .scoring import scorer_class
from .search import StudyResult, TrialMetrics, TrialRecord, confidence_at_least, open_storage
from .search.prepare import items_digest
from .stats import Estimate, PairedResult, paired_comparison
from .study import EndpointOverrides, StudyData, make_evaluator, select_trials, study_data
from .study_spec import StudySpec

SUMMARY_ATTR = "heldout"
CONFIG_ATTR_PREFIX = "heldout:"
#: What a win-rate scorer's baseline scores against itself on every item.
SELF_PREFERENCE = 0.5
_NAN = float("nan")


@dataclass(frozen=True)
class HeldoutConfig:
    """One config (or the baseline outputs) on the held-out items, beside its dev numbers.

    ``role``: ``pick`` (cheapest meeting the target), ``front`` (on the Pareto front), ``trial``
    (chosen with ``--trial``) or ``baseline``. ``vs_baseline`` is this config minus the baseline
    on the items both scored; ``target_confidence`` is P(held-out quality >= the target) by the
    rule the search used to pick (one-sided Student-t), None without a target.
    """

    slug: str
    label: str
    role: str
    summary: str
    config_hash: str | None
    n_items: int
    n_scored: int
    quality: float
    quality_low: float
    quality_high: float
    dev_quality: float
    dev_quality_low: float
    dev_quality_high: float
    dev_n_items: int
    cost_usd_per_item: float
    paid_usd: float
    calls: int
    cached_calls: int
    vs_baseline: PairedResult | None = None
    target_confidence: float | None = None

    def to_attr(self) -> dict[str, Any]:
        """Flat and JSON-safe (NaN becomes None): one Optuna study user attribute."""
        flat: dict[str, Any] = {k: getattr(self, k) for k in _SCALARS}
        p = self.vs_baseline
        if p is not None:
            flat.update(vs_n=p.n, vs_diff=p.mean_diff, vs_low=p.diff.low, vs_high=p.diff.high,
                        vs_confidence=p.diff.confidence, vs_wins=p.wins, vs_losses=p.losses,
                        vs_ties=p.ties, vs_sign_p=p.sign_test_p, vs_wilcoxon_p=p.wilcoxon_p)
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in flat.items()}

    @classmethod
    def from_attr(cls, a: Mapping[str, Any]) -> "HeldoutConfig":
        def num(key: str) -> float:
            v = a.get(key)
            return _NAN if v is None else float(v)
        paired = None
        if a.get("vs_n") is not None:
            diff = Estimate(num("vs_diff"), num("vs_low"), num("vs_high"), int(a["vs_n"]), _NAN,
                            float(a["vs_confidence"]))
            paired = PairedResult(int(a["vs_n"]), diff.mean, diff, int(a["vs_wins"]),
                                  int(a["vs_losses"]), int(a["vs_ties"]), float(a["vs_sign_p"]),
                                  a.get("vs_wilcoxon_p"))
        values = {k: (num(k) if k in _FLOATS else a.get(k)) for k in _SCALARS}
        return cls(**values, vs_baseline=paired)


_FLOATS = ("quality", "quality_low", "quality_high", "dev_quality", "dev_quality_low",
           "dev_quality_high", "cost_usd_per_item", "paid_usd")
_SCALARS = ("slug", "label", "role", "summary", "config_hash", "n_items", "n_scored", *_FLOATS,
            "dev_n_items", "calls", "cached_calls", "target_confidence")


@dataclass(frozen=True)
class Confirmation:
    """A study's held-out check: every config measured, and what it cost now."""

    study_name: str
    n_items: int
    items_digest: str
    simulated: bool
    configs: tuple[HeldoutConfig, ...]
    target: float | None
    target_confidence: float
    confirmed_at: str

    @property
    def paid_usd(self) -> float:
        return sum(c.paid_usd for c in self.configs)

    @property
    def calls(self) -> int:
        return sum(c.calls for c in self.configs)

    @property
    def cached_calls(self) -> int:
        return sum(c.cached_calls for c in self.configs)

    def summary_attr(self) -> dict[str, Any]:
        return {"n_items": self.n_items, "items_digest": self.items_digest,
                "simulated": self.simulated, "configs": ",".join(c.slug for c in self.configs),
                "target": self.target, "target_confidence": self.target_confidence,
                "paid_usd": self.paid_usd, "calls": self.calls, "cached_calls": self.cached_calls,
                "confirmed_at": self.confirmed_at}

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study_name, **self.summary_attr(),
                "configs": [c.to_attr() for c in self.configs]}


# ---- choosing what to confirm -----------------------------------------------------------------

def chosen_trials(result: StudyResult, trials: Sequence[int] = ()) -> tuple[tuple[str, TrialRecord], ...]:
    """(role, record) per config to confirm, one per distinct config: the ``trials`` given;
    else a constrained study's pick (cheapest meeting the target); else the Pareto front."""
    if trials:
        picked = [("trial", r) for n in trials for r in select_trials(result, trial=n)]
    elif result.mode == "constrained":
        target = result.cheapest_meeting_target()
        if not target.met or target.record is None:
            raise MoASearchError(f"{target.message}: no pick to confirm; give --trial N to check "
                                 f"a trial on the held-out items anyway")
        picked = [("pick", target.record)]
    else:
        picked = [("front", r) for r in select_trials(result, pareto=True)]
    seen: set[str] = set()
    out = []
    for role, r in picked:
        if r.config is None or r.metrics is None:
            raise ConfigError(f"trial {r.number} has no measured config (status {r.status})",
                              field="--trial")
        if r.config.config_hash not in seen:
            seen.add(r.config.config_hash)
            out.append((role, r))
    return tuple(out)


def judges_against_outputs(spec: StudySpec) -> bool:
    """Does the scorer compare each answer with the item's ``baseline_output`` (a win rate)?"""
    return scorer_class(spec.scorer.name).requires == "baseline_output"


def heldout_data(spec: StudySpec) -> StudyData:
    """The study's split; a ``ConfigError`` naming ``data.dev_fraction`` when it holds none out."""
    data = study_data(spec)
    if not data.heldout_ids:
        raise ConfigError(f"study {spec.name} holds no items out (dev_fraction = "
                          f"{spec.data.dev_fraction:g}): nothing to confirm on; set [data] "
                          f"dev_fraction below 1", source=spec.source, field="data.dev_fraction")
    return data


# ---- measuring --------------------------------------------------------------------------------

def _measured(slug: str, label: str, role: str, summary: str, config_hash: str | None,
              m: TrialMetrics, d: TrialMetrics | None, n_items: int) -> HeldoutConfig:
    """A held-out measurement ``m`` beside the dev one ``d`` (None: not measured on dev)."""
    return HeldoutConfig(
        slug=slug, label=label, role=role, summary=summary, config_hash=config_hash,
        n_items=n_items, n_scored=len(m.item_values), quality=m.quality,
        quality_low=m.quality_low, quality_high=m.quality_high,
        dev_quality=d.quality if d else _NAN, dev_quality_low=d.quality_low if d else _NAN,
        dev_quality_high=d.quality_high if d else _NAN, dev_n_items=d.n_items if d else 0,
        cost_usd_per_item=m.cost_usd_per_item, paid_usd=m.paid_usd, calls=m.calls,
        cached_calls=m.cached_calls)


def _outputs_baseline(ids: Sequence[str], n_dev: int) -> tuple[HeldoutConfig, dict[str, float]]:
    """The items' own baseline outputs: 0.5 against themselves on every item (dev and held-out
    alike), no call made."""
    values = {i: SELF_PREFERENCE for i in ids}
    m = TrialMetrics(SELF_PREFERENCE, SELF_PREFERENCE, SELF_PREFERENCE, len(ids), values, 0.0, 0.0,
                     _NAN, _NAN, 0, 0)
    row = _measured("baseline", "baseline", "baseline", "items' baseline_output (=50%)", None, m,
                    replace(m, n_items=n_dev), len(ids))
    return row, values


async def confirm_study_async(spec: StudySpec, result: StudyResult, trials: Sequence[int] = (), *,
                              on_item: Callable[[ItemTrace], None] | None = None,
                              overrides: EndpointOverrides = EndpointOverrides()) -> Confirmation:
    """Measure the chosen configs and the baseline on the held-out items; nothing is stored.
    ``overrides``: the ``--timeout / --concurrency`` the study's own run was given, so a slow
    endpoint that needed them for the search gets them here too."""
    data = heldout_data(spec)
    ids = data.heldout_ids
    chosen = chosen_trials(result, trials)
    evaluator, store = make_evaluator(spec, data, overrides=overrides)
    rows: list[HeldoutConfig] = []
    values: dict[str, Mapping[str, float]] = {}
    simulated = False

    async def measure(config: MoAConfig, what: str) -> TrialMetrics:
        """The config on the held-out items; calls, store hits and money as the call store
        logged them for this run (judge calls included)."""
        nonlocal simulated
        run_id = f"confirm:{spec.name}/{config.config_hash}"
        before = store.spend(run_id=run_id)
        ev = await evaluator.evaluate_items(config, ids, run_id, on_item=on_item)
        failure = ev.total_failure()
        if failure is not None:
            raise WorkFailedError(f"held-out items, {what}: {failure}")
        simulated = simulated or ev.simulated
        after = store.spend(run_id=run_id)
        return replace(ev.to_trial_metrics(), calls=after.calls - before.calls,
                       cached_calls=after.cached_calls - before.cached_calls,
                       paid_usd=after.paid_usd - before.paid_usd)

    try:
        for role, r in chosen:
            assert r.config is not None
            m = await measure(r.config, f"trial {r.number}")
            rows.append(_measured(f"trial-{r.number}", f"trial {r.number}", role, r.config.summary(),
                                  r.config.config_hash, m, r.metrics, len(ids)))
            values[rows[-1].slug] = m.item_values
        target = spec.objectives.target
        if target is not None and target.baseline_config is not None:
            config = target.baseline_config
            m = await measure(config, f"baseline {target.baseline}")
            dev = result.baseline.metrics if result.baseline is not None else None
            rows.append(_measured("baseline", "baseline", "baseline", config.summary(),
                                  config.config_hash, m, dev, len(ids)))
            values["baseline"] = m.item_values
        elif judges_against_outputs(spec):
            row, values["baseline"] = _outputs_baseline(ids, len(data.dev_ids))
            rows.append(row)
    finally:
        await evaluator.provider.aclose()
        store.close()
    return _compared(spec, result, rows, values, ids, simulated)


def _compared(spec: StudySpec, result: StudyResult, rows: list[HeldoutConfig],
              values: Mapping[str, Mapping[str, float]], ids: Sequence[str],
              simulated: bool) -> Confirmation:
    """Each config minus the baseline item by item, and the target rule on held-out values.
    A measured baseline's target is its own held-out quality, as on dev it was its dev quality."""
    base = values.get("baseline")
    t = spec.objectives.target
    target = None
    if t is not None:
        target = t.value if t.value is not None else next(r.quality for r in rows if r.slug == "baseline")
    out = []
    for row in rows:
        v = values[row.slug]
        if row.role != "baseline":
            if base is not None:
                shared = [i for i in ids if i in v and i in base]
                if len(shared) >= 2:
                    row = replace(row, vs_baseline=paired_comparison(
                        [v[i] for i in shared], [base[i] for i in shared], seed=spec.seed))
            if target is not None:
                row = replace(row, target_confidence=confidence_at_least(v.values(), target))
        out.append(row)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return Confirmation(spec.name, len(ids), items_digest(ids), simulated or result.is_simulated,
                        tuple(out), target, result.target_confidence, now)


# ---- storing and reading back -----------------------------------------------------------------

def _study(spec: StudySpec) -> Any:
    import optuna
    try:
        return optuna.load_study(study_name=spec.name,
                                 storage=open_storage(spec.storage, create=False, source=spec.source))
    except KeyError:
        raise MoASearchError(f"study {spec.name} has not been run yet; run `moa-search study run "
                             f"{spec.source}` first") from None  # storage made, study not


def store_confirmation(spec: StudySpec, conf: Confirmation) -> None:
    """Write the confirmation to the study's Optuna storage (per config first, summary last,
    so a reader never sees a summary naming configs not yet written)."""
    study = _study(spec)
    for c in conf.configs:
        study.set_user_attr(CONFIG_ATTR_PREFIX + c.slug, c.to_attr())
    study.set_user_attr(SUMMARY_ATTR, conf.summary_attr())


def load_confirmation(spec: StudySpec) -> Confirmation | None:
    """The last confirmation stored for the study, or None when it was never confirmed."""
    attrs = _study(spec).user_attrs
    s = attrs.get(SUMMARY_ATTR)
    if not s:
        return None
    configs = tuple(HeldoutConfig.from_attr(attrs[CONFIG_ATTR_PREFIX + slug])
                    for slug in str(s["configs"]).split(",") if CONFIG_ATTR_PREFIX + slug in attrs)
    return Confirmation(spec.name, int(s["n_items"]), str(s["items_digest"]), bool(s["simulated"]),
                        configs, s.get("target"), float(s.get("target_confidence", 0.9)),
                        str(s.get("confirmed_at", "")))


def confirm_study(spec: StudySpec, result: StudyResult, trials: Sequence[int] = (), *,
                  on_item: Callable[[ItemTrace], None] | None = None,
                  overrides: EndpointOverrides = EndpointOverrides()) -> Confirmation:
    """``study confirm``: measure on the held-out items, store the summary, return it."""
    conf = asyncio.run(confirm_study_async(spec, result, trials, on_item=on_item,
                                           overrides=overrides))
    store_confirmation(spec, conf)
    return conf


def auto_skip_reason(spec: StudySpec, result: StudyResult) -> str | None:
    """Why a finished ``study run`` is not confirmed on its own: None means confirm it; "" means
    there is nothing to say (a Pareto study, or no items held out); else a note (no pick)."""
    if result.mode != "constrained" or not study_data(spec).heldout_ids:
        return ""
    target = result.cheapest_meeting_target()
    return None if target.met else f"held-out check skipped: {target.message}"


def heldout_total(spec: StudySpec, result: StudyResult, trials: Sequence[int] = ()) -> int:
    """Item evaluations a confirmation will run (for a progress bar): configs x held-out items."""
    n_configs = len(chosen_trials(result, trials))
    t = spec.objectives.target
    n_configs += 1 if t is not None and t.baseline_config is not None else 0
    return n_configs * len(heldout_data(spec).heldout_ids)


__all__ = ["Confirmation", "HeldoutConfig", "auto_skip_reason", "chosen_trials", "confirm_study",
           "confirm_study_async", "heldout_data", "heldout_total", "judges_against_outputs",
           "load_confirmation", "store_confirmation"]
