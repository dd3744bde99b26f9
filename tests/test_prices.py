"""Live prices: Modal's rates for the workspace (fetched with a token, cached a day in
$PRM_HOME), prices.toml over them, the built-in table under both; the plan names its source;
`--offline` opens no socket; no token, or a fresh cache, costs no modal import."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from primerl_modal.core.gpus import catalogue
from primerl_modal.core.prices import CachedRates, cached_rates, prices_from_rates

PRM = [sys.executable, "-m", "primerl_modal"]


def today() -> set[str]:
    """Today's date as the cache names it (either side of a midnight the test may cross)."""
    now = datetime.now(UTC)
    return {f"modal rates {d:%Y-%m-%d}" for d in (now, now + timedelta(seconds=30))}


def cost_of(prm: Any, *args: str) -> dict[str, Any]:
    r = prm("run", "reverse-text", *args, "--dry-run", "--json")
    assert r.code == 0, r.err
    return r.json()["cost"]


def write_cache(home: Path, days_old: float, **rates: str) -> None:
    """Modal's rates for CPU and memory, and ``rates``, fetched ``days_old`` ago."""
    fetched = datetime.now(UTC) - timedelta(days=days_old)
    rates = {"cpu_hour_cost": "0.0473", "mem_gib_hour_cost": "0.008", **rates}
    (home / "modal-rates.json").write_text(CachedRates(fetched, rates).to_json())


def test_modal_rates_name_every_price_prm_uses():
    rates = {"gpu_hour_cost_h100": "5.00", "gpu_hour_cost_a100_40gb": "2.2",
             "gpu_hour_cost_a10g": "1.0", "cpu_hour_cost": "0.05", "mem_gib_hour_cost": "0.01",
             "cpu_hour_cost_sandbox": "0.14", "gpu_hour_cost_b300": "7.1",  # not prm's
             "gpu_hour_cost_l4": "n/a", "gpu_hour_cost_t4": "-1"}  # not prices: skipped
    prices = prices_from_rates(rates, catalogue().types)
    assert prices == {"H100": 5.0, "A100-40GB": 2.2, "A10": 1.0, "CPU": 0.05, "memory": 0.01}
    both = catalogue({"H100": 3.0}, rates=prices, rates_source="modal rates 2026-11-30")
    assert both.get("H100").usd_per_hour == 3.0  # prices.toml wins
    assert both.get("A100").usd_per_hour == 2.2 and both.usd_per_core_hour == 0.05
    assert both.get("L4").usd_per_hour == 0.80  # Modal gave no number: built-in
    assert both.source_of("H100", "CPU") == "prices.toml + modal rates 2026-11-30"
    assert both.source_of("L4") == "built-in"
    assert catalogue().source_of("H100", "CPU", "memory") == "built-in"


@pytest.mark.parametrize("text", ["", "{", '{"rates": {}}', '{"fetched_at": "2026-11-30", '
                                  '"rates": {}}', '{"fetched_at": "x", "rates": {}}', "[]"])
def test_a_damaged_cache_is_no_cache(text):
    assert cached_rates(text) is None


def test_live_rates_price_the_plan_and_are_kept_a_day(prm, modal_env, prm_home):
    modal_env.billing_rates["gpu_hour_cost_h100"] = "5.00"
    cost = cost_of(prm, "--gpu", "H100:2")
    assert cost["source"] in today()
    assert cost["per_hour_breakdown_usd"] == {"gpu": 10.0, "cpu": round(8 * 0.0473, 4),
                                              "memory": round(32 * 0.008, 4)}
    cache = json.loads((prm_home / "modal-rates.json").read_text())
    assert cache["rates"]["gpu_hour_cost_h100"] == "5.00"
    assert modal_env.requests.count("WorkspaceBillingRates") == 1
    modal_env.billing_rates["gpu_hour_cost_h100"] = "6.00"  # a fresh cache is not refetched
    shown = prm("run", "reverse-text", "--gpu", "H100:2", "--dry-run")
    assert shown.code == 0, shown.err
    assert "GPUs 2 x $5.00" in shown.out and "prices: modal rates " in shown.out
    assert modal_env.requests.count("WorkspaceBillingRates") == 1


