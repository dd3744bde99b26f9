"""What every part of the servicer shares: the handler decorators, errors and object lookups.

A bug inside a handler fails the RPC with ``DATA_LOSS`` (not retried by the client) and its
traceback is kept in ``FakeModal.errors``. Each handler runs with `caller_task` set to the task
(container) id the request came from, or None for a request from outside any container:
containers send it as a header through modal's ``override_headers`` setting (see
``containers.container_env``).
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from grpclib import GRPCError, Status

if TYPE_CHECKING:
    from grpclib.server import Stream

    from .executor import CallRuntime
    from .fake import FakeModal

S = TypeVar("S", bound="ServicerBase")
ENVIRONMENT = "main"
TASK_HEADER = "x-fake-modal-task-id"

caller_task: ContextVar[str | None] = ContextVar("caller_task", default=None)


def not_found(message: str) -> GRPCError:
    return GRPCError(Status.NOT_FOUND, message)


def _internal_error(servicer: ServicerBase, method: str, exc: Exception) -> GRPCError:
    servicer.fake.record_error(f"{method}: {traceback.format_exc()}")
    return GRPCError(Status.DATA_LOSS, f"fake_modal internal error in {method}: {exc!r}")


def _received(servicer: ServicerBase, name: str, stream: Stream[Any, Any]) -> None:
    servicer.fake.requests.append(name)
    task_ids = stream.metadata.getall(TASK_HEADER, []) if stream.metadata else []
    caller_task.set(str(task_ids[-1]) if task_ids else None)


def unary(
    fn: Callable[[S, Any], Awaitable[Any]],
) -> Callable[[S, Stream[Any, Any]], Coroutine[Any, Any, None]]:
    """Turn ``async def Method(self, request) -> response`` into a grpclib handler."""

    @functools.wraps(fn)
    async def handler(self: S, stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        _received(self, fn.__name__, stream)
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
        _received(self, fn.__name__, stream)
        try:
            async for response in fn(self, request):
                await stream.send_message(response)
        except GRPCError:
            raise
        except Exception as exc:
            raise _internal_error(self, fn.__name__, exc) from exc

    return handler


class ServicerBase:
    """The fake's state and the lookups that turn a missing object into NOT_FOUND."""

    def __init__(self, fake: FakeModal) -> None:
        self.fake = fake

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

    def _volume_name(self, volume_id: str) -> str:
        volume = self.fake.volume_by_id(volume_id)
        if volume is None:
            raise not_found(f"Volume '{volume_id}' not found")
        return str(volume["name"])
