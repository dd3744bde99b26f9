"""Under --json an error is JSON too: one object on stdout, ``{"error": {"kind", "message",
"hint"}}``, with the exit code of the plain command and its line on stderr kept for a
person; without --json, stdout stays empty."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize(("args", "code", "kind", "message", "hint"), [
    (["run", "--gpus", "9", "--dry-run", "--json"], 1, "plan",
     "9 x A100-40GB do not fit on one node", "use --gpus 8 or fewer"),
    (["run", "no-such-profile", "--dry-run", "--json"], 1, "profile",
     "profile 'no-such-profile' not found", "prm init NAME"),
    (["run", "--gpu", "H1000:8", "--dry-run", "--json"], 1, "error",
     "unknown GPU type 'H1000'", "did you mean H100?"),
    (["show", "--json", "no-such-run"], 1, "error", "no run 'no-such-run' in the index",
     "prm ls"),
    (["sweep", "show", "no-such-sweep", "--json"], 1, "error", "no sweep 'no-such-sweep'",
     "prm sweep ls"),
    (["sweep", "--resume", "x", "--dry-run", "--json"], 2, "usage", "--resume SWEEP takes no",
     None),
], ids=["plan", "profile", "error", "no-run", "no-sweep", "usage"])
def test_a_prm_error_under_json_is_an_object_on_stdout(prm, args, code, kind, message, hint):
    r = prm(*args)
    assert r.code == code
    error = r.json()["error"]  # the whole of stdout is the one object
    assert set(error) == {"kind", "message", "hint"} and error["kind"] == kind
    assert message in error["message"] and "\n" not in error["message"]
    if hint:
        assert hint in error["hint"]
    (line,) = r.err.splitlines()  # the person still gets the one line, the same text
    assert line.startswith("prm: error: ") and error["message"].rstrip(".") in line
    plain = prm(*[a for a in args if a != "--json"])
    assert (plain.code, plain.out, plain.err) == (code, "", r.err)


@pytest.mark.parametrize(("args", "message"), [
    (["ls", "--json", "--bogus"], "No such option: --bogus"),
    (["show", "--json"], "Missing argument"),
    (["logs", "some-run", "--tail", "many", "--json"], "Invalid value for '--tail'"),
    (["sweep", "ls", "--json", "extra"], "Got unexpected extra argument"),
    (["--json"], "No such option: --json"),
], ids=["unknown-option", "missing-argument", "bad-value", "extra-argument", "root"])
def test_a_usage_error_under_json_is_an_object_on_stdout_and_exit_2(prm, args, message):
    r = prm(*args)
    assert r.code == 2
    error = r.json()["error"]
    assert error["kind"] == "usage" and message in error["message"]
    assert error["hint"].startswith("see `prm") and error["hint"].endswith(" --help`")
    assert f"Error: {error['message']}" in r.err  # click's usage text, as without --json
    plain = prm(*[a for a in args if a != "--json"])
    if args != ["--json"]:
        assert (plain.code, plain.out) == (2, "")


def test_json_after_the_double_dash_is_an_argument_not_the_option(prm):
    r = prm("show", "--", "--json")
    assert r.code == 1 and r.out == ""
    assert "no run '--json'" in r.err


def test_the_console_script_prints_the_error_as_one_json_line(tmp_path):
    """What a program piping prm sees: a compact object on one line, exit code kept."""
    r = subprocess.run([sys.executable, "-m", "primerl_modal", "run", "--gpus", "9",
                        "--dry-run", "--json"], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 1
    assert r.stdout.count("\n") == 1
    error = json.loads(r.stdout)["error"]
    assert error["kind"] == "plan" and "Traceback" not in r.stderr
    assert r.stderr.startswith("prm: error: ")
