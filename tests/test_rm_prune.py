"""`prm rm` and `prm prune` through the CLI: on the local backend and on the fake Modal
server, what goes, what stays, and what is refused."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from conftest import finished, launched, local_trials_succeed

from primerl_modal.core.cleanup import Checkpoint, choose_pruning, inside_run, own_paths
from primerl_modal.errors import PrmError, UsageError
from primerl_modal.run_index import RunRecord, open_index


class Terminal(io.StringIO):
    """What a person types at a terminal."""

    def isatty(self) -> bool:
        return True


def local_run(prm, profile: Path) -> RunRecord:
    """A local run, followed to its end (SUCCEEDED, checkpoints at steps 2, 4, 6, 8)."""
    before = {r.run_id for r in open_index().list()}
    r = prm("run", str(profile))
    assert r.code == 0, r.err
    (rec,) = [r for r in open_index().list() if r.run_id not in before]
    return rec


def steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("step_")) for p in (run_dir / "checkpoints").iterdir())


def listed(prm, *args: str) -> set[str]:
    return {row["run_id"] for row in prm("ls", *args, "--json").json()}


def test_rm_asks_and_refuses_to_delete_unasked(prm, local_profile, fast_fake, monkeypatch):
    rec = local_run(prm, local_profile)
    run_dir, meta = Path(rec.run_dir), Path(rec.meta_dir)
    files = [p for base in (run_dir, meta) for p in base.rglob("*") if p.is_file()]

    r = prm("rm", rec.run_id)  # no terminal, no --yes
    assert r.code == 2 and "no terminal to ask on" in r.err and "--yes" in r.err
    r = prm("rm", rec.run_id, "--json")
    assert r.code == 2 and "--yes" in r.json()["error"]["message"]
    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    r = prm("rm", rec.run_id[:12])
    assert r.code == 1 and "nothing was deleted" in r.err
    assert rec.run_id in r.out and str(len(files)) in r.out  # what would go, shown first
    assert all(p.exists() for p in files) and open_index().get(rec.run_id)

    shutil.rmtree(run_dir)  # part of it removed by hand: the rest and the row still go
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    r = prm("rm", rec.run_id)
    assert r.code == 0, r.err
    assert "removed 1 run" in r.err and "reclaimed in" in r.err
    assert not meta.exists() and open_index().get(rec.run_id) is None
    assert rec.run_id not in listed(prm)
    assert rec.run_id not in listed(prm, "--all")  # its files are gone: nothing to find


def test_a_run_that_has_not_ended_is_refused(prm, local_profile, fast_fake, monkeypatch):
    monkeypatch.setenv("FAKE_RL_HANG", "1")
    r = prm("run", str(local_profile), "--detach")
    assert r.code == 0, r.err
    run_id = r.out.strip()
    for args in (["rm", run_id], ["prune", run_id, "--keep-last", "1"]):
        r = prm(*args, "--yes")
        assert r.code == 1 and f"prm stop {run_id}" in r.err, r.err
    assert Path(open_index().get(run_id).meta_dir, "plan.json").exists()
    assert prm("stop", run_id).code == 0
    assert prm("rm", run_id, "--yes").code == 0  # stopped: it has ended
    assert open_index().get(run_id) is None


def test_prune_keeps_the_newest_complete_checkpoints(prm, local_profile, fast_fake):
    rec = local_run(prm, local_profile)
    run_dir = Path(rec.run_dir)
    assert steps(run_dir) == [2, 4, 6, 8]
    for torn in (4, 8):  # saves cut short: no trainer/.metadata
        (run_dir / "checkpoints" / f"step_{torn}" / "trainer" / ".metadata").unlink()

    r = prm("prune", rec.run_id, "--keep-last", "2", "--yes", "--json")
    assert r.code == 0, r.err
    assert {row["step"]: (row["complete"], row["action"]) for row in r.json()} == {
        2: (True, "keep"), 4: (False, "delete"), 6: (True, "keep"), 8: (False, "keep")}
    assert steps(run_dir) == [2, 6, 8]  # the torn step newer than every complete one stays

    r = prm("prune", rec.run_id, "--keep-last", "1", "--yes")
    assert r.code == 0, r.err
    assert steps(run_dir) == [6, 8]  # exactly one complete checkpoint: the newest
    assert "deleted checkpoint step 2" in r.err and "reclaimed in" in r.err
    assert (run_dir / "metrics.jsonl").exists()

    r = prm("prune", rec.run_id, "--keep-last", "1", "--yes")
    assert r.code == 0 and "nothing to prune" in r.err and steps(run_dir) == [6, 8]
    r = prm("prune", rec.run_id, "--keep-last", "0", "--yes")
    assert r.code == 2 and steps(run_dir) == [6, 8]


def test_rm_sweep_removes_its_trials_and_itself(prm, local_profile, fast_fake, tmp_path):
    sweep = tmp_path / "rm.toml"
    sweep.write_text(f'name = "rmsw"\nprofile = "{local_profile}"\nmax_parallel = 1\n'
                     "[parameters]\nmax_steps = [2, 3]\n")
    assert prm("sweep", str(sweep)).code == 0
    (sw,) = open_index().sweeps()
    r = prm("rm", "--sweep", sw.sweep_id, "--yes")  # the second trial waits for the first
    assert r.code == 1 and f"prm stop --sweep {sw.sweep_id}" in r.err, r.err
    local_trials_succeed(sw, 2)
    trials = open_index().list(sweep_id=sw.sweep_id)
    shutil.rmtree(trials[0].run_dir)  # removed by hand already

    r = prm("rm", "--sweep", sw.sweep_id[:10], "--yes", "--json")
    assert r.code == 0, r.err
    assert sorted(row["run_id"] for row in r.json()) == sorted(t.run_id for t in trials)
    outputs = Path(sw.outputs)
    assert not (outputs / "_prm" / "sweeps" / sw.sweep_id).exists()
    assert not any((outputs / t.run_id).exists() or Path(t.meta_dir).exists() for t in trials)
    assert open_index().list() == [] and open_index().sweeps() == []
    assert prm("sweep", "ls", "--json").json() == []


def test_modal_prune_then_rm_reclaim_the_volume(prm, modal_env):
    run_id = launched(prm, "reverse-text", "--set", "prime_rl.ckpt_interval=2")
    assert finished(modal_env, run_id).status == "SUCCEEDED"
    volume = modal_env.volume_path("prime-rl-outputs")
    run_dir, meta = volume / run_id, volume / "_prm" / run_id
    assert steps(run_dir) == [2, 4, 6, 8]

    preview = prm("prune", run_id, "--keep-last", "2", "--dry-run", "--json")
    assert preview.code == 0 and steps(run_dir) == [2, 4, 6, 8]  # no --yes needed for that
    r = prm("prune", run_id, "--keep-last", "2", "--yes", "--json")
    assert r.code == 0, r.err
    assert r.json() == preview.json()
    assert [row["action"] for row in r.json()] == ["delete", "delete", "keep", "keep"]
    assert steps(run_dir) == [6, 8]
    r = prm("prune", run_id, "--keep-last", "1", "--yes")
    assert r.code == 0 and steps(run_dir) == [8]
    assert "on Modal volume prime-rl-outputs" in r.err

    sizes = [p.stat().st_size for base in (run_dir, meta) for p in base.rglob("*")
             if p.is_file()]
    preview = prm("rm", run_id, "--dry-run", "--json")
    assert preview.code == 0 and run_dir.exists() and meta.exists()
    r = prm("rm", run_id, "--yes", "--json")
    assert r.code == 0, r.err
    (row,) = r.json()
    assert r.json() == preview.json()
    assert (row["run_id"], row["files"], row["bytes"]) == (run_id, len(sizes), sum(sizes))
    assert not run_dir.exists() and not meta.exists()
    assert run_id not in listed(prm) and run_id not in listed(prm, "--all")


def test_what_may_be_deleted_is_checked_before_any_backend_sees_it():
    for bad in ("", "..", "a/b", "Upper"):
        with pytest.raises(PrmError):
            own_paths(bad)
    for bad in ("", "/", "/etc", "a/../../b", "."):
        with pytest.raises(PrmError):
            inside_run(bad)
    assert inside_run("./checkpoints//step_2/") == "checkpoints/step_2"
    with pytest.raises(UsageError):
        choose_pruning([Checkpoint("step_2", 2, True, 1, 1)], 0)
    assert choose_pruning([], 1).drop == ()


def test_a_cluster_checkpoint_is_complete_with_every_trainer_shard():
    from primerl_modal.core.cleanup import checkpoints
    from primerl_modal.core.selection import RemoteFile

    names = ["step_2/trainer/.metadata", "step_2/trainer/__0_0.distcp",
             "step_2/trainer/__1_0.distcp", "step_4/trainer/.metadata",
             "step_4/trainer/__0_0.distcp"]
    files = [RemoteFile(n, f"checkpoints/{n}", 10, 0.0) for n in names]
    files.append(RemoteFile("m", "metrics.jsonl", 10, 0.0))
    assert [(c.step, c.complete) for c in checkpoints(files, shards=2)] == [(2, True), (4, False)]
    assert [(c.rel, c.complete, c.files, c.bytes) for c in checkpoints(files)] == [
        ("checkpoints/step_2", True, 3, 30), ("checkpoints/step_4", True, 2, 20)]
