"""Billed cost: `prm cost` reads what Modal billed prm's apps (the fake server bills what its
containers ran) and matches it to runs and sweeps by their app tags, beside prm's estimate;
`prm show` and `prm sweep show` add the billed figure; no token, or --offline: one line."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import modal
import pytest
from conftest import finished, launched
from fake_modal.billing_rpcs import backdate, usage

from primerl_modal.run_index import open_index

HOURS_AGO = 3  # what ran is moved this far back: Modal bills whole hours only
GPU_RATES = {"A100-40GB": Decimal("2.10"), "H100": Decimal("3.95")}  # the fake's defaults


def as_if_it_ran_hours_ago(fake: Any, hours: float) -> None:
    """Move the fake's records and prm's index back together, as if all of it ran then."""
    shift = hours * 3600
    backdate(fake, shift)
    index = open_index()
    for r in index.list():
        index.update(r.run_id, created_at=r.created_at - shift, updated_at=r.updated_at - shift,
                     started_at=r.started_at and r.started_at - shift,
                     ended_at=r.ended_at and r.ended_at - shift)
    for s in index.sweeps():
        index.upsert_sweep(dataclasses.replace(s, created_at=s.created_at - shift))


def billed_app(fake: Any, app_id: str, *, whole_hours: bool = True) -> float:
    """What the fake bills one app, from its own records: over whole hours (what Modal
    reports), or with the hour under way."""
    now = time.time()
    return float(sum(sum(costs.values()) for (app, start), costs in usage(fake, 3600).items()
                     if app == app_id and (start + 3600 <= now or not whole_hours)))


@pytest.fixture
def ran(prm: Any, modal_env: Any) -> dict[str, Any]:
    """A run and a two-trial sweep, finished, three hours ago."""
    modal_env.extra_env["PRM_SWEEP_TICK"] = "0.2"
    run = finished(modal_env, launched(prm, "reverse-text", "--set", "max_steps=3"))
    assert prm("sweep", "reverse-text", "--grid", "max_steps=2,3").code == 0
    (sweep,) = open_index().sweeps()
    modal_env.wait_call(sweep.call_id, timeout=120)
    as_if_it_ran_hours_ago(modal_env, HOURS_AGO)
    return {"run": run, "sweep": sweep}


def test_cost_matches_billed_apps_to_runs_and_sweeps_by_tags(prm, modal_env, ran):
    run, sweep = ran["run"], ran["sweep"]
    rows = prm("cost", "--json").json()
    assert [(r["kind"], r["id"]) for r in rows] == [
        ("run", run.run_id), ("sweep", sweep.sweep_id), ("total", None)]
    run_row, sweep_row, total = rows
    assert run_row["billed_usd"] == pytest.approx(billed_app(modal_env, run.app_id))
    assert sweep_row["billed_usd"] == pytest.approx(billed_app(modal_env, sweep.app_id))
    assert run_row["billed_usd"] > 0 and sweep_row["billed_usd"] > 0
    assert total["billed_usd"] == pytest.approx(run_row["billed_usd"] + sweep_row["billed_usd"])
    assert run_row["status"] == "SUCCEEDED" and sweep_row["status"] == "SUCCEEDED:2"
    assert run_row["estimate_usd"] is not None and total["estimate_usd"] == pytest.approx(
        run_row["estimate_usd"] + sweep_row["estimate_usd"], abs=0.011)
    # one run, one sweep: each bills only its own app
    one = prm("cost", run.run_id, "--json").json()
    assert [(r["id"], r["billed_usd"]) for r in one] == [
        (run.run_id, run_row["billed_usd"]), (None, run_row["billed_usd"])]
    swept = prm("cost", "--sweep", sweep.sweep_id, "--json").json()
    assert swept[0]["billed_usd"] == sweep_row["billed_usd"]
    table = prm("cost")
    assert table.code == 0, table.err
    assert run.run_id in table.out and sweep.sweep_id in table.out and "total" in table.out
    assert "whole hours" in table.err


def test_the_hour_under_way_is_not_billed_yet(prm, modal_env):
    run = finished(modal_env, launched(prm, "reverse-text", "--set", "max_steps=2"))
    (row, total) = prm("cost", run.run_id, "--json").json()
    assert row["billed_usd"] == pytest.approx(billed_app(modal_env, run.app_id))
    assert billed_app(modal_env, run.app_id, whole_hours=False) > row["billed_usd"]
    assert total["billed_usd"] == row["billed_usd"] and row["estimate_usd"] is not None


def test_the_fake_bills_by_the_second_and_show_adds_the_figure(prm, modal_env, ran):
    """The fake's bill is the arithmetic the docs state (not prm's estimate); `prm show`
    and `prm sweep show` add what it billed."""
    run, sweep = ran["run"], ran["sweep"]
    expected = Decimal(0)
    for call in modal_env.calls.values():
        fn = modal_env.functions[call["function_id"]]
        if fn["app_id"] != run.app_id:
            continue
        kind, _, count = (fn["gpu"] or "").partition(":")
        per_hour = (GPU_RATES.get(kind, Decimal(0)) * int(count or 1 if kind else 0)
                    + Decimal(str(fn["cpu"] or 0.125)) * Decimal("0.0473")
                    + Decimal(fn["memory_mb"] or 128) / 1024 * Decimal("0.008"))
        seconds = sum(Decimal(str(a["ended"] - a["started"])) for a in call["attempts"])
        expected += per_hour * seconds / 3600
    items = modal.Workspace.from_context().billing.report(
        start=datetime.now(UTC) - timedelta(hours=HOURS_AGO + 2), resolution="h",
        tag_names=["prm-run"])
    mine = [i for i in items if i.tags.get("prm-run") == run.run_id]
    assert mine and {i.object_id for i in mine} == {run.app_id}
    assert float(sum(i.cost for i in mine)) == pytest.approx(float(expected), rel=1e-6)
    assert {"CPU", "Memory", "A100-40GB"} <= set(mine[0].cost_by_resource)
    cost = prm("show", run.run_id, "--json").json()["cost"]
    assert cost["billed_usd"] == pytest.approx(billed_app(modal_env, run.app_id))
    assert cost["billed_for"] == f"run {run.run_id}"
    shown = prm("show", run.run_id)
    assert "billed    $" in shown.out and "by Modal (run " in shown.out
    trial = prm("show", f"{sweep.sweep_id}-0", "--json").json()["cost"]
    assert trial["billed_for"] == f"sweep {sweep.sweep_id}"  # a trial has no app of its own
    assert trial["billed_usd"] == pytest.approx(billed_app(modal_env, sweep.app_id))
    listed = prm("sweep", "show", sweep.sweep_id)
    assert listed.code == 0, listed.err
    assert "billed: $" in listed.err and f"by Modal (sweep {sweep.sweep_id})" in listed.err


def test_offline_show_adds_nothing_and_cost_refuses(prm, modal_env, monkeypatch):
    run = finished(modal_env, launched(prm, "reverse-text", "--set", "max_steps=2"))
    monkeypatch.setenv("PRM_OFFLINE", "1")
    before = modal_env.requests.count("WorkspaceBillingReport")
    assert "billed_usd" not in prm("show", run.run_id, "--json").json()["cost"]
    r = prm("cost")
    assert r.code == 1 and r.err.count("\n") == 1 and "--offline" in r.err
    assert modal_env.requests.count("WorkspaceBillingReport") == before


def test_cost_without_a_token_is_one_line(prm_home: Path, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODAL_", "PRM_"))}
    env |= {"PRM_HOME": str(prm_home), "MODAL_CONFIG_PATH": str(tmp_path / "none.toml")}
    r = subprocess.run([sys.executable, "-m", "primerl_modal", "cost"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "no Modal token is configured" in r.stderr
