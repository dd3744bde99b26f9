"""prime-rl's episode records as data: which steps a run has, the episodes of one step, each
as a conversation, and the choice `prm rollouts` makes among them.

Where they are: prime-rl's file monitor writes ``rollouts/step_<N>/<split>/<subset>/
traces.jsonl`` (split ``train`` or ``eval``; subset ``all``, every episode, or ``effective``,
those that trained: ok, with a non-zero advantage), one verifiers episode record
(``Episode.to_record()``) a line. A record holds ``env.id``, ``ok``, ``is_timeout``,
``errors`` and ``traces``; a trace's ``nodes`` are a tree of messages (``parent`` is the
index of the previous message, absent on a root; ``sampled`` marks what the model wrote),
its ``rewards`` are ``{name: {score, weight}}`` (None where scoring did not run).

Reading is total: a record comes from a running process, so a field of the wrong shape
reads as missing instead of failing the command, and a line that is not a JSON object (the
torn last line of a file being written) is skipped and counted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from primerl_modal.errors import PrmError, UsageError

TRACES_FILE = "traces.jsonl"
# A turn longer than this is cut unless --full: enough to read a prompt or an answer's gist.
CUT_CHARS = 500
CUT_LINES = 12

_STEP_DIR = re.compile(r"step_(\d+)")


@dataclass(frozen=True)
class Reward:
    name: str
    score: float
    weight: float

    @property
    def value(self) -> float:
        return self.score * self.weight


@dataclass(frozen=True)
class Turn:
    """One message of a trace, in conversation order; ``branch`` > 0 for the messages only
    a later branch of the tree has (a retry, a compaction, a sub-agent)."""

    role: str
    text: str
    sampled: bool
    branch: int = 0


@dataclass(frozen=True)
class Trace:
    agent: str
    turns: tuple[Turn, ...]
    rewards: tuple[Reward, ...]
    metrics: dict[str, float]
    errors: tuple[str, ...]
    stop: str | None


@dataclass(frozen=True)
class Episode:
    """One record, as written (``record``), and what `prm rollouts` shows of it."""

    record: dict[str, Any]
    split: str
    env: str
    ok: bool
    is_timeout: bool
    errors: tuple[str, ...]
    traces: tuple[Trace, ...]

    @property
    def reward(self) -> float | None:
        """The total reward (score x weight, summed over traces); None when nothing was
        scored, as for a failed episode."""
        rewards = [r.value for t in self.traces for r in t.rewards]
        return sum(rewards) if rewards else None


def step_numbers(names: Iterable[str]) -> list[int]:
    """The steps of ``rollouts/``'s folder names (``step_<N>``), ascending."""
    return sorted(int(m.group(1)) for n in names if (m := _STEP_DIR.fullmatch(n)))


def step_ranges(steps: Sequence[int]) -> str:
    """``[1, 2, 3, 5, 7, 8]`` as ``1-3, 5, 7-8`` (``steps`` ascending)."""
    spans: list[list[int]] = []
    for step in steps:
        if spans and step == spans[-1][1] + 1:
            spans[-1][1] = step
        else:
            spans.append([step, step])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def parse_step(text: str) -> int | None:
    """``--step``: a step number, or None for ``latest``. Raises UsageError otherwise."""
    if text == "latest":
        return None
    if text.isdigit():
        return int(text)
    raise UsageError(f"--step {text!r} is neither a step number nor 'latest'",
                     "e.g. --step 40 or --step latest")


def pick_step(steps: Sequence[int], wanted: int | None, run_id: str, final: bool) -> int:
    """The step to read: ``wanted``, or the latest when it is None. Raises PrmError when the
    run has no rollouts (yet), or not that step, naming the steps it has."""
    yet = "" if final else " yet"
    if not steps:
        raise PrmError(f"{run_id} has no rollouts{yet}",
                       "prime-rl writes rollouts/step_<N>/ as it trains" if not final else
                       "it wrote no rollouts/step_<N>/ folder")
    if wanted is None:
        return steps[-1]
    if wanted not in steps:
        raise PrmError(f"{run_id} has no rollouts for step {wanted}{yet}",
                       f"steps {step_ranges(steps)}")
    return wanted


def parse_episodes(data: bytes, split: str) -> tuple[list[Episode], int]:
    """The episodes of one traces.jsonl, in file order, and how many lines were skipped."""
    episodes, skipped = [], 0
    for line in data.decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            episodes.append(episode(record, split))
        else:
            skipped += 1
    return episodes, skipped


