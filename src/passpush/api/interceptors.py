"""The one server interceptor: authenticates each call, and maps every error to a status.

Reflection and health stay open; every passpush.v1 method needs a live API key
of its project carrying the method's scope (api/scopes.py).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from passpush.api.errors import as_domain_error, internal_status, status_for
from passpush.api.handlers import Context, WrappingInterceptor, rebuilt
from passpush.api.scopes import PASSPUSH_PREFIX, campaign_scope, required_scope
from passpush.api.wire import RefusedRequest, checked
from passpush.domain.auth import Caller, Scope
from passpush.domain.errors import PermissionDenied, Unauthenticated
from passpush.logs import log_context
from passpush.service.keys import KeyCore

if TYPE_CHECKING:
    from passpush.api.handlers import Handler

log = logging.getLogger(__name__)

# Each RPC runs in a task of its own, so a context variable is per call.
_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("passpush_caller")


def current_project() -> str:
    """The caller's project: the only one its calls can see or change."""
    return _caller.get().project_id


def current_scopes() -> frozenset[Scope]:
    """The caller's scopes, for the calls a campaigns scope grants only on campaigns."""
    return _caller.get().scopes


class CallInterceptor(WrappingInterceptor):
    def __init__(self, keys: KeyCore) -> None:
        super().__init__()
        self._keys = keys

    def wrap(self, handler: Handler, method: str) -> Handler:
        if not method.startswith(PASSPUSH_PREFIX):
            return handler  # reflection and health: open to all
        scope = required_scope(method)

        async def begin(request: Any, context: Context) -> None:
            caller = await self._authenticate(context, scope, campaign_scope(method, request))
            _caller.set(caller)
            log_context(project=caller.project_id, rpc=method)

        return _guarded(handler, begin)

    async def _authenticate(
        self, context: Context, scope: Scope | None, alternative: Scope | None = None
    ) -> Caller:
        metadata = dict(context.invocation_metadata() or ())
        authorization = str(metadata.get("authorization", ""))
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated(
                "send an API key as metadata `authorization: Bearer <key>`",
                reason="MISSING_CREDENTIALS",
            )
        caller = await self._keys.authenticate(key)
        if scope is None:
            raise PermissionDenied("no scope grants this method", reason="METHOD_NOT_GRANTED")
        if scope not in caller.scopes and alternative not in caller.scopes:
            raise PermissionDenied(
                f"this API key lacks the scope {scope.value!r}",
                reason="MISSING_SCOPE",
                scope=scope.value,
            )
        return caller


def _guarded(handler: Handler, begin: Callable[[Any, Context], Awaitable[None]]) -> Handler:
    """The same handler, with `begin` run first and every error turned into a status; a
    request that is no message, or holds text no database can store, is refused first."""
    streams_requests = bool(handler.stream_unary or handler.stream_stream)

    def unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def run(request: Any, context: Context) -> Any:
            try:
                request = _accepted(request, streams_requests)
                await begin(request, context)
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await _abort(context, error)

        return run

    def streaming(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def run(request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                request = _accepted(request, streams_requests)
                await begin(request, context)
                async for response in behavior(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await _abort(context, error)

        return run

    # A streamed message is checked by the core, message by message (an import counts a
    # bad pass as failed and goes on); only its bytes are checked here.
    deserializer = checked(handler.request_deserializer, look_for_nul=not streams_requests)
    return rebuilt(handler, unary, streaming, deserializer)


def _accepted(request: Any, streamed: bool) -> Any:
    """The request, unless its deserializer refused it; a stream fails at such a message."""
    if streamed:
        return _refusing(request)
    if isinstance(request, RefusedRequest):
        raise request.error
    return request


async def _refusing(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream that fails at its first message that is no message."""
    async for request in requests:
        if isinstance(request, RefusedRequest):
            raise request.error
        yield request


async def _abort(context: Context, error: Exception) -> None:
    known = as_domain_error(error)
    if known is None:
        log.error("unexpected error", exc_info=error)
        await context.abort_with_status(internal_status())
    elif known is not error:  # the database's trouble: the log says which
        log.warning("answered %s: %r", known.reason, error)
    await context.abort_with_status(status_for(known))
