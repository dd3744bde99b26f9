"""The run's image: prime-rl installed as its own Dockerfile and CI do, step by step, or
prime-rl's published image used as is."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import launched, only_function

from primerl_modal.core.gpus import catalogue
from primerl_modal.core.image_spec import fetch_commands, image_spec
from primerl_modal.core.plan import Layout, build_plan
from primerl_modal.core.profile import SearchPath, Setting, parse_set, resolve
from primerl_modal.core.schema import PRIME_RL_REF, UV_VERSION
from primerl_modal.errors import PlanError
from primerl_modal.paths import PACKAGED_PROFILES

NOW = datetime(2026, 11, 29, 10, 30, 5, tzinfo=UTC)
TAG = f"ghcr.io/primeintellect-ai/prime-rl:commit-{PRIME_RL_REF}-amd64"


def plan_of(*settings: Setting, layout: Layout | None = None):
    search = SearchPath(Path("/nonexistent"), Path("/nonexistent"), PACKAGED_PROFILES)
    extra = {"layout": layout} if layout else {}
    return build_plan(resolve("reverse-text", search, settings), catalogue(), now=NOW,
                      token="beef", **extra)


def test_built_image_steps_exact():
    g = "git -C /opt/prime-rl"
    assert image_spec(plan_of()).build_steps() == [
        "FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04 (python 3.12)",
        "apt git curl ca-certificates build-essential nvtop htop tmux",
        "ENV UV_COMPILE_BYTECODE=1",
        "ENV UV_LINK_MODE=copy",
        "ENV UV_NO_CACHE=1",
        f"RUN python -m pip install --no-cache-dir uv=={UV_VERSION}",
        "RUN git config --global url.https://github.com/.insteadOf git@github.com: && "
        "git init -q /opt/prime-rl && "
        f"{g} remote add origin https://github.com/PrimeIntellect-ai/prime-rl.git && "
        f"{g} fetch -q --depth 1 origin {PRIME_RL_REF} && "
        f"{g} checkout -q --detach FETCH_HEAD && "
        f"paths=$({g} config --file .gitmodules --get-regexp '\\.path$' 2>/dev/null "
        "| awk '{print $2}' | grep -xF -e deps/verifiers -e deps/renderers -e deps/prime-envs "
        "-e deps/pydantic-config || true) && "
        f'if [ -n "$paths" ]; then {g} submodule update --init --recursive -- $paths; fi',
        "RUN cd /opt/prime-rl && uv sync --all-extras --all-packages --locked --no-dev",
        "WORKDIR /opt/prime-rl",
    ]


def test_uv_version_is_a_profile_key():
    steps = image_spec(plan_of(parse_set("prime_rl.uv_version=0.11.1"))).build_steps()
    assert "RUN python -m pip install --no-cache-dir uv==0.11.1" in steps


@pytest.mark.parametrize("ref", ["main", "v0.5.0"])
def test_a_branch_or_tag_builds_with_the_same_steps_as_a_commit(ref):
    def steps(r: str) -> list[str]:
        spec = image_spec(plan_of(Setting("prime_rl.ref", r, "--ref")))
        return [s.replace(f" {r} ", " REF ") for s in spec.build_steps()]

    assert steps(ref) == steps(PRIME_RL_REF)


def test_an_abbreviated_commit_cannot_be_fetched_shallow():
    with pytest.raises(PlanError, match="abbreviated commit"):
        plan_of(Setting("prime_rl.ref", PRIME_RL_REF[:12], "--ref"))
    local = Layout("local", "/tmp/out", "/tmp/prime-rl")
    assert plan_of(Setting("prime_rl.ref", PRIME_RL_REF[:12], "--ref"), layout=local)


def test_a_prebuilt_image_builds_nothing_and_keeps_its_python():
    plan = plan_of(parse_set(f"prime_rl.image={TAG}"))
    spec = image_spec(plan)
    assert (spec.source, spec.base, spec.python, spec.build_steps()) == (
        "prebuilt", TAG, None, [])
    assert plan.workdir == "/app" and plan.launcher == ("/app/.venv/bin/rl",)
    assert plan.argv[0] == "/app/.venv/bin/rl"
    assert plan.warnings == ()


@pytest.mark.parametrize("tag", ["ghcr.io/primeintellect-ai/prime-rl:main-amd64",
                                 "ghcr.io/primeintellect-ai/prime-rl"])
def test_a_prebuilt_image_without_commit_or_digest_warns(tag):
    (warning,) = plan_of(parse_set(f"prime_rl.image={tag}")).warnings
    assert "names no commit or digest" in warning


def test_a_prebuilt_image_by_digest_does_not_warn():
    digest = "ghcr.io/primeintellect-ai/prime-rl@sha256:" + "0" * 64
    assert plan_of(parse_set(f"prime_rl.image={digest}")).warnings == ()


def test_local_code_overlays_whichever_checkout_the_image_has(tmp_path):
    code = str(tmp_path)
    built = image_spec(plan_of(Setting("prime_rl.local_code", code, "--local-code")))
    prebuilt = image_spec(plan_of(Setting("prime_rl.local_code", code, "--local-code"),
                                  parse_set(f"prime_rl.image={TAG}")))
    assert built.overlays == ((f"{code}/src", "/opt/prime-rl/src"),
                              (f"{code}/configs", "/opt/prime-rl/configs"))
    assert prebuilt.overlays == ((f"{code}/src", "/app/src"), (f"{code}/configs", "/app/configs"))
    assert prebuilt.build_steps() == []


def test_the_local_backend_ignores_the_image_with_a_warning():
    plan = plan_of(parse_set(f"prime_rl.image={TAG}"),
                   layout=Layout("local", "/tmp/out", "/tmp/prime-rl"))
    assert plan.prebuilt_image is None and plan.workdir == "/tmp/prime-rl"
    assert any("is ignored" in w for w in plan.warnings)


def _git(*args: str, cwd: Path, env: dict[str, str]) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("kind", ["branch", "tag", "annotated tag", "commit"])
def test_the_fetch_step_checks_out_any_kind_of_ref_with_public_submodules_only(tmp_path, kind):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),  # its git config --global
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           # local paths stand in for the submodules' GitHub URLs
           "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "protocol.file.allow",
           "GIT_CONFIG_VALUE_0": "always"}
    for name in ("public", "private"):
        (tmp_path / name).mkdir()
        _git("init", "-q", cwd=tmp_path / name, env=env)
        (tmp_path / name / "f").write_text(name)
        _git("add", "f", cwd=tmp_path / name, env=env)
        _git("commit", "-qm", name, cwd=tmp_path / name, env=env)
    up = tmp_path / "upstream"
    up.mkdir()
    _git("init", "-q", "-b", "main", cwd=up, env=env)
    _git("submodule", "add", "-q", str(tmp_path / "public"), "deps/verifiers", cwd=up, env=env)
    _git("submodule", "add", "-q", str(tmp_path / "private"), "deps/prime-kernels", cwd=up,
         env=env)
    _git("commit", "-qm", "pinned", cwd=up, env=env)
    pinned = _git("rev-parse", "HEAD", cwd=up, env=env)
    _git("tag", "v1", cwd=up, env=env)
    _git("tag", "-a", "v1a", "-m", "v1a", cwd=up, env=env)
    _git("branch", "release", cwd=up, env=env)
    (up / "later").write_text("later")
    _git("add", "later", cwd=up, env=env)
    _git("commit", "-qm", "later", cwd=up, env=env)  # on main, past the pinned commit
    ref = {"branch": "release", "tag": "v1", "annotated tag": "v1a", "commit": pinned}[kind]
    checkout = tmp_path / "checkout"
    subprocess.run(["sh", "-c", " && ".join(fetch_commands(str(up), ref, str(checkout)))],
                   env=env, check=True, capture_output=True, timeout=120)
    assert _git("rev-parse", "HEAD", cwd=checkout, env=env) == pinned
    assert _git("rev-parse", "--is-shallow-repository", cwd=checkout, env=env) == "true"
    assert (checkout / "deps" / "verifiers" / "f").read_text() == "public"
    assert not any((checkout / "deps" / "prime-kernels").iterdir())


def test_a_prebuilt_launch_asks_modal_for_the_registry_image_alone(prm, modal_env):
    launched(prm, "reverse-text", "--set", f"prime_rl.image={TAG}")
    assert modal_env.image_commands(only_function(modal_env)["image_id"]) == [f"FROM {TAG}"]
