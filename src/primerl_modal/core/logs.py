"""Log lines of a run, wherever they come from, and the filters `prm logs` applies.

The runner's attempt logs (``_prm/<run-id>/logs/attempt_<n>.log``) hold one line per
forwarded line: ``<unix time> [<component>] <text>``. Modal's live stream carries the same
lines without the time (each entry has its own).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_PREFIXED = re.compile(r"\[([\w./-]+)\] ?(.*)", re.S)


@dataclass(frozen=True)
class LogLine:
    t: float | None
    attempt: int
    component: str
    text: str

    def render(self) -> str:
        return f"[{self.component}] {self.text}"

    def to_json(self) -> dict[str, object]:
        return {"t": self.t, "attempt": self.attempt, "component": self.component,
                "line": self.text}


def parse_prefixed(text: str, t: float | None, attempt: int) -> LogLine:
    """``[trainer] step 3`` -> component trainer; a line without a prefix is Modal's own."""
    match = _PREFIXED.match(text)
    if match:
        return LogLine(t, attempt, match.group(1), match.group(2))
    return LogLine(t, attempt, "modal", text)


def parse_stored(raw: str, attempt: int) -> LogLine:
    """One line of an attempt log: ``<unix time> [<component>] <text>``."""
    stamp, _, rest = raw.partition(" ")
    try:
        t: float | None = float(stamp)
    except ValueError:
        t, rest = None, raw
    return parse_prefixed(rest, t, attempt)


def parse_attempt_log(text: str, attempt: int) -> Iterator[LogLine]:
    # Lines end at "\n" only: a "\r" written by an older runner stays inside its line.
    for raw in text.split("\n"):
        if raw:
            yield parse_stored(raw, attempt)


@dataclass(frozen=True)
class LogFilter:
    components: frozenset[str] | None = None
    since: float | None = None
    grep: re.Pattern[str] | None = None
    attempt: int | None = None

    def keep(self, line: LogLine) -> bool:
        if self.components is not None and line.component not in self.components:
            return False
        if self.attempt is not None and line.attempt != self.attempt:
            return False
        if self.since is not None and line.t is not None and line.t < self.since:
            return False
        return self.grep is None or bool(self.grep.search(line.text))

    def apply(self, lines: Iterable[LogLine]) -> Iterator[LogLine]:
        return (line for line in lines if self.keep(line))


def tail(lines: Iterable[LogLine], n: int) -> list[LogLine]:
    """The last ``n`` lines (all of them for n = 0)."""
    return list(lines) if n <= 0 else list(deque(lines, maxlen=n))
