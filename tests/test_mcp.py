"""`prm mcp`: the MCP server over stdio, driven end to end by the SDK's own stdio client:
tool listing and schemas, a dry-run plan, a local run (fake prime-rl launcher) launched,
listed, logged, pulled and stopped, a run on the fake Modal server, a bad input, and the
spending cap (`prm mcp --max-usd`)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

# The module form works before `prm mcp` is wired into the CLI.
SERVER = [sys.executable, "-m", "primerl_modal", "mcp"]  # `prm mcp`, as a client starts it

TOOLS = {
    "plan_run": {"profile", "overrides", "gpu", "backend"},
    "run": {"profile", "overrides", "gpu", "backend"},
    "list_runs": {"status", "sweep", "since", "limit", "all"},
    "show_run": {"run"},
    "logs": {"run", "tail", "components", "grep", "attempt"},
    "pull": {"run", "dest", "only", "step"},
    "stop": {"runs", "sweep"},
    "plan_sweep": {"sweep_file", "profile", "grid", "max_usd"},
    "sweep": {"sweep_file", "profile", "grid", "max_parallel", "fail_fast", "yes", "max_usd"},
    "sweep_status": {"sweep_id"},
    "metrics": {"runs", "sweep", "keys", "last"},
    "rollouts": {"run", "step", "kind", "env", "sort", "limit"},
    "remove_runs": {"runs", "sweep", "confirm"},
    "prune_checkpoints": {"run", "keep_last", "confirm"},
}
FINAL = {"SUCCEEDED", "FAILED", "STOPPED", "LOST"}

Body = Callable[[ClientSession], Awaitable[None]]


def serve(body: Body, errlog: Path, timeout: float = 60.0, args: tuple[str, ...] = ()) -> None:
    """Start the server (`prm mcp ARGS`) as a subprocess with this test's environment
    (PRM_HOME, the fake launcher's and the fake Modal server's variables), connect, and run
    ``body``."""

    async def main() -> None:
        params = StdioServerParameters(command=SERVER[0], args=[*SERVER[1:], *args],
                                       env=dict(os.environ))
        with errlog.open("w") as err, anyio.fail_after(timeout):
            async with stdio_client(params, errlog=err) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    await body(session)

    anyio.run(main)
    assert "Traceback" not in errlog.read_text()


async def call(session: ClientSession, tool: str, **args: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, args)
    assert not result.is_error, result.content[0].text  # type: ignore[union-attr]
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def until(predicate: Callable[[], Awaitable[Any]], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await anyio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def row(session: ClientSession, run_id: str) -> dict[str, Any] | None:
    runs = (await call(session, "list_runs"))["runs"]
    return next((r for r in runs if r["run_id"] == run_id), None)


async def ended(session: ClientSession, run_id: str) -> dict[str, Any]:
    async def final() -> dict[str, Any] | None:
        r = await row(session, run_id)
        return r if r and r["status"] in FINAL else None

    result: dict[str, Any] = await until(final, f"{run_id} to end")
    return result


def test_tools_schemas_plan_and_a_bad_gpu(tmp_path: Path) -> None:
    async def body(s: ClientSession) -> None:
        listed = {t.name: t for t in (await s.list_tools()).tools}
        assert set(listed) == set(TOOLS)
        for name, params in TOOLS.items():
            tool = listed[name]
            assert params <= set(tool.input_schema["properties"]), name
            assert tool.description and len(tool.description) > 40
        assert listed["show_run"].input_schema["required"] == ["run"]
        assert "returns at once" in (listed["run"].description or "").lower()

        plan = await call(s, "plan_run", profile="reverse-text")
        assert plan["gpu"]["trainer"] == 1 and plan["gpu"]["inference"] == 1
        plan = await call(s, "plan_run", profile="reverse-text", gpu="H100:8",
                          overrides=["gpu.trainer_ratio=0.25", "max_steps=40"])
        assert (plan["gpu"]["trainer"], plan["gpu"]["inference"]) == (2, 6)
        assert "40" in plan["argv"]

        bad = await s.call_tool("run", {"profile": "reverse-text", "gpu": "H1000:8"})
        assert bad.is_error
        text = bad.content[0].text  # type: ignore[union-attr]
        assert "unknown GPU type 'H1000'" in text
        assert "\n" not in text and "Traceback" not in text and "prm: error" not in text
        # The error prm printed as JSON under --json, kind included, read from its stdout.
        assert bad.structured_content == {"error": {
            "kind": "error", "message": "unknown GPU type 'H1000'",
            "hint": text.removeprefix("unknown GPU type 'H1000'; ")}}
        split = await s.call_tool("plan_run", {"gpu": "H100:9"})
        assert split.is_error and split.structured_content == {"error": {
            "kind": "plan", "message": "9 x H100 do not fit on one node: at most 8",
            "hint": "use --gpus 8 or fewer"}}
        assert split.content[0].text == (  # type: ignore[union-attr]
            "9 x H100 do not fit on one node: at most 8; use --gpus 8 or fewer")
        missing = await s.call_tool("show_run", {"run": "no-such-run"})
        assert missing.is_error and "no run 'no-such-run'" in missing.content[0].text  # type: ignore[union-attr]
        assert (await call(s, "list_runs"))["runs"] == []  # nothing was launched

    serve(body, tmp_path / "server.err")


def test_local_run_list_logs_pull_and_stop(tmp_path: Path, local_profile: Path,
                                           fast_fake: Path) -> None:
    pulled = tmp_path / "pulled"

    async def body(s: ClientSession) -> None:
        launched = await call(s, "run", profile=str(local_profile))
        run_id = launched["run_id"]
        assert run_id.startswith("lrt-") and launched["backend"] == "local"
        assert any("show_run" in hint for hint in launched["next"])
        assert await row(s, run_id) is not None

        assert (await ended(s, run_id))["status"] == "SUCCEEDED"
        logs = await call(s, "logs", run=run_id)
        assert logs["lines"] and {"trainer", "runner"} <= {x["component"] for x in logs["lines"]}
        few = await call(s, "logs", run=run_id, components=["trainer"], tail=3)
        assert 0 < len(few["lines"]) <= 3
        assert {x["component"] for x in few["lines"]} == {"trainer"}

        got = await call(s, "pull", run=run_id, dest=str(pulled), only=["metrics"])
        assert got["counts"]["downloaded"] > 0 and got["dest"] == str(pulled.resolve())
        assert any(f["status"] == "downloaded" for f in got["files"])
        assert all((pulled / f["path"]).is_file() for f in got["files"])
        shown = await call(s, "show_run", run=run_id[:12])  # a unique prefix is enough
        assert shown["run"]["run_id"] == run_id and shown["run"]["status"] == "SUCCEEDED"

        slow = (await call(s, "run", profile=str(local_profile),
                           overrides=["env.FAKE_RL_STEP_SECONDS=0.2", "max_steps=500"]))["run_id"]
        # It returned once launched, not when done: 500 steps of 0.2 s are still ahead.
        assert (await row(s, slow) or {}).get("status") in {"PENDING", "RUNNING"}

        async def running() -> bool:
            r = await row(s, slow)
            return bool(r and r["status"] == "RUNNING")

        await until(running, f"{slow} to run")
        stopped = await call(s, "stop", runs=[slow])
        assert [(r["run_id"], r["status"]) for r in stopped["results"]] == [(slow, "STOPPED")]
        assert (await row(s, slow) or {})["status"] == "STOPPED"

    serve(body, tmp_path / "server.err")
    assert (pulled / "metrics.jsonl").stat().st_size > 0


def test_run_on_modal_is_listed(tmp_path: Path, modal_env: Any) -> None:
    async def body(s: ClientSession) -> None:
        cost = (await call(s, "plan_run", profile="reverse-text"))["cost"]
        launched = await call(s, "run", profile="reverse-text")
        run_id = launched["run_id"]
        assert launched["backend"] == "modal" and launched["record"]["app_id"]
        # the default cap, $100, is over reverse-text's worst case: it runs with it as budget
        assert launched["cost"] == {"so_far_usd": 0.0, "per_hour_usd": cost["per_hour_usd"],
                                    "worst_case_usd": cost["max_usd"], "guard_max_usd": 100.0,
                                    "cap_usd": 100.0}
        assert (await row(s, run_id)) is not None
        assert (await ended(s, run_id))["status"] == "SUCCEEDED"
        shown = await call(s, "show_run", run=run_id)
        assert shown["plan"]["guard"]["max_usd"] == 100.0

    serve(body, tmp_path / "server.err")
    assert len(modal_env.apps) == 1


def _refusal(result: Any) -> tuple[str, dict[str, Any]]:
    assert result.is_error
    return result.content[0].text, result.structured_content["error"]


def test_a_launch_over_the_cap_is_refused_with_both_figures(tmp_path: Path) -> None:
    cap = 20.0

    async def body(s: ClientSession) -> None:
        plan = await call(s, "plan_run", profile="reverse-text")
        worst = plan["cost"]["max_usd"]
        assert worst > cap  # $38.66 at the built-in prices
        assert plan["cap"] == {"max_usd": cap, "worst_case_usd": worst, "within": False}

        text, error = _refusal(await s.call_tool("run", {"profile": "reverse-text"}))
        assert text.startswith(f"this run could cost ${worst:,.2f} at worst, over this "
                               "server's cap of $20.00 (prm mcp --max-usd); lower modal.timeout")
        assert (error["kind"], error["worst_case_usd"], error["cap_usd"]) == (
            "budget", worst, cap)

        grid = ["trainer.optim.lr=1e-6,3e-6"]
        planned = await call(s, "plan_sweep", profile="reverse-text", grid=grid, max_usd=500)
        assert planned["cap"] == {"max_usd": cap, "budget_usd": cap,
                                  "worst_case_usd": planned["total"]["max_usd"]}
        text, error = _refusal(await s.call_tool(
            "sweep", {"profile": "reverse-text", "grid": grid}))
        assert f"its cheapest trial could cost ${worst:,.2f} at worst, over this server's " \
            "cap of $20.00" in text and error["worst_case_usd"] == worst
        assert (await call(s, "list_runs"))["runs"] == []  # nothing was launched

    serve(body, tmp_path / "server.err", args=("--max-usd", "20"))


def test_a_launch_under_the_cap_carries_it(tmp_path: Path, local_profile: Path,
                                           fast_fake: Path) -> None:
    async def body(s: ClientSession) -> None:
        launched = await call(s, "run", profile=str(local_profile))
        assert launched["cost"]["guard_max_usd"] == 20.0
        tighter = await call(s, "run", profile=str(local_profile),
                             overrides=["guard.max_usd=5"])
        assert tighter["cost"]["guard_max_usd"] == 5.0
        for run_id, budget in ((launched["run_id"], 20.0), (tighter["run_id"], 5.0)):
            assert (await ended(s, run_id))["status"] == "SUCCEEDED"
            shown = await call(s, "show_run", run=run_id)
            assert shown["plan"]["guard"]["max_usd"] == budget

        swept = await call(s, "sweep", profile=str(local_profile), grid=["max_steps=2,3"],
                           max_parallel=1, max_usd=50)
        assert swept["cost"]["max_usd"] == 20.0 and swept["cost"]["guard_max_usd"] == 20.0
        assert any("over this server's cap" in w for w in swept["warnings"])
        sid = swept["sweep_id"]

        async def done() -> dict[str, Any] | None:
            status = await call(s, "sweep_status", sweep_id=sid)
            return status if all(t["status"] == "SUCCEEDED" for t in status["trials"]) \
                and status["count"] == 2 else None

        status = await until(done, "the sweep's two trials", timeout=60)
        assert status["cost_so_far_usd"] == 0.0  # this machine's GPUs
        trial = await call(s, "show_run", run=f"{sid}-0")
        assert trial["plan"]["guard"]["max_usd"] == 20.0

    serve(body, tmp_path / "server.err", timeout=120, args=("--max-usd", "20"))


def test_look_inside_a_run_then_delete_it_only_when_confirmed(tmp_path: Path, local_profile: Path,
                                                             fast_fake: Path) -> None:
    async def body(s: ClientSession) -> None:
        run_id = (await call(s, "run", profile=str(local_profile)))["run_id"]
        assert (await ended(s, run_id))["status"] == "SUCCEEDED"
        metrics = await call(s, "metrics", runs=[run_id], keys=["reward/mean"])
        rows = metrics["runs"][run_id]["rows"]
        assert [r["step"] for r in rows] == list(range(1, 9))  # max_steps = 8
        assert all("reward/mean" in r for r in rows)
        sample = await call(s, "rollouts", run=run_id, limit=2)
        assert sample["count"] == 2
        best = sample["episodes"][0]
        assert best["reward"] >= sample["episodes"][1]["reward"]
        roles = [t["role"] for t in best["traces"][0]["turns"]]
        assert "user" in roles and "assistant" in roles
        assert all("token_ids" not in str(t) for t in best["traces"])
        # delete: first what would go, nothing gone; then, confirmed, gone
        preview = await call(s, "prune_checkpoints", run=run_id, keep_last=1)
        assert preview["deleted"] is False and preview["files"] > 0
        preview = await call(s, "remove_runs", runs=[run_id])
        assert preview["deleted"] is False and preview["bytes"] > 0
        assert await row(s, run_id) is not None
        done = await call(s, "remove_runs", runs=[run_id], confirm=True)
        assert done["deleted"] is True
        assert await row(s, run_id) is None

    serve(body, tmp_path / "server.err", timeout=120)
