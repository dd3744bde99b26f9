"""Checkpoint retention: prime-rl's own keep flags per dialect, the refusal of a retention
that could leave nothing to resume from, the space estimate, and the run's measured size
in `prm ls` and `prm show`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

from primerl_modal.core.plan import plan_from_json
from primerl_modal.core.retention import retention_from
from primerl_modal.run_index import open_index
from primerl_modal.runner.progress import tree_size
from primerl_modal.ui.runs import size_text


def _plan(prm: Any, *args: str) -> dict[str, Any]:
    r = prm("run", *args, "--dry-run", "--json")
    assert r.code == 0, r.err
    return dict(r.json())


def _after(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_reverse_text_keeps_the_newest_3_checkpoints(prm):
    plan = _plan(prm, "reverse-text")
    argv = plan["argv"]
    i = argv.index("--ckpt.interval")
    assert argv[i:i + 4] == ["--ckpt.interval", "10", "--ckpt.keep-last", "3"]
    assert "--ckpt.keep-interval" not in argv
    assert plan["retention"]["keep_last"] == 3 and plan["retention"]["keep_every"] is None
    assert plan_from_json(plan).retention == plan_from_json(plan_from_json(plan).to_json()
                                                            ).retention


def test_keep_every_is_the_current_dialects_keep_interval(prm):
    argv = _plan(prm, "reverse-text", "--set", "prime_rl.ckpt_keep_last=5",
                 "--set", "prime_rl.ckpt_keep_every=100")["argv"]
    assert _after(argv, "--ckpt.keep-last") == "5"
    assert _after(argv, "--ckpt.keep-interval") == "100"


def test_the_2025_10_dialect_keeps_with_its_shared_keep_and_has_no_interval(prm):
    plan = _plan(prm, "hendrycks-math-1b-2025-10", "--set", "prime_rl.ckpt_keep_every=300")
    assert plan["argv"][-4:] == ["--ckpt.interval", "100", "--ckpt.keep", "3"]
    assert "--ckpt.keep-interval" not in plan["argv"]
    assert any("ckpt_keep_every is ignored" in w for w in plan["warnings"])


@pytest.mark.parametrize("value", ["1", "0"])
def test_keeping_fewer_than_2_is_refused_in_one_line(prm, value):
    r = prm("run", "reverse-text", "--dry-run", "--set", f"prime_rl.ckpt_keep_last={value}")
    assert r.code == 1
    (line,) = r.err.strip().splitlines()
    assert f"prime_rl.ckpt_keep_last must be at least 2, got {value}" in line
    assert "incomplete" in line


def test_no_checkpoints_no_keep_flags(prm):
    plan = _plan(prm, "reverse-text", "--set", "prime_rl.ckpt_interval=0")
    assert not any(a.startswith("--ckpt.") for a in plan["argv"])
    assert plan["retention"] is None
    view = prm("run", "reverse-text", "--dry-run", "--set", "prime_rl.ckpt_interval=0").out
    assert "none written" in view


@pytest.mark.parametrize(("key", "use"), [("ckpt.keep_last", "prime_rl.ckpt_keep_last"),
                                          ("ckpt.keep_interval", "prime_rl.ckpt_keep_every")])
def test_overriding_the_keep_keys_names_the_prm_key(prm, key, use):
    r = prm("run", "reverse-text", "--dry-run", "--set", f"{key}=4")
    assert r.code == 1 and f"use {use} instead" in r.err


def _get(**values: Any) -> Any:
    keys = {"prime_rl.ckpt_interval": 10, "prime_rl.ckpt_keep_last": 3,
            "prime_rl.ckpt_keep_every": None}
    keys.update({f"prime_rl.{k}": v for k, v in values.items()})
    return keys.__getitem__


def test_space_is_12_to_16_bytes_a_parameter_for_each_checkpoint_held():
    ret, warnings = retention_from(_get(), "current", None)
    assert ret is not None and warnings == []
    assert ret.checkpoints == 3 and ret.gb(8.0) == (288.0, 384.0)
    assert ret.to_json(8.0)["gb_each"] == [96.0, 128.0]
    # fewer steps than the retention: only the checkpoints written
    ret, _ = retention_from(_get(), "current", 25)
    assert ret is not None and ret.checkpoints == 2
    # unknown model size: the count, no space
    assert ret.gb(None) is None and ret.to_json(None)["checkpoints"] == 2


def test_permanent_checkpoints_add_up_only_when_max_steps_is_known():
    # every 10 steps to 1000, newest 3 (980-1000) plus 100, 200, ..., 900 for good
    ret, _ = retention_from(_get(ckpt_keep_every=100), "current", 1000)
    assert ret is not None and ret.checkpoints == 3 + 9
    ret, _ = retention_from(_get(ckpt_keep_every=100), "current", None)
    assert ret is not None and ret.checkpoints is None and ret.gb(1.0) is None
    # 25 is not a multiple of 10: prime-rl keeps only steps that are multiples of both
    ret, warnings = retention_from(_get(ckpt_keep_every=25), "current", 200)
    assert ret is not None and ret.checkpoints == 3 + 3  # 50, 100, 150
    assert any("multiples of 50" in w for w in warnings)


def test_the_dry_run_estimates_the_space_from_the_models_size(prm):
    plan = _plan(prm, "reverse-text")  # Qwen3-0.6B: 7.2-9.6 GB a checkpoint, 3 kept
    assert plan["retention"]["params_b"] == 0.6
    assert plan["retention"]["gb"] == [21.6, 28.8]
    out = prm("run", "reverse-text", "--dry-run").out
    assert "up to 21.6-28.8 GB on the outputs, 7.2-9.6 GB each (0.6B params)" in out


def test_the_plan_view_shows_the_retention(prm):
    out = prm("run", "reverse-text", "--dry-run", "--set",
              "prime_rl.ckpt_keep_every=50").out
    assert "every 10 steps, keeping the newest 3" in out
    assert "every multiple of 50 steps for good" in out


def test_ls_and_show_report_the_runs_size(prm, local_profile, fast_fake):
    r = prm("run", str(local_profile), "--detach")
    assert r.code == 0, r.err
    run_id = r.out.strip()
    rows = wait_for(lambda: [x for x in prm("ls", "--json").json()
                             if x["status"] == "SUCCEEDED"], timeout=60, what="the run")
    (row,) = rows
    run_dir = Path(open_index().get(run_id).run_dir)
    status = json.loads((Path(open_index().get(run_id).meta_dir) / "status.json").read_text())
    size = status["progress"]["size_bytes"]
    # measured at the last checkpoint at least: its files are in it
    assert 0 < size <= tree_size(run_dir)
    assert size >= tree_size(run_dir / "checkpoints")
    assert row["size_bytes"] == size
    header, line = prm("ls").out.splitlines()[:2]
    assert "size" in header.split() and size_text(size) in line
    shown = prm("show", run_id).out
    assert "size      " in shown and "in its run directory" in shown
