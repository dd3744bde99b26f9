"""Shell completion of run ids, sweep ids and profile names, as the shell asks for it."""

from __future__ import annotations

import os
import subprocess
import sys

from primerl_modal.run_index import RunIndex, RunRecord, SweepRecord


def complete(words: str, prm_home) -> list[str]:
    env = {**os.environ, "_PRM_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
           "PRM_HOME": str(prm_home)}
    r = subprocess.run([sys.executable, "-m", "primerl_modal"], env=env, capture_output=True,
                       text=True, timeout=30)
    return r.stdout.split()


def test_run_and_sweep_ids_and_profiles_complete(prm_home):
    ix = RunIndex(prm_home / "index.sqlite3")
    for rid, t in (("alpha-1", 1.0), ("alpha-2", 2.0), ("beta-1", 3.0)):
        ix.upsert(RunRecord(rid, "x", "p", "local", "SUCCEEDED", t, t, "H100", 2, 1, 1, 1, 1,
                            3.95, 60, 0, "/o", "/o/_prm/" + rid, "/o/" + rid))
    ix.upsert_sweep(SweepRecord("lr-1", "lr", "p", "grid", "local", "reward/mean", "max", 2, 6,
                                False, 1.0, "/o"))
    assert complete("prm logs al", prm_home) == ["alpha-2", "alpha-1"]
    assert complete("prm stop b", prm_home) == ["beta-1"]
    assert complete("prm sweep show l", prm_home) == ["lr-1"]
    assert "reverse-text" in complete("prm run rev", prm_home)
    assert "hendrycks-sanity" in complete("prm run h", prm_home)
