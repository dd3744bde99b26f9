"""The runner's bookkeeping that must survive hard kills: which checkpoint to resume from,
and how many failures a call has spent, both read from the run's own records."""

from __future__ import annotations

from pathlib import Path

from primerl_modal.runner.checkpoints import latest_complete, resume_from
from primerl_modal.runner.state import RunState


def _checkpoint(run_dir: Path, step: int, complete: bool) -> None:
    trainer = run_dir / "checkpoints" / f"step_{step}" / "trainer"
    trainer.mkdir(parents=True)
    (trainer / "__0_0.distcp").write_bytes(b"shard")
    if complete:
        (trainer / ".metadata").write_bytes(b"meta")


def test_an_incomplete_newest_checkpoint_is_passed_over(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 2, complete=True)
    _checkpoint(tmp_path, 4, complete=True)
    _checkpoint(tmp_path, 6, complete=False)
    assert latest_complete(tmp_path) == 4
    current = resume_from("current", tmp_path)
    assert current.args == ("--resume.step", "4") and current.skipped == (6,)
    legacy = resume_from("2025-10", tmp_path)
    assert legacy.args == ("--ckpt.resume-step", "4") and legacy.step == 4


def test_without_a_complete_checkpoint(tmp_path: Path) -> None:
    assert resume_from("current", tmp_path).args == ("--resume",)
    _checkpoint(tmp_path, 2, complete=False)
    resume = resume_from("current", tmp_path)
    assert resume.args == ("--resume",) and resume.step is None and resume.skipped == (2,)
    assert resume_from("2025-10", tmp_path).args == ()  # 0 would mean "no resume" there


def _state(tmp_path: Path, *attempts: dict[str, object]) -> RunState:
    state = RunState.create(tmp_path / "meta", "r")
    state.data["attempts"] = [dict(a) for a in attempts]
    state.data["attempt"] = len(attempts)
    return state


def test_failures_are_counted_per_call_from_the_records(tmp_path: Path) -> None:
    state = _state(
        tmp_path,
        {"n": 1, "call_id": "fc-a", "ended_at": 1.0, "outcome": "RECOVERING", "failure": True},
        {"n": 2, "call_id": "fc-a", "ended_at": 2.0, "outcome": "RECOVERING",
         "failure": False, "preempted": True},
        {"n": 3, "call_id": "fc-a", "signal": "SIGINT"},  # killed past its grace: preempted
        {"n": 4, "call_id": "fc-a"},  # killed without a signal: a crash, e.g. out of memory
        {"n": 5, "call_id": "fc-b", "ended_at": 5.0, "outcome": "FAILED", "failure": True},
    )
    assert state.failures("fc-a") == 1  # 3 and 4 are not known to have ended yet
    state.close_unended()
    assert state.failures("fc-a") == 2
    assert state.failures("fc-b") == 1
    assert state.failures("fc-new") == 0  # `prm run --resume` is a new call: a fresh budget


def test_a_new_attempt_closes_the_one_that_was_killed(tmp_path: Path) -> None:
    state = _state(tmp_path, {"n": 1, "call_id": "fc-a", "signal": "SIGINT"},
                   {"n": 2, "call_id": "fc-a"})
    n = state.begin_attempt(["rl"], 4, True, "fc-a")
    first, second, third = state.data["attempts"]
    assert n == 3 and third["resumed_from"] == 4 and third["call_id"] == "fc-a"
    assert first["outcome"] == second["outcome"] == "KILLED"
    assert first["failure"] is False and second["failure"] is True
    assert state.failures("fc-a") == 1


def test_torn_folders_are_set_aside_not_deleted(tmp_path: Path) -> None:
    from primerl_modal.runner.checkpoints import set_aside

    _checkpoint(tmp_path, 2, complete=False)
    aside = set_aside(tmp_path, (2,))
    assert not (tmp_path / "checkpoints" / "step_2").exists()
    assert (aside / "step_2" / "trainer" / "__0_0.distcp").read_bytes() == b"shard"
    assert resume_from("current", tmp_path).skipped == ()
