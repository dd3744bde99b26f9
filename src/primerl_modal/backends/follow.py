"""Follow a run through the attempt logs its runner writes in the metadata folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from primerl_modal.backends.base import read_status
from primerl_modal.core import status as st
from primerl_modal.run_index import RunRecord

_REFRESH_S = 2.0


def _drain(path: Path, offset: int, out: TextIO) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    cut = data.rfind(b"\n") + 1  # whole lines only; the rest comes with the next read
    if cut:
        out.write(data[:cut].decode("utf-8", "replace"))
        out.flush()
    return offset + cut


def follow_files(record: RunRecord, out: TextIO, refresh: Callable[[], RunRecord],
                 poll: float = 0.2) -> RunRecord:
    """Print the current (or next) attempt's lines as they are written, moving on to later
    attempts, until the run is final. ``refresh`` re-reads the run (and notices a lost
    runner); it is called every couple of seconds."""
    meta = Path(record.meta_dir)
    status = read_status(meta) or {}
    attempt = int(status.get("attempt", 0))
    n = attempt + 1 if attempt == 0 or status.get("status") == st.PENDING else attempt
    offset = 0
    last_refresh = time.monotonic()
    while True:
        final = st.is_final(str(status.get("status", "")))
        offset = _drain(meta / "logs" / f"attempt_{n}.log", offset, out)
        if int(status.get("attempt", 0)) > n:
            n, offset = n + 1, 0
            continue
        if final:
            return refresh()
        time.sleep(poll)
        if time.monotonic() - last_refresh >= _REFRESH_S:
            record = refresh()
            last_refresh = time.monotonic()
        status = read_status(meta) or status
