"""Run ids: ``<name>-<UTC yymmdd-HHMMSS>-<4 hex>``, lowercase [a-z0-9-], at most 63 chars.

The same id names the Modal app, prime-rl's run.name, the W&B run and the folder on the
volume, so it must satisfy the strictest of them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from primerl_modal.errors import PlanError

MAX_LEN = 63
_SUFFIX_LEN = len("-yymmdd-HHMMSS-abcd")
MAX_NAME_LEN = MAX_LEN - _SUFFIX_LEN
RUN_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def slug(name: str) -> str:
    """Lowercase, with every run of other characters turned into one dash."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def check_name(name: str) -> str:
    """The slug of an experiment name, checked to fit in a run id.

    Raises PlanError for a name with no usable character or one too long.
    """
    s = slug(name)
    if not s:
        raise PlanError(
            f"experiment name {name!r} has no letters or digits to make a run id from",
            "use --name with letters, digits and dashes",
        )
    if len(s) > MAX_NAME_LEN:
        raise PlanError(
            f"experiment name {name!r} is {len(s)} characters; a run id has room for "
            f"{MAX_NAME_LEN}",
            "shorten it with --name",
        )
    return s


def make_run_id(name: str, now: datetime, token: str) -> str:
    """The run id for ``name`` at ``now`` (UTC) with a 4-hex ``token``.

    Raises PlanError (see check_name).
    """
    stamp = now.astimezone(UTC).strftime("%y%m%d-%H%M%S")
    return f"{check_name(name)}-{stamp}-{token[:4].lower()}"


def trial_index(run_id: str) -> int:
    """The index of a sweep trial from its run id ``<sweep-id>-<index>``."""
    return int(run_id.rsplit("-", 1)[1])


def is_run_id(text: str) -> bool:
    return bool(RUN_ID.match(text)) and len(text) <= MAX_LEN
