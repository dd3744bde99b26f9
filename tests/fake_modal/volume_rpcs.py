"""The volume RPCs: the committed state of each volume, as the client and containers see it.

The client lists, reads, uploads and removes files of the committed state
(``FakeModal.volume_path``). A container's `VolumeCommit` / `VolumeReload` act on its own copy
of the volume (see volumes.py); the server knows the container from the request's task header.
A commit or reload from outside any container, or of a volume the container does not mount,
has nothing to publish.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from google.protobuf.empty_pb2 import Empty
from grpclib import GRPCError, Status
from modal._utils.blob_utils import BLOCK_SIZE
from modal_proto import api_pb2

from .fake import new_id
from .rpc import ENVIRONMENT, ServicerBase, caller_task, not_found, streaming, unary

LIST_BATCH = 100


class VolumeRpcs(ServicerBase):
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
        self._volume_name(request.volume_id)
        return Empty()

    @unary
    async def VolumeCommit(
        self, request: api_pb2.VolumeCommitRequest
    ) -> api_pb2.VolumeCommitResponse:
        """Publishes what the calling container changed in its copy of the volume."""
        name = self._volume_name(request.volume_id)
        volumes = self.fake.executor.volumes_of(caller_task.get())
        if volumes is not None and volumes.mounts_volume(name):
            volumes.commit(name)
        self.fake.commits.append((name, time.time()))
        return api_pb2.VolumeCommitResponse(skip_reload=True)  # the copy stays as it is

    @unary
    async def VolumeReload(self, request: api_pb2.VolumeReloadRequest) -> Empty:
        """Publishes the calling container's changes, then refreshes its copy."""
        name = self._volume_name(request.volume_id)
        volumes = self.fake.executor.volumes_of(caller_task.get())
        if volumes is not None and volumes.mounts_volume(name):
            volumes.reload(name)
        return Empty()

    def _volume_target(self, volume_id: str, path: str) -> tuple[Path, Path]:
        base = self.fake.volume_path(self._volume_name(volume_id)).resolve()
        target = (base / path.strip("/")).resolve()
        if not target.is_relative_to(base):
            raise GRPCError(Status.INVALID_ARGUMENT, f"Path escapes the volume: {path}")
        return base, target

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
        name = self._volume_name(request.volume_id)
        base, target = self._volume_target(request.volume_id, request.path)
        if not target.exists():
            raise not_found(f"No such file or directory: '{request.path}'")
        aliases = [
            api_pb2.FileEntry(
                path=listed,
                type=api_pb2.FileEntry.FileType.FILE,
                mtime=int((base / real).stat().st_mtime),
                size=(base / real).stat().st_size,
            )
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
        """One URL per 8 MiB block, served as byte ranges of the committed file (without their
        trailing zero bytes when the client pads blocks, as Modal's block server does)."""
        name = self._volume_name(request.volume_id)
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
            urls.append(
                self.fake.blob_server.file_range_url(
                    target, lo, hi - lo, trim=request.client_pads_blocks
                )
            )
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
