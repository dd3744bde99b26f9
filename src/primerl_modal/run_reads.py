"""Reading runs' files across backends, for the commands that look at several runs at
once (`prm metrics`, `prm sweep show`): concurrently, each backend's first contact alone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from primerl_modal.backends.base import Backend
    from primerl_modal.run_index import RunIndex, RunRecord

READERS = 8  # files read at once (Modal: one round trip each; a sweep has many)


def read_metrics(index: RunIndex, records: list[RunRecord]) -> list[bytes | None]:
    """Each run's metrics.jsonl as written so far (None where there is none), read
    concurrently. Raises PrmError when a backend cannot be reached."""
    from concurrent.futures import ThreadPoolExecutor

    from primerl_modal.backends import get_backend

    backends: dict[str, Backend] = {}
    files: list[bytes | None] = [None] * len(records)
    rest = []
    for i, record in enumerate(records):
        if record.backend in backends:
            rest.append(i)
            continue
        # a backend's first read alone: its first contact (the token, Modal's bounded hello
        # with its spinner) happens once, not from every thread at once
        backends[record.backend] = get_backend(record.backend, index)
        files[i] = backends[record.backend].read_run_file(record, "metrics.jsonl")

    def read(i: int) -> bytes | None:
        return backends[records[i].backend].read_run_file(records[i], "metrics.jsonl")

    if rest:
        with ThreadPoolExecutor(min(READERS, len(rest))) as pool:
            for i, data in zip(rest, pool.map(read, rest), strict=True):
                files[i] = data
    return files


def trends(index: RunIndex, records: list[RunRecord], metric: str) -> dict[str, list[float]]:
    """Each run's ``metric`` over its steps, sampled down to a few values (`prm sweep show`'s
    trend); runs with no step yet are not read. A backend that cannot be reached gives no
    trends, with a warning, rather than no table."""
    from primerl_modal.core.metrics import downsample, parse_metrics, series
    from primerl_modal.errors import PrmError
    from primerl_modal.ui.console import warn

    started = [r for r in records if r.step is not None]
    try:
        files = read_metrics(index, started)
    except PrmError as e:
        warn(f"no trends: {e.one_line()}")
        return {}
    return {r.run_id: downsample(series(parse_metrics(data or b""), metric)[1])
            for r, data in zip(started, files, strict=True)}


def swept_values(sweep_json: bytes | None) -> dict[str, dict[str, Any]]:
    """Run id -> the values its trial swept, from the sweep's sweep.json (written at launch);
    nothing when it is missing or unreadable."""
    from primerl_modal.runner.state import json_object

    trials = (json_object(sweep_json) or {}).get("trials")
    if not isinstance(trials, list):
        return {}
    return {t["run_id"]: t["overrides"] for t in trials
            if isinstance(t, dict) and isinstance(t.get("run_id"), str)
            and isinstance(t.get("overrides"), dict)}
