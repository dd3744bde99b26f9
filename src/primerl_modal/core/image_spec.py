"""The container image of a plan, as pure data: every build step is a function of the
profile alone, so two launches of the same profile and ref send identical steps in
identical order and Modal rebuilds nothing. What changes between launches (the local-code
overlay, prm's own runner) is attached at container start, after every build step.

A built image installs prime-rl as prime-rl's own Dockerfile.cuda and CI do: the pinned
commit, the public submodules CI initialises, `uv sync --all-extras --all-packages --locked
--no-dev`. A prebuilt image (`[prime_rl] image`) is prime-rl's published one, used as is.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from primerl_modal.core.plan import Plan

PYTHON = "3.12"  # prime-rl's Dockerfile.cuda; its pyproject requires ~=3.12.0
APT = ("git", "curl", "ca-certificates", "build-essential", "nvtop", "htop", "tmux")
# A cluster's NCCL over RDMA needs the InfiniBand user libraries, as in prime-rl's
# Dockerfile.cuda runtime stage; single-node images go without (and are not rebuilt).
RDMA_APT = ("libibverbs1", "ibverbs-providers", "librdmacm1")
# Set before the sync step so they apply to it; no uv cache is left in a layer.
BUILD_ENV = (("UV_COMPILE_BYTECODE", "1"), ("UV_LINK_MODE", "copy"), ("UV_NO_CACHE", "1"))
# The submodules prime-rl's CI initialises (.github/workflows/gpu_tests.yaml); the others
# are private. Only those the ref declares are initialised, so older layouts still build.
PUBLIC_SUBMODULES = ("deps/verifiers", "deps/renderers", "deps/prime-envs",
                     "deps/pydantic-config")
SYNC = "uv sync --all-extras --all-packages --locked --no-dev"
OVERLAY_DIRS = ("src", "configs")
OVERLAY_IGNORE = (".git", ".venv", "**/__pycache__", "outputs", "**/.pytest_cache",
                  "**/.mypy_cache", "**/.ruff_cache", "wandb")


@dataclass(frozen=True)
class ImageSpec:
    source: str  # "build" or "prebuilt"
    base: str  # the registry image everything starts from
    python: str | None  # standalone Python Modal adds; None keeps the image's own
    apt: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # set before the layers
    layers: tuple[tuple[str, ...], ...]  # each a run_commands step, in order
    workdir: str
    overlays: tuple[tuple[str, str], ...]  # (local dir, container dir), attached at start

    @property
    def prebuilt(self) -> bool:
        return self.source == "prebuilt"

    def build_steps(self) -> list[str]:
        """Every build step as text: what must be equal for Modal to reuse the image (none
        for a prebuilt image, which Modal only pulls)."""
        if self.prebuilt:
            return []
        steps = [f"FROM {self.base} (python {self.python})", "apt " + " ".join(self.apt)]
        steps += [f"ENV {k}={v}" for k, v in self.env]
        steps += ["RUN " + " && ".join(layer) for layer in self.layers]
        return [*steps, f"WORKDIR {self.workdir}"]


def image_spec(plan: Plan) -> ImageSpec:
    overlays: tuple[tuple[str, str], ...] = ()
    if plan.local_code:
        overlays = tuple((f"{plan.local_code}/{d}", f"{plan.workdir}/{d}") for d in OVERLAY_DIRS)
    if plan.prebuilt_image:
        # Python 3.12 is already on PATH there (its venv first), which is all Modal and
        # prm's runner need; adding another one would only add a layer.
        return ImageSpec("prebuilt", plan.prebuilt_image, None, (), (), (), plan.workdir,
                         overlays)
    layers = (
        (f"python -m pip install --no-cache-dir uv=={plan.uv_version}",),
        fetch_commands(plan.repo, plan.ref, plan.workdir),
        (f"cd {plan.workdir}", SYNC),
    )
    apt = APT + RDMA_APT if plan.gpu.nodes > 1 else APT
    return ImageSpec("build", plan.base_image, PYTHON, apt, BUILD_ENV, layers, plan.workdir,
                     overlays)


def fetch_commands(repo: str, ref: str, checkout: str) -> tuple[str, ...]:
    """The ref alone, shallow, with CI's public submodules. A depth-1 fetch takes a branch,
    a tag or a full commit hash alike, and lands in FETCH_HEAD: checking that out keeps the
    step text the same for every kind of ref (no remote-tracking branch is needed)."""
    git = f"git -C {checkout}"
    wanted = " ".join(f"-e {p}" for p in PUBLIC_SUBMODULES)
    declared = (f"{git} config --file .gitmodules --get-regexp '\\.path$' 2>/dev/null "
                f"| awk '{{print $2}}' | grep -xF {wanted} || true")
    return (
        "git config --global url.https://github.com/.insteadOf git@github.com:",
        f"git init -q {checkout}",
        f"{git} remote add origin {shlex.quote(repo)}",
        f"{git} fetch -q --depth 1 origin {shlex.quote(ref)}",
        f"{git} checkout -q --detach FETCH_HEAD",
        f"paths=$({declared})",
        f'if [ -n "$paths" ]; then {git} submodule update --init --recursive -- $paths; fi',
    )
