from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from primerl_modal.cli import run_cli


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture(autouse=True)
def prm_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own $PRM_HOME and runs from an empty working directory."""
    home = tmp_path_factory.mktemp("prm-home")
    work = tmp_path_factory.mktemp("work")
    monkeypatch.setenv("PRM_HOME", str(home))
    monkeypatch.delenv("PRM_TRACEBACK", raising=False)
    monkeypatch.chdir(work)
    return home


@pytest.fixture
def prm(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """Call prm in-process, through the same error boundary as the console script."""

    def call(*args: str) -> Result:
        capsys.readouterr()
        code = run_cli(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    yield call
