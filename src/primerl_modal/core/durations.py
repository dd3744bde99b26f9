"""Duration strings such as ``90s``, ``30m``, ``6h``, ``1h30m`` or ``2d``."""

from __future__ import annotations

import re

from primerl_modal.errors import PrmError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(value: str | int | float, *, what: str = "duration") -> int:
    """Seconds in ``value``: a number of seconds or a string like ``1h30m``.

    Raises PrmError for anything else.
    """
    if isinstance(value, bool):
        raise PrmError(
            f"{what}: expected a duration, got {value!r}", "write it like 6h, 30m or 90s"
        )
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        elif text and _PART.sub("", text) == "":
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
        else:
            raise PrmError(
                f"{what}: cannot read duration {value!r}", "write it like 6h, 30m, 1h30m or 90s"
            )
    if seconds <= 0:
        raise PrmError(f"{what}: duration must be positive, got {value!r}")
    return int(round(seconds))


def format_duration(seconds: float) -> str:
    """A short human form: ``45s``, ``12m``, ``3h05m``, ``24h``, ``2d04h``.

    Hours go up to two days, so Modal's 24h limit reads 24h wherever prm shows it.
    """
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s % 60 and s < 600 else f"{s // 60}m"
    if s < 2 * 86400:
        h, m = divmod(s // 60, 60)
        return f"{h}h{m:02d}m" if m else f"{h}h"
    d, h = divmod(s // 3600, 24)
    return f"{d}d{h:02d}h" if h else f"{d}d"
