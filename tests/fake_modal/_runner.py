"""Runs one function input in a subprocess, the way a Modal container would.

Started by the executor as ``python -u -c <bootstrap> <this file> <spec.json>``. It imports the
function's module (or unpickles a serialized function), calls the raw function with the
deserialized arguments and writes a pickled result dict to ``spec["output_path"]``. It only
imports the standard library and ``modal``: never the fake server.

As Modal's container entrypoint does for a synchronous function, SIGUSR1 (an input cancelled
without terminating its container) raises ``modal.exception.InputCancellation`` in the main
thread while the input runs; the input then ends with a cancelled (TERMINATED) output.

A container of a clustered function joins its cluster before the input runs, as Modal's
entrypoint does, with modal's own ``_initialize_clustered_function``: it resolves
``i6pn.modal.local`` (answered here with the container's address from the spec) and says
``TaskClusterHello``; ``modal.Cluster.from_context()`` then works in the function.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any


def _load_function(spec: dict[str, Any]) -> Callable[..., Any]:
    from modal._serialization import deserialize
    from modal._utils.async_utils import synchronizer

    obj: Any
    if spec.get("serialized_path"):
        with open(spec["serialized_path"], "rb") as f:
            obj = deserialize(f.read(), None)
    else:
        obj = importlib.import_module(spec["module_name"])
        for part in spec["function_name"].split("."):
            obj = getattr(obj, part)
    # `@app.function` makes a modal.Function: call the user's function that it wraps.
    raw = getattr(synchronizer._translate_in(obj), "_raw_f", None)
    return raw if callable(raw) else obj


def _client() -> Any:
    import modal
    from modal._utils.async_utils import synchronizer

    return synchronizer._translate_in(modal.Client.from_env())


def _join_cluster(spec: dict[str, Any]) -> None:
    import socket

    import modal
    import modal._cluster

    i6pn, resolve = spec["i6pn"], socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        # the container's own name on Modal's private network; every other name as usual
        if host == "i6pn.modal.local":
            return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (i6pn, 0, 0, 0))]
        return resolve(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    modal._cluster.initialize_clustered_function(modal.Client.from_env(), spec["task_id"])


def _cancel_input(signum: int, frame: FrameType | None) -> None:
    from modal.exception import InputCancellation

    raise InputCancellation("Input was cancelled by user")


def main(spec_path: str) -> None:
    from modal._serialization import (
        deserialize_data_format,
        pickle_exception,
        pickle_traceback,
        serialize_data_format,
    )
    from modal.exception import InputCancellation

    with open(spec_path) as f:
        spec = json.load(f)
    data_format: int = spec["data_format"]
    result: dict[str, Any]
    previous = signal.signal(signal.SIGUSR1, _cancel_input)
    try:
        with open(spec["input_path"], "rb") as f:
            # as in a real container: Modal objects among the arguments (a Function, a
            # Volume) come back hydrated with this container's client
            args, kwargs = deserialize_data_format(f.read(), data_format, _client())
        # as Modal's container entrypoint does: modal.current_function_call_id() and
        # modal.current_input_id() answer inside the function
        from modal._runtime.execution_context import _set_current_context_ids

        _set_current_context_ids([f"in-{spec['task_id']}"],
                                 [os.environ.get("MODAL_FUNCTION_CALL_ID", "")], [""])
        function = _load_function(spec)
        if spec["clustered"]:
            _join_cluster(spec)
        value = function(*args, **kwargs)
        if inspect.isawaitable(value):
            value = asyncio.run(value)  # type: ignore[arg-type]
        result = {"status": "success", "data": serialize_data_format(value, data_format)}
    except InputCancellation:
        result = {"status": "cancelled"}
    except Exception as exc:
        traceback.print_exc()
        serialized_tb, tb_line_cache = pickle_traceback(exc, spec["task_id"])
        result = {
            "status": "failure",
            "exception": repr(exc),
            "traceback": traceback.format_exc(),
            "data": pickle_exception(exc),
            "serialized_tb": serialized_tb,
            "tb_line_cache": tb_line_cache,
        }
    finally:
        signal.signal(signal.SIGUSR1, previous)
    sys.stdout.flush()
    sys.stderr.flush()
    tmp_path = spec["output_path"] + ".tmp"
    with open(tmp_path, "wb") as f:
        pickle.dump(result, f)
    os.replace(tmp_path, spec["output_path"])


if __name__ == "__main__":
    main(sys.argv[-1])
