"""The container image of a plan, as pure data: every build step is a function of the
profile alone, so two launches of the same profile and ref send identical steps in
identical order and Modal rebuilds nothing. What changes between launches (the local-code
overlay, prm's own runner) is attached at container start, after every build step."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from primerl_modal.core.plan import Plan

PYTHON = "3.12"  # prime-rl's Dockerfile.cuda
APT = ("git", "curl", "ca-certificates", "build-essential", "nvtop", "htop", "tmux")
UV = "uv>=0.8,<1"
CACHE_ENV = {
    "HF_HOME": "/cache/huggingface",
    "VLLM_CACHE_ROOT": "/cache/vllm",
    "TORCHINDUCTOR_CACHE_DIR": "/cache/torchinductor",
    "TRITON_CACHE_DIR": "/cache/triton",
    "UV_COMPILE_BYTECODE": "1",
    "UV_LINK_MODE": "copy",
    "PYTHONUNBUFFERED": "1",
}
OVERLAY_DIRS = ("src", "configs")
OVERLAY_IGNORE = (".git", ".venv", "**/__pycache__", "outputs", "**/.pytest_cache",
                  "**/.mypy_cache", "**/.ruff_cache", "wandb")


@dataclass(frozen=True)
class ImageSpec:
    base: str
    python: str
    apt: tuple[str, ...]
    layers: tuple[tuple[str, ...], ...]  # each a run_commands step, in order
    env: tuple[tuple[str, str], ...]
    workdir: str
    overlays: tuple[tuple[str, str], ...]  # (local dir, container dir), attached at start

    def build_steps(self) -> list[str]:
        """Every build step as text: what must be equal for Modal to reuse the image."""
        steps = [f"FROM {self.base} (python {self.python})", "apt " + " ".join(self.apt)]
        steps += ["RUN " + " && ".join(layer) for layer in self.layers]
        steps += [f"ENV {k}={v}" for k, v in self.env]
        return [*steps, f"WORKDIR {self.workdir}"]


def image_spec(plan: Plan) -> ImageSpec:
    checkout = plan.workdir
    clone = (
        "git config --global url.https://github.com/.insteadOf git@github.com:",
        f"git clone {shlex.quote(plan.repo)} {checkout}",
        f"git -C {checkout} checkout --detach {shlex.quote(plan.ref)}",
        f"git -C {checkout} submodule update --init --recursive",
    )
    sync = (f"cd {checkout}", "uv sync --all-extras --locked")
    overlays: tuple[tuple[str, str], ...] = ()
    if plan.local_code:
        overlays = tuple((f"{plan.local_code}/{d}", f"{checkout}/{d}") for d in OVERLAY_DIRS)
    return ImageSpec(
        base=plan.base_image,
        python=PYTHON,
        apt=APT,
        layers=((f"python -m pip install --no-cache-dir '{UV}'",), clone, sync),
        env=tuple(CACHE_ENV.items()),
        workdir=checkout,
        overlays=overlays,
    )
