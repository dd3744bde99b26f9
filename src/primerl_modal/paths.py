"""Where prm keeps its state on this machine: $PRM_HOME, else platformdirs' user data dir."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from primerl_modal.errors import PrmError

PACKAGED_PROFILES = Path(__file__).parent / "profiles"


def prm_home() -> Path:
    explicit = os.environ.get("PRM_HOME")
    if explicit:
        return Path(explicit).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("prm", appauthor=False))


def home_profiles() -> Path:
    return prm_home() / "profiles"


def price_overrides() -> dict[str, float]:
    """GPU prices from $PRM_HOME/prices.toml (``H100 = 3.50``), if the file exists.

    Raises PrmError for a malformed file.
    """
    path = prm_home() / "prices.toml"
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PrmError(f"{path}: cannot read prices ({e})", "fix or delete the file") from None
    table = data.get("prices", data)
    if not isinstance(table, dict):
        raise PrmError(f"{path}: expected GPU = price lines, e.g. H100 = 3.95")
    return table
