"""The function RPCs: definitions (with their ``with_options`` variants), calls and outputs."""

from __future__ import annotations

import signal
import time
from typing import Any

from google.protobuf.empty_pb2 import Empty
from grpclib import GRPCError, Status
from modal._serialization import deserialize_data_format
from modal_proto import api_pb2

from .executor import CallRuntime
from .fake import new_id
from .rpc import ServicerBase, unary


class FunctionRpcs(ServicerBase):
    def _register_function(
        self,
        function_id: str,
        app_id: str,
        definition: api_pb2.Function,
        ranked: list[api_pb2.Function],
        base_function_id: str | None = None,
    ) -> None:
        fake = self.fake
        volumes = {m.mount_path: self._volume_name(m.volume_id) for m in definition.volume_mounts}
        secret_names: list[str] = []
        inline_env: dict[str, str] = {}
        for secret_id in definition.secret_ids:
            secret = fake._secret_objects[secret_id]
            if secret["name"]:
                secret_names.append(secret["name"])
            else:
                secret_names += sorted(secret["env"])
                inline_env.update(secret["env"])
        gpus = [_gpu_string(f.resources.gpu_config) for f in ranked if f.resources.gpu_config.count]
        resources = definition.resources
        retries = definition.retry_policy if definition.HasField("retry_policy") else None
        autoscaler = definition.autoscaler_settings
        max_containers = (
            autoscaler.max_containers
            if autoscaler.HasField("max_containers")
            else definition.concurrency_limit or None
        )
        cluster_size = definition._experimental_group_size or None
        if cluster_size and max_containers and max_containers % cluster_size:
            # Modal counts a cluster's every container; the client checks this only for the
            # definition, not for `with_options`
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"`max_containers` ({max_containers}) must be a multiple of the cluster size "
                f"({cluster_size}) for clustered Functions",
            )
        fake._function_defs[function_id] = definition
        fake.functions[function_id] = {
            "function_id": function_id,
            "app_id": app_id,
            "module_name": definition.module_name,
            "function_name": definition.function_name,
            "base_function_id": base_function_id,
            "gpu": gpus[0] if gpus else None,
            "gpus": gpus,
            "timeout_s": definition.timeout_secs,
            "retries": retries.retries if retries is not None else None,
            "retry_policy": {
                "retries": retries.retries,
                "backoff_coefficient": retries.backoff_coefficient,
                "initial_delay_s": retries.initial_delay_ms / 1000,
                "max_delay_s": retries.max_delay_ms / 1000,
            }
            if retries is not None
            else None,
            "volumes": volumes,
            "secrets": secret_names,
            "env": inline_env,
            "image_id": definition.image_id,
            "mount_ids": list(definition.mount_ids),
            "cpu": resources.milli_cpu / 1000 if resources.milli_cpu else None,
            "memory_mb": resources.memory_mb or None,
            "region": list(definition.scheduler_placement.regions) or None,
            "cloud": definition.cloud_provider_str or None,
            "nonpreemptible": definition.scheduler_placement.nonpreemptible,
            "max_containers": max_containers,  # containers: a cluster of N takes N
            "cluster_size": cluster_size,
            "rdma": definition.resources.rdma,
            "serialized": bool(definition.function_serialized),
            "created_at": time.time(),
        }
        app = fake.apps.get(app_id)
        if app is not None and function_id not in app["function_ids"]:
            app["function_ids"].append(function_id)

    @unary
    async def FunctionPrecreate(
        self, request: api_pb2.FunctionPrecreateRequest
    ) -> api_pb2.FunctionPrecreateResponse:
        function_id = request.existing_function_id or new_id("fu")
        metadata = api_pb2.FunctionHandleMetadata(
            function_name=request.function_name,
            function_type=request.function_type,
            app_id=request.app_id,
            supported_input_formats=request.supported_input_formats,
            supported_output_formats=request.supported_output_formats,
        )
        self.fake._function_meta[function_id] = metadata
        return api_pb2.FunctionPrecreateResponse(function_id=function_id, handle_metadata=metadata)

    @unary
    async def FunctionCreate(
        self, request: api_pb2.FunctionCreateRequest
    ) -> api_pb2.FunctionCreateResponse:
        if request.HasField("function_data"):  # a list of GPU types: one ranked copy each
            ranked = [r.function for r in request.function_data.ranked_functions]
            function_data = request.function_data
        else:
            ranked = [request.function]
            function_data = _function_data(request.function)
        definition = ranked[0]
        function_id = request.existing_function_id or new_id("fu")
        self._register_function(function_id, request.app_id, definition, ranked)
        metadata = api_pb2.FunctionHandleMetadata(
            function_name=definition.function_name,
            function_type=definition.function_type,
            app_id=request.app_id,
            is_method=definition.is_method,
            supported_input_formats=definition.supported_input_formats,
            supported_output_formats=definition.supported_output_formats,
        )
        self.fake._function_meta[function_id] = metadata
        return api_pb2.FunctionCreateResponse(
            function_id=function_id,
            function=definition,
            handle_metadata=metadata,
            function_data=function_data,
        )

    @unary
    async def FunctionBindParams(
        self, request: api_pb2.FunctionBindParamsRequest
    ) -> api_pb2.FunctionBindParamsResponse:
        """``with_options``: a variant with its own id (the same one for the same options)."""
        base = self._function(request.function_id)
        key = (request.function_id, request.SerializeToString(deterministic=True))
        function_id = self.fake._bound_variants.get(key)
        if function_id is None:
            function_id = new_id("fu")
            definition = _apply_options(
                self.fake.function_defs(request.function_id), request.function_options
            )
            self._register_function(
                function_id, base["app_id"], definition, [definition], request.function_id
            )
            self.fake._bound_variants[key] = function_id
        metadata = api_pb2.FunctionHandleMetadata()
        metadata.CopyFrom(self.fake._function_meta[request.function_id])
        metadata.base_function_id = request.function_id
        self.fake._function_meta[function_id] = metadata
        return api_pb2.FunctionBindParamsResponse(
            bound_function_id=function_id, handle_metadata=metadata
        )

    @unary
    async def FunctionMap(self, request: api_pb2.FunctionMapRequest) -> api_pb2.FunctionMapResponse:
        """A ``.spawn()`` or ``.remote()``: one input, queued for the executor."""
        fake = self.fake
        function = self._function(request.function_id)
        if (
            request.function_call_type != api_pb2.FUNCTION_CALL_TYPE_UNARY
            or len(request.pipelined_inputs) != 1
        ):
            raise GRPCError(
                Status.UNIMPLEMENTED, "fake_modal only supports single-input calls (spawn/remote)"
            )
        app = self._app(function["app_id"])
        if app["state"] in ("stopped", "stopping"):
            raise GRPCError(Status.FAILED_PRECONDITION, f"App {app['app_id']} is stopped")
        item = request.pipelined_inputs[0]
        args = item.input.args
        if item.input.args_blob_id:
            args = fake.store.get_blob(item.input.args_blob_id) or b""
        data_format = item.input.data_format or api_pb2.DATA_FORMAT_PICKLE
        call_id, input_id = new_id("fc"), new_id("in")
        record: dict[str, Any] = {
            "call_id": call_id,
            "function_id": request.function_id,
            "app_id": function["app_id"],
            "args": None,
            "kwargs": None,
            "attempts": [],
            "status": "queued",
            "created_at": time.time(),
            "finished_at": None,
            "invocation": api_pb2.FunctionCallInvocationType.Name(
                request.function_call_invocation_type
            ),
            "cancel_requests": [],
        }
        try:
            record["args"], record["kwargs"] = deserialize_data_format(args, data_format, None)
        except Exception as exc:
            record["args_error"] = repr(exc)
        fake.calls[call_id] = record
        preemptions, fake._pending_preemptions = fake._pending_preemptions, []
        fake.executor.submit(
            CallRuntime(
                call_id=call_id,
                function_id=request.function_id,
                app_id=function["app_id"],
                input_id=input_id,
                args=args,
                data_format=data_format,
                preemptions=preemptions,
            )
        )
        definition = fake.function_defs(request.function_id)
        return api_pb2.FunctionMapResponse(
            function_call_id=call_id,
            pipelined_inputs=[
                api_pb2.FunctionPutInputsResponseItem(
                    idx=item.idx, input_id=input_id, input_jwt="fake-jwt"
                )
            ],
            retry_policy=definition.retry_policy if definition.HasField("retry_policy") else None,
            function_call_jwt="fake-jwt",
            sync_client_retries_enabled=False,  # the fake retries server-side
            max_inputs_outstanding=1000,
        )

    @unary
    async def FunctionGetOutputs(
        self, request: api_pb2.FunctionGetOutputsRequest
    ) -> api_pb2.FunctionGetOutputsResponse:
        """Waits up to ``request.timeout`` for the result; empty (still running) otherwise."""
        runtime = self._call(request.function_call_id)
        if request.start_idx > 0:
            return api_pb2.FunctionGetOutputsResponse(num_unfinished_inputs=0)
        if not runtime.done.is_set() and request.timeout > 0:
            deadline = time.monotonic() + request.timeout
            while not runtime.done.is_set() and time.monotonic() < deadline:
                if self.fake._closing:
                    break
                await self.fake.wait_change(deadline - time.monotonic())
        if not runtime.done.is_set():
            return api_pb2.FunctionGetOutputsResponse(num_unfinished_inputs=1)
        call = self.fake.calls[request.function_call_id]
        attempts = call["attempts"]
        item = api_pb2.FunctionGetOutputsItem(
            result=runtime.result,
            idx=0,
            input_id=runtime.input_id,
            data_format=runtime.data_format,  # type: ignore[arg-type]
            task_id=attempts[-1]["task_id"] if attempts else "",
            input_started_at=attempts[-1]["started"] if attempts else 0,
            output_created_at=call["finished_at"] or 0,
            retry_count=attempts[-1]["retry_count"] if attempts else 0,
        )
        return api_pb2.FunctionGetOutputsResponse(
            outputs=[item], idxs=[0], last_entry_id="0-1", num_unfinished_inputs=0
        )

    @unary
    async def FunctionCallFromId(
        self, request: api_pb2.FunctionCallFromIdRequest
    ) -> api_pb2.FunctionCallFromIdResponse:
        self._call(request.function_call_id)
        call = self.fake.calls[request.function_call_id]
        return api_pb2.FunctionCallFromIdResponse(
            function_call_id=request.function_call_id,
            num_inputs=1,
            metadata=api_pb2.FunctionCallHandleMetadata(
                app_id=call["app_id"], function_id=call["function_id"]
            ),
        )

    @unary
    async def FunctionCallCancel(self, request: api_pb2.FunctionCallCancelRequest) -> Empty:
        """Returns at once; the input dies afterwards. With ``terminate_containers`` its container
        is killed outright; without, the function gets SIGUSR1 (InputCancellation in its main
        thread) and its container is killed if it is still there after ``grace_s``."""
        self._call(request.function_call_id)
        call = self.fake.calls[request.function_call_id]
        call["cancel_requests"].append({"terminate_containers": request.terminate_containers})
        how = None if request.terminate_containers else signal.SIGUSR1
        self.fake.executor.stop_call(request.function_call_id, "cancelled", how)
        return Empty()

    @unary
    async def FunctionCallGetInfo(
        self, request: api_pb2.FunctionCallGetInfoRequest
    ) -> api_pb2.FunctionCallGetInfoResponse:
        self._call(request.function_call_id)
        call = self.fake.calls[request.function_call_id]
        status = call["status"]

        def count(*statuses: str) -> api_pb2.InputCategoryInfo:
            return api_pb2.InputCategoryInfo(total=int(status in statuses))

        info = api_pb2.FunctionCallInfo(
            function_call_id=request.function_call_id,
            created_at=call["created_at"],
            total_inputs=1,
            pending_inputs=count("queued", "running"),
            succeeded_inputs=count("success"),
            failed_inputs=count("failure"),
            timeout_inputs=count("timeout"),
            cancelled_inputs=count("cancelled", "terminated"),
        )
        return api_pb2.FunctionCallGetInfoResponse(info=info)


