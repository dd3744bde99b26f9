"""`prm doctor`'s checks: each says ok, what is wrong and how to fix it, or why it was not
checked. Local checks touch only this machine; the remote ones (volumes, secrets) run only
with a Modal token, in a worker thread under one deadline, so doctor never hangs."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from primerl_modal import paths
from primerl_modal.errors import PrmError

if TYPE_CHECKING:
    from primerl_modal.core.profile import ResolvedProfile

Status = Literal["ok", "problem", "skipped"]
REMOTE_TIMEOUT_S = 10.0
SETUP_FIX = "run `modal setup` (or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET)"


@dataclass(frozen=True)
class Check:
    check: str
    status: Status
    detail: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def ok(check: str, detail: str) -> Check:
    return Check(check, "ok", detail)


def problem(check: str, detail: str, fix: str | None) -> Check:
    return Check(check, "problem", detail, fix)


def skipped(check: str, why: str) -> Check:
    return Check(check, "skipped", f"not checked: {why}")


def _error_check(check: str, e: PrmError, fallback_fix: str | None = None) -> Check:
    return problem(check, " ".join(e.message.split()), e.hint or fallback_fix)


def _users(names: Iterable[str]) -> str:
    names = sorted(set(names))
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


# ----------------------------------------------------------------------- the modal client


def modal_client() -> tuple[Check, bool]:
    """Is the modal client importable (which also reads ~/.modal.toml), and which version."""
    try:
        import modal
    except Exception as e:  # ImportError, or modal's InvalidError for a malformed config
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        fix = ("fix or move aside your Modal config file" if "configuration" in str(e)
               else "pip install 'modal>=1.6,<2'")
        return problem("modal client", f"cannot import modal: {first}", fix), False
    return ok("modal client", f"modal {modal.__version__}"), True


def modal_token() -> tuple[Check, bool]:
    """A Modal token (id and secret) is configured; says where from, never what it is."""
    from modal import config as modal_config

    cfg = modal_config.config
    config_file = getattr(modal_config, "user_config_path", "~/.modal.toml")
    token_id, token_secret = cfg.get("token_id"), cfg.get("token_secret")
    if "MODAL_TOKEN_ID" in os.environ or "MODAL_TOKEN_SECRET" in os.environ:
        where = "the environment (MODAL_TOKEN_ID, MODAL_TOKEN_SECRET)"
    else:
        profile = getattr(modal_config, "_profile", "default")
        where = f"profile {profile!r} of {config_file}"
    if token_id and token_secret:
        return ok("modal token", f"configured, from {where}"), True
    if token_id or token_secret:
        half = "id" if token_id else "secret"
        return problem("modal token", f"only the token {half} is set, in {where}", SETUP_FIX), False
    return problem(
        "modal token",
        f"no Modal token configured (MODAL_TOKEN_ID / MODAL_TOKEN_SECRET unset, none in "
        f"{config_file})",
        SETUP_FIX,
    ), False


# -------------------------------------------------------------------------------- profiles


@dataclass
class Found:
    """A profile file on this machine: where it was found, and whether it plans."""

    label: str  # e.g. "./configs" or "$PRM_HOME/profiles"
    path: Path
    resolved: ResolvedProfile | None = None


def profile_files(cwd: Path) -> list[Found]:
    out: list[Found] = []
    for label, folder in (("./configs", cwd / "configs"),
                          ("$PRM_HOME/profiles", paths.home_profiles())):
        if folder.is_dir():
            out += [Found(label, p) for p in sorted(folder.glob("*.toml")) if p.is_file()]
    return out


def _parents(found: Sequence[Found]) -> dict[Path, list[str]]:
    """File -> the profiles that extend it (bases such as base.toml need not plan alone)."""
    out: dict[Path, list[str]] = {}
    for f in found:
        try:
            parent = tomllib.loads(f.path.read_text(encoding="utf-8")).get("extends")
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue
        if isinstance(parent, str):
            target = (f.path.parent / Path(parent).expanduser()).resolve()
            out.setdefault(target, []).append(f.path.stem)
    return out


def _summary(plan: Any) -> str:
    g = plan.gpu
    split = f"({g.trainer} trainer, {g.inference} inference, tp {g.tp})"
    text = (f"plans: {g.modal_gpu} {split}, modal, ${plan.cost.per_hour_usd:,.2f}/h"
            if plan.backend == "modal" else
            f"plans: {g.count} GPUs {split}, {plan.backend} (this machine's GPUs)")
    if plan.warnings:
        text += f"; warning: {plan.warnings[0]}"
    return text


def _run_ref(f: Found, found: Sequence[Found]) -> str:
    """How `prm run` names this file: its stem, unless a ./configs file shadows it."""
    first = next(g for g in found if g.path.stem == f.path.stem)
    return f.path.stem if first is f else str(f.path)


def check_profiles(found: Sequence[Found], prices_ok: bool) -> list[Check]:
    """Each profile resolves and plans as `prm run PATH --dry-run` would; fills ``resolved``."""
    from primerl_modal.core.profile import load_chain, resolve
    from primerl_modal.planning import plan_profile, search_path

    search = search_path()
    bases = _parents(found)
    checks = []
    for f in found:
        name = f"profile {f.path.stem} ({f.label})"
        try:
            f.resolved = resolve(str(f.path), search)
            if not prices_ok:
                checks.append(skipped(name, "resolves; planning needs a valid prices.toml"))
                continue
            plan, _ = plan_profile(str(f.path))
            checks.append(ok(name, _summary(plan)))
        except PrmError as e:
            children = bases.get(f.path.resolve())
            if children:
                try:
                    load_chain(f.path)
                except PrmError as e2:
                    checks.append(_error_check(name, e2))
                    continue
                checks.append(ok(name, f"a base profile, extended by {_users(children)} "
                                       "(planned through them)"))
                continue
            checks.append(_error_check(
                name, e, f"fix the file, then `prm run {_run_ref(f, found)} --dry-run`"))
    return checks


# ------------------------------------------------------------------------ local state


def check_prices() -> Check:
    from primerl_modal.core.gpus import catalogue

    path = paths.prm_home() / "prices.toml"
    if not path.is_file():
        return ok("price table", "built-in GPU prices (no $PRM_HOME/prices.toml)")
    try:
        overrides = paths.price_overrides()
        catalogue(overrides)
    except PrmError as e:
        return _error_check("price table", e, f"fix or delete {path}")
    return ok("price table", f"{path}: {len(overrides)} price override(s)")


def check_home() -> Check:
    home = paths.prm_home()
    origin = "$PRM_HOME" if os.environ.get("PRM_HOME") else "default location"
    fix = f"make {home} writable, or point PRM_HOME at a writable folder"
    if not home.exists():
        parent = home.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if os.access(parent, os.W_OK | os.X_OK):
            return ok("prm home", f"{home} ({origin}) does not exist yet; prm creates it")
        return problem("prm home", f"{home} ({origin}) cannot be created: {parent} is "
                                   "not writable", fix)
    if not home.is_dir():
        return problem("prm home", f"{home} ({origin}) is not a folder", fix)
    try:
        with tempfile.NamedTemporaryFile(dir=home, prefix=".prm-doctor-"):
            pass
    except OSError as e:
        return problem("prm home", f"{home} ({origin}) is not writable ({e.strerror})", fix)
    return ok("prm home", f"{home} ({origin}) is writable")


def check_index() -> Check:
    """The run index opens (migrating like any command would) and reads end to end."""
    from primerl_modal.run_index import FILE_NAME, MIGRATIONS, open_index

    home = paths.prm_home()
    if not (home / FILE_NAME).exists():
        return ok("run index", "no runs yet; prm creates the index on the first run")
    try:
        index = open_index(home)
    except PrmError as e:
        return _error_check("run index", e)
    try:
        try:
            health = index.db.execute("PRAGMA quick_check").fetchone()[0]
            runs = index.db.execute("SELECT count(*) FROM runs").fetchone()[0]
            version = index.db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as e:
            return _error_check("run index", index._error(e))
        if health != "ok":
            return _error_check("run index", index._broken(f"integrity check: {health}"))
        if version != len(MIGRATIONS):
            return problem("run index", f"schema version {version}, expected {len(MIGRATIONS)}",
                           "upgrade prm (pip install -U primerl-modal)")
        return ok("run index", f"{index.path}: {runs} run(s), schema v{version}")
    finally:
        index.close()


# ------------------------------------------------------------------------------ remote


@dataclass
class Targets:
    """What the chosen profiles need on Modal: volume/secret name -> profiles using it."""

    volumes: dict[str, set[str]] = field(default_factory=dict)
    secrets: dict[str, set[str]] = field(default_factory=dict)
    why_none: str = "no profile uses the Modal backend"

    def add(self, profile: ResolvedProfile) -> None:
        if profile.get("backend.kind") != "modal":
            return
        name = profile.name
        for key in ("modal.outputs_volume", "modal.cache_volume"):
            if profile.get(key):
                self.volumes.setdefault(profile.get(key), set()).add(name)
        for secret in profile.get("modal.secrets") or ():
            self.secrets.setdefault(secret, set()).add(name)

    def __bool__(self) -> bool:
        return bool(self.volumes or self.secrets)


def remote_targets(selected: str | None, found: Sequence[Found]) -> tuple[Targets, list[Check]]:
    """The volumes and secrets of ``selected`` (a profile name or path), or else of every
    profile found that resolves, plus the shipped default. A selected profile that does not
    resolve (or is not among those found) gets a row of its own."""
    from primerl_modal.core.profile import DEFAULT_PROFILE, resolve
    from primerl_modal.planning import search_path

    targets = Targets()
    rows: list[Check] = []
    search = search_path()
    if selected:
        try:
            profile = resolve(selected, search)
        except PrmError as e:
            targets.why_none = f"profile {selected!r} does not resolve"
            return targets, [_error_check(f"profile {selected}", e)]
        targets.add(profile)
        if not targets:
            targets.why_none = f"profile {selected!r} does not use the Modal backend"
        return targets, rows
    for f in found:
        if f.resolved is not None:
            targets.add(f.resolved)
    try:
        targets.add(resolve(DEFAULT_PROFILE, search))
    except PrmError as e:  # a ./configs/reverse-text.toml that is broken: its own row says so
        if not any(f.path.stem == DEFAULT_PROFILE for f in found):
            rows.append(_error_check(f"profile {DEFAULT_PROFILE}", e))
    return targets, rows


def _remote_rows(targets: Targets) -> list[str]:
    return ([f"volume {v}" for v in sorted(targets.volumes)]
            + [f"secret {s}" for s in sorted(targets.secrets)])


async def _remote(targets: Targets, results: dict[str, Check], server: str) -> None:
    """Fill ``results`` (row name -> check) as answers arrive; the caller owns the deadline."""
    import modal
    import modal.exception

    from primerl_modal.backends.modal_client import (
        SECRET_KEYS,
        VOLUME_VERSION,
        wrong_volume_version,
    )

    reach = "modal server"
    started = time.monotonic()
    try:
        client = await modal.Client.from_env.aio()
        await client.hello.aio()
    except modal.exception.AuthError as e:
        results[reach] = problem(reach, f"Modal refused the token ({e})",
                                 "run `modal setup` to log in again")
        return
    except Exception as e:
        results[reach] = problem(reach, f"no connection to Modal at {server}: "
                                        f"{type(e).__name__}: {e}".rstrip(": "),
                                 "check your network (and MODAL_SERVER_URL, if set)")
        return
    results[reach] = ok(reach, f"{server} answered in {time.monotonic() - started:.2f} s")

    async def volume(name: str, users: set[str]) -> None:
        row = f"volume {name}"
        try:
            await modal.Volume.from_name(name, version=VOLUME_VERSION).hydrate.aio()
            results[row] = ok(row, f"exists, v{VOLUME_VERSION} (used by {_users(users)})")
        except modal.exception.NotFoundError:
            results[row] = ok(row, f"not created yet; the first run creates it as "
                                   f"v{VOLUME_VERSION} (used by {_users(users)})")
        except modal.exception.InvalidError as e:
            if "has version" not in str(e):
                raise
            wrong = wrong_volume_version(name)
            results[row] = problem(row, f"{wrong.message} (used by {_users(users)})", wrong.hint)
        except Exception as e:
            results[row] = problem(row, f"{type(e).__name__}: {e}", None)

    async def secret(name: str, users: set[str]) -> None:
        row = f"secret {name}"
        key = SECRET_KEYS.get(name, "KEY")
        try:
            await modal.Secret.from_name(name).hydrate.aio()
            results[row] = ok(row, f"exists (used by {_users(users)})")
        except modal.exception.NotFoundError:
            results[row] = problem(
                row, f"Modal secret {name!r} does not exist (used by {_users(users)})",
                f"modal secret create {name} {key}=...  (or remove it from [modal] secrets)")
        except Exception as e:
            results[row] = problem(row, f"{type(e).__name__}: {e}", None)

    await asyncio.gather(*[volume(n, u) for n, u in sorted(targets.volumes.items())],
                         *[secret(n, u) for n, u in sorted(targets.secrets.items())])


def check_remote(targets: Targets, timeout: float) -> list[Check]:
    """Modal reachable, and the targets' volumes and secrets, all within ``timeout`` seconds:
    the calls run on their own event loop in a daemon thread and are cancelled at the
    deadline; what did not answer by then is reported as not checked."""
    from modal.config import config

    server = str(config.get("server_url"))
    rows = ["modal server", *_remote_rows(targets)]
    results: dict[str, Check] = {}
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            asyncio.run(asyncio.wait_for(_remote(targets, results, server), timeout))
        except TimeoutError:
            pass
        except BaseException as e:  # reported below, never raised out of a thread
            failures.append(e)

    thread = threading.Thread(target=worker, name="prm-doctor-modal", daemon=True)
    thread.start()
    thread.join(timeout + 2.0)
    done = dict(results)
    reach = done.get("modal server")
    if reach is None:
        why = (f"{type(failures[0]).__name__}: {failures[0]}" if failures
               else f"no answer within {timeout:g} s")
        reach = problem("modal server", f"no connection to Modal at {server}: {why}",
                        "check your network (and MODAL_SERVER_URL, if set), or retry with "
                        "a longer --timeout")
    out = [reach]
    for row in rows[1:]:
        if row in done:
            out.append(done[row])
        elif reach.status != "ok":
            out.append(skipped(row, "Modal is not reachable"))
        else:
            out.append(skipped(row, f"no answer within {timeout:g} s"))
    return out


def skipped_remote(targets: Targets, why: str) -> list[Check]:
    return [skipped(row, why) for row in ["modal server", *_remote_rows(targets)]]


# --------------------------------------------------------------------------------- all


def run_all(profile: str | None = None, timeout: float = REMOTE_TIMEOUT_S,
            cwd: Path | None = None) -> list[Check]:
    """Every check, in the order doctor shows them."""
    client, importable = modal_client()
    checks = [client]
    has_token = False
    if importable:
        token, has_token = modal_token()
        checks.append(token)
    else:
        checks.append(skipped("modal token", "modal is not importable"))
    prices = check_prices()
    found = profile_files(cwd or Path.cwd())
    profile_rows = check_profiles(found, prices_ok=prices.status == "ok")
    targets, target_rows = remote_targets(profile, found)
    if not targets:
        checks.append(skipped("modal server", targets.why_none))
    elif not importable:
        checks += skipped_remote(targets, "modal is not importable")
    elif not has_token:
        checks += skipped_remote(targets, "no token")
    else:
        checks += check_remote(targets, timeout)
    if not found:
        checks.append(ok("profiles", "none in ./configs or $PRM_HOME/profiles; the shipped "
                                     "ones are checked by prm's own tests"))
    checks += profile_rows + target_rows
    checks += [prices, check_home(), check_index()]
    return checks
