"""Shell completion: run ids, sweep ids and profile names (typer's autocompletion hooks).

Completion runs on every Tab press, so it reads the index directly and never fails loudly.
"""

from __future__ import annotations

from pathlib import Path


def _ids(table: str, column: str, incomplete: str) -> list[str]:
    import sqlite3

    from primerl_modal.paths import prm_home
    from primerl_modal.run_index import FILE_NAME

    path = prm_home() / FILE_NAME
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        rows = db.execute(
            f"SELECT {column} FROM {table} WHERE {column} LIKE ? ORDER BY created_at DESC "
            "LIMIT 100", (incomplete.replace("%", "") + "%",)).fetchall()
    except sqlite3.Error:
        return []
    return [r[0] for r in rows]


def run_ids(incomplete: str) -> list[str]:
    return _ids("runs", "run_id", incomplete)


def sweep_ids(incomplete: str) -> list[str]:
    return _ids("sweeps", "sweep_id", incomplete)


def profiles(incomplete: str) -> list[str]:
    """Profile names from ./configs, $PRM_HOME/profiles and the shipped ones, plus .toml
    files in the working directory."""
    from primerl_modal.paths import PACKAGED_PROFILES, home_profiles

    names = set()
    for folder in (Path("configs"), home_profiles(), PACKAGED_PROFILES):
        names |= {p.stem for p in folder.glob("*.toml") if p.stem != "base"}
    names |= {str(p) for p in Path().glob("*.toml")}
    return sorted(n for n in names if n.startswith(incomplete))
