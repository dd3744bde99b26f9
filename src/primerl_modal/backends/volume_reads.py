"""Whole small files from a Modal volume: one block-URL call and one GET each.

`modal volume get` reads every file through the volume's general reader, which wraps each
call in a retry layer, an extra task, a timeout task, a per-file pool of block tasks and a
write lock. For a file of one block that machinery is most of the client's work per file, and
a run's rollouts are thousands of such files. This reader makes the same two requests on the
same connection (the channel carries the client's credentials) with none of the layers, and
verifies the block's digest with modal's own helpers. It reports any trouble to the caller,
which then reads the file again through modal's reader with its retries, so nothing is lost
but a little time on a rare failure. It needs a few of the client's internals: if they move,
`open_reader` answers None and every file goes through modal's reader.
"""

from __future__ import annotations

import asyncio
from typing import IO, Any

RPC_TIMEOUT_S = 60.0  # one call; on expiry the file is read again the slow, retrying way


class SmallFileReader:
    def __init__(self, volume: Any, method: Any, session: Any, helpers: Any, api: Any,
                 rpcs: asyncio.Semaphore, blocks: asyncio.Semaphore) -> None:
        self._volume, self._method, self._session = volume, method, session
        self._helpers, self._api = helpers, api
        self._rpcs, self._blocks = rpcs, blocks
        self.block_size: int = helpers.BLOCK_SIZE

    async def read(self, path: str, out: IO[bytes]) -> int:
        """Write the file at ``path`` to ``out``; returns its size. Raises on any trouble,
        including a file that has grown past one block since it was listed."""
        h = self._helpers
        request = self._api.VolumeGetFile2Request(volume_id=self._volume.object_id, path=path,
                                                  client_pads_blocks=True)
        async with self._rpcs:
            response = await self._method(request, timeout=RPC_TIMEOUT_S)
        urls = response.get_urls
        if len(urls) > 1:
            raise ValueError(f"{path} has grown past one block since it was listed")
        body = b""
        if urls:  # none for an empty file
            (expected,) = h._expected_block_lengths(response.start, response.len, 1)
            async with self._blocks, self._session.get(
                    urls[0], timeout=h._block_download_timeout()) as reply:
                await h._raise_on_block_response_error(reply)
                body = await h._read_block_body(reply, expected)
            body = body.ljust(expected, b"\0")  # trailing zeros may be left out of a block
        out.write(body)
        return len(body)


async def open_reader(volume: Any, rpcs: asyncio.Semaphore,
                      blocks: asyncio.Semaphore) -> SmallFileReader | None:
    """A reader for the (async implementation of the) volume, or None when this modal client
    does not have the internals it needs."""
    try:
        import grpclib.client
        from modal import volume as helpers
        from modal._utils.http_utils import ClientSessionRegistry
        from modal_proto import api_pb2

        for name in ("BLOCK_SIZE", "_expected_block_lengths", "_raise_on_block_response_error",
                     "_read_block_body", "_block_download_timeout"):
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
    return SmallFileReader(volume, method, session, helpers, api_pb2, rpcs, blocks)
