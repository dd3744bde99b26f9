"""The preflight: prime-rl's own `rl ... --dry-run` on a run's exact command line, before
any GPU is paid for. prime-rl validates the whole config there (unknown keys, types, GPU
split) and writes its resolved sub-configs, without touching a GPU.

`dry_run` runs in the run's image on a small CPU container (Modal) or in the checkout
(local backend): stdlib and prm's own pure modules only, as in the container prime-rl's
environment is all there is. It writes into a scratch outputs root, never the real one:
even a dry run makes the run directory, writes `configs/` into it and tidies stale steps
there, and the run's own folders must not exist before the run does.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from primerl_modal.core.status import bounded
from primerl_modal.errors import PrmError
from primerl_modal.runner.core import Runner, RunnerOptions

DRY_RUN_FLAG = "--dry-run"
TAIL_LINES = 60  # what a container sends back of the dry run's output
SHOWN_LINES = 15  # what a rejection shows of it, at most
# Importing prime-rl (torch, vLLM's config) from a freshly pulled image can take minutes.
TIMEOUT_S = 540.0
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_BOX_EDGE = "│┃|"


def dry_run(plan: dict[str, Any], *, workdir: Path | None = None,
            launcher: tuple[str, ...] | None = None,
            timeout: float = TIMEOUT_S) -> tuple[int, list[str]]:
    """Run ``plan``'s command line with ``--dry-run`` and return (exit code, the last lines
    of its output): the uploaded config files written and the paths mapped as the runner
    does it (Runner.prepare), into a scratch outputs root that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="prm-preflight-") as scratch:
        options = RunnerOptions(outputs_root=Path(scratch), workdir=workdir, launcher=launcher)
        argv = Runner(plan, lambda: None, options, io.StringIO()).prepare()
        if DRY_RUN_FLAG not in argv:  # a cluster's rank-0 command is a dry run already
            argv.append(DRY_RUN_FLAG)
        env = {**os.environ, **plan.get("env", {}), "PRM_RUN_ID": plan["run_id"]}
        try:
            done = subprocess.run(argv, cwd=workdir or plan["workdir"], env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            return 124, [*tail(e.output), f"(no answer within {timeout:g} s: stopped)"]
        except OSError as e:
            return 127, [f"cannot start the launcher {argv[0]!r}: {e.strerror or e}"]
    return done.returncode, tail(done.stdout)


def tail(output: bytes | str | None, n: int = TAIL_LINES) -> list[str]:
    """The last ``n`` non-blank lines of ``output``, each as a terminal would leave it (the
    text after its last carriage return, no colour codes)."""
    if isinstance(output, bytes):
        output = output.decode("utf-8", "replace")
    lines = [_ANSI.sub("", line.rsplit("\r", 1)[-1]).rstrip() for line in
             (output or "").split("\n")]
    return bounded([line for line in lines if line][-n:])  # a 10 MB line is cut to 2 KB


def decisive(lines: list[str], limit: int = SHOWN_LINES) -> list[str]:
    """What says why prime-rl refused: the content of its last error box (pydantic-config
    draws one around a validation error), else the exception line a traceback ends with,
    else the last lines it printed."""
    boxes = [i for i, line in enumerate(lines) if line.lstrip().startswith("╭")]
    if boxes:
        inside = []
        for line in lines[boxes[-1] + 1:]:
            text = line.strip()
            if text.startswith("╰"):
                break
            text = text.strip(_BOX_EDGE).strip()
            if text and set(text) != {"─"}:
                inside.append(text)
        return inside[:limit]
    printed = [line for line in lines if line.strip()]
    if any(line.startswith("Traceback (most recent call last)") for line in printed):
        return printed[-1:]
    return printed[-limit:]


class PreflightRejected(PrmError):
    """prime-rl's dry run refused the run's config: nothing was launched."""

    code = "preflight"

    def __init__(self, exit_code: int, lines: list[str]) -> None:
        super().__init__(
            f"preflight: prime-rl's `rl --dry-run` rejected this config (exit {exit_code}), "
            "so nothing was launched on GPUs",
            "fix what it names above (a --set key, [overrides] or the config file), or pass "
            "--no-preflight to launch without the check",
        )
        self.lines = lines

    def to_json(self) -> dict[str, str | None]:
        """A program gets prime-rl's lines in the message: they are the error."""
        return {**super().to_json(), "message": "\n".join([self.message, *self.lines])}


def require_accepted(exit_code: int, output: list[str], seconds: float) -> None:
    """Say that the dry run passed; or show prime-rl's own words and raise.

    Raises PreflightRejected when the dry run did not exit 0.
    """
    from primerl_modal.ui import console

    err = console.err()
    if exit_code == 0:
        err.print(f"preflight: prime-rl accepted the config ({seconds:.1f} s)", highlight=False)
        return
    lines = decisive(output)
    for line in lines:
        err.print(f"[preflight] {line}", markup=False, highlight=False)
    raise PreflightRejected(exit_code, lines)


def local_check(plan: dict[str, Any]) -> None:
    """The dry run in the local checkout, with the plan's own launcher prefix.

    Raises PreflightRejected when prime-rl refuses the config.
    """
    from primerl_modal.ui import console

    started = time.monotonic()
    with console.err().status(f"preflight: prime-rl's rl --dry-run in {plan['workdir']}"):
        code, output = dry_run(plan)
    require_accepted(code, output, time.monotonic() - started)