def test_a_stale_cache_is_fetched_again_and_prices_toml_still_wins(prm, modal_env, prm_home):
    write_cache(prm_home, 2, gpu_hour_cost_h100="9.99")
    (prm_home / "prices.toml").write_text("H100 = 3.00\n")
    cost = cost_of(prm, "--gpu", "H100:2")
    assert cost["per_hour_breakdown_usd"]["gpu"] == 6.0
    assert cost["per_hour_breakdown_usd"]["cpu"] == round(8 * 0.0473, 4)  # Modal's, fresh
    assert cost["source"] in {f"prices.toml + {s}" for s in today()}
    assert modal_env.requests.count("WorkspaceBillingRates") == 1


def test_a_key_modal_does_not_send_keeps_the_built_in_price(prm, modal_env):
    del modal_env.billing_rates["gpu_hour_cost_a100_40gb"]
    cost = cost_of(prm)  # reverse-text: A100-40GB:2
    assert cost["per_hour_breakdown_usd"]["gpu"] == 4.2
    assert cost["source"] in {f"built-in + {s}" for s in today()}


@pytest.mark.parametrize("how", ["--offline", "PRM_OFFLINE=1"])
def test_offline_never_opens_a_socket(prm, modal_env, prm_home, monkeypatch, how):
    """With a token and a reachable Modal: only --offline keeps the dry run off the network."""
    tried: list[Any] = []

    def refuse(self: socket.socket, *args: Any) -> Any:
        tried.append(args)
        raise OSError("the test forbids sockets")

    # set either way, so that it is unset again after the test (--offline sets it for good)
    monkeypatch.setenv("PRM_OFFLINE", "0" if how == "--offline" else "1")
    args = ["--offline"] if how == "--offline" else []
    write_cache(prm_home, 3, gpu_hour_cost_a100_40gb="2.50")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    with pytest.raises(OSError):  # the guard works
        socket.create_connection(("127.0.0.1", int(modal_env.url.rsplit(":", 1)[1])))
    tried.clear()
    r = prm(*args, "run", "reverse-text", "--dry-run", "--json")
    assert r.code == 0, r.err
    assert tried == [] and not any(q.startswith("Workspace") for q in modal_env.requests)
    stale = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%d")
    assert r.json()["cost"]["source"] == f"modal rates {stale}"  # the cache, however old
    assert r.json()["cost"]["per_hour_breakdown_usd"]["gpu"] == 5.0


def _clean_env(prm_home: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODAL_", "PRM_"))}
    return env | {"PRM_HOME": str(prm_home), "MODAL_CONFIG_PATH": str(tmp_path / "no.toml"),
                  **extra}


PROBE = ("import sys\nfrom primerl_modal.cli import run_cli\n"
         "code = run_cli(['run', 'reverse-text', '--dry-run', '--json'])\n"
         "print('modal' in sys.modules, code, file=sys.stderr)")


@pytest.mark.parametrize("case", ["no token", "fresh cache"])
def test_no_token_or_a_fresh_cache_imports_no_modal(prm_home, tmp_path, case):
    extra = {}
    if case == "fresh cache":  # a token, and a server nobody may reach: the cache answers
        write_cache(prm_home, 0.5, gpu_hour_cost_a100_40gb="2.40")
        extra = {"MODAL_TOKEN_ID": "ak-x", "MODAL_TOKEN_SECRET": "as-x",
                 "MODAL_SERVER_URL": "http://127.0.0.1:9"}
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                       env=_clean_env(prm_home, tmp_path, **extra), cwd=tmp_path, timeout=60)
    assert r.stderr.strip().splitlines()[-1] == "False 0", r.stderr
    cost = json.loads(r.stdout)["cost"]
    assert cost["source"] == ("built-in" if case == "no token" else
                              f"modal rates {datetime.now(UTC) - timedelta(days=0.5):%Y-%m-%d}")


def test_an_unreachable_modal_is_one_note_within_the_bound(prm_home, tmp_path):
    with socket.socket() as s:  # a local port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _clean_env(prm_home, tmp_path, MODAL_TOKEN_ID="ak-x", MODAL_TOKEN_SECRET="as-x",
                     MODAL_SERVER_URL=f"http://127.0.0.1:{port}", PRM_MODAL_TIMEOUT="2")
    started = time.monotonic()
    r = subprocess.run([*PRM, "run", "reverse-text", "--dry-run", "--json"], env=env,
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert time.monotonic() - started < 2 + 10  # the bound, and a loaded machine's slack
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("\n") == 1 and "Modal's prices could not be fetched" in r.stderr
    assert "using the built-in prices" in r.stderr and "--offline" in r.stderr
    assert json.loads(r.stdout)["cost"]["source"] == "built-in"
