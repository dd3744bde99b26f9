"""`prm logs -f` on the local backend, started when lines are already stored: it prints the
stored lines, then follows the attempt logs from where they were, so every line comes out
exactly once, none lost, across attempts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import follow_to_the_end, wait_for

from primerl_modal.run_index import open_index

PRM = [sys.executable, "-m", "primerl_modal"]


def test_logs_follow_started_mid_attempt_2_prints_each_line_once(prm, local_profile, fast_fake,
                                                                 monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_RL_FAIL_AT_STEP", "3")
    # attempt 1 fails at step 3
    assert prm("run", str(local_profile), "--set", "max_steps=24").code == 1
    run_id = open_index().list()[0].run_id
    monkeypatch.delenv("FAKE_RL_FAIL_AT_STEP")
    monkeypatch.setenv("FAKE_RL_STEP_SECONDS", "0.3")
    r = prm("run", "--resume", run_id, "--detach")
    assert r.code == 0, r.err
    logs = Path(open_index().get(run_id).meta_dir) / "logs"
    wait_for(lambda: "step 5 " in (logs / "attempt_2.log").read_text()
             if (logs / "attempt_2.log").exists() else False,
             timeout=60, what="attempt 2's lines stored")
    stored_then = [len((logs / f"attempt_{n}.log").read_text().splitlines()) for n in (1, 2)]
    status = logs.parent / "status.json"
    followed_text, status_then = follow_to_the_end(
        run_id, tmp_path / "follow.err", lambda: json.loads(status.read_text())["status"])
    assert status_then == "RUNNING"
    every = prm("logs", run_id, "--tail", "0")  # the run has ended: every stored line
    assert every.code == 0, every.err
    lines = every.out.splitlines()
    assert len(lines) > sum(stored_then) and min(stored_then) > 0
    assert any("step 24 " in x for x in lines)
    assert followed_text.splitlines() == lines
