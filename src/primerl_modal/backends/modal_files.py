"""Reading a run's files from a Modal volume, as fast as `modal volume get` or faster.

The fast path uses modal's client internals (the async implementation behind the public
objects, and volume_reads' lean reader); every one of them falls back to modal's public API
(`Volume.iterdir`/`read_file_into_fileobj`) when it is missing or its signature moved
(AttributeError, TypeError), so a modal release that changes them costs speed, not pulls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import IO, Any, TypeVar

import modal
from modal.types import FileEntryType

from primerl_modal.backends.modal_client import MISSING, modal_errors
from primerl_modal.backends.volume_reads import VolumeReader, open_reader
from primerl_modal.core.selection import RemoteFile

T = TypeVar("T")
RPCS_IN_FLIGHT = 64  # block-URL requests at once: more only queues on Modal's side
BLOCKS_IN_FLIGHT = 128


def client_internals(volume: modal.Volume) -> tuple[Any, Any] | None:
    """(modal's synchronizer, the volume's async implementation), or None without them."""
    try:
        from modal._utils.async_utils import synchronizer

        synchronizer.create_blocking  # noqa: B018 - ModalSource.run needs it too
        return synchronizer, synchronizer._translate_in(volume)
    except (ImportError, AttributeError, TypeError):
        return None


class ModalSource:
    """Fetches from a volume. The transfer runs on the modal client's own event loop and
    awaits the volume's async implementation directly, with one pair of semaphores for all
    files (block-URL calls and block downloads in flight), as `modal volume get` does. Files
    go through the lean reader of volume_reads; any file it has trouble with goes again
    through modal's own reader, with its retries. Should the internal API move, it falls
    back to the public `.aio` methods on a loop of its own."""

    def __init__(self, volume: modal.Volume) -> None:
        self.volume = volume
        self._impl: Any = None
        self._synchronizer: Any = None
        self._gates: dict[str, Any] = {}
        self._reader: VolumeReader | None = None
        internals = client_internals(volume)
        if internals is not None:
            self._synchronizer, self._impl = internals

    def run(self, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
        if self._synchronizer is None:
            return asyncio.run(main())

        async def with_reader() -> T:
            # Made on the running loop and shared by every file of the pull.
            self._gates = {"rpc_semaphore": asyncio.Semaphore(RPCS_IN_FLIGHT),
                           "download_semaphore": asyncio.Semaphore(BLOCKS_IN_FLIGHT)}
            with modal_errors():
                self._reader = await open_reader(self._impl, self._gates["rpc_semaphore"],
                                                 self._gates["download_semaphore"])
            return await main()

        return self._synchronizer.create_blocking(with_reader)()

    async def listing(self, roots: tuple[tuple[str, str], ...],
                      keep: Callable[[RemoteFile], bool]) -> AsyncIterator[RemoteFile]:
        for root, prefix in roots:
            entries = self._impl.iterdir(root, recursive=True) if self._impl else \
                self.volume.iterdir.aio(root, recursive=True)
            with modal_errors():
                try:
                    async for e in entries:
                        if e.type == FileEntryType.FILE:
                            rel = e.path.lstrip("/").removeprefix(root).lstrip("/")
                            item = RemoteFile(e.path, prefix + rel, e.size, float(e.mtime))
                            if keep(item):
                                yield item
                except MISSING:  # e.g. no _prm/ folder for a run found elsewhere
                    continue

    async def fetch(self, item: RemoteFile, out: IO[bytes],
                    progress: Callable[[int], None]) -> None:
        if self._reader is not None:
            try:
                progress(await self._reader.read(item.remote, out))
                return
            except Exception:  # noqa: BLE001 - modal's reader below retries or says what is wrong
                out.seek(0)
                out.truncate()

        def on_progress(advance: int = 0, **_: Any) -> None:
            if advance:
                progress(advance)

        if self._synchronizer is None:
            await self.volume.read_file_into_fileobj.aio(item.remote, out,
                                                         progress_cb=on_progress)
            return
        try:
            await self._impl._read_file_into_fileobj(
                item.remote, out, progress_cb=on_progress, concurrency=BLOCKS_IN_FLIGHT,
                **self._gates)
        except (AttributeError, TypeError):  # the private reader moved: its public twin
            out.seek(0)
            out.truncate()
            await self._impl.read_file_into_fileobj(item.remote, out, progress_cb=on_progress)
