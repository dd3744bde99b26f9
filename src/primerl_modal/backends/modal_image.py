"""The run's container image as Modal builds it, from the pure ImageSpec of core/image_spec."""

from __future__ import annotations

from pathlib import Path

import modal

from primerl_modal.core.image_spec import OVERLAY_DIRS, OVERLAY_IGNORE, ImageSpec
from primerl_modal.core.plan import Plan
from primerl_modal.errors import PrmError


def to_modal_image(spec: ImageSpec) -> modal.Image:
    image = modal.Image.from_registry(spec.base, add_python=spec.python)
    if not spec.prebuilt:
        image = image.apt_install(*spec.apt).env(dict(spec.env))
        for layer in spec.layers:
            image = image.run_commands(" && ".join(layer))
        image = image.workdir(spec.workdir)
    # Attached at container start (copy=False): editing them rebuilds nothing.
    for local, remote in spec.overlays:
        image = image.add_local_dir(local, remote, copy=False, ignore=list(OVERLAY_IGNORE))
    return image.add_local_python_source("primerl_modal", copy=False)


def check_local_code(plan: Plan) -> None:
    """The local-code overlay's folders must exist before anything is sent to Modal."""
    if not plan.local_code:
        return
    missing = [d for d in OVERLAY_DIRS if not (Path(plan.local_code) / d).is_dir()]
    if missing:
        raise PrmError(
            f"local code {plan.local_code} has no {missing[0]}/ folder",
            "point --local-code at a prime-rl checkout (with src/ and configs/)",
        )


def controller_image() -> modal.Image:
    return modal.Image.debian_slim(python_version="3.12").add_local_python_source(
        "primerl_modal", copy=False)
