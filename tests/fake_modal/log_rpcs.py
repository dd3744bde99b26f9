"""The log RPCs: live streams (``AppGetLogs``), fetches and counts of an app's output."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from modal_proto import api_pb2

from .fake import LogEntry
from .rpc import ServicerBase, streaming, unary

_FD_NAMES = {
    "stdout": api_pb2.FILE_DESCRIPTOR_STDOUT,
    "stderr": api_pb2.FILE_DESCRIPTOR_STDERR,
    "system": api_pb2.FILE_DESCRIPTOR_INFO,
}


class LogRpcs(ServicerBase):
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
