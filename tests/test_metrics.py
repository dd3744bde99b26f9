"""`prm metrics` (a run's metrics.jsonl as a table, JSON lines, CSV or terminal charts) and
the trend column of `prm sweep show`, on the local backend and the fake Modal server."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import local_trials_succeed

from primerl_modal.core.metrics import SPARKS, downsample, parse_metrics, sparkline
from primerl_modal.run_index import RunRecord, open_index

DEFAULT_KEYS = {"step", "time", "reward/mean", "loss", "entropy"}  # of the fake launcher


def json_rows(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def assert_chart(out: str, title: str, labels: list[str]) -> None:
    """A plotext chart titled ``title``: a y axis with ticks, an x axis of steps, and a
    legend naming every label."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == title)
    chart = lines[start:start + 25]
    assert sum("┤" in line for line in chart) >= 3, out  # the y axis's ticks
    assert any("┬" in line for line in chart) and chart[-1].strip() == "step", out
    assert max(len(line) for line in chart) <= 100, out  # no terminal: 100 columns
    for label in labels:
        assert any(re.search(rf"│ \S {re.escape(label)} +│", line) for line in chart), label


def stored_run(tmp_path: Path, text: str, run_id: str = "syn-261130-101010-abcd") -> str:
    """A finished local run whose metrics.jsonl holds ``text``, in the index."""
    outputs = tmp_path / "outputs"
    run_dir = outputs / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(text)
    now = time.time()
    open_index().upsert(RunRecord(
        run_id=run_id, name="syn", profile="syn", backend="local", status="SUCCEEDED",
        created_at=now, updated_at=now, gpu_type="H100", gpu_count=2, trainer=1, inference=1,
        tp=1, dp=1, usd_per_gpu_hour=3.95, timeout_s=3600, retries=0, outputs=str(outputs),
        meta_dir=str(outputs / "_prm" / run_id), run_dir=str(run_dir), metric="reward/mean"))
    return run_id


def rows_text(steps: range, scale: float = 1.0, **extra: Any) -> str:
    return "".join(json.dumps({"step": s, "time": 1.8e9 + s, "reward/mean": s * scale,
                               "loss": 1 / s, **extra}) + "\n" for s in steps)


def check_sweep(prm: Any, sweep_id: str, steps: dict[str, int], labels: dict[str, str]) -> None:
    """What `prm metrics` and `prm sweep show` give for a finished sweep whose trials ran
    ``steps[run_id]`` steps and are labelled ``labels[run_id]``."""
    first, second = steps
    r = prm("metrics", first, "-k", "reward/mean", "--json")
    assert r.code == 0, r.err
    rows = json_rows(r.out)
    assert [row["step"] for row in rows] == list(range(1, steps[first] + 1))
    assert all(set(row) == {"step", "time", "reward/mean"} for row in rows)
    assert set(json_rows(prm("metrics", first, "--json").out)[0]) == DEFAULT_KEYS

    one = prm("metrics", first, "--plot")
    assert one.code == 0, one.err
    for key in ("reward/mean", "loss", "entropy"):
        assert_chart(one.out, key, [first])
    two = prm("metrics", first, second, "--plot", "-k", "reward/mean")
    assert_chart(two.out, "reward/mean", [first, second])
    whole = prm("metrics", "--sweep", sweep_id, "--plot", "-k", "loss")
    assert whole.code == 0, whole.err
    assert_chart(whole.out, "loss", list(labels.values()))

    table = list(csv.DictReader(io.StringIO(prm("metrics", "--sweep", sweep_id, "--csv").out)))
    assert [(row["run"], int(row["step"])) for row in table] == [
        (run, s) for run in steps for s in range(1, steps[run] + 1)]
    assert float(table[0]["reward/mean"]) == rows[0]["reward/mean"]

    shown = {row["run_id"]: row for row in prm("sweep", "show", sweep_id, "--json").json()}
    for run, n in steps.items():
        rewards = [row["reward/mean"] for row in json_rows(
            prm("metrics", run, "-k", "reward/mean", "--json").out)]
        assert shown[run]["trend"] == downsample(rewards) and len(rewards) == n
    text = prm("sweep", "show", sweep_id).out
    for run, n in steps.items():
        (line,) = [line for line in text.splitlines() if line.startswith(run)]
        spark = sparkline(shown[run]["trend"])
        assert len(spark) == n and spark in line  # a block a step (fewer than 16 steps)


