"""A small Modal app whose functions the fake executes in tests (see test_fake_modal.py).

Function bodies find volume mounts through ``FAKE_MODAL_MOUNTS``, as prm's remote entrypoint does.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import modal

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
    return {"run": run, "env": {name: os.environ.get(name) for name in names}}


@app.function(image=image, volumes={"/data": volume}, timeout=120)
def sleep_and_record(run: str, seconds: float, lines: int = 1, resume: bool = False) -> int:
    """Record each start, print `lines` lines spread over `seconds`; note any SIGTERM.

    With `resume`, a restarted attempt finds the earlier start and finishes at once (as a
    training run resuming from its last checkpoint would). Returns the number of starts.
    """
    out = data_dir(run)
    task_id = os.environ["MODAL_TASK_ID"]

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        (out / f"sigterm-{task_id}").write_text("terminated\n")
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_sigterm)
    with (out / "starts.txt").open("a") as f:
        f.write(f"{task_id}\n")
    starts = len((out / "starts.txt").read_text().splitlines())
    if resume and starts > 1:
        return starts
    for i in range(lines):
        print(f"tick {i}", flush=True)
        time.sleep(seconds / lines)
    return starts


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
