"""Helpers for tests that drive the real server through its gRPC stubs."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import event, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from passpush.domain.clock import utcnow
from passpush.service.keys import KeyCore
from passpush.store.connectors.connector import Connector, Steps
from passpush.store.db import make_engine, make_sessions
from passpush.store.models import (
    DeliveryRow,
    DeviceRegistrationRow,
    PassRow,
    TemplateRow,
    table_of,
)
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc
from passpush.v1 import passes_pb2 as ppb

T = TypeVar("T")

TERMINAL = {
    npb.TICKET_STATE_SUCCEEDED,
    npb.TICKET_STATE_PARTIALLY_FAILED,
    npb.TICKET_STATE_FAILED,
    npb.TICKET_STATE_CANCELLED,
}
TOPIC = "pass.com.example.loyalty"
GOOGLE_ISSUER = "3388000000022222222"


def google_object_id(pass_id: str) -> str:
    """The Google Wallet object id World gives a pass (issuerId.suffix)."""
    return f"{GOOGLE_ISSUER}.{pass_id}"


def token(n: int) -> str:
    """A distinct, valid-looking APNs device token (64 hex digits)."""
    return f"{n:064x}"


def upsert(**fields: object) -> ppb.UpsertPassRequest:
    # `pass` is a Python keyword: the field is set through a dict.
    return ppb.UpsertPassRequest(**{"pass": ppb.Pass(**fields)})  # type: ignore[arg-type]


class _BearerKey:
    """Adds `authorization: Bearer <key>` to a call's metadata."""

    def __init__(self, key: str) -> None:
        self._metadata = (("authorization", f"Bearer {key}"),)

    def _with_key(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *self._metadata)
        return details._replace(metadata=metadata)  # type: ignore[attr-defined, no-any-return]


# grpc.aio files an interceptor under its first kind only: one class per kind of call.
class _UnaryUnary(_BearerKey, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._with_key(details), request)


class _UnaryStream(_BearerKey, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._with_key(details), request)


