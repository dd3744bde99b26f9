"""How `prm rollouts` shows episodes: each as a conversation, the model's own words
highlighted, its rewards, and why it failed when it did."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from primerl_modal.core.rollouts import Episode, Trace, Turn, cut

ROLE_STYLE = {"system": "magenta", "user": "cyan", "assistant": "yellow", "tool": "blue"}
# What the model sampled: the text a researcher is looking for.
SAMPLED_STYLE = "bold green"


def render(episodes: list[Episode], heading: str, full: bool) -> RenderableType:
    """``heading`` (which step, subset, order), then every episode."""
    parts: list[RenderableType] = [Text(heading, style="bold")]
    for e in episodes:
        parts += [Text(""), _header(e), _body(e, full)]
    return Group(*parts)


def _header(e: Episode) -> Text:
    ident = e.record.get("id")
    text = Text.assemble(
        ("── ", "dim"), (e.env, "bold"),
        ("  " + str(ident)[:12] if isinstance(ident, str) else "", "dim"),
        (f"  {e.split}", "dim"),
    )
    if e.reward is not None:
        text.append(f"  reward {e.reward:.3f}", style="bold")
    if not e.ok:
        text.append("  timed out" if e.is_timeout else "  failed", style="bold red")
    return text


def _body(e: Episode, full: bool) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column()
    for error in e.errors:
        grid.add_row(Text("error", style="red"), Text(error, style="red"))
    for n, t in enumerate(e.traces):
        if len(e.traces) > 1:
            grid.add_row(Text(f"trace {n + 1}", style="bold"), Text(t.agent, style="bold"))
        _add_trace(grid, t, full)
    return grid


def _add_trace(grid: Table, t: Trace, full: bool) -> None:
    for error in t.errors:
        grid.add_row(Text("error", style="red"), Text(error, style="red"))
    if not t.turns:
        grid.add_row("", Text("(no messages)", style="dim"))
    branch = 0
    for turn in t.turns:
        if turn.branch != branch:
            branch = turn.branch
            grid.add_row("", Text(f"branch {branch + 1}", style="dim italic"))
        grid.add_row(_role(turn), _text(turn, full))
    if t.rewards:
        shown = [f"{r.name} {r.score:.3f}" + ("" if r.weight == 1 else f" x {r.weight:g}")
                 for r in t.rewards]
        grid.add_row(Text("reward", style="dim"), Text("   ".join(shown)))
    extra = {k: v for k, v in t.metrics.items() if k not in {r.name for r in t.rewards}}
    if extra:
        shown = [f"{k} {v:.4g}" for k, v in extra.items()]
        grid.add_row(Text("metrics", style="dim"), Text("   ".join(shown), style="dim"))
    if t.stop not in (None, "completed"):
        grid.add_row(Text("stop", style="dim"), Text(str(t.stop), style="yellow"))


def _role(turn: Turn) -> Text:
    # an assistant message the model did not write (a few-shot example) says so
    label = turn.role if turn.sampled or turn.role != "assistant" else "assistant (prompt)"
    return Text(label, style=SAMPLED_STYLE if turn.sampled else ROLE_STYLE.get(turn.role, ""))


def _text(turn: Turn, full: bool) -> Text:
    shown, dropped = cut(turn.text, full)
    text = Text(shown, style=SAMPLED_STYLE if turn.sampled else "")
    if dropped:
        text.append(f" ... ({dropped:,} more characters; --full shows them)", style="dim")
    return text
