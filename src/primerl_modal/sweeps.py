"""Glue for sweeps: read a sweep file (or inline --grid flags), resolve its base profile
once, and plan every trial before anything launches."""

from __future__ import annotations

import gc
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from primerl_modal.core.cost import format_usd
from primerl_modal.core.gpus import Catalogue
from primerl_modal.core.plan import Layout, Plan, build_plan
from primerl_modal.core.profile import (
    ResolvedProfile,
    Setting,
    normalise_key,
    read_utf8,
    with_settings,
)
from primerl_modal.core.profile import resolve as resolve_profile
from primerl_modal.core.run_id import MAX_LEN, make_run_id
from primerl_modal.core.sweep import SweepSpec, expand, load_sweep_text, parse_grid_flag
from primerl_modal.errors import PlanError, PrmError, ProfileError
from primerl_modal.planning import layout_for, search_path
from primerl_modal.prices import PriceFetch, catalogue_for
from primerl_modal.run_index import SweepRecord


@dataclass(frozen=True)
class Trial:
    index: int
    overrides: Mapping[str, Any]
    plan: Plan


@dataclass(frozen=True)
class SweepPlan:
    sweep_id: str
    spec: SweepSpec
    trials: tuple[Trial, ...]

    @property
    def backend(self) -> str:
        return self.trials[0].plan.backend

    def total_per_hour(self) -> float:
        return round(sum(t.plan.cost.per_hour_usd for t in self.trials), 2)

    def total_max(self) -> float:
        return round(sum(t.plan.cost.max_usd for t in self.trials), 2)

    def to_json(self) -> dict[str, Any]:
        s = self.spec
        return {
            "sweep_id": self.sweep_id, "name": s.name, "profile": s.profile,
            "method": s.method, "max_parallel": s.max_parallel, "metric": s.metric,
            "goal": s.goal, "max_usd": s.max_usd, "backend": self.backend,
            "trials": [{"index": t.index, "run_id": t.plan.run_id,
                        "overrides": dict(t.overrides), "gpu": t.plan.gpu.modal_gpu,
                        "per_hour_usd": t.plan.cost.per_hour_usd,
                        "max_usd": t.plan.cost.max_usd,
                        "guard_max_usd": t.plan.guard.max_usd} for t in self.trials],
            "total": {"trials": len(self.trials), "per_hour_usd": self.total_per_hour(),
                      "max_usd": self.total_max()},
        }


def read_spec(target: str, grids: Sequence[str]) -> SweepSpec:
    """A sweep file, or a profile swept with inline ``--grid KEY=V1,V2`` flags.

    Raises ProfileError for an unreadable or invalid sweep.
    """
    path = Path(target).expanduser()
    if grids:
        return SweepSpec(name=Path(target).stem, profile=target, method="grid",
                         parameters=dict(parse_grid_flag(g) for g in grids))
    if not path.exists():
        raise ProfileError(f"sweep file {target} not found",
                           "pass a sweep .toml, or a profile with --grid KEY=V1,V2")
    spec = load_sweep_text(read_utf8(path), str(path), path.stem)
    base = Path(spec.profile).expanduser()
    if "/" in spec.profile or spec.profile.endswith(".toml"):
        # a path in a sweep file is relative to the sweep file
        base = base if base.is_absolute() else (path.parent / base).resolve()
        return replace(spec, profile=str(base))
    return spec


def trial_settings(overrides: Mapping[str, Any], index: int) -> list[Setting]:
    out = []
    for key, value in overrides.items():
        dotted = normalise_key(key)
        if dotted.startswith(("backend.", "local.")):
            raise ProfileError(f"sweep parameter {key}: all trials run on one backend",
                               "set the backend in the base profile or with --backend")
        out.append(Setting(dotted, value, f"sweep trial {index}"))
    return out


def plan_sweep(spec: SweepSpec, settings: Sequence[Setting] = (), *,
               now: datetime | None = None, pass_env: Sequence[str] = (),
               prices: PriceFetch = "cached") -> SweepPlan:
    """Every trial's plan. One invalid trial stops the sweep, naming its index and reason.

    Raises PlanError / ProfileError.
    """
    when = now or datetime.now(UTC)
    token = secrets.token_hex(2)
    count = spec.count()
    if count == 0:
        raise PlanError("the sweep has no trials", "give parameters (or [[trials]])")
    room = MAX_LEN - len(f"-{count - 1}")
    sweep_id = make_run_id(spec.name, when, token)
    if len(sweep_id) > room:
        raise PlanError(f"sweep name {spec.name!r} is too long for {count} trial ids",
                        f"shorten it to {len(spec.name) - (len(sweep_id) - room)} characters")
    search = search_path()
    # the sweep's metric is what every trial tracks and what its trials are ranked by
    base = resolve_profile(spec.profile, search,
                           [*settings, Setting("experiment.metric", spec.metric, "sweep")])
    layout = layout_for(base)
    price_table = catalogue_for(layout.backend, prices)
    trials = []
    collecting = gc.isenabled()
    gc.disable()  # thousands of plans, no cycles among them: collector passes are pure cost
    try:
        for index, overrides in enumerate(expand(spec)):
            trials.append(_plan_trial(base, index, overrides, price_table, layout, when, token,
                                      sweep_id, pass_env, search.cwd))
    finally:
        if collecting:
            gc.enable()
    _check_budget(spec.max_usd, trials)
    return SweepPlan(sweep_id, spec, tuple(trials))


def _check_budget(max_usd: float | None, trials: Sequence[Trial]) -> None:
    """Raises PlanError for a budget that no trial's worst case fits in: none could start."""
    if max_usd is None:
        return
    cheapest = min(trials, key=lambda t: t.plan.cost.max_usd)
    if cheapest.plan.cost.max_usd > max_usd:
        raise PlanError(
            f"no trial fits the sweep's budget of {format_usd(max_usd)}: the cheapest, trial "
            f"{cheapest.index}, could cost {format_usd(cheapest.plan.cost.max_usd)} at worst",
            "raise max_usd, or lower modal.timeout or modal.retries (the worst case is every "
            "attempt running to its timeout)")


def _plan_trial(base: ResolvedProfile, index: int, overrides: dict[str, Any],
                prices: Catalogue, layout: Layout, when: datetime, token: str, sweep_id: str,
                pass_env: Sequence[str], cwd: Path) -> Trial:
    try:
        trial = with_settings(base, trial_settings(overrides, index), cwd)
        plan = build_plan(trial, prices, now=when, token=token, layout=layout,
                          pass_env=tuple(pass_env), run_id=f"{sweep_id}-{index}",
                          sweep_id=sweep_id)
    except PrmError as e:
        shown = ", ".join(f"{k}={v}" for k, v in overrides.items())
        raise type(e)(f"trial {index} ({shown}): {e.message}", e.hint) from None
    return Trial(index, overrides, plan)



def sweep_record(sweep: SweepPlan, outputs: str, fail_fast: bool) -> SweepRecord:
    s = sweep.spec
    return SweepRecord(
        sweep_id=sweep.sweep_id, name=s.name, profile=s.profile, method=s.method,
        backend=sweep.backend, metric=s.metric, goal=s.goal, max_parallel=s.max_parallel,
        trials=len(sweep.trials), fail_fast=fail_fast, created_at=time.time(), outputs=outputs,
    )
