"""`prm rollouts`: a step's episodes from prime-rl's records (rollouts/step_N/train/<kind>/
traces.jsonl), as the fake launcher writes them, on the local backend and on the fake Modal
server; and verifiers' own records (tests/samples/traces.jsonl)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import finished, launched

from primerl_modal.run_index import open_index

SAMPLES = Path(__file__).parent / "samples" / "traces.jsonl"
TWO_ENVS = ('max_steps = 8\n[[orchestrator.env]]\nid = "reverse-text"\n'
            '[[orchestrator.env]]\nid = "wordle"\n')


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def reward(record: dict[str, Any]) -> float:
    """What the fake's records score: a failed one has no reward and ranks lowest."""
    rewards = [r["score"] * r["weight"] for t in record["traces"] for r in t["rewards"].values()]
    return sum(rewards) if rewards else float("-inf")


def turns(record: dict[str, Any]) -> tuple[str, str]:
    """The user prompt and the sampled completion of a one-turn episode."""
    nodes = record["traces"][0]["nodes"]
    user = next(n for n in nodes if n["message"]["role"] == "user")
    reply = next(n for n in nodes if n["sampled"])
    return user["message"]["content"], reply["message"]["content"]


def step_file(run_dir: Path, step: int, kind: str = "all") -> Path:
    return run_dir / "rollouts" / f"step_{step}" / "train" / kind / "traces.jsonl"


def spy_on_reads(monkeypatch: pytest.MonkeyPatch, backend: type) -> list[str]:
    """Every path of a run's directory the backend reads (folders listed end in /)."""
    touched: list[str] = []
    read, listed = backend.read_run_file, backend.list_run_dir

    def read_run_file(self: Any, record: Any, rel: str) -> bytes | None:
        touched.append(rel)
        return read(self, record, rel)

    def list_run_dir(self: Any, record: Any, rel: str = "") -> Any:
        touched.append(rel + "/")
        return listed(self, record, rel)

    monkeypatch.setattr(backend, "read_run_file", read_run_file)
    monkeypatch.setattr(backend, "list_run_dir", list_run_dir)
    return touched


@pytest.fixture
def local_run(prm: Any, local_profile: Path, checkout: Path, fast_fake: Path,
              monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path, list[str]]:
    """A finished 3-step local run of two envs, and every rollouts path prm reads or lists
    afterwards (the backend's reads recorded)."""
    from primerl_modal.backends.local import LocalBackend

    (checkout / "configs" / "basic" / "reverse-text" / "rl.toml").write_text(TWO_ENVS)
    r = prm("run", str(local_profile), "--set", "max_steps=3")
    assert r.code == 0, r.err
    (record,) = open_index().list()
    return record.run_id, Path(record.run_dir), spy_on_reads(monkeypatch, LocalBackend)


def test_best_two_of_the_latest_step_with_prompt_completion_and_reward(prm, local_run):
    run_id, run_dir, touched = local_run
    r = prm("rollouts", run_id[:12], "--step", "latest", "--limit", "2", "--sort", "-reward")
    assert r.code == 0, r.err
    every = records(step_file(run_dir, 3))
    best = sorted(every, key=reward, reverse=True)[:2]
    assert r.out.splitlines()[0] == ("step 3 (steps 1-3) · all · 2 of 12 episodes, "
                                     "highest reward first")
    shown = r.out.split("── ")[1:]
    assert len(shown) == 2
    for text, record in zip(shown, best, strict=True):
        prompt, completion = turns(record)
        assert f"user      {prompt}" in text and f"assistant {completion}" in text
        assert f"reward {reward(record):.3f}" in text and record["env"]["id"] in text
    # only what it shows is read: the step list, the step's folder, its one traces file
    assert touched == ["rollouts/", "rollouts/step_3/", "rollouts/step_3/train/all/traces.jsonl"]

    r = prm("rollouts", run_id, "--limit", "2", "--sort", "-reward", "--json")
    assert lines(r.out) == best  # the records as written, in the order shown
    assert lines(prm("rollouts", run_id, "--limit", "0", "--json").out) == every