def _gpu_string(config: api_pb2.GPUConfig) -> str:
    """``A100-40GB:2``, or just the type for one GPU (as ``modal.gpu`` strings are written)."""
    return config.gpu_type if config.count == 1 else f"{config.gpu_type}:{config.count}"


def _function_data(definition: api_pb2.Function) -> api_pb2.FunctionData:
    """What the server echoes back for a single-GPU-type function (read by ``fn.info()``)."""
    return api_pb2.FunctionData(
        module_name=definition.module_name,
        function_name=definition.function_name,
        function_type=definition.function_type,
        timeout_secs=definition.timeout_secs,
        startup_timeout_secs=definition.startup_timeout_secs,
        is_method=definition.is_method,
        is_class=definition.is_class,
        method_definitions=definition.method_definitions,
        _experimental_group_size=definition._experimental_group_size,
        supported_input_formats=definition.supported_input_formats,
        supported_output_formats=definition.supported_output_formats,
        ranked_functions=[api_pb2.FunctionData.RankedFunction(rank=0, function=definition)],
    )


def _apply_options(base: api_pb2.Function, options: api_pb2.FunctionOptions) -> api_pb2.Function:
    """A base definition overridden by ``with_options`` (mirrors ``_FunctionOptions.to_proto``)."""
    definition = api_pb2.Function()
    definition.CopyFrom(base)
    if options.replace_secret_ids:
        del definition.secret_ids[:]
        definition.secret_ids.extend(options.secret_ids)
    if options.replace_volume_mounts:
        del definition.volume_mounts[:]
        definition.volume_mounts.extend(options.volume_mounts)
    if options.HasField("resources"):
        definition.resources.MergeFrom(options.resources)
    if options.HasField("retry_policy"):
        definition.retry_policy.CopyFrom(options.retry_policy)
    if options.HasField("concurrency_limit"):
        definition.autoscaler_settings.max_containers = options.concurrency_limit
    if options.HasField("timeout_secs"):
        definition.timeout_secs = options.timeout_secs
    if options.HasField("scheduler_placement"):
        definition.scheduler_placement.CopyFrom(options.scheduler_placement)
    if options.HasField("cloud_provider_str"):
        definition.cloud_provider_str = options.cloud_provider_str
    return definition
