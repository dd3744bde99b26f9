"""Sweeps as pure data: a sweep file (or inline --grid flags) expanded into trials.

A trial is a set of `--set` style overrides (prime-rl keys such as trainer.optim.lr, prm
keys such as gpu.count) applied on top of the sweep's base profile.
"""

from __future__ import annotations

import itertools
import math
import random
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from primerl_modal.errors import ProfileError

METHODS = ("grid", "random", "list")
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")
GOALS = ("max", "min")
_TOP_KEYS = {"name", "profile", "method", "max_parallel", "metric", "goal", "samples", "seed",
             "parameters", "trials", "max_usd"}


@dataclass(frozen=True)
class Distribution:
    kind: str
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return rng.choice(self.values)
        assert self.low is not None and self.high is not None
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high)
        if self.kind == "log_uniform":
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.randint(int(self.low), int(self.high))


@dataclass(frozen=True)
class SweepSpec:
    name: str
    profile: str
    method: str = "grid"
    parameters: Mapping[str, tuple[Any, ...] | Distribution] = field(default_factory=dict)
    trials: tuple[Mapping[str, Any], ...] = ()
    samples: int = 0
    seed: int = 0
    max_parallel: int = 4
    metric: str = "reward/mean"
    goal: str = "max"
    max_usd: float | None = None  # the budget: no trial starts that could cross it

    def _grid(self) -> list[tuple[Any, ...]]:
        return [v for v in self.parameters.values() if isinstance(v, tuple)]

    def count(self) -> int:
        if self.method == "grid":
            return math.prod(len(v) for v in self._grid()) if self.parameters else 0
        return self.samples if self.method == "random" else len(self.trials)


def _leaves(table: Mapping[str, Any], where: str, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Parameters as dotted keys; a table with a `distribution` key is one leaf."""
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and "distribution" not in value:
            yield from _leaves(value, where, dotted + ".")
        else:
            yield dotted, value


def _distribution(key: str, value: Mapping[str, Any], where: str) -> Distribution:
    kind = value.get("distribution")
    if kind not in DISTRIBUTIONS:
        raise ProfileError(f"{where}: parameter {key}: unknown distribution {kind!r}",
                           f"use one of {', '.join(DISTRIBUTIONS)}")
    if kind == "choice":
        values = value.get("values")
        if not isinstance(values, list) or not values:
            raise ProfileError(f"{where}: parameter {key}: choice needs values = [...]")
        return Distribution(kind, values=tuple(values))
    low, high = value.get("min"), value.get("max")
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (low, high)):
        raise ProfileError(f"{where}: parameter {key}: {kind} needs numeric min and max")
    assert isinstance(low, int | float) and isinstance(high, int | float)
    if low >= high or (kind == "log_uniform" and low <= 0):
        raise ProfileError(f"{where}: parameter {key}: needs 0 < min < max for log_uniform, "
                           "min < max otherwise")
    return Distribution(kind, float(low), float(high))


def parse_sweep(data: Mapping[str, Any], where: str, default_name: str) -> SweepSpec:
    """A SweepSpec from a sweep file's table. Raises ProfileError naming the problem."""
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ProfileError(f"{where}: unknown key {unknown[0]!r}",
                           f"sweep keys: {', '.join(sorted(_TOP_KEYS))}")
    method = data.get("method", "grid")
    if method not in METHODS:
        raise ProfileError(f"{where}: method {method!r}", f"use one of {', '.join(METHODS)}")
    profile = data.get("profile")
    if not isinstance(profile, str) or not profile:
        raise ProfileError(f"{where}: no base profile", 'add profile = "NAME or path.toml"')
    params: dict[str, tuple[Any, ...] | Distribution] = {}
    for key, value in _leaves(data.get("parameters", {}), where):
        if isinstance(value, Mapping):
            params[key] = _distribution(key, value, where)
        elif isinstance(value, list):
            if not value:
                raise ProfileError(f"{where}: parameter {key} = [] has no values",
                                   "give it at least one value, or remove it")
            params[key] = tuple(value)
        else:
            params[key] = (value,)
    if method == "grid" and any(isinstance(v, Distribution) for v in params.values()):
        raise ProfileError(f"{where}: a grid takes lists of values, not distributions",
                           'use method = "random" for distributions')
    trials = data.get("trials", [])
    if method == "list":
        if not trials or not all(isinstance(t, Mapping) for t in trials):
            raise ProfileError(f"{where}: method list needs [[trials]] tables")
        trials = [dict(_leaves(t, where)) for t in trials]
    samples = data.get("samples", 0)
    if method == "random" and (not isinstance(samples, int) or samples < 1):
        raise ProfileError(f"{where}: method random needs samples = N (at least 1)")
    max_parallel = data.get("max_parallel", 4)
    if not isinstance(max_parallel, int) or max_parallel < 1:
        raise ProfileError(f"{where}: max_parallel must be a whole number >= 1")
    goal = data.get("goal", "max")
    if goal not in GOALS:
        raise ProfileError(f"{where}: goal {goal!r}", "use max or min")
    max_usd = data.get("max_usd")
    if max_usd is not None and (isinstance(max_usd, bool) or not isinstance(max_usd, int | float)
                                or max_usd <= 0):
        raise ProfileError(f"{where}: max_usd must be a number of dollars above 0",
                           "e.g. max_usd = 200, or leave it out for no budget")
    return SweepSpec(
        name=str(data.get("name") or default_name), profile=profile, method=method,
        parameters=params, trials=tuple(trials), samples=samples,
        seed=int(data.get("seed", 0)), max_parallel=max_parallel,
        metric=str(data.get("metric", "reward/mean")), goal=goal,
        max_usd=None if max_usd is None else float(max_usd),
    )


def load_sweep_text(text: str, where: str, default_name: str) -> SweepSpec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        from primerl_modal.core.profile import toml_error

        raise toml_error(where, e) from None
    return parse_sweep(data, where, default_name)


def parse_grid_flag(item: str) -> tuple[str, tuple[Any, ...]]:
    """``--grid trainer.optim.lr=1e-6,3e-6`` -> (key, values), each value a TOML literal."""
    key, eq, raw = item.partition("=")
    if not eq or not key.strip() or not raw.strip():
        raise ProfileError(f"--grid {item!r}", "write --grid KEY=V1,V2,...")
    values = []
    for part in raw.split(","):
        try:
            values.append(tomllib.loads(f"v = {part.strip()}")["v"])
        except tomllib.TOMLDecodeError:
            values.append(part.strip())
    return key.strip(), tuple(values)


def expand(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every trial's overrides, in a stable order (the same spec gives the same trials)."""
    if spec.method == "list":
        return [dict(t) for t in spec.trials]
    if spec.method == "random":
        rng = random.Random(spec.seed)
        out = []
        for _ in range(spec.samples):
            out.append({k: (v.sample(rng) if isinstance(v, Distribution) else rng.choice(v))
                        for k, v in spec.parameters.items()})
        return out
    return [dict(zip(spec.parameters, combo, strict=True))
            for combo in itertools.product(*spec._grid())]
