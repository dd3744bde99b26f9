"""The gRPC servicer: answers the RPCs of the real modal 1.6.4 client and records what it asked.

Every RPC of ``modal_proto.api_grpc.ModalClientBase`` that is not implemented here fails with
``UNIMPLEMENTED`` naming the method (and is listed in ``FakeModal.unimplemented``), so gaps show
up at once. A bug inside a handler fails the RPC with ``DATA_LOSS`` (not retried by the client)
and its traceback is kept in ``FakeModal.errors``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.empty_pb2 import Empty
from google.protobuf.timestamp_pb2 import Timestamp
from grpclib import GRPCError, Status
from modal._serialization import deserialize_data_format
from modal._utils.blob_utils import BLOCK_SIZE
from modal_proto import api_pb2
from modal_proto.api_grpc import ModalClientBase

from .executor import CallRuntime
from .fake import LogEntry, new_id, stable_id

if TYPE_CHECKING:
    from grpclib.server import Stream

    from .fake import FakeModal

S = TypeVar("S", bound="FakeModalServicer")
ENVIRONMENT = "main"
LIST_BATCH = 100
_FD_NAMES = {
    "stdout": api_pb2.FILE_DESCRIPTOR_STDOUT,
    "stderr": api_pb2.FILE_DESCRIPTOR_STDERR,
    "system": api_pb2.FILE_DESCRIPTOR_INFO,
}
_NAMED_SECRET_TYPES = {
    api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING,
    api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS,
    api_pb2.OBJECT_CREATION_TYPE_CREATE_OVERWRITE_IF_EXISTS,
}
_INLINE_TYPES = {
    api_pb2.OBJECT_CREATION_TYPE_ANONYMOUS_OWNED_BY_APP,
    api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL,
}


def state_name(value: int) -> str:
    """``APP_STATE_DETACHED`` -> ``"detached"``."""
    return api_pb2.AppState.Name(value).removeprefix("APP_STATE_").lower()


def state_value(name: str) -> Any:
    return api_pb2.AppState.Value("APP_STATE_" + name.upper())


def not_found(message: str) -> GRPCError:
    return GRPCError(Status.NOT_FOUND, message)


def _internal_error(servicer: FakeModalServicer, method: str, exc: Exception) -> GRPCError:
    servicer.fake.record_error(f"{method}: {traceback.format_exc()}")
    return GRPCError(Status.DATA_LOSS, f"fake_modal internal error in {method}: {exc!r}")


def unary(
    fn: Callable[[S, Any], Awaitable[Any]],
) -> Callable[[S, Stream[Any, Any]], Coroutine[Any, Any, None]]:
    """Turn ``async def Method(self, request) -> response`` into a grpclib handler."""

    @functools.wraps(fn)
    async def handler(self: S, stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        self.fake.requests.append(fn.__name__)
        try:
            response = await fn(self, request)
        except GRPCError:
            raise
        except Exception as exc:
            raise _internal_error(self, fn.__name__, exc) from exc
        await stream.send_message(response)

    return handler


def streaming(
    fn: Callable[[S, Any], AsyncIterator[Any]],
) -> Callable[[S, Stream[Any, Any]], Coroutine[Any, Any, None]]:
    """Turn ``async def Method(self, request)`` yielding responses into a grpclib handler."""

    @functools.wraps(fn)
    async def handler(self: S, stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        self.fake.requests.append(fn.__name__)
        try:
            async for response in fn(self, request):
                await stream.send_message(response)
        except GRPCError:
            raise
        except Exception as exc:
            raise _internal_error(self, fn.__name__, exc) from exc

    return handler


class FakeModalServicer(ModalClientBase):
    def __init__(self, fake: FakeModal) -> None:
        self.fake = fake

    # ----------------------------------------------------------- lookups

    def _app(self, app_id: str) -> dict[str, Any]:
        if app_id not in self.fake.apps:
            raise not_found(f"App '{app_id}' not found")
        return self.fake.apps[app_id]

    def _function(self, function_id: str) -> dict[str, Any]:
        if function_id not in self.fake.functions:
            raise not_found(f"Function '{function_id}' not found")
        return self.fake.functions[function_id]

    def _call(self, call_id: str) -> CallRuntime:
        runtime = self.fake.executor.runtimes.get(call_id)
        if runtime is None:
            raise not_found(f"Function call '{call_id}' not found")
        return runtime

    def _volume(self, volume_id: str) -> tuple[str, Path]:
        volume = self.fake.volume_by_id(volume_id)
        if volume is None:
            raise not_found(f"Volume '{volume_id}' not found")
        return volume["name"], self.fake.volume_path(volume["name"])

    # ------------------------------------------------------- client, env

    @unary
    async def ClientHello(self, request: Empty) -> api_pb2.ClientHelloResponse:
        return api_pb2.ClientHelloResponse(image_builder_version=self.fake.image_builder_version)

    @unary
    async def EnvironmentGetOrCreate(
        self, request: api_pb2.EnvironmentGetOrCreateRequest
    ) -> api_pb2.EnvironmentGetOrCreateResponse:
        settings = api_pb2.EnvironmentSettings(
            image_builder_version=self.fake.image_builder_version, webhook_suffix="fake"
        )
        metadata = api_pb2.EnvironmentMetadata(
            name=request.deployment_name or ENVIRONMENT, settings=settings
        )
        return api_pb2.EnvironmentGetOrCreateResponse(environment_id="en-fake", metadata=metadata)

    # -------------------------------------------------------------- apps

    def _new_app(self, description: str, state: str, tags: dict[str, str]) -> dict[str, Any]:
        app_id = new_id("ap")
        app: dict[str, Any] = {
            "app_id": app_id,
            "name": description,
            "description": description,
            "deployment_name": "",
            "state": state,
            "tags": tags,
            "created_at": time.time(),
            "stopped_at": None,
            "function_ids": [],
            "functions": {},  # tag -> function id, from AppPublish
            "heartbeats": 0,
            "disconnects": [],
        }
        self.fake.apps[app_id] = app
        self.fake.logs.setdefault(app_id, [])
        return app

    def _app_metadata(self, app: dict[str, Any]) -> api_pb2.AppHandleMetadata:
        lifecycle = api_pb2.AppLifecycle(
            app_state=state_value(app["state"]),
            created_at=app["created_at"],
            created_by="fake-user",
            stopped_at=app["stopped_at"] or 0,
        )
        return api_pb2.AppHandleMetadata(
            app_id=app["app_id"],
            description=app["description"],
            environment_name=ENVIRONMENT,
            lifecycle=lifecycle,
            functions=app["functions"],
        )

    @unary
    async def AppCreate(self, request: api_pb2.AppCreateRequest) -> api_pb2.AppCreateResponse:
        app = self._new_app(request.description, state_name(request.app_state), dict(request.tags))
        page = f"https://modal.com/apps/fake/{ENVIRONMENT}/{app['app_id']}"
        return api_pb2.AppCreateResponse(
            app_id=app["app_id"], app_page_url=page, app_logs_url=page + "/logs"
        )

    @unary
    async def AppPublish(self, request: api_pb2.AppPublishRequest) -> api_pb2.AppPublishResponse:
        app = self._app(request.app_id)
        app["functions"] = dict(request.function_ids)
        for function_id in request.function_ids.values():
            if function_id not in app["function_ids"]:
                app["function_ids"].append(function_id)
        if request.tags:
            app["tags"] = dict(request.tags)
        if request.name:
            app["deployment_name"] = request.name
        if app["state"] != "stopped":
            self.fake.set_app_state(request.app_id, state_name(request.app_state))
        deployed_at = time.time() if request.app_state == api_pb2.APP_STATE_DEPLOYED else 0.0
        return api_pb2.AppPublishResponse(
            url=f"https://modal.com/apps/fake/{ENVIRONMENT}/{request.app_id}",
            deployed_at=deployed_at,
        )

    @unary
    async def AppHeartbeat(self, request: api_pb2.AppHeartbeatRequest) -> Empty:
        self._app(request.app_id)["heartbeats"] += 1
        return Empty()

    @unary
    async def AppClientDisconnect(self, request: api_pb2.AppClientDisconnectRequest) -> Empty:
        """Ephemeral apps die with their client; detached ones live on until their calls end."""
        app = self._app(request.app_id)
        reason = api_pb2.AppDisconnectReason.Name(request.reason)
        app["disconnects"].append({"reason": reason, "exception": request.exception})
        if app["state"] == "detached":
            self.fake.set_app_state(request.app_id, "detached_disconnected")
            self.fake.on_call_finished(request.app_id)
        elif app["state"] != "stopped":
            await self.fake.stop_app(request.app_id)
        self.fake.pulse()  # ends the disconnected client's log streams
        return Empty()

    @unary
    async def AppStop(self, request: api_pb2.AppStopRequest) -> Empty:
        self._app(request.app_id)
        await self.fake.stop_app(request.app_id)
        return Empty()

    @unary
    async def AppList(self, request: api_pb2.AppListRequest) -> api_pb2.AppListResponse:
        items = [
            api_pb2.AppListResponse.AppListItem(
                app_id=app["app_id"],
                description=app["description"],
                state=state_value(app["state"]),
                created_at=app["created_at"],
                stopped_at=app["stopped_at"] or 0,
                n_running_tasks=self.fake.executor.running_tasks(app["app_id"]),
                name=app["deployment_name"],
                metadata=self._app_metadata(app),
            )
            for app in self.fake.apps.values()
        ]
        return api_pb2.AppListResponse(apps=items)

    @unary
    async def TaskList(self, request: api_pb2.TaskListRequest) -> api_pb2.TaskListResponse:
        """Running containers: one per running attempt."""
        tasks = [
            api_pb2.TaskStats(
                task_id=attempt["task_id"],
                app_id=runtime.app_id,
                app_description=self.fake.apps[runtime.app_id]["description"],
                started_at=attempt["started"],
                enqueued_at=self.fake.calls[runtime.call_id]["created_at"],
            )
            for runtime in self.fake.executor.runtimes.values()
            if runtime.process is not None and request.app_id in ("", runtime.app_id)
            for attempt in self.fake.calls[runtime.call_id]["attempts"][-1:]
        ]
        return api_pb2.TaskListResponse(tasks=tasks)

    @unary
    async def AppSetTags(self, request: api_pb2.AppSetTagsRequest) -> Empty:
        self._app(request.app_id)["tags"] = dict(request.tags)
        return Empty()

    @unary
    async def AppGetTags(self, request: api_pb2.AppGetTagsRequest) -> api_pb2.AppGetTagsResponse:
        return api_pb2.AppGetTagsResponse(tags=self._app(request.app_id)["tags"])

    @unary
    async def AppGetOrCreate(
        self, request: api_pb2.AppGetOrCreateRequest
    ) -> api_pb2.AppGetOrCreateResponse:
        """`App.lookup`: by id (any state), or by name among deployed apps."""
        if request.app_name.startswith("ap-"):
            app = self._app(request.app_name)
        else:
            deployed = [
                a
                for a in self.fake.apps.values()
                if a["deployment_name"] == request.app_name and a["state"] == "deployed"
            ]
            if deployed:
                app = deployed[-1]
            elif request.object_creation_type == api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                app = self._new_app(request.app_name, "deployed", {})
                app["deployment_name"] = request.app_name
            else:
                raise not_found(
                    f"App '{request.app_name}' not found in environment '{ENVIRONMENT}'"
                )
        return api_pb2.AppGetOrCreateResponse(
            app_id=app["app_id"], handle_metadata=self._app_metadata(app)
        )

    @unary
    async def AppGetInfo(self, request: api_pb2.AppGetInfoRequest) -> api_pb2.AppGetInfoResponse:
        return api_pb2.AppGetInfoResponse(info=self._app_metadata(self._app(request.app_id)))

    @unary
    async def AppGetLifecycle(
        self, request: api_pb2.AppGetLifecycleRequest
    ) -> api_pb2.AppGetLifecycleResponse:
        metadata = self._app_metadata(self._app(request.app_id))
        return api_pb2.AppGetLifecycleResponse(lifecycle=metadata.lifecycle)

    @unary
    async def AppGetByDeploymentName(
        self, request: api_pb2.AppGetByDeploymentNameRequest
    ) -> api_pb2.AppGetByDeploymentNameResponse:
        named = [a for a in self.fake.apps.values() if a["deployment_name"] == request.name]
        response = api_pb2.AppGetByDeploymentNameResponse(environment_name=ENVIRONMENT)
        if named:
            app = named[-1]
            if app["state"] == "deployed":
                response.app_id = app["app_id"]
            else:
                response.previous_app_id = app["app_id"]
            response.lifecycle.CopyFrom(self._app_metadata(app).lifecycle)
        return response

    # -------------------------------------------------------------- logs

    @staticmethod
    def _log_matches(entry: LogEntry, request: Any) -> bool:
        wanted_fd = getattr(request, "file_descriptor", None) or getattr(request, "source", 0)
        return (
            (not request.function_id or entry.function_id == request.function_id)
            and (not request.function_call_id or entry.function_call_id == request.function_call_id)
            and (not request.task_id or entry.task_id == request.task_id)
            and (not wanted_fd or _FD_NAMES[entry.fd] == wanted_fd)
            and (not request.search_text or request.search_text in entry.data)
        )

    @staticmethod
    def _log_batches(entries: Iterable[LogEntry]) -> list[api_pb2.TaskLogsBatch]:
        """Group consecutive entries of one task into `TaskLogsBatch`es."""
        batches: list[api_pb2.TaskLogsBatch] = []
        for entry in entries:
            if not batches or batches[-1].task_id != entry.task_id:
                batches.append(
                    api_pb2.TaskLogsBatch(
                        task_id=entry.task_id,
                        function_id=entry.function_id,
                        input_id=entry.input_id,
                    )
                )
            batches[-1].entry_id = str(entry.entry_id)
            batches[-1].items.append(
                api_pb2.TaskLogs(
                    data=entry.data,
                    file_descriptor=_FD_NAMES[entry.fd],
                    timestamp=entry.timestamp,
                    timestamp_ns=int(entry.timestamp * 1e9),
                    function_call_id=entry.function_call_id,
                    input_id=entry.input_id,
                    container_id=entry.task_id,
                )
            )
        return batches

    @streaming
    async def AppGetLogs(self, request: api_pb2.AppGetLogsRequest) -> AsyncIterator[Any]:
        """Live log stream: ends with ``app_done`` once the app has stopped, or (for the client
        that launched it) once that client disconnected; otherwise after ``request.timeout``."""
        app = self._app(request.app_id)
        disconnects_at_start = len(app["disconnects"])
        cursor = int(request.last_entry_id) if request.last_entry_id.isdigit() else 0
        deadline = time.monotonic() + request.timeout
        while True:
            entries = self.fake.logs.get(request.app_id, [])
            new = [e for e in entries[cursor:] if self._log_matches(e, request)]
            cursor = len(entries)
            for batch in self._log_batches(new):
                yield batch
            if app["state"] == "stopped" or len(app["disconnects"]) > disconnects_at_start:
                yield api_pb2.TaskLogsBatch(app_done=True)
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.fake._closing:
                return
            await self.fake.wait_change(remaining)

    def _logs_between(self, request: Any) -> list[LogEntry]:
        since = request.since.ToMicroseconds() / 1e6
        until = request.until.ToMicroseconds() / 1e6 if request.HasField("until") else time.time()
        return [
            e
            for e in self.fake.logs.get(self._app(request.app_id)["app_id"], [])
            if since <= e.timestamp < until and self._log_matches(e, request)
        ]

    @unary
    async def AppFetchLogs(
        self, request: api_pb2.AppFetchLogsRequest
    ) -> api_pb2.AppFetchLogsResponse:
        entries = self._logs_between(request)
        if request.limit:
            entries = entries[-request.limit :]
        return api_pb2.AppFetchLogsResponse(batches=self._log_batches(entries))

    @unary
    async def AppCountLogs(
        self, request: api_pb2.AppCountLogsRequest
    ) -> api_pb2.AppCountLogsResponse:
        bucket_secs = request.bucket_secs or 60
        since = request.since.ToSeconds() // bucket_secs * bucket_secs
        until = request.until.ToMicroseconds() / 1e6
        counts: dict[int, dict[str, int]] = {}
        start = since
        while start < until:
            counts[start] = {"stdout": 0, "stderr": 0, "system": 0}
            start += bucket_secs
        for entry in self._logs_between(request):
            bucket = int(entry.timestamp) // bucket_secs * bucket_secs
            if bucket in counts:
                counts[bucket][entry.fd] += 1
        buckets = [
            api_pb2.AppCountLogsResponse.LogBucket(
                bucket_start_at=Timestamp(seconds=start),
                stdout_logs=n["stdout"],
                stderr_logs=n["stderr"],
                system_logs=n["system"],
            )
            for start, n in counts.items()
        ]
        return api_pb2.AppCountLogsResponse(app_id=request.app_id, buckets=buckets)

    # ------------------------------------------------------------ images

    def _image_metadata(self) -> api_pb2.ImageMetadata:
        version = ".".join(map(str, sys.version_info[:3]))
        return api_pb2.ImageMetadata(
            python_version_info=f"Python {version}",
            image_builder_version=self.fake.image_builder_version,
        )

    @unary
    async def ImageGetOrCreate(
        self, request: api_pb2.ImageGetOrCreateRequest
    ) -> api_pb2.ImageGetOrCreateResponse:
        """Every image is "built" at once; ids are content hashes, like Modal's layer cache."""
        image = request.image
        digest = hashlib.sha256(image.SerializeToString(deterministic=True))
        digest.update(request.builder_version.encode())
        image_id = "im-" + digest.hexdigest()[:22]
        record: dict[str, Any] = {
            "image_id": image_id,
            "app_id": request.app_id,
            "dockerfile_commands": list(image.dockerfile_commands),
            "base_images": {b.docker_tag: b.image_id for b in image.base_images},
            "base_image_ids": [b.image_id for b in image.base_images],
            "context_mount_id": image.context_mount_id,
            "context_files": [f.filename for f in image.context_files],
            "secret_ids": list(image.secret_ids),
            "gpu": image.gpu_config.gpu_type or None,
            "build_function": bool(request.build_function_id),
            "builder_version": request.builder_version,
            "force_build": request.force_build,
        }
        self.fake.images[image_id] = record
        self.fake.image_requests.append(record)
        return api_pb2.ImageGetOrCreateResponse(
            image_id=image_id,
            result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS),
            metadata=self._image_metadata(),
        )

    @streaming
    async def ImageJoinStreaming(
        self, request: api_pb2.ImageJoinStreamingRequest
    ) -> AsyncIterator[Any]:
        yield api_pb2.ImageJoinStreamingResponse(
            result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS),
            metadata=self._image_metadata(),
            eof=True,
        )

    @unary
    async def ImageFromId(self, request: api_pb2.ImageFromIdRequest) -> api_pb2.ImageFromIdResponse:
        if request.image_id not in self.fake.images:
            raise not_found(f"Image '{request.image_id}' not found")
        return api_pb2.ImageFromIdResponse(
            image_id=request.image_id, metadata=self._image_metadata()
        )

    # ------------------------------------------------------ mounts, blobs

    @unary
    async def MountGetOrCreate(
        self, request: api_pb2.MountGetOrCreateRequest
    ) -> api_pb2.MountGetOrCreateResponse:
        name = request.deployment_name
        lookup = (
            bool(name) and request.object_creation_type == api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED
        )
        named = [m for m in self.fake.mounts.values() if name and m["deployment_name"] == name]
        if lookup and named:
            mount = named[-1]
        elif lookup and request.namespace != api_pb2.DEPLOYMENT_NAMESPACE_GLOBAL:
            raise not_found(f"Mount '{name}' not found")
        else:
            # A new mount, or one of Modal's global ones (the client package, the python of
            # `add_python=`), which the fake never materialises: it stands in as an empty mount.
            mount = {
                "mount_id": stable_id("mo", name) if name else new_id("mo"),
                "deployment_name": name,
                "namespace": api_pb2.DeploymentNamespace.Name(request.namespace),
                "app_id": request.app_id,
                "files": {f.filename: f.sha256_hex for f in request.files},
                "created_at": time.time(),
            }
            self.fake.mounts[mount["mount_id"]] = mount
        checksum = hashlib.sha256(repr(sorted(mount["files"].items())).encode()).hexdigest()
        return api_pb2.MountGetOrCreateResponse(
            mount_id=mount["mount_id"],
            handle_metadata=api_pb2.MountHandleMetadata(content_checksum_sha256_hex=checksum),
        )

    @unary
    async def MountBatchedCheckExistence(
        self, request: api_pb2.MountBatchedCheckExistenceRequest
    ) -> api_pb2.MountBatchedCheckExistenceResponse:
        missing = [h for h in request.sha256_hex_hashes if not self.fake.store.has_content(h)]
        checked_at = Timestamp()
        checked_at.GetCurrentTime()
        return api_pb2.MountBatchedCheckExistenceResponse(
            missing_sha256_hex_hashes=missing, checked_at=checked_at
        )

    @unary
    async def MountPutFile(
        self, request: api_pb2.MountPutFileRequest
    ) -> api_pb2.MountPutFileResponse:
        data = request.data
        if request.data_blob_id:
            data = self.fake.store.get_blob(request.data_blob_id) or b""
        if request.HasField("data") or request.data_blob_id:
            if self.fake.store.put_content(data) != request.sha256_hex:
                raise GRPCError(Status.INVALID_ARGUMENT, "sha256 of the data does not match")
        return api_pb2.MountPutFileResponse(exists=self.fake.store.has_content(request.sha256_hex))

    @unary
    async def BlobCreate(self, request: api_pb2.BlobCreateRequest) -> api_pb2.BlobCreateResponse:
        blob_id = new_id("bl")
        return api_pb2.BlobCreateResponse(
            blob_id=blob_id,
            blob_ids=[blob_id],
            upload_urls=api_pb2.UploadUrlList(items=[self.fake.blob_server.blob_url(blob_id)]),
        )

    @unary
    async def BlobGet(self, request: api_pb2.BlobGetRequest) -> api_pb2.BlobGetResponse:
        if self.fake.store.get_blob(request.blob_id) is None:
            raise not_found(f"Blob '{request.blob_id}' not found")
        return api_pb2.BlobGetResponse(download_url=self.fake.blob_server.blob_url(request.blob_id))

    # ----------------------------------------------------------- secrets

    @unary
    async def SecretGetOrCreate(
        self, request: api_pb2.SecretGetOrCreateRequest
    ) -> api_pb2.SecretGetOrCreateResponse:
        """Named secrets live in ``fake.secrets``; inline ones (``from_dict``, ``env=``) here."""
        fake = self.fake
        creation = request.object_creation_type
        name = request.deployment_name
        if creation in _INLINE_TYPES:
            secret_id = new_id("st")
            env = dict(request.env_dict)
            fake._secret_objects[secret_id] = {"name": None, "env": env, "app_id": request.app_id}
            keys = sorted(env)
        else:
            exists = name in fake.secrets
            if creation == api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS and exists:
                raise GRPCError(Status.ALREADY_EXISTS, f"Secret '{name}' already exists")
            if creation in _NAMED_SECRET_TYPES and (
                not exists or creation != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING
            ):
                fake.secrets[name] = dict(request.env_dict)
            elif not exists:
                raise not_found(f"Secret '{name}' not found in environment '{ENVIRONMENT}'")
            missing = sorted(set(request.required_keys) - set(fake.secrets[name]))
            if missing:
                raise not_found(f"Secret '{name}' is missing required key(s): {', '.join(missing)}")
            secret_id = stable_id("st", name)
            fake._secret_objects[secret_id] = {"name": name, "env": {}, "app_id": ""}
            keys = sorted(fake.secrets[name])
        metadata = api_pb2.SecretMetadata(name=name, keys=keys, environment_name=ENVIRONMENT)
        return api_pb2.SecretGetOrCreateResponse(secret_id=secret_id, metadata=metadata)

    # ----------------------------------------------------------- volumes

    @unary
    async def VolumeGetOrCreate(
        self, request: api_pb2.VolumeGetOrCreateRequest
    ) -> api_pb2.VolumeGetOrCreateResponse:
        """Volumes are directories ``root/volumes/<name>``; one that exists on disk exists."""
        fake = self.fake
        creation = request.object_creation_type
        name = request.deployment_name
        if creation == api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL:
            name = "ephemeral-" + new_id("vo")[3:]
        exists = name in fake.volumes or fake.volume_path(name).is_dir()
        if exists and creation == api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS:
            raise GRPCError(Status.ALREADY_EXISTS, f"Volume '{name}' already exists")
        if not exists and creation == api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED:
            raise not_found(f"Volume '{name}' not found in environment '{ENVIRONMENT}'")
        volume = fake.register_volume(name, request.version)
        return api_pb2.VolumeGetOrCreateResponse(
            volume_id=volume["volume_id"],
            version=volume["version"],
            metadata=api_pb2.VolumeMetadata(version=volume["version"], name=name),
        )

    @unary
    async def VolumeList(self, request: api_pb2.VolumeListRequest) -> api_pb2.VolumeListResponse:
        """Newest first, paginated by ``created_before`` (every directory of root/volumes)."""
        volumes_dir = self.fake.root / "volumes"
        for path in sorted(volumes_dir.iterdir()) if volumes_dir.is_dir() else []:
            if path.is_dir():
                self.fake.register_volume(path.name, 0)
        before = request.pagination.created_before or float("inf")
        limit = request.pagination.max_objects or None
        volumes = sorted(self.fake.volumes.values(), key=lambda v: -v["created_at"])
        items = [
            api_pb2.VolumeListItem(
                label=v["name"],
                volume_id=v["volume_id"],
                created_at=v["created_at"],
                metadata=api_pb2.VolumeMetadata(
                    version=v["version"],
                    name=v["name"],
                    creation_info=api_pb2.CreationInfo(
                        created_at=v["created_at"], created_by="fake-user"
                    ),
                ),
            )
            for v in volumes
            if v["created_at"] < before
        ][:limit]
        return api_pb2.VolumeListResponse(items=items, environment_name=ENVIRONMENT)

    @unary
    async def VolumeHeartbeat(self, request: api_pb2.VolumeHeartbeatRequest) -> Empty:
        self._volume(request.volume_id)
        return Empty()

    @unary
    async def VolumeCommit(
        self, request: api_pb2.VolumeCommitRequest
    ) -> api_pb2.VolumeCommitResponse:
        name, _ = self._volume(request.volume_id)
        self.fake.commits.append((name, time.time()))
        return api_pb2.VolumeCommitResponse(skip_reload=True)

    @unary
    async def VolumeReload(self, request: api_pb2.VolumeReloadRequest) -> Empty:
        self._volume(request.volume_id)
        return Empty()

    def _volume_target(self, volume_id: str, path: str) -> tuple[Path, Path]:
        _, base = self._volume(volume_id)
        target = (base / path.strip("/")).resolve()
        if not target.is_relative_to(base.resolve()):
            raise GRPCError(Status.INVALID_ARGUMENT, f"Path escapes the volume: {path}")
        return base.resolve(), target

    @staticmethod
    def _file_entry(base: Path, path: Path) -> api_pb2.FileEntry:
        stat = path.lstat()
        if path.is_symlink():
            kind = api_pb2.FileEntry.FileType.SYMLINK
        elif path.is_dir():
            kind = api_pb2.FileEntry.FileType.DIRECTORY
        else:
            kind = api_pb2.FileEntry.FileType.FILE
        return api_pb2.FileEntry(
            path=path.relative_to(base).as_posix(),
            type=kind,
            mtime=int(stat.st_mtime),
            size=stat.st_size if kind == api_pb2.FileEntry.FileType.FILE else 0,
        )

    @streaming
    async def VolumeListFiles2(
        self, request: api_pb2.VolumeListFiles2Request
    ) -> AsyncIterator[Any]:
        """Entries carry volume-relative paths; a directory always precedes its contents."""
        name, _ = self._volume(request.volume_id)
        base, target = self._volume_target(request.volume_id, request.path)
        if not target.exists():
            raise not_found(f"No such file or directory: '{request.path}'")
        aliases = [
            api_pb2.FileEntry(path=listed, type=api_pb2.FileEntry.FileType.FILE,
                              mtime=int((base / real).stat().st_mtime),
                              size=(base / real).stat().st_size)
            for listed, real in self.fake.listing_aliases.get(name, {}).items()
            if listed.startswith(request.path.strip("/"))
        ]
        paths: list[Path] = []
        if target.is_file():
            paths.append(target)
        elif request.recursive:
            for dirpath, dirnames, filenames in os.walk(target):
                dirnames.sort()
                paths += [Path(dirpath, name) for name in dirnames + sorted(filenames)]
        else:
            paths += sorted(target.iterdir())
        if request.HasField("max_entries") and request.max_entries:
            paths = paths[: request.max_entries]
        entries = [self._file_entry(base, p) for p in paths] + aliases
        for start in range(0, len(entries), LIST_BATCH):
            yield api_pb2.VolumeListFiles2Response(entries=entries[start : start + LIST_BATCH])

    @unary
    async def VolumeGetFile2(
        self, request: api_pb2.VolumeGetFile2Request
    ) -> api_pb2.VolumeGetFile2Response:
        """One URL per 8 MiB block, served as byte ranges of the local file."""
        name, _ = self._volume(request.volume_id)
        real = self.fake.listing_aliases.get(name, {}).get(request.path.strip("/"))
        _, target = self._volume_target(request.volume_id, real or request.path)
        if not target.is_file():
            raise not_found(f"No such file: '{request.path}'")
        size = target.stat().st_size
        start = min(request.start, size)
        end = min(start + request.len, size) if request.len else size
        urls = []
        block_start = start // BLOCK_SIZE * BLOCK_SIZE
        while block_start < end:
            lo, hi = max(block_start, start), min(block_start + BLOCK_SIZE, end)
            urls.append(self.fake.blob_server.file_range_url(target, lo, hi - lo))
            block_start += BLOCK_SIZE
        return api_pb2.VolumeGetFile2Response(
            get_urls=urls, size=size, start=start, len=end - start
        )

    @unary
    async def VolumePutFiles2(
        self, request: api_pb2.VolumePutFiles2Request
    ) -> api_pb2.VolumePutFiles2Response:
        """First call: report blocks we lack (with PUT URLs). Then: assemble the files."""
        store = self.fake.store
        missing = [
            api_pb2.VolumePutFiles2Response.MissingBlock(
                file_index=i,
                block_index=j,
                put_url=self.fake.blob_server.block_put_url(block.contents_sha256.hex()),
            )
            for i, file in enumerate(request.files)
            for j, block in enumerate(file.blocks)
            if not store.has_content(block.contents_sha256.hex())
        ]
        if missing:
            return api_pb2.VolumePutFiles2Response(missing_blocks=missing)
        for file in request.files:
            _, target = self._volume_target(request.volume_id, file.path)
            if request.disallow_overwrite_existing_files and target.exists():
                raise GRPCError(Status.ALREADY_EXISTS, f"{file.path}: already exists")
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as f:
                for block in file.blocks:
                    f.write(store.get_content(block.contents_sha256.hex()) or b"")
                f.truncate(file.size)
            if file.mode:
                target.chmod(file.mode & 0o7777)
        return api_pb2.VolumePutFiles2Response()

    @unary
    async def VolumeRemoveFile2(self, request: api_pb2.VolumeRemoveFile2Request) -> Empty:
        base, target = self._volume_target(request.volume_id, request.path)
        if target == base or not target.exists():
            raise not_found(f"No such file or directory: '{request.path}'")
        if target.is_dir() and not target.is_symlink():
            if not request.recursive:
                raise GRPCError(
                    Status.INVALID_ARGUMENT, f"'{request.path}' is a directory (use recursive)"
                )
            shutil.rmtree(target)
        else:
            target.unlink()
        return Empty()

    # --------------------------------------------------------- functions

    def _register_function(
        self,
        function_id: str,
        app_id: str,
        definition: api_pb2.Function,
        ranked: list[api_pb2.Function],
        base_function_id: str | None = None,
    ) -> None:
        fake = self.fake
        fake._function_defs[function_id] = definition
        volumes = {m.mount_path: self._volume(m.volume_id)[0] for m in definition.volume_mounts}
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
            "max_containers": max_containers,
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
            self.fake._bound_variants[key] = function_id
            definition = _apply_options(
                self.fake.function_defs(request.function_id), request.function_options
            )
            self._register_function(
                function_id, base["app_id"], definition, [definition], request.function_id
            )
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
            retry_count=max(len(attempts) - 1, 0),
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
        """Returns once the call's process is gone (SIGTERM, ``grace_s``, SIGKILL)."""
        self._call(request.function_call_id)
        call = self.fake.calls[request.function_call_id]
        call["cancel_requests"].append({"terminate_containers": request.terminate_containers})
        await self.fake.executor.stop_call(request.function_call_id, "cancelled")
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


def _fill_unimplemented(cls: Any) -> None:
    """Every RPC without a handler fails loudly with UNIMPLEMENTED and its name."""
    for name in sorted(getattr(cls, "__abstractmethods__", ())):

        async def fallback(self: FakeModalServicer, stream: Any, _name: str = name) -> None:
            self.fake.requests.append(_name)
            self.fake.unimplemented.append(_name)
            raise GRPCError(Status.UNIMPLEMENTED, f"fake_modal does not implement {_name}")

        fallback.__name__ = name
        setattr(cls, name, fallback)
    cls.__abstractmethods__ = frozenset()


_fill_unimplemented(FakeModalServicer)


def make_servicer(fake: FakeModal) -> ModalClientBase:
    return FakeModalServicer(fake)  # type: ignore[abstract]  # filled in by _fill_unimplemented
