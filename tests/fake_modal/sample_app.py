"""A small Modal app whose functions the fake executes in tests (see test_fake_modal.py).

Function bodies find their copies of volume mounts through ``FAKE_MODAL_MOUNTS``; what they
write reaches the committed state only by a commit or a clean exit, as on Modal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import modal
import modal.exception

app = modal.App("fake-modal-sample", tags={"suite": "fake-modal"})
volume = modal.Volume.from_name("sample-data", create_if_missing=True, version=2)
image = (
    modal.Image.from_registry("ubuntu:22.04", add_python="3.11")
    .apt_install("git")
    .run_commands("echo building sample image")
    .env({"SAMPLE_ENV": "from-image"})
    .add_local_dir(Path(__file__).with_name("sample_data"), "/root/sample_data", copy=False)
    .add_local_python_source("fake_modal")
)


def data_dir(run: str) -> Path:
    """``/data/<run>`` of the container, mapped to a local directory by the fake."""
    path = Path(json.loads(os.environ["FAKE_MODAL_MOUNTS"])["/data"]) / run
    path.mkdir(parents=True, exist_ok=True)
    return path


@app.function(image=image, volumes={"/data": volume}, timeout=120)
def write_files(run: str, count: int = 2, commit: bool = False) -> dict[str, Any]:
    out = data_dir(run)
    for i in range(count):
        (out / f"file-{i}.txt").write_text(f"{run} {i}\n")
        print(f"wrote file-{i}.txt")
    print("a line on stderr", file=sys.stderr)
    if commit:
        volume.commit()  # talks to the fake like a container's client would
    names = ("SAMPLE_ENV", "WANDB_API_KEY", "INLINE_TOKEN", "PRM_RUN", "EXTRA", "MODAL_IS_REMOTE")
    return {
        "run": run,
        "env": {name: os.environ.get(name) for name in names},
        "mounts": json.loads(os.environ["FAKE_MODAL_MOUNTS"]),
        "data_dir": os.environ.get("DATA_DIR"),
    }


@app.function(image=image, volumes={"/data": volume}, timeout=120)
def sleep_and_record(
    run: str, seconds: float, lines: int = 1, resume: bool = False, fail_first: bool = False
) -> int:
    """Record each start, print `lines` lines spread over `seconds`; note a SIGINT or SIGTERM.

    With `fail_first`, the first start raises. With `resume`, a start that finds an earlier one
    got as far as its sleep finishes at once (as a training run resuming from its last
    checkpoint would). Returns the number of starts.
    """
    out = data_dir(run)
    task_id = os.environ["MODAL_TASK_ID"]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        (out / f"{signal.Signals(signum).name.lower()}-{task_id}").write_text("signalled\n")
        sys.exit(128 + signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with (out / "starts.txt").open("a") as f:
        f.write(f"{task_id}\n")
    starts = len((out / "starts.txt").read_text().splitlines())
    if fail_first and starts == 1:
        raise RuntimeError("the first start fails")
    if resume and (out / "slept.txt").exists():
        return starts
    (out / "slept.txt").write_text(f"{task_id}\n")
    for i in range(lines):
        print(f"tick {i}", flush=True)
        time.sleep(seconds / lines)
    return starts


def _wait_for(path: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.02)


@app.function(image=image, volumes={"/data": volume}, timeout=120)
def write_commit_write(run: str) -> None:
    """Write a file and commit, write another and don't, then wait to be killed."""
    out = data_dir(run)
    (out / "committed.txt").write_text("committed\n")
    volume.commit()
    (out / "uncommitted.txt").write_text("uncommitted\n")
    print("written", flush=True)
    time.sleep(120)


@app.function(image=image, volumes={"/data": volume}, timeout=120)
def peek_then_reload(run: str, name: str, release: str) -> dict[str, bool]:
    """Write a file of its own, then once `release` exists: is `name` there before and after
    a reload, and is its own file still there?"""
    out = data_dir(run)
    (out / "mine.txt").write_text("mine\n")
    print("ready", flush=True)
    _wait_for(release)
    before = (out / name).exists()
    volume.reload()
    return {"before": before, "after": (out / name).exists(), "mine": (out / "mine.txt").exists()}


@app.function(image=image, volumes={"/data": volume}, timeout=120)
def wait_for_cancel(run: str, release: str) -> str:
    """Sleep until cancelled; on InputCancellation, wait for `release`, note it and re-raise."""
    print("started", flush=True)
    try:
        time.sleep(120)
    except modal.exception.InputCancellation:
        print("cancelled", flush=True)
        _wait_for(release)
        (data_dir(run) / f"cancelled-{os.environ['MODAL_TASK_ID']}").write_text("seen\n")
        raise
    return "not cancelled"


@app.function(image=image, timeout=120)
def spawn_grandchild(pid_file: str, linger: bool) -> None:
    """Start a process in a session of its own (as prm's runner starts its launcher), write
    its pid, then return at once or linger."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    Path(pid_file).write_text(f"{child.pid}\n")
    if linger:
        time.sleep(120)


@app.function(image=image, timeout=60)
def fail(kind: str) -> None:
    if kind == "exit":
        sys.exit(3)
    raise ValueError(f"boom: {kind}")


@app.function(image=image, timeout=60)
def echo(value: str) -> str:
    return value


@app.function(image=image, timeout=60, serialized=True)
def square(x: int) -> int:
    return x * x
