"""A small progress summary read incrementally from metrics.jsonl and checkpoints/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from primerl_modal.runner.checkpoints import latest_complete


def max_steps_from_argv(argv: list[str]) -> int | None:
    value = None
    for flag, nxt in zip(argv, argv[1:], strict=False):
        if flag == "--max-steps" and nxt.isdigit():
            value = int(nxt)
    return value


class Progress:
    """Step, max steps, last value of the plan's metric, time of the last step, latest
    complete checkpoint: what `prm ls` shows without ever reading whole files."""

    def __init__(self, run_dir: Path, metric: str, max_steps: int | None) -> None:
        self.run_dir = run_dir
        self.metric = metric
        self.summary: dict[str, Any] = {"metric": metric, "max_steps": max_steps}
        self.rows = 0  # step rows read so far: a new one is a training step made
        self._offset = 0
        self._carry = b""

    def poll(self) -> bool:
        """Read what was appended since the last poll; True when the summary changed."""
        before = dict(self.summary)
        self._read_metrics()
        self.summary["ckpt_step"] = latest_complete(self.run_dir)
        if self.summary.get("max_steps") is None:
            self.summary["max_steps"] = self._max_steps_from_configs()
        return self.summary != before

    def _read_metrics(self) -> None:
        path = self.run_dir / "metrics.jsonl"
        try:
            with open(path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        self._offset += len(data)
        data = self._carry + data
        cut = data.rfind(b"\n")
        self._carry = data[cut + 1 :]
        for raw in data[: cut + 1].splitlines():
            try:
                row = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(row, dict):
                continue
            if isinstance(row.get("step"), int):
                self.rows += 1
                self.summary["step"] = row["step"]
                self.summary["step_time"] = row.get("time")
            value = row.get(self.metric)
            if isinstance(value, int | float):
                self.summary["value"] = value

    def _max_steps_from_configs(self) -> int | None:
        for name in ("rl.json", "orchestrator.json", "trainer.json"):
            try:
                config = json.loads((self.run_dir / "configs" / name).read_text())
            except (OSError, ValueError):
                continue
            for table in (config, config.get("orchestrator"), config.get("trainer")):
                if isinstance(table, dict) and isinstance(table.get("max_steps"), int):
                    return int(table["max_steps"])
        return None
