"""Follow a run through the attempt logs its runner writes in the metadata folder."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from primerl_modal.backends.base import read_status
from primerl_modal.core import status as st
from primerl_modal.core.logs import LogLine, parse_stored
from primerl_modal.run_index import RunRecord

_REFRESH_S = 2.0


def _read_new(path: Path, offset: int) -> tuple[list[str], int]:
    """Whole lines appended to ``path`` since ``offset``; the rest waits for the next read."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    cut = data.rfind(b"\n") + 1
    # lines end at "\n" only: a "\r" inside a line (an old runner's progress bar) stays in it
    return data[:cut].decode("utf-8", "replace").split("\n")[:-1], offset + cut


def follow_attempt_logs(record: RunRecord, refresh: Callable[[], RunRecord],
                        seen: Mapping[int, int] | None = None,
                        poll: float = 0.2) -> Iterator[LogLine]:
    """Lines of the current (or next) attempt as they are written, moving on to later
    attempts, until the run is final. The first ``seen[n]`` lines of attempt n are skipped
    (already shown). ``refresh`` re-reads the run (noticing a lost runner) every couple of
    seconds."""
    seen = seen or {}
    meta = Path(record.meta_dir)
    status = read_status(meta) or {}
    attempt = int(status.get("attempt", 0))
    n = attempt + 1 if attempt == 0 or status.get("status") == st.PENDING else attempt
    offset = index = 0
    last_refresh = time.monotonic()
    while True:
        final = st.is_final(str(status.get("status", "")))
        raw, offset = _read_new(meta / "logs" / f"attempt_{n}.log", offset)
        for text in raw:
            if index >= seen.get(n, 0):
                yield parse_stored(text, n)
            index += 1
        if int(status.get("attempt", 0)) > n:
            n, offset, index = n + 1, 0, 0
            continue
        if final:
            return
        time.sleep(poll)
        if time.monotonic() - last_refresh >= _REFRESH_S:
            refresh()
            last_refresh = time.monotonic()
        status = read_status(meta) or status
