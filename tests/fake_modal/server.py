"""The gRPC servicer: answers the RPCs of the real modal 1.6.4 client and records what it asked.

Apps, images, mounts, blobs and secrets are answered here; logs in log_rpcs.py, volumes in
volume_rpcs.py, functions and calls in function_rpcs.py, clusters in clusters.py, billing in
billing_rpcs.py. Every RPC of ``modal_proto.api_grpc.ModalClientBase`` that none of them
implements fails with ``UNIMPLEMENTED`` naming the method, and is recorded in
``FakeModal.unimplemented`` and ``FakeModal.errors`` (which fail the test, see fixture.py), so
gaps show up at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from google.protobuf.empty_pb2 import Empty
from google.protobuf.timestamp_pb2 import Timestamp
from grpclib import GRPCError, Status
from modal_proto import api_pb2
from modal_proto.api_grpc import ModalClientBase

from .billing_rpcs import BillingRpcs
from .clusters import ClusterRpcs
from .fake import new_id, stable_id
from .function_rpcs import FunctionRpcs
from .log_rpcs import LogRpcs
from .rpc import ENVIRONMENT, not_found, streaming, unary
from .volume_rpcs import VolumeRpcs

if TYPE_CHECKING:
    from .fake import FakeModal

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


class FakeModalServicer(
    LogRpcs, VolumeRpcs, FunctionRpcs, ClusterRpcs, BillingRpcs, ModalClientBase
):
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
        """Running containers: one per running attempt, N for a cluster of N."""
        tasks = [
            api_pb2.TaskStats(
                task_id=live["task_id"],
                app_id=live["app_id"],
                app_description=self.fake.apps[live["app_id"]]["description"],
                started_at=live["started"],
                enqueued_at=self.fake.calls[live["call_id"]]["created_at"],
            )
            for live in self.fake.executor.live_containers(app_id=request.app_id)
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
        if self.fake.build_seconds and image_id not in self.fake.built_images:
            # not built yet: the client joins the build's log stream for the result
            return api_pb2.ImageGetOrCreateResponse(image_id=image_id)
        return api_pb2.ImageGetOrCreateResponse(
            image_id=image_id,
            result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS),
            metadata=self._image_metadata(),
        )

    @streaming
    async def ImageJoinStreaming(
        self, request: api_pb2.ImageJoinStreamingRequest
    ) -> AsyncIterator[Any]:
        """A build's log, a line per Dockerfile command spread over `build_seconds`, then
        its result; an image built before answers with the result alone."""
        if request.image_id not in self.fake.built_images and self.fake.build_seconds:
            commands = self.fake.images[request.image_id]["dockerfile_commands"] or ["FROM"]
            for i, command in enumerate(commands):
                await asyncio.sleep(self.fake.build_seconds / len(commands))
                log = api_pb2.TaskLogs(data=f"Step {i + 1}/{len(commands)} : {command}\n",
                                       file_descriptor=api_pb2.FILE_DESCRIPTOR_STDOUT)
                yield api_pb2.ImageJoinStreamingResponse(task_logs=[log], entry_id=str(i + 1))
        self.fake.built_images.add(request.image_id)
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


def _fill_unimplemented(cls: Any) -> None:
    """Every RPC without a handler fails loudly with UNIMPLEMENTED and its name."""
    for name in sorted(getattr(cls, "__abstractmethods__", ())):

        async def fallback(self: FakeModalServicer, stream: Any, _name: str = name) -> None:
            self.fake.requests.append(_name)
            self.fake.unimplemented.append(_name)
            self.fake.record_error(f"unimplemented RPC: {_name}")
            raise GRPCError(Status.UNIMPLEMENTED, f"fake_modal does not implement {_name}")

        fallback.__name__ = name
        setattr(cls, name, fallback)
    cls.__abstractmethods__ = frozenset()


_fill_unimplemented(FakeModalServicer)


def make_servicer(fake: FakeModal) -> ModalClientBase:
    return FakeModalServicer(fake)  # type: ignore[abstract]  # filled in by _fill_unimplemented
