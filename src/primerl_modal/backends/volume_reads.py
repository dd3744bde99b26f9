"""A lean reader of whole files from a Modal volume, for `prm pull`.

`modal volume get` reads every file through the volume's general reader. For a file of one
block (a run's rollouts and logs: thousands of them), its retry layer, timeout task, per-file
pool of block tasks and write lock are most of the client's work per file; for a file of many
blocks (checkpoints), checking every block's sha256 and writing it happen on the event loop,
which then tops out at what one core can hash. This reader makes the same requests on the
same connection (the channel carries the client's credentials): a small file is one call and
one GET, read into memory; a large file's blocks are fetched in parallel and each is checked
and written at its offset on a worker thread, so hashing runs beside the network work.
Digests are checked with modal's own helpers.

Any trouble (an error reply, a bad digest, a file that changed since it was listed) is raised
to the caller, which reads the file again through modal's reader with its retries: nothing is
lost but a little time on a rare failure. The reader leans on a few of the client's internals;
if they move, `open_reader` answers None and every file goes through modal's reader.
"""

from __future__ import annotations

import asyncio
import os
from typing import IO, Any

RPC_TIMEOUT_S = 60.0  # one block-URL call; on expiry the file is read the slow, retrying way
LARGE_BLOCKS_IN_FLIGHT = 8  # blocks of large files in memory at once (8 MiB each)


class CorruptBlock(Exception):
    """A block longer than the file's layout allows."""


class VolumeReader:
    def __init__(self, volume: Any, method: Any, session: Any, helpers: Any, api: Any,
                 rpcs: asyncio.Semaphore, blocks: asyncio.Semaphore) -> None:
        self._volume, self._method, self._session = volume, method, session
        self._helpers, self._api = helpers, api
        self._rpcs, self._blocks = rpcs, blocks
        self._large_blocks = asyncio.Semaphore(LARGE_BLOCKS_IN_FLIGHT)

    async def read(self, path: str, out: IO[bytes]) -> int:
        """Write the file at ``path`` to ``out`` (from its start); returns its size. A file of
        many blocks needs ``out`` to be a real file. Raises on any trouble."""
        request = self._api.VolumeGetFile2Request(volume_id=self._volume.object_id, path=path,
                                                  client_pads_blocks=True)
        async with self._rpcs:  # the time limit counts from the call, not from the queue
            async with asyncio.timeout(RPC_TIMEOUT_S):
                response = await self._method(request)
        lengths = self._helpers._expected_block_lengths(response.start, response.len,
                                                        len(response.get_urls))
        if len(lengths) <= 1:
            body = await self._block(response.get_urls[0], lengths[0]) if lengths else b""
            out.write(body.ljust(response.len, b"\0"))  # trailing zeros may be left out
            return response.len
        fd = out.fileno()
        async with asyncio.TaskGroup() as group:  # one failed block cancels the others
            for index, (url, length) in enumerate(zip(response.get_urls, lengths, strict=True)):
                group.create_task(self._large_block(url, length, fd,
                                                    index * self._helpers.BLOCK_SIZE))
        os.ftruncate(fd, response.len)  # zeros left out of a block read back as zeros
        return response.len

    async def _block(self, url: str, length: int) -> bytes:
        h = self._helpers
        async with self._blocks, self._session.get(
                url, timeout=h._block_download_timeout()) as reply:
            await h._raise_on_block_response_error(reply)
            body: bytes = await h._read_block_body(reply, length)  # checks the digest
            return body

    async def _large_block(self, url: str, length: int, fd: int, offset: int) -> None:
        h = self._helpers
        async with self._large_blocks:
            chunks, size = [], 0
            async with self._session.get(url, timeout=h._block_download_timeout()) as reply:
                await h._raise_on_block_response_error(reply)
                digest = h._parse_repr_digest(reply.headers.get("Repr-Digest"))
                async for chunk in reply.content.iter_any():
                    size += len(chunk)
                    if size > length:
                        raise CorruptBlock(f"a block is longer than the expected {length} bytes")
                    chunks.append(chunk)
            write = asyncio.get_running_loop().run_in_executor(
                None, _check_and_write, chunks, h._BlockDigestVerifier(digest), fd, offset)
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                await asyncio.wait([write])  # no write may land after the caller moves on
                raise


def _check_and_write(chunks: list[bytes], verifier: Any, fd: int, offset: int) -> None:
    """On a worker thread: modal's digest check of the whole block, then its bytes at
    ``offset`` (hashing releases the GIL, so this runs beside the event loop)."""
    for chunk in chunks:
        verifier.update(chunk)
    verifier.finish()  # raises ExecutionError for a corrupt block
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            written = os.pwrite(fd, view, offset)
            offset += written
            view = view[written:]


async def open_reader(volume: Any, rpcs: asyncio.Semaphore,
                      blocks: asyncio.Semaphore) -> VolumeReader | None:
    """A reader for the (async implementation of the) volume, or None when this modal client
    does not have the internals it needs."""
    try:
        import grpclib.client
        from modal import volume as helpers
        from modal._utils.http_utils import ClientSessionRegistry
        from modal_proto import api_pb2

        for name in ("BLOCK_SIZE", "_expected_block_lengths", "_raise_on_block_response_error",
                     "_read_block_body", "_block_download_timeout", "_parse_repr_digest",
                     "_BlockDigestVerifier"):
            getattr(helpers, name)
        await volume.hydrate()
        wrapper = volume.client._stub.VolumeGetFile2
        channel = await volume.client._get_channel(wrapper.server_url)
        raw = wrapper.wrapped_method
        method = grpclib.client.UnaryUnaryMethod(channel, raw.name, raw.request_type,
                                                 raw.reply_type)
        session = ClientSessionRegistry.get_session()
    except (ImportError, AttributeError, TypeError):
        return None
    return VolumeReader(volume, method, session, helpers, api_pb2, rpcs, blocks)
