"""One way to print rows: a Rich table, or JSON whose keys are the same columns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from primerl_modal.ui import console

if TYPE_CHECKING:
    from rich.console import JustifyMethod

T = TypeVar("T")


def _plain(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


@dataclass(frozen=True)
class Column(Generic[T]):
    key: str  # the JSON key
    header: str
    value: Callable[[T], Any]  # the raw value (JSON)
    render: Callable[[Any], str] = _plain  # the table cell
    justify: JustifyMethod = "left"
    style: Callable[[Any], str] | None = None


def emit(rows: Sequence[T], columns: Sequence[Column[T]], *, json_out: bool,
         empty: str = "nothing to show") -> None:
    if json_out:
        keys = [c.key for c in columns]
        values = [c.value for c in columns]
        console.print_json([dict(zip(keys, [f(r) for f in values], strict=True))
                            for r in rows])
        return
    if not rows:
        if empty:
            console.err().print(empty)
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for c in columns:
        table.add_column(c.header, justify=c.justify, no_wrap=True)
    for row in rows:
        cells = []
        for c in columns:
            value = c.value(row)
            cells.append(Text(c.render(value), style=c.style(value) if c.style else ""))
        table.add_row(*cells)
    console.out().print(table)
