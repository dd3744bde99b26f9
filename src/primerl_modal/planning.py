"""Glue between the CLI and the pure core: resolve a profile on this machine and plan it."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from primerl_modal import paths
from primerl_modal.core.gpus import catalogue
from primerl_modal.core.plan import MODAL_LAYOUT, Layout, Plan, build_plan
from primerl_modal.core.profile import (
    DEFAULT_PROFILE,
    ResolvedProfile,
    SearchPath,
    Setting,
    resolve,
)


def search_path(cwd: Path | None = None) -> SearchPath:
    return SearchPath(
        cwd=cwd or Path.cwd(), home_profiles=paths.home_profiles(),
        packaged=paths.PACKAGED_PROFILES,
    )


def plan_profile(
    name: str | None,
    settings: Sequence[Setting] = (),
    *,
    layout: Layout = MODAL_LAYOUT,
    now: datetime | None = None,
) -> tuple[Plan, ResolvedProfile]:
    """Resolve profile ``name`` (default: reverse-text) with ``settings`` and plan one run.

    Raises PrmError (ProfileError, PlanError) for anything that would not launch.
    """
    profile = resolve(name or DEFAULT_PROFILE, search_path(), settings)
    plan = build_plan(
        profile, catalogue(paths.price_overrides()),
        now=now or datetime.now(UTC), token=secrets.token_hex(2), layout=layout,
    )
    return plan, profile
