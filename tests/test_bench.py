"""The performance budgets live in the project (bench/README.md), each with the benchmark
that checks it; bench/startup.py takes turns between the commands it compares and gives a
verdict for every budget, the human `prm run --dry-run` included."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def startup(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/startup.py as a module (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_startup", BENCH / "startup.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_the_readme_states_every_budget_and_its_benchmark():
    readme = (BENCH / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| ")][1:]
    for figure, script in [
        ("at most 0.25 x the wall time of `modal --help`", "startup.py"),
        ("`prm run PROFILE --dry-run` under 0.3 s", "startup.py"),
        ("`prm ls` over 10,000 runs under 0.4 s", "ls.py"),
        ("10,000-trial sweep under 1 s", "sweep_plan.py"),
        ("`prm pull` at least as fast as `modal volume get`", "pull.py"),
        ("at least 50,000 log lines a second", "runner_logs.py"),
    ]:
        (row,) = [r for r in rows if figure in r]
        assert f"python bench/{script}" in row, row
    listed = set(re.findall(r"python bench/(\w+\.py)", readme))
    assert listed == {p.name for p in BENCH.glob("*.py")}  # every benchmark, and only those


def test_startup_takes_turns_between_its_commands(monkeypatch):
    bench = startup(monkeypatch)
    order: list[str] = []
    monkeypatch.setattr(bench, "wall", lambda argv, cwd, env: order.append(
        " ".join([Path(argv[0]).name, *argv[1:]])) or 0.1)
    commands = ["modal --help", "prm --help", "prm run x --dry-run"]
    times = bench.interleaved(commands, 4, "/", {})
    assert {c: len(t) for c, t in times.items()} == dict.fromkeys(commands, 4)
    warmup, rounds = order[:3], [order[i:i + 3] for i in range(3, len(order), 3)]
    assert sorted(warmup) == sorted(commands)
    assert all(sorted(r) == sorted(commands) for r in rounds)  # each once a round...
    assert len({r[0] for r in rounds}) == 3  # ...and not always in the same order


@pytest.mark.parametrize(("dry_run", "verdict", "code"), [(0.12, "ok", 0), (0.45, "OVER", 1)])
def test_startup_gives_a_verdict_for_every_budget(monkeypatch, capsys, dry_run, verdict, code):
    bench = startup(monkeypatch)
    seconds = {"modal": 0.8, "--help": 0.1, "--dry-run": dry_run}

    def wall(argv: list[str], cwd: str, env: dict[str, str]) -> float:
        return seconds["modal" if argv[0].endswith("modal") else
                       "--dry-run" if "--dry-run" in argv else "--help"]

    monkeypatch.setattr(bench, "wall", wall)
    monkeypatch.setattr(sys, "argv", ["startup.py", "--runs", "3"])
    with pytest.raises(SystemExit) as exit_:
        bench.main()
    assert exit_.value.code == code
    lines = capsys.readouterr().out.splitlines()
    verdicts = {line.split("  ")[0]: line.rsplit(": ", 1)[1] for line in lines
                if "budget" in line}
    assert verdicts == {"prm --help": "ok", "prm run reverse-text --dry-run": verdict,
                        "prm run reverse-text --dry-run --json": verdict}
