"""A small progress summary read incrementally from metrics.jsonl and checkpoints/, with
the size of the run directory measured now and then."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from primerl_modal.runner.checkpoints import latest_complete

# A walk of the run directory (on Modal, of a volume mount): cheap, but not every poll. A new
# complete checkpoint, the bulk of the size, is measured at once.
SIZE_EVERY_S = 180.0


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
        self._sized_at: float | None = None

    def poll(self) -> bool:
        """Read what was appended since the last poll; True when the summary changed."""
        before = dict(self.summary)
        self._read_metrics()
        self.summary["ckpt_step"] = latest_complete(self.run_dir)
        if (self._sized_at is None or time.monotonic() - self._sized_at >= SIZE_EVERY_S
                or self.summary["ckpt_step"] != before.get("ckpt_step")):
            self.measure()
        if self.summary.get("max_steps") is None:
            self.summary["max_steps"] = self._max_steps_from_configs()
        return self.summary != before

    def measure(self) -> None:
        """The run directory's size now (at the end of an attempt: what stays on the
        outputs, after prime-rl deleted the checkpoints it does not keep)."""
        self._sized_at = time.monotonic()
        self.summary["size_bytes"] = tree_size(self.run_dir)

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


def tree_size(root: Path) -> int:
    """Bytes of the files under ``root`` (symlinks not followed). Files that vanish during
    the walk (prime-rl deleting an old checkpoint) are skipped, not an error."""
    total, pending = 0, [root]
    while pending:
        try:
            with os.scandir(pending.pop()) as listing:
                entries = list(listing)
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total