class _StreamUnary(_BearerKey, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return await continuation(self._with_key(details), requests)


class _StreamStream(_BearerKey, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return await continuation(self._with_key(details), requests)


def channel_with_key(
    port: int, key: str | None, credentials: grpc.ChannelCredentials | None = None
) -> grpc.aio.Channel:
    """A channel to the server on `port` that presents `key` (or nothing) on every call;
    over TLS with `credentials`."""
    kinds = (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
    interceptors = [kind(key) for kind in kinds] if key is not None else []
    if credentials is not None:
        target = f"localhost:{port}"  # a name the test certificates hold
        return grpc.aio.secure_channel(target, credentials, interceptors=interceptors)
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=interceptors)


@dataclass
class World:
    """Builds projects, templates, passes and devices through the PassService stub."""

    passes: passes_pb2_grpc.PassServiceStub
    project_id: str = "acme"
    devices: dict[str, list[str]] = field(default_factory=dict)  # pass id -> tokens
    _next_token: int = 1

    async def apple_template(
        self,
        template_id: str,
        *,
        topic: str = TOPIC,
        project_id: str | None = None,
        external_id: str = "",
        entity_id: str = "",
    ) -> str:
        await self.passes.CreateTemplate(
            ppb.CreateTemplateRequest(
                template_id=template_id,
                template=ppb.Template(
                    project_id=project_id or self.project_id,
                    platform=ppb.PLATFORM_APPLE,
                    pass_type_identifier=topic,
                    external_id=external_id,
                    entity_id=entity_id,
                ),
            )
        )
        return template_id

    async def pass_(
        self,
        pass_id: str,
        template_id: str,
        *,
        devices: int = 1,
        status: int = ppb.PASS_STATUS_ACTIVE,
        tags: tuple[str, ...] = (),
        group_tags: tuple[str, ...] = (),
        external_id: str = "",
    ) -> str:
        await self.passes.UpsertPass(
            upsert(
                id=pass_id,
                template_id=template_id,
                status=status,
                tags=list(tags),
                group_tags=list(group_tags),
                external_id=external_id,
            )
        )
        for i in range(devices):
            device_token = token(self._next_token)
            self._next_token += 1
            await self.passes.RegisterDevice(
                ppb.RegisterDeviceRequest(
                    pass_id=pass_id,
                    device_library_identifier=f"{pass_id}-device-{i}",
                    push_token=device_token,
                )
            )
            self.devices.setdefault(pass_id, []).append(device_token)
        return pass_id

    async def google_template(
        self, template_id: str, *, object_type: str = "loyaltyObject", class_id: str = ""
    ) -> str:
        await self.passes.CreateTemplate(
            ppb.CreateTemplateRequest(
                template_id=template_id,
                template=ppb.Template(
                    project_id=self.project_id,
                    platform=ppb.PLATFORM_GOOGLE,
                    google_class_id=class_id or f"{GOOGLE_ISSUER}.{template_id}",
                    google_object_type=object_type,
                ),
            )
        )
        return template_id

    async def google_pass(
        self,
        pass_id: str,
        template_id: str,
        *,
        tags: tuple[str, ...] = (),
        status: int = ppb.PASS_STATUS_ACTIVE,
    ) -> str:
        """A pass of a Google template; its object id is google_object_id(pass_id)."""
        await self.passes.UpsertPass(
            upsert(
                id=pass_id,
                template_id=template_id,
                status=status,
                tags=list(tags),
                google_object_id=google_object_id(pass_id),
            )
        )
        return google_object_id(pass_id)

    def tokens_of(self, *pass_ids: str) -> list[str]:
        return sorted(t for p in pass_ids for t in self.devices.get(p, []))


async def wait_terminal(
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    ticket_id: int,
    seconds: float = 15.0,
) -> npb.Ticket:
    """Polls GetTicket until the ticket is terminal."""
    ticket = npb.Ticket()
    try:
        async with asyncio.timeout(seconds):
            while True:
                ticket = await notifications.GetTicket(npb.GetTicketRequest(id=ticket_id))
                if ticket.state in TERMINAL:
                    return ticket
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(
            f"ticket {ticket_id} not terminal after {seconds}s: {ticket}"
        ) from None


async def deliveries_by_state(sessions: async_sessionmaker[AsyncSession]) -> Counter[str]:
    """How many deliveries the database holds in each state.

    What proves that a request pushed nothing more, without waiting to see: a call has
    committed what it wrote before it answers (durable before acknowledged), so once it has
    answered, every push it could cause is a row here, and none still pending means no push
    is still to come."""
    async with sessions() as session:
        rows = await session.execute(
            select(DeliveryRow.state, func.count()).group_by(DeliveryRow.state)
        )
        return Counter({state: count for state, count in rows})


@dataclass(frozen=True)
class RichError:
    code: grpc.StatusCode
    reason: str
    field_violations: list[str]
    resource: tuple[str, str] | None


def rich_error(error: grpc.aio.AioRpcError) -> RichError:
    """Unpacks the google.rpc.Status details of a failed call."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status on {error.code()}: {error.details()}"
    reason, violations, resource = "", [], None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "passpush"
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [v.field for v in bad.field_violations]
        elif detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            info_r = error_details_pb2.ResourceInfo()
            detail.Unpack(info_r)
            resource = (info_r.resource_type, info_r.resource_name)
    assert reason, "every error carries an ErrorInfo"
    return RichError(error.code(), reason, violations, resource)


async def seed_apple_passes(
    database_url: str,
    project_id: str,
    template_id: str,
    count: int,
    *,
    new_template_topic: str | None = None,
) -> list[str]:
    """`count` ACTIVE passes with one device each, written straight to the database (fast).

    The template must exist, unless `new_template_topic` is given: then it is created, an
    Apple template with that pass type identifier. Returns the device tokens, in pass order.
    """
    now = datetime.now(UTC)
    tokens = [token(1 + i) for i in range(count)]
    passes = [
        {
            "project_id": project_id,
            "id": f"{template_id}-{i}",
            "template_id": template_id,
            "serial_number": f"{template_id}-{i}",
            "status": "active",
            "authentication_token": "t" * 24,
            "google_object_id": "",
            "update_tag": 0,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(count)
    ]
    devices = [
        {
            "project_id": project_id,
            "pass_id": p["id"],
            "device_library_identifier": "device",
            "push_token": t,
            "active": True,
            "created_at": now,
            "updated_at": now,
        }
        for p, t in zip(passes, tokens, strict=True)
    ]
    engine = make_engine(database_url)
    try:
        async with engine.begin() as connection:
            if new_template_topic is not None:
                template = {
                    "project_id": project_id,
                    "id": template_id,
                    "platform": "apple",
                    "display_name": "",
                    "pass_type_identifier": new_template_topic,
                    "google_class_id": "",
                    "google_object_type": "",
                    "created_at": now,
                }
                await connection.execute(insert(table_of(TemplateRow)), [template])
            await connection.execute(insert(table_of(PassRow)), passes)
            await connection.execute(insert(table_of(DeviceRegistrationRow)), devices)
    finally:
        await engine.dispose()
    return tokens


async def make_key(database_url: str, project_id: str) -> str:
    """A key with every scope for `project_id` (which it creates), written in this process:
    what `passpush keys create` does, without a process importing the whole server (seconds
    each) for tests whose subject is not the CLI."""
    engine = make_engine(database_url)
    try:
        keys = KeyCore(make_sessions(engine), clock=utcnow)
        _, plaintext = await keys.create_key(project_id, "tests", ["all"], create_project=True)
    finally:
        await engine.dispose()
    return plaintext


def invalid_argument_problem(raised: grpc.aio.AioRpcError, field: str) -> str | None:
    """What is wrong with the error a bad input got, if anything: it must be INVALID_ARGUMENT
    naming `field`, with rich details and no exception text."""
    details = raised.details() or ""
    if raised.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return f"{raised.code()}: {details}"
    if "Error" in details or "Traceback" in details:
        return f"exception text on the wire: {details}"
    try:
        error = rich_error(raised)
    except AssertionError as no_rich_status:
        return str(no_rich_status)
    if error.code != grpc.StatusCode.INVALID_ARGUMENT or field not in error.field_violations:
        return f"{error.code} naming {sorted(error.field_violations)}: {details}"
    return None


TEARDOWN_SECONDS = 30.0  # far above a clean stop (tens of milliseconds), far below the test timeout


async def within(seconds: float, what: str, step: Coroutine[Any, Any, object]) -> None:
    """Awaits a teardown step; past `seconds`, fails with where each task of the loop waits
    (the step's own task first), instead of holding the suite until the test timeout, whose
    thread dump shows only that the event loop was waiting."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task in done:
        task.result()
        return
    others = [t for t in asyncio.all_tasks() if t is not task and t is not asyncio.current_task()]
    waits = "\n".join(f"{t.get_name()}: {' <- '.join(_awaiting(t))}" for t in [task, *others])
    task.cancel()
    raise AssertionError(f"{what} did not end within {seconds}s; where each task waits:\n{waits}")


def _awaiting(task: asyncio.Task[Any]) -> list[str]:
    """The chain of awaits a suspended task is in, outermost first."""
    chain, coro = [], task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            chain.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return chain


@contextlib.asynccontextmanager
async def sqlite_engine_with(path: Path, table: str) -> AsyncIterator[AsyncEngine]:
    """The server's SQLite engine (make_engine's settings) on a new file holding one table,
    made by the statement `table`: for tests of the engine and its connections."""
    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.begin() as connection:
            await connection.execute(text(table))
        yield engine
    finally:
        await engine.dispose()


@contextlib.contextmanager
def statements_run(
    engine: AsyncEngine, keep: Callable[[str], bool] = lambda _: True
) -> Iterator[list[str]]:
    """The statements the engine sends to the database meanwhile (those `keep` takes), as
    sent, in order."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if keep(statement):
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


class CountedSteps:
    """A real connector, counting the steps (statements) of what it runs."""

    def __init__(self, connector: Connector) -> None:
        self._connector = connector
        self.dialect = connector.dialect
        self.statements = 0

    async def run(
        self, make: Callable[[], Steps[T]], *, brief: bool = False, one_write: bool = False
    ) -> T:
        return await self._connector.run(
            lambda: self._counted(make()), brief=brief, one_write=one_write
        )

    def _counted(self, steps: Steps[T]) -> Generator[Any, Any, T]:
        try:
            step = next(steps)
            while True:
                self.statements += 1
                step = steps.send((yield step))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def close(self) -> None:
        self._connector.close()