def test_local_run_and_sweep(prm, local_profile, fast_fake):
    r = prm("sweep", str(local_profile), "--grid", "max_steps=4,6", "--max-parallel", "1")
    assert r.code == 0, r.err
    (sw,) = open_index().sweeps()
    local_trials_succeed(sw, 2)
    first, second = f"{sw.sweep_id}-0", f"{sw.sweep_id}-1"
    written = (Path(open_index().find(first).run_dir) / "metrics.jsonl").read_text()
    assert len(written.splitlines()) == 4  # every step the run wrote, and no more
    check_sweep(prm, sw.sweep_id, {first: 4, second: 6},
                {first: "#0 max_steps=4", second: "#1 max_steps=6"})


def test_modal_run_and_sweep(prm, modal_env, tmp_path):
    modal_env.extra_env["PRM_SWEEP_TICK"] = "0.2"
    sweep = tmp_path / "m.toml"
    sweep.write_text('name = "mx"\nprofile = "reverse-text"\nmethod = "list"\n'
                     "max_parallel = 2\n[[trials]]\nmax_steps = 3\n[[trials]]\nmax_steps = 5\n")
    r = prm("sweep", str(sweep))
    assert r.code == 0, r.err
    (sw,) = open_index().sweeps()
    modal_env.wait_call(sw.call_id, timeout=120)
    first, second = f"{sw.sweep_id}-0", f"{sw.sweep_id}-1"
    check_sweep(prm, sw.sweep_id, {first: 3, second: 5},
                {first: "#0 max_steps=3", second: "#1 max_steps=5"})


def test_a_resumed_run_keeps_the_last_row_of_a_repeated_step(prm, tmp_path):
    # the first attempt reached step 5 after its checkpoint at 3; the resumed one repeats 4, 5
    run = stored_run(tmp_path, rows_text(range(1, 6)) + rows_text(range(4, 8), scale=10))
    rows = json_rows(prm("metrics", run, "-k", "reward/mean", "--json").out)
    assert [(r["step"], r["reward/mean"]) for r in rows] == [
        (1, 1), (2, 2), (3, 3), (4, 40), (5, 50), (6, 60), (7, 70)]


def test_a_live_files_torn_line_and_missing_values(prm, tmp_path):
    text = (rows_text(range(1, 4)) + '{"step": 4, "time": 1.8e9, "loss": NaN}\n'
            '{"step": 5, "time": 1.8e9, "reward/mean": 5}\n{"step": 6, "rew')
    run = stored_run(tmp_path, text)
    rows = json_rows(prm("metrics", run, "--json").out)
    assert [(r["step"], r["reward/mean"], r["loss"]) for r in rows] == [
        (1, 1, 1.0), (2, 2, 0.5), (3, 3, 1 / 3), (5, 5, None)]  # step 4 has none of them
    table = list(csv.DictReader(io.StringIO(prm("metrics", run, "--csv").out)))
    assert [(r["step"], r["reward/mean"], r["loss"]) for r in table] == [
        ("1", "1.0", "1.0"), ("2", "2.0", "0.5"), ("3", "3.0", str(1 / 3)), ("5", "5", "")]
    listed = prm("metrics", run, "--list", "--json").json()
    assert listed == [{"key": "reward/mean", "steps": 4}, {"key": "loss", "steps": 3}]
    table = prm("metrics", run, "--list").out.splitlines()
    assert table[0].split() == ["key", "steps"] and table[1].split() == ["reward/mean", "4"]


