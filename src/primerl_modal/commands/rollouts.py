"""`prm rollouts`: what the model generated at one step, from prime-rl's episode records.
Only the listing of ``rollouts/``, of the step's folder and that step's traces files are
read, as the run has written (on Modal: committed) them so far, never the whole run."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from primerl_modal.ui.options import JsonOption, RunArg

if TYPE_CHECKING:
    from primerl_modal.backends.base import Backend
    from primerl_modal.core.rollouts import Episode
    from primerl_modal.run_index import RunRecord

ROLLOUTS = "rollouts"


def rollouts(
    run: RunArg,
    step: Annotated[
        str, typer.Option("--step", metavar="N|latest",
                          help="The training step whose episodes to show: latest or a "
                               "step number.")
    ] = "latest",
    kind: Annotated[
        Literal["all", "effective"],
        typer.Option("--kind", help="Every episode, or only those that trained (ok, with a "
                                    "non-zero advantage).")
    ] = "all",
    env: Annotated[
        str | None, typer.Option("--env", metavar="NAME",
                                 help="Only the episodes of this environment id.")
    ] = None,
    sort: Annotated[
        Literal["reward", "-reward"] | None,
        typer.Option("--sort", help="By total reward: lowest first, or highest first "
                                    "(-reward). Failed episodes count as the lowest. "
                                    "Default: as written.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=0, metavar="N",
                          help="At most this many episodes (0 = all).")
    ] = 5,
    full: Annotated[
        bool, typer.Option("--full", help="Show long messages whole instead of cut.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Show a step's episodes as conversations: environment, rewards, the system and user
    turns and what the model sampled (highlighted), errors and timeouts.

    prime-rl writes them to rollouts/step_N/{train,eval}/{all,effective}/traces.jsonl;
    a running run shows what it has written so far. --json prints the records as prime-rl
    wrote them, one a line.

    Examples:

    \b
      prm rollouts math-8x-261129
      prm rollouts math-8x-261129 --step latest --limit 2 --sort -reward
      prm rollouts math-8x-261129 --step 40 --kind effective --env reverse-text --full
      prm rollouts math-8x-261129 --sort reward --limit 0 --json > step.jsonl
    """
    from primerl_modal.backends import get_backend
    from primerl_modal.core import rollouts as ro
    from primerl_modal.core import status as st
    from primerl_modal.run_index import open_index

    wanted = ro.parse_step(step)
    index = open_index()
    record = index.find(run)
    backend = get_backend(record.backend, index)
    entries = backend.list_run_dir(record, ROLLOUTS) or []
    steps = ro.step_numbers(e.name for e in entries if e.is_dir)
    chosen = ro.pick_step(steps, wanted, record.run_id, st.is_final(record.status))
    episodes = _read(backend, record, chosen, kind)
    matching = ro.choose(episodes, env, sort)
    if env is not None and not matching:
        _no_env(record.run_id, chosen, env, episodes)
    shown = matching[:limit] if limit else matching
    if json_out:
        sys.stdout.write("".join(json.dumps(e.record) + "\n" for e in shown))
        return
    from primerl_modal.ui import console
    from primerl_modal.ui.rollouts_view import render

    heading = _heading(chosen, steps, kind, env, sort, len(shown), len(matching))
    console.out().print(render(shown, heading, full))


def _read(backend: Backend, record: RunRecord, step: int, kind: str) -> list[Episode]:
    """The step's episodes of subset ``kind``, of every split (train, eval) it has.

    Raises PrmError when the step has no such file (yet).
    """
    from primerl_modal.core import rollouts as ro
    from primerl_modal.errors import PrmError
    from primerl_modal.ui import console

    folder = f"{ROLLOUTS}/step_{step}"
    splits = [e.name for e in backend.list_run_dir(record, folder) or [] if e.is_dir]
    files = {split: backend.read_run_file(record, f"{folder}/{split}/{kind}/{ro.TRACES_FILE}")
             for split in splits}
    if all(data is None for data in files.values()):
        there = ", ".join(f"{split}/" for split in splits) or "nothing"
        raise PrmError(f"{record.run_id} has no {kind}/{ro.TRACES_FILE} at step {step}",
                       f"{folder}/ holds {there}")
    episodes: list[Episode] = []
    skipped = 0
    for split, data in files.items():
        if data is not None:
            read, bad = ro.parse_episodes(data, split)
            episodes += read
            skipped += bad
    if skipped:
        console.warn(f"skipped {skipped} line(s) that are not episode records "
                     "(a line being written reads so)")
    return episodes


def _no_env(run_id: str, step: int, env: str, episodes: list[Episode]) -> None:
    from primerl_modal.errors import PrmError

    envs = sorted({e.env for e in episodes})
    raise PrmError(f"{run_id} has no episodes of env {env!r} at step {step}",
                   f"its envs there: {', '.join(envs)}" if envs else "it has no episodes there")


def _heading(step: int, steps: list[int], kind: str, env: str | None, sort: str | None,
             shown: int, total: int) -> str:
    from primerl_modal.core.rollouts import step_ranges

    order = {"reward": ", lowest reward first", "-reward": ", highest reward first"}
    of_env = f" of {env}" if env else ""
    return (f"step {step} (steps {step_ranges(steps)}) · {kind} · {shown} of {total} "
            f"episode{'s' if total != 1 else ''}{of_env}{order.get(sort or '', '')}")
