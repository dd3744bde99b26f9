"""Modal's billing API, where prm meets it: the workspace's current rates, and what Modal
billed each app per hour with the apps' prm tags (a run's app carries ``prm-run=<run id>``,
a sweep's ``prm-sweep=<sweep id>``). Both need the server: the caller makes the bounded first
contact (modal_client.connect) before either."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import modal

from primerl_modal.backends.modal_client import modal_errors

RUN_TAG, SWEEP_TAG = "prm-run", "prm-sweep"


@dataclass(frozen=True)
class BilledItem:
    """One app's cost in one hour, as Modal billed it."""

    app_id: str
    interval_start: datetime
    cost: Decimal
    tags: Mapping[str, str]


def rates() -> dict[str, str]:
    """The workspace's current rates, resource name -> USD (a Decimal's text).

    Raises PrmError for anything Modal answers instead (modal_errors).
    """
    with modal_errors():
        found = modal.Workspace.from_context().billing.rates()
        return {str(name): str(value) for name, value in found.items()}


def report(start: datetime) -> list[BilledItem]:
    """What Modal billed from ``start`` (UTC, rounded down to the hour) until now, per app
    and hour, with the apps' prm tags. Modal reports whole hours only: the hour under way is
    not in it yet.

    Raises PrmError for anything Modal answers instead (modal_errors).
    """
    with modal_errors():
        items = modal.Workspace.from_context().billing.report(
            start=start, resolution="h", tag_names=[RUN_TAG, SWEEP_TAG])
    return [BilledItem(i.object_id, i.interval_start, i.cost, dict(i.tags)) for i in items]
