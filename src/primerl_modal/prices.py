"""Prices and bills on this machine: which price table a plan uses, and what Modal billed.

A plan's prices come, in layers, from the built-in table (core/gpus.py), then Modal's own
rates for the workspace (fetched with a Modal token, kept a day in $PRM_HOME/modal-rates.json),
then $PRM_HOME/prices.toml, which wins because it is what the user wrote down. The plan names
the layers it used (``cost.source``).

Rules: no network without a token (a quick look at the environment and modal's config file
decides that without importing modal); none under ``prm --offline`` / ``PRM_OFFLINE=1``; none
while the cached rates are under a day old (so a dry run stays fast); otherwise one bounded
first contact (modal_client.connect), after which prices fall back with a one-line note, or,
for a launch, the unreachable Modal is the launch's error at once (the launch would fail the
same way after a second wait). A fetch that failed is not tried again in the same process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from primerl_modal import paths
from primerl_modal.core.gpus import Catalogue, catalogue
from primerl_modal.core.prices import CachedRates, cached_rates, prices_from_rates
from primerl_modal.errors import PrmError

OFFLINE_ENV = "PRM_OFFLINE"
CACHE_FILE = "modal-rates.json"
# cached: never fetch (doctor, init); try: fetch a stale cache, fall back with a note (a dry
# run); launch: the same, but a Modal that cannot be reached is the error (it is needed next)
PriceFetch = Literal["cached", "try", "launch"]
_failed: set[Path] = set()  # caches whose refresh failed in this process: not retried


def offline() -> bool:
    """``prm --offline`` (or PRM_OFFLINE=1): prm opens no connection of its own."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def has_token() -> bool:
    """Whether a Modal token is configured. modal reads one only from MODAL_TOKEN_ID /
    MODAL_TOKEN_SECRET or its config file: with neither there, modal (a third of a second to
    import) is not even imported."""
    config = os.environ.get("MODAL_CONFIG_PATH") or "~/.modal.toml"
    if not os.environ.get("MODAL_TOKEN_ID") and not Path(config).expanduser().is_file():
        return False
    try:
        from primerl_modal.backends.modal_client import require_token

        require_token()
    except Exception:  # noqa: BLE001 - no token, or a config modal cannot read: no token
        return False
    return True


def catalogue_for(backend: str, fetch: PriceFetch = "cached") -> Catalogue:
    """The price table for a plan on ``backend``: Modal's rates are fetched only for a Modal
    run (a local plan's "on Modal it would cost" uses whatever is cached).

    Raises PrmError for a malformed prices.toml; with ``fetch="launch"``, also when Modal
    cannot be reached or refuses the token.
    """
    cached = read_cache()
    stale = cached is None or not cached.fresh(datetime.now(UTC))
    if backend == "modal" and fetch != "cached" and stale and not offline():
        cached = _fetch(cached, strict=fetch == "launch") or cached
    rates = prices_from_rates(cached.rates, catalogue().types) if cached else {}
    return catalogue(paths.price_overrides(), rates=rates,
                     rates_source=cached.source if cached else "")


def cache_path() -> Path:
    return paths.prm_home() / CACHE_FILE


def read_cache() -> CachedRates | None:
    try:
        return cached_rates(cache_path().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def _fetch(cached: CachedRates | None, *, strict: bool) -> CachedRates | None:
    """Modal's rates now, kept in the cache; None (after a note) when they cannot be had."""
    if cache_path() in _failed or not has_token():
        return None
    from primerl_modal.backends import modal_billing, modal_client

    try:
        modal_client.connect()
    except PrmError as e:
        if strict:
            raise
        _fall_back(e, cached)
        return None
    try:
        fresh = CachedRates(datetime.now(UTC), modal_billing.rates())
    except PrmError as e:
        _fall_back(e, cached)
        return None
    _write_cache(fresh)
    return fresh


def _fall_back(e: PrmError, cached: CachedRates | None) -> None:
    from primerl_modal.ui.console import warn

    _failed.add(cache_path())
    using = f"the {cached.source}" if cached else "the built-in prices and prices.toml"
    warn(f"Modal's prices could not be fetched ({e.message}): using {using} "
         "(`prm --offline` skips the wait)")


def _write_cache(rates: CachedRates) -> None:
    """Atomically; a home prm cannot write only means fetching again next time."""
    path = cache_path()
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch.write_text(rates.to_json(), encoding="utf-8")
        scratch.replace(path)
    except OSError:
        scratch.unlink(missing_ok=True)


# ------------------------------------------------------------------------- billed cost


@dataclass(frozen=True)
class Bill:
    """What Modal billed prm's apps, by run and by sweep tag, over whole hours from ``start``
    to ``through`` (the hour under way is not billed yet)."""

    start: datetime
    through: datetime
    by_run: Mapping[str, float]
    by_sweep: Mapping[str, float]

    def window(self) -> str:
        return f"{self.start:%Y-%m-%d %H:00} to {self.through:%Y-%m-%d %H:00} UTC"


def hour_of(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def bill(start: datetime) -> Bill:
    """What Modal billed prm's runs and sweeps from ``start`` on.

    Raises PrmError under --offline, without a token, when Modal cannot be reached within the
    bounded wait, or when it refuses.
    """
    if offline():
        raise PrmError("--offline: prm asks Modal for nothing, its bill included",
                       f"drop --offline (and unset {OFFLINE_ENV})")
    from primerl_modal.backends import modal_billing, modal_client

    modal_client.connect()  # no token: one line, at once
    items = modal_billing.report(hour_of(start))
    by_run: dict[str, Decimal] = {}
    by_sweep: dict[str, Decimal] = {}
    for item in items:
        for tag, totals in ((modal_billing.RUN_TAG, by_run), (modal_billing.SWEEP_TAG, by_sweep)):
            owner = item.tags.get(tag)
            if owner:
                totals[owner] = totals.get(owner, Decimal(0)) + item.cost
    return Bill(hour_of(start), hour_of(datetime.now(UTC)),
                {k: float(v) for k, v in by_run.items()},
                {k: float(v) for k, v in by_sweep.items()})


def billed_figure(run_id: str | None, sweep_id: str | None, since: float) -> dict[str, Any]:
    """The billed figure `prm show` and `prm sweep show` add: what Modal billed the run (a
    trial without an app of its own: its whole sweep) since ``since`` (epoch seconds).
    Nothing without a token or under --offline; a failure is a note, never an error."""
    if offline() or not has_token():
        return {}
    try:
        found = bill(datetime.fromtimestamp(since, UTC))
    except PrmError as e:
        return {"billed_note": f"Modal's bill could not be read: {e.one_line()}"}
    if run_id and (run_id in found.by_run or not sweep_id):
        usd, of = found.by_run.get(run_id, 0.0), f"run {run_id}"
    else:
        usd, of = found.by_sweep.get(sweep_id or "", 0.0), f"sweep {sweep_id}"
    return {"billed_usd": round(usd, 9), "billed_for": of,
            "billed_through": found.through.isoformat()}


def billed_text(cost: dict[str, Any]) -> str | None:
    """What Modal billed (billed_figure), or why that is not known."""
    from primerl_modal.core.cost import format_usd

    if cost.get("billed_usd") is None:
        return cost.get("billed_note")
    through = cost["billed_through"][:13].replace("T", " ")
    return (f"{format_usd(cost['billed_usd'])} by Modal ({cost['billed_for']}), whole hours "
            f"until {through}:00 UTC")
