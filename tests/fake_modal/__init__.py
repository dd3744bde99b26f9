"""An in-process fake of Modal's server, for offline end-to-end tests with the real modal client.

The real ``modal`` 1.6.4 client talks gRPC to it on 127.0.0.1 (``fake.env()`` points it there);
volume blocks and large payloads go through a tiny local HTTP server. Spawned calls run as
subprocesses, so they really write files and print logs, and can be cancelled, stopped and
preempted with signals::

    fake = FakeModal(root=tmp_path).start()       # or the `fake_modal` fixture in fixture.py
    os.environ.update(fake.env())
    fake.secrets["wandb"] = {"WANDB_API_KEY": "x"}
    with modal.enable_output(), app.run(detach=True):
        fc = train.with_options(gpu="H100:8").spawn(run_id)
    fake.wait_call(fc.object_id)
    assert fake.functions[fake.calls[fc.object_id]["function_id"]]["gpu"] == "H100:8"

Inside a function body, ``FAKE_MODAL_MOUNTS`` maps each volume mount path to the container's own
copy of that volume (changes reach ``fake.volume_path(name)``, the committed state, only through a
commit or a clean exit: see volumes.py), ``fake.mount_env`` names env vars set to such copies, and
``FAKE_MODAL_ROOT`` is the directory standing in for the container's ``/`` (local dirs and python
sources added to the image are written there). Signals, kills, retries and cancellation follow
Modal (see executor.py); every process of a container dies with it (containers.py). A clustered
function (``@modal.clustered(size=N)``) runs each attempt as N containers that start and end
together, each with its rank and a loopback address of its own (clusters.py, attempt.py). Pin
modal==1.6.4: the protocol is internal to Modal and this fake was written against that client.
"""

from .fake import FakeModal, LogEntry

__all__ = ["FakeModal", "LogEntry"]