def episode(record: dict[str, Any], split: str) -> Episode:
    env = _dict(record.get("env")).get("id")
    # an episode record holds its traces; some prime-rl versions write one trace a line
    found = _list(record.get("traces")) or ([record] if "nodes" in record else [])
    traces = tuple(trace(t) for t in found if isinstance(t, dict))
    return Episode(record, split, env if isinstance(env, str) else "?",
                   record.get("ok") is True, record.get("is_timeout") is True,
                   tuple(error_text(e) for e in _list(record.get("errors"))), traces)


def trace(data: dict[str, Any]) -> Trace:
    rewards = tuple(Reward(name, float(r["score"]), float(r.get("weight", 1.0)))
                    for name, r in _dict(data.get("rewards")).items()
                    if isinstance(r, dict) and _number(r.get("score"))
                    and _number(r.get("weight", 1.0)))
    metrics = {k: float(v) for k, v in _dict(data.get("metrics")).items() if _number(v)}
    agent = _dict(data.get("agent")).get("name")
    stop = data.get("stop_condition")
    return Trace(agent if isinstance(agent, str) else "agent", conversation(data.get("nodes")),
                 rewards, metrics, tuple(error_text(e) for e in _list(data.get("errors"))),
                 stop if isinstance(stop, str) else None)


def conversation(nodes: Any) -> tuple[Turn, ...]:
    """A trace's messages in conversation order: each branch of the tree from its root to
    its leaf (walking ``parent`` links), a message shared by several branches once."""
    items = [n for n in _list(nodes) if isinstance(n, dict)]
    parents = [_parent(n, len(items)) for n in items]
    has_child = {p for p in parents if p is not None}
    shown: set[int] = set()
    turns: list[Turn] = []
    leaves = [i for i in range(len(items)) if i not in has_child]
    for branch, leaf in enumerate(leaves):
        path: list[int] = []
        node: int | None = leaf
        while node is not None and node not in path:  # a cycle in bad data ends the walk
            path.append(node)
            node = parents[node]
        for i in reversed(path):
            if i not in shown:
                shown.add(i)
                turns.append(_turn(items[i], branch))
    return tuple(turns)


def _parent(node: dict[str, Any], count: int) -> int | None:
    parent = node.get("parent")
    ok = isinstance(parent, int) and not isinstance(parent, bool) and 0 <= parent < count
    return parent if ok else None


def _turn(node: dict[str, Any], branch: int) -> Turn:
    message = _dict(node.get("message"))
    role = message.get("role")
    return Turn(role if isinstance(role, str) else "?", message_text(message),
                node.get("sampled") is True, branch)


def message_text(message: dict[str, Any]) -> str:
    """A message's text: its content (a string, or text parts; other parts named, e.g.
    ``[image_url]``), then its reasoning and tool calls, if any."""
    content = message.get("content")
    if isinstance(content, list):
        parts = [_dict(p) for p in content]
        text = "".join(p["text"] if isinstance(p.get("text"), str) else f"[{p.get('type')}]"
                       for p in parts)
    else:
        text = content if isinstance(content, str) else ""
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        text = f"<reasoning>{reasoning}</reasoning>\n{text}" if text else reasoning
    calls = [_dict(c) for c in _list(message.get("tool_calls"))]
    text += "".join(f"\n[tool call {c.get('name')}({c.get('arguments', '')})]" for c in calls)
    return text.strip("\n")


def error_text(error: Any) -> str:
    """A verifiers error (``{type, message, status_code?}``) on one line."""
    if not isinstance(error, dict):
        return str(error)
    kind, message = error.get("type"), error.get("message")
    return ": ".join(str(x) for x in (kind, message) if x) or json.dumps(error)


def choose(episodes: list[Episode], env: str | None, sort: str | None) -> list[Episode]:
    """The episodes of ``env`` (all when None), sorted by total reward (``reward`` lowest
    first, ``-reward`` highest first; an episode without a reward counts as the lowest;
    None keeps the file's order)."""
    chosen = [e for e in episodes if env is None or e.env == env]
    if sort is not None:
        lowest = float("-inf")
        chosen.sort(key=lambda e: lowest if e.reward is None else e.reward,
                    reverse=sort == "-reward")
    return chosen


def cut(text: str, full: bool) -> tuple[str, int]:
    """``text`` cut to CUT_LINES lines and CUT_CHARS characters unless ``full``, and how
    many characters were cut."""
    if full:
        return text, 0
    head = "\n".join(text.split("\n")[:CUT_LINES])[:CUT_CHARS]
    return head, len(text) - len(head)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