def test_table_shows_the_last_steps_and_says_what_it_left_out(prm, tmp_path):
    run = stored_run(tmp_path, rows_text(range(1, 31)))
    r = prm("metrics", run)
    lines = r.out.splitlines()
    assert lines[0].split() == ["step", "time", "reward/mean", "loss"]
    assert [int(line.split()[0]) for line in lines[1:]] == list(range(11, 31))
    assert "10 earlier left out" in r.err
    assert [line.split()[0] for line in prm("metrics", run, "--last", "2").out.splitlines()[1:]] \
        == ["29", "30"]


def test_several_runs_carry_their_run_id(prm, tmp_path):
    a = stored_run(tmp_path, rows_text(range(1, 3)), "syn-261130-101010-aaaa")
    b = stored_run(tmp_path, rows_text(range(1, 4)), "syn-261130-101010-bbbb")
    rows = json_rows(prm("metrics", a, b, "--json", "--last", "1").out)
    assert [(r["run"], r["step"]) for r in rows] == [(a, 2), (b, 3)]
    assert list(rows[0]) == ["run", "step", "time", "reward/mean", "loss"]


def test_unknown_key_and_empty_file_are_one_line_naming_the_keys(prm, tmp_path):
    run = stored_run(tmp_path, rows_text(range(1, 3)))
    r = prm("metrics", run, "-k", "reward/meen")
    assert r.code == 1 and r.out == ""
    assert r.err == (f"prm: error: {run} has no metric reward/meen; keys there are: "
                     "reward/mean, loss\n")
    j = prm("metrics", run, "-k", "reward/meen", "--json")
    assert j.code == 1 and j.json()["error"]["hint"] == "keys there are: reward/mean, loss"
    other = stored_run(tmp_path, '{"step": 1, "kl": 0.1}\n', "syn-261130-101010-cccc")
    r = prm("metrics", other)
    assert r.code == 1 and r.err == (f"prm: error: {other} logged no reward/mean, loss, "
                                     "entropy; pick keys with -k; keys there are: kl\n")
    empty = stored_run(tmp_path, "", "syn-261130-101010-eeee")
    r = prm("metrics", empty, "--plot")
    assert r.code == 1 and len(r.err.splitlines()) == 1
    assert r.err.startswith(f"prm: error: {empty} has no metrics yet; there are no metric keys")


@pytest.mark.parametrize("args", [
    ["--plot", "--json"], ["--csv", "--json"], ["--plot", "--csv"], ["--list", "-k", "loss"]])
def test_conflicting_outputs_are_usage_errors(prm, tmp_path, args):
    run = stored_run(tmp_path, rows_text(range(1, 3)))
    r = prm("metrics", run, *args)
    assert r.code == 2 and len(r.err.splitlines()) == 1, r.err


def test_no_run_is_a_usage_error(prm):
    r = prm("metrics")
    assert r.code == 2 and "name the runs to read, or --sweep ID" in r.err


def test_json_and_csv_print_the_numbers_as_written(prm, tmp_path):
    run = stored_run(tmp_path, '{"step": 1, "time": 1.8e9, "reward/mean": 0.50, "loss": 1E-6}\n')
    assert prm("metrics", run, "--json").out == (
        '{"step": 1, "time": 1.8e9, "reward/mean": 0.50, "loss": 1E-6}\n')
    assert prm("metrics", run, "--csv").out == "step,time,reward/mean,loss\n1,1.8e9,0.50,1E-6\n"


def test_parse_a_damaged_file_line_by_line():
    assert parse_metrics(b'{"step": 1, "a": 1}\n[1, 2]\n{"step": "2"}\n\n{"step": 1, "b": 2}') \
        == [{"step": 1, "a": b"1", "b": b"2"}]


def test_sparkline_and_downsample():
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == SPARKS
    assert sparkline([2, 2]) == "▅▅" and sparkline([]) == ""
    assert downsample(list(range(32))) == [i * 2 + 0.5 for i in range(16)]
