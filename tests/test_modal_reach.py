"""Modal out of reach, or not as prm needs it: one line and a bounded wait, never a minute
of silence or a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from primerl_modal.run_index import open_index

PRM = [sys.executable, "-m", "primerl_modal"]


def test_an_unreachable_modal_is_one_line_within_the_bound(prm_home: Path,
                                                           tmp_path: Path) -> None:
    with socket.socket() as s:  # a local port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env |= {"PRM_HOME": str(prm_home), "MODAL_CONFIG_PATH": str(tmp_path / "none.toml"),
            "MODAL_SERVER_URL": f"http://127.0.0.1:{port}",
            "MODAL_TOKEN_ID": "ak-test", "MODAL_TOKEN_SECRET": "as-test"}
    commands = {"ls": ["ls", "--all"], "run": ["run", "reverse-text", "--detach"],
                "doctor": ["doctor"]}
    started = time.monotonic()
    procs = {name: subprocess.Popen([*PRM, *args], env=env, cwd=tmp_path, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, args in commands.items()}  # at once: the bound, not three of them
    results = {name: (*p.communicate(timeout=60), p.returncode) for name, p in procs.items()}
    assert time.monotonic() - started < 20 + 5  # the bound, and a loaded machine's slack
    for name in ("ls", "run"):  # ls --all lists what it can and says what it could not
        out, err, code = results[name]
        assert code == (0 if name == "ls" else 1), (name, err)
        assert err.strip().count("\n") == 0, (name, err)  # one line
        assert f"127.0.0.1:{port}" in err and "MODAL_SERVER_URL" in err, err
        assert "Traceback" not in err and "as-test" not in err
    out, err, code = results["doctor"]
    assert code == 1 and "Traceback" not in err
    assert "modal server" in out and "problem" in out
    assert open_index().list() == []  # nothing was launched


def test_a_volume_of_the_wrong_version_is_one_line(prm, modal_env) -> None:
    from modal_proto import api_pb2

    modal_env.register_volume("prime-rl-outputs", api_pb2.VOLUME_FS_VERSION_V1)
    r = prm("run", "reverse-text", "--detach")
    assert r.code == 1
    assert r.err.startswith("prm: error: Modal volume 'prime-rl-outputs' is not a v2 volume")
    assert "modal volume create --version 2" in r.err and r.err.count("\n") == 1
    assert not modal_env.calls  # nothing started


def test_the_first_build_is_shown_and_later_launches_reuse_it(prm, modal_env) -> None:
    modal_env.build_seconds = 1.0
    first = prm("run", "reverse-text", "--detach")
    assert first.code == 0, first.err
    assert first.out.strip().startswith("reverse-text-")  # stdout: the run id alone
    assert "first launch of an image builds it" in first.err
    assert "Step 1/" in first.err and "uv sync --all-extras --all-packages" in first.err
    second = prm("run", "reverse-text", "--detach")
    assert second.code == 0, second.err
    assert "Step 1/" not in second.err  # the image is reused: nothing is built


def test_ctrl_c_during_the_build_launches_nothing(modal_env, prm_home: Path,
                                                  tmp_path: Path) -> None:
    import signal

    from conftest import wait_for

    modal_env.build_seconds = 60.0
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env |= modal_env.env() | {"PRM_HOME": str(prm_home)}
    proc = subprocess.Popen([*PRM, "run", "reverse-text", "--detach"], env=env, cwd=tmp_path,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: "ImageJoinStreaming" in modal_env.requests, timeout=60,
             what="the image build")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: nothing was launched" in err and "Traceback" not in err
    assert out == "" and not modal_env.calls and open_index().list() == []
