"""What passes between the executor and ``_runner.py``: the input and a spec file per container in,
a pickled output per container out."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modal_proto import api_pb2

MAX_INLINE_OUTPUT = 2 * 1024 * 1024  # larger results go through a blob, like Modal's
NO_RESULT = "no result"  # the process ended without writing one: a failure

Result = api_pb2.GenericResult


def write_input(workdir: Path, definition: Any, args: bytes, data_format: int) -> dict[str, Any]:
    """Write an attempt's input and function (if serialized) into ``workdir``: what the specs
    of all its containers share."""
    (workdir / "input.bin").write_bytes(args)
    serialized_path = ""
    if definition.function_serialized:
        serialized_path = str(workdir / "function.pkl")
        Path(serialized_path).write_bytes(definition.function_serialized)
    return {
        "module_name": definition.module_name,
        "function_name": definition.implementation_name or definition.function_name,
        "serialized_path": serialized_path,
        "input_path": str(workdir / "input.bin"),
        "data_format": data_format,
    }


def write_spec(
    workdir: Path, shared: dict[str, Any], rank: int, task_id: str, i6pn: str | None
) -> tuple[Path, dict[str, Any]]:
    """Write ``spec-<rank>.json``, what one container of the attempt runs; ``i6pn`` (its
    address) only for a clustered function, whose containers say hello to their cluster."""
    spec = shared | {
        "output_path": str(workdir / f"output-{rank}.pkl"),
        "task_id": task_id,
        "clustered": i6pn is not None,
        "i6pn": i6pn or "",
    }
    path = workdir / f"spec-{rank}.json"
    path.write_text(json.dumps(spec, indent=2))
    return path, spec


def read_output(
    spec: dict[str, Any], returncode: int | None, put_blob: Callable[[bytes], str]
) -> tuple[str, Any]:
    """How one container's function ended ("success", "failure", "cancelled" or `NO_RESULT`)
    and its result."""
    data_format = spec["data_format"]
    path = Path(spec["output_path"])
    if not path.exists():
        message = (
            f"Function exited with code {returncode} before returning a result"
            if returncode
            else "Function exited without returning a result"
        )
        failed = Result(
            status=Result.GENERIC_STATUS_FAILURE, exception=message, exitcode=returncode or 0
        )
        return NO_RESULT, failed
    output = pickle.loads(path.read_bytes())
    if output["status"] == "cancelled":  # as Modal's output_items_cancellation
        return "cancelled", Result(status=Result.GENERIC_STATUS_TERMINATED)
    if output["status"] == "success":
        data: bytes = output["data"]
        if len(data) > MAX_INLINE_OUTPUT:
            return "success", Result(
                status=Result.GENERIC_STATUS_SUCCESS, data_blob_id=put_blob(data)
            )
        return "success", Result(status=Result.GENERIC_STATUS_SUCCESS, data=data)
    result = Result(
        status=Result.GENERIC_STATUS_FAILURE,
        exception=output["exception"],
        traceback=output["traceback"],
    )
    if data_format == api_pb2.DATA_FORMAT_PICKLE:  # Modal only ships pickled exceptions
        result.data = output["data"]
        result.serialized_tb = output["serialized_tb"]
        result.tb_line_cache = output["tb_line_cache"]
    return "failure", result