def test_failed_episodes_kinds_envs_and_steps(prm, local_run):
    run_id, run_dir, _ = local_run
    r = prm("rollouts", run_id, "--sort", "reward", "--limit", "2")
    assert r.code == 0, r.err
    first, second = r.out.split("── ")[1:]
    assert "timed out" in first and "TimeoutError: episode exceeded its 600s timeout" in first
    assert "(no messages)" in first and "timed out" in second  # one failure per env

    r = prm("rollouts", run_id, "--step", "2", "--kind", "effective", "--limit", "0", "--json")
    assert lines(r.out) == records(step_file(run_dir, 2, "effective"))
    r = prm("rollouts", run_id, "--step", "2", "--sort", "reward", "--limit", "1")
    assert "failed" in r.out and "ProviderError: 503 Service Unavailable" in r.out

    r = prm("rollouts", run_id, "--env", "wordle", "--limit", "0", "--json")
    assert [e["env"]["id"] for e in lines(r.out)] == ["wordle"] * 6

    shutil.rmtree(step_file(run_dir, 3, "effective").parent)
    for args, message in [
        (("--step", "999"), f"{run_id} has no rollouts for step 999; steps 1-3"),
        (("--kind", "effective"), f"{run_id} has no effective/traces.jsonl at step 3; "
                                  "rollouts/step_3/ holds train/"),
        (("--env", "nope"), f"{run_id} has no episodes of env 'nope' at step 3; "
                            "its envs there: reverse-text, wordle"),
    ]:
        r = prm("rollouts", run_id, *args)
        assert (r.code, r.out, r.err) == (1, "", f"prm: error: {message}\n")
    shutil.rmtree(run_dir / "rollouts")
    r = prm("rollouts", run_id, "--json")
    assert r.code == 1 and r.json()["error"]["message"] == f"{run_id} has no rollouts"


def test_verifiers_own_records_long_text_cut_unless_full(prm, local_run):
    """The sample (verifiers 0.4.0's records) read as a step of the run; a long prompt is
    cut, saying how much, and shown whole with --full; a torn last line is skipped."""
    run_id, run_dir, _ = local_run
    sample = records(SAMPLES)
    long_prompt = "reverse this " + "word " * 300
    sample[0]["traces"][0]["nodes"][1]["message"]["content"] = long_prompt
    step_file(run_dir, 9).parent.mkdir(parents=True)
    step_file(run_dir, 9).write_text("".join(json.dumps(e) + "\n" for e in sample)
                                     + '{"id": "torn')
    r = prm("rollouts", run_id, "--step", "9", "--limit", "0")
    assert r.code == 0, r.err
    assert "skipped 1 line(s)" in r.err
    episodes = r.out.split("── ")[1:]
    assert len(episodes) == 6
    assert "user      reverse this word" in episodes[0]
    assert f"({len(long_prompt) - 500:,} more characters; --full shows them)" in episodes[0]
    assert "user      reinforcement learning" in episodes[1]
    assert "assistant gninrael tnemecrofnixx" in episodes[1] and "reward 0.909" in episodes[1]
    assert "timed out" in episodes[5] and "(no messages)" in episodes[5]

    full = prm("rollouts", run_id, "--step", "9", "--limit", "1", "--full")
    assert "more characters" not in full.out
    assert full.out.count("word") == 300


def test_modal_best_two_and_records_as_on_the_volume(prm, modal_env, monkeypatch):
    from primerl_modal.backends.modal_backend import ModalBackend

    run_id = launched(prm, "reverse-text", "--set", "max_steps=2")
    finished(modal_env, run_id)
    touched = spy_on_reads(monkeypatch, ModalBackend)
    run_dir = modal_env.volume_path("prime-rl-outputs") / run_id
    every = records(step_file(run_dir, 2))
    best = sorted(every, key=reward, reverse=True)[:2]

    r = prm("rollouts", run_id, "--step", "latest", "--limit", "2", "--sort", "-reward")
    assert r.code == 0, r.err
    for text, record in zip(r.out.split("── ")[1:], best, strict=True):
        prompt, completion = turns(record)
        assert f"user      {prompt}" in text and f"assistant {completion}" in text
        assert f"reward {reward(record):.3f}" in text
    assert touched == ["rollouts/", "rollouts/step_2/", "rollouts/step_2/train/all/traces.jsonl"]
    r = prm("rollouts", run_id, "--limit", "2", "--sort", "-reward", "--json")
    assert lines(r.out) == best
    r = prm("rollouts", run_id, "--kind", "effective", "--limit", "0", "--json")
    assert lines(r.out) == records(step_file(run_dir, 2, "effective"))
    r = prm("rollouts", run_id, "--step", "999")
    assert r.err == f"prm: error: {run_id} has no rollouts for step 999; steps 1-2\n"
