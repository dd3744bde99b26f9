"""Glue between the CLI and the pure core: resolve a profile on this machine and plan it."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from primerl_modal import paths
from primerl_modal.core.plan import MODAL_LAYOUT, Layout, Plan, build_plan
from primerl_modal.core.profile import (
    DEFAULT_PROFILE,
    ResolvedProfile,
    SearchPath,
    Setting,
    resolve,
)
from primerl_modal.core.schema import BACKENDS
from primerl_modal.errors import ProfileError
from primerl_modal.prices import PriceFetch, catalogue_for

if TYPE_CHECKING:
    pass


def search_path(cwd: Path | None = None) -> SearchPath:
    return SearchPath(
        cwd=cwd or Path.cwd(), home_profiles=paths.home_profiles(),
        packaged=paths.PACKAGED_PROFILES,
    )


def layout_for(profile: ResolvedProfile) -> Layout:
    """The layout of the profile's backend ([backend] kind, or --backend).

    Raises PrmError for an unknown backend or a local one without a checkout.
    """
    kind = profile.get("backend.kind")
    if kind == "modal":
        return MODAL_LAYOUT
    if kind == "local":
        from primerl_modal.backends.local import local_layout

        return local_layout(profile)
    raise ProfileError(f"unknown backend {kind!r}", f"use one of: {', '.join(BACKENDS)}")


def plan_profile(
    name: str | None,
    settings: Sequence[Setting] = (),
    *,
    layout: Layout | None = None,
    now: datetime | None = None,
    pass_env: Sequence[str] = (),
    prices: PriceFetch = "cached",
) -> tuple[Plan, ResolvedProfile]:
    """Resolve profile ``name`` (default: reverse-text) with ``settings`` and plan one run;
    ``prices`` says whether Modal's current rates may be fetched (prices.catalogue_for).

    Raises PrmError (ProfileError, PlanError) for anything that would not launch.
    """
    profile = resolve(name or DEFAULT_PROFILE, search_path(), settings)
    layout = layout or layout_for(profile)
    plan = build_plan(
        profile, catalogue_for(layout.backend, prices),
        now=now or datetime.now(UTC), token=secrets.token_hex(2), layout=layout,
        pass_env=tuple(pass_env),
    )
    return plan, profile
