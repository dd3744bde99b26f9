"""Log lines of a run, wherever they come from, and the filters `prm logs` applies.

The runner's attempt logs (``_prm/<run-id>/logs/attempt_<n>.log``) hold one line per
forwarded line: ``<unix time> [<component>] <text>``. Modal's live stream carries the same
lines without the time (each entry has its own). The nodes of a cluster prefix theirs with
the node: ``[node1/trainer]`` (rank 0's in the same file, the others' in
``logs/node<rank>/attempt_<n>.log``).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_PREFIXED = re.compile(r"\[(?:node(\d+)/)?([\w./-]+)\] ?(.*)", re.S)


@dataclass(frozen=True)
class LogLine:
    t: float | None
    attempt: int
    component: str
    text: str
    node: int | None = None  # the cluster node (rank) it comes from

    def render(self) -> str:
        where = "" if self.node is None else f"node{self.node}/"
        return f"[{where}{self.component}] {self.text}"

    def to_json(self) -> dict[str, object]:
        return {"t": self.t, "attempt": self.attempt, "component": self.component,
                "line": self.text, **({} if self.node is None else {"node": self.node})}


def parse_prefixed(text: str, t: float | None, attempt: int) -> LogLine:
    """``[trainer] step 3`` -> component trainer; ``[node1/trainer]`` -> node 1's trainer;
    a line without a prefix is Modal's own."""
    match = _PREFIXED.match(text)
    if match:
        node = int(match.group(1)) if match.group(1) is not None else None
        return LogLine(t, attempt, match.group(2), match.group(3), node)
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
    node: int | None = None

    def keep(self, line: LogLine) -> bool:
        if self.components is not None and line.component not in self.components:
            return False
        if self.node is not None and line.node != self.node:
            return False
        if self.attempt is not None and line.attempt != self.attempt:
            return False
        if self.since is not None and line.t is not None and line.t < self.since:
            return False
        return self.grep is None or bool(self.grep.search(line.text))

    def apply(self, lines: Iterable[LogLine]) -> Iterator[LogLine]:
        return (line for line in lines if self.keep(line))


def merged(logs: Iterable[Iterable[LogLine]]) -> list[LogLine]:
    """The lines of several nodes' logs of one run as one log: by attempt, then by time
    (each node's own order kept for lines of the same time)."""
    lines = [line for log in logs for line in log]
    return sorted(lines, key=lambda line: (line.attempt, line.t or 0.0))


def tail(lines: Iterable[LogLine], n: int) -> list[LogLine]:
    """The last ``n`` lines (all of them for n = 0)."""
    return list(lines) if n <= 0 else list(deque(lines, maxlen=n))
