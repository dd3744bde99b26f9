"""`prm logs`: a run's lines, per component, from its stored attempt logs (forever) and,
with -f, live until it ends."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from primerl_modal.ui.options import JsonOption, RunArg

if TYPE_CHECKING:
    from primerl_modal.core.logs import LogLine


def logs(
    run: RunArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the run ends.")
    ] = False,
    component: Annotated[
        str | None,
        typer.Option("--component", "-c",
                     help="Only these components: trainer, orchestrator, inference, env, "
                          "launcher, runner; in a cluster also router, node "
                          "(comma-separated)."),
    ] = None,
    tail_n: Annotated[
        int, typer.Option("--tail", "-n", min=0,
                          help="Last N lines already written (0 = all).")
    ] = 200,
    since: Annotated[
        str | None, typer.Option("--since", help="Only lines from this window, e.g. 10m.")
    ] = None,
    grep: Annotated[
        str | None, typer.Option("--grep", "-g", help="Only lines matching this regex.")
    ] = None,
    attempt: Annotated[
        int | None, typer.Option("--attempt", min=1, help="Only this attempt (1 is the first).")
    ] = None,
    node: Annotated[
        int | None, typer.Option("--node", min=0,
                                 help="Only this node of a multi-node run (0 is rank 0).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Print a run's logs, each line prefixed with its component.

    A finished run's logs come from the files its runner wrote on the outputs (volume or
    folder), so they exist as long as the run's files do.

    Examples:

    \b
      prm logs math-8x-261129 -f
      prm logs math-8x-261129 -c trainer --grep 'loss|error' --tail 0
      prm logs math-8x-261129 --attempt 2 --since 30m --json
      prm logs qwen3-30b-math-261130 --node 1 -c trainer
    """
    from primerl_modal.backends import get_backend
    from primerl_modal.core import status as st
    from primerl_modal.core.durations import parse_duration
    from primerl_modal.core.logs import LogFilter, tail
    from primerl_modal.errors import UsageError
    from primerl_modal.run_index import open_index

    try:
        pattern = re.compile(grep) if grep else None
    except re.error as e:
        raise UsageError(f"--grep {grep!r} is not a valid regex ({e})") from None
    components = frozenset(c.strip() for c in (component or "").split(",") if c.strip()) or None
    cutoff = time.time() - parse_duration(since, what="--since") if since else None
    keep = LogFilter(components, cutoff, pattern, attempt, node)
    index = open_index()
    record = index.find(run)
    backend = get_backend(record.backend, index)
    (record,) = backend.refresh([record])

    def show(line: LogLine) -> None:
        text = json.dumps(line.to_json()) if json_out else line.render()
        sys.stdout.write(text + "\n")

    seen: dict[int, int] = {}  # lines already stored, per attempt: live lines start after
    have: set[str] = set()  # components with stored lines
    nodes: set[int] = set()  # cluster nodes with stored lines

    def stored() -> Iterator[LogLine]:
        for line in backend.stored_logs(record):
            seen[line.attempt] = seen.get(line.attempt, 0) + 1
            if node is None or line.node == node:
                have.add(line.component)
            if line.node is not None:
                nodes.add(line.node)
            yield line

    for line in tail(keep.apply(stored()), tail_n):
        show(line)
    sys.stdout.flush()
    if not follow or st.is_final(record.status):
        # a filter naming what the run does not have says so, rather than print nothing
        _require_node(record.run_id, node, nodes, st.is_final(record.status))
        _require(record.run_id, components, have, attempt,
                 set(seen) | set(range(1, record.attempts + 1)), st.is_final(record.status))
        return
    try:
        for line in backend.live_logs(record, seen):
            if keep.keep(line):
                show(line)
                sys.stdout.flush()
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _require_node(run_id: str, node: int | None, nodes: set[int], final: bool) -> None:
    from primerl_modal.errors import PrmError

    if node is None or node in nodes:
        return
    if not nodes:
        raise PrmError(f"{run_id} has no node {node}" + ("" if final else " yet"),
                       "it is a single-node run: drop --node" if final else
                       "its nodes have written no lines so far")
    raise PrmError(f"{run_id} has no node {node}" + ("" if final else " yet"),
                   f"its nodes: {', '.join(map(str, sorted(nodes)))}")


def _require(run_id: str, components: frozenset[str] | None, have: set[str],
             attempt: int | None, attempts: set[int], final: bool) -> None:
    """Raises PrmError for a component or an attempt the run does not have, naming those
    it has (so far, when it is not final)."""
    from primerl_modal.errors import PrmError

    yet, so_far = ("", "") if final else (" yet", " so far")
    if attempt is not None and attempt not in attempts:
        has = (f"its attempts{so_far}: {', '.join(map(str, sorted(attempts)))}" if attempts
               else f"it has no attempts{yet}")
        raise PrmError(f"{run_id} has no attempt {attempt}{yet}", has)
    missing = sorted((components or frozenset()) - have)
    if missing:
        has = (f"its components{so_far}: {', '.join(sorted(have))}" if have
               else f"it has no log lines{yet}")
        raise PrmError(f"{run_id} has no {', '.join(missing)} lines{yet}", has)
