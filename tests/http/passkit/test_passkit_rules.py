"""Apple's rules for a PassKit web service that are easy to get wrong, each checked as a
device sees it: over real HTTP, against the running app."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from test_passkit import Device, HeldPass, issue_pass, send

from passpush.domain.clock import utcnow
from passpush.domain.update_tags import update_tag_at
from passpush.store.models import PassRow
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc
from passpush.v1 import passes_pb2 as ppb

from apple_passes import AppleCerts, notification_field, unzip
from support import token, wait_terminal


@pytest.fixture
async def device(shim: str) -> AsyncIterator[Device]:
    async with httpx.AsyncClient(timeout=30) as http:
        yield Device(http, "6b2f0d6b1c0e4d6f9a1b2c3d4e5f6a7b", token(0xD0))


def visible(text: str) -> str:
    """The text as its reader sees it: without format characters (zero-width ones)."""
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


async def shown_value(device: Device, held: HeldPass) -> str:
    """The notification back field's value in the pass the device fetches now."""
    fetched = await device.fetch(held)
    assert fetched.status_code == 200, fetched.text
    field = notification_field(json.loads(unzip(fetched.content)["pass.json"]))
    assert field is not None
    assert "%@" in field["changeMessage"]  # else the lock screen does not show the value
    value: str = field["value"]
    return value


# -- lastUpdated: a string, and never older than the tag the device sent ---------------------


# Only PostgreSQL has other transactions open while a device asks (SQLite has one writer).
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_last_updated_never_goes_below_the_tag_the_device_sent(
    shim: str,
    device: Device,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    sessions: async_sessionmaker[AsyncSession],
    apple_certs: AppleCerts,
) -> None:
    p1, _ = await issue_pass(passes, apple_certs, "p1", "p2")
    assert (await device.register(p1)).status_code == 201
    first = (await device.updated(p1)).json()["lastUpdated"]

    async with sessions.begin() as long_write:
        # Its transaction begins here, before the next change and the device's next tag...
        await long_write.execute(select(PassRow.id).limit(1))
        await send(notifications, "p1", "First")
        sent = (await device.updated(p1, since=first)).json()["lastUpdated"]
        # ...and only then writes: from now on it is a change still to commit.
        await long_write.execute(
            update(PassRow)
            .where(PassRow.project_id == "acme", PassRow.id == "p2")
            .values(update_tag=update_tag_at(utcnow()))
        )
        await send(notifications, "p1", "Second")
        answer = await device.updated(p1, since=sent)

    assert answer.status_code == 200
    assert answer.json()["serialNumbers"] == ["p1"]
    last_updated = answer.json()["lastUpdated"]
    assert isinstance(last_updated, str) and last_updated.isdecimal()
    assert int(last_updated) >= int(sent)


async def test_last_updated_is_a_json_string(
    shim: str, device: Device, passes: passes_pb2_grpc.PassServiceStub, apple_certs: AppleCerts
) -> None:
    (held,) = await issue_pass(passes, apple_certs, "p1")
    assert (await device.register(held)).status_code == 201

    listed = await device.updated(held)

    assert listed.headers["content-type"] == "application/json"
    assert isinstance(listed.json()["lastUpdated"], str)


# -- 204 when nothing changed -----------------------------------------------------------------


async def test_nothing_changed_or_no_passes_is_204_without_a_body(
    shim: str, device: Device, passes: passes_pb2_grpc.PassServiceStub, apple_certs: AppleCerts
) -> None:
    (held,) = await issue_pass(passes, apple_certs, "p1")
    no_passes = await device.updated(held)
    assert (await device.register(held)).status_code == 201
    tag = (await device.updated(held)).json()["lastUpdated"]

    nothing_new = await device.updated(held, since=tag)

    for answer in (no_passes, nothing_new):
        assert answer.status_code == 204
        assert answer.content == b""


# -- the pass URL: HEAD, and If-Modified-Since ------------------------------------------------


async def changed_an_hour_ago(sessions: async_sessionmaker[AsyncSession], pass_id: str) -> None:
    """Dates the pass's last change an hour back: its Last-Modified is then that second (a
    pass fetched within its change's second carries the second before)."""
    async with sessions.begin() as session:
        await session.execute(
            update(PassRow)
            .where(PassRow.project_id == "acme", PassRow.id == pass_id)
            .values(updated_at=utcnow() - timedelta(hours=1))
        )


async def test_head_on_the_pass_url_has_the_get_headers_and_no_body(
    shim: str,
    device: Device,
    passes: passes_pb2_grpc.PassServiceStub,
    sessions: async_sessionmaker[AsyncSession],
    apple_certs: AppleCerts,
) -> None:
    (held,) = await issue_pass(passes, apple_certs, "p1")
    await changed_an_hour_ago(sessions, "p1")
    url = f"{held.web_service_url}/v1/passes/{held.pass_type_identifier}/{held.serial_number}"
    auth = {"Authorization": f"ApplePass {held.authentication_token}"}

    got = await device.http.get(url, headers=auth)
    head = await device.http.head(url, headers=auth)
    current = await device.http.head(
        url, headers={**auth, "If-Modified-Since": got.headers["last-modified"]}
    )
    wrong_token = await device.http.head(url, headers={"Authorization": "ApplePass " + "x" * 32})

    assert got.status_code == 200 and got.content
    assert head.status_code == 200
    assert head.content == b""
    for name in ("content-type", "last-modified"):
        assert head.headers[name] == got.headers[name], name
    # The length of the pass as signed for this request (each signature has its own time).
    assert int(head.headers["content-length"]) > 0
    assert current.status_code == 304 and current.content == b""
    assert current.headers["last-modified"] == got.headers["last-modified"]
    assert wrong_token.status_code == 401


async def test_if_modified_since_takes_http_dates_and_ignores_what_is_not_one(
    shim: str,
    device: Device,
    passes: passes_pb2_grpc.PassServiceStub,
    sessions: async_sessionmaker[AsyncSession],
    apple_certs: AppleCerts,
) -> None:
    (held,) = await issue_pass(passes, apple_certs, "p1")
    await changed_an_hour_ago(sessions, "p1")
    last_modified = (await device.fetch(held)).headers["last-modified"]
    when = parsedate_to_datetime(last_modified)
    # HTTP's three date formats (RFC 9110 5.6.7), all of the copy's Last-Modified.
    rfc850 = when.strftime("%A, %d-%b-%y %H:%M:%S GMT")
    asctime = when.strftime("%a %b ") + f"{when.day:>2}" + when.strftime(" %H:%M:%S %Y")
    future = format_datetime(datetime.now(UTC) + timedelta(days=1), usegmt=True)

    answers = {
        "the copy's Last-Modified": (last_modified, 304),
        "RFC 850": (rfc850, 304),
        "asctime": (asctime, 304),
        "a later date, still past": (format_datetime(when + timedelta(seconds=1), True), 304),
        "an older date": (format_datetime(when - timedelta(seconds=1), True), 200),
        # A date the server has not reached is no copy it served (RFC 2616 14.25): answered
        # 304, every change until that date would stay hidden from the device.
        "a date in the future": (future, 200),
        "not a date": ("yesterday", 200),
    }
    statuses = {}
    for what, (date, _) in answers.items():
        fetched = await device.fetch(held, if_modified_since=date)
        statuses[what] = fetched.status_code
        assert fetched.headers["last-modified"] == last_modified, what

    assert statuses == {what: status for what, (_, status) in answers.items()}


# -- the notification field: a value that changes with every notification -------------------


async def test_the_same_text_sent_twice_still_changes_the_field_value(
    shim: str,
    device: Device,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    apple_certs: AppleCerts,
) -> None:
    (held,) = await issue_pass(passes, apple_certs, "p1")

    shown = []
    for _ in range(3):
        await send(notifications, "p1", "Doors open at 8")
        shown.append(await shown_value(device, held))
    stored = await passes.GetPass(ppb.GetPassRequest(id="p1"))

    assert shown[0] != shown[1] and shown[1] != shown[2]
    assert [visible(value) for value in shown] == ["Doors open at 8"] * 3
    assert shown[0] == "Doors open at 8"  # a new text is served as sent
    assert stored.notification.body == "Doors open at 8"  # the API shows the text as sent


async def test_a_text_ending_as_the_marked_value_still_changes_the_field_value(
    shim: str,
    device: Device,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    apple_certs: AppleCerts,
) -> None:
    (held,) = await issue_pass(passes, apple_certs, "p1")
    await send(notifications, "p1", "Hi")
    await send(notifications, "p1", "Hi")
    marked = await shown_value(device, held)

    # The caller's own text is what was just served: the field must change all the same.
    await send(notifications, "p1", marked)

    assert await shown_value(device, held) != marked


async def test_a_broadcast_with_the_text_a_pass_shows_still_changes_its_field_value(
    shim: str,
    device: Device,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    apple_certs: AppleCerts,
) -> None:
    p1, p2 = await issue_pass(passes, apple_certs, "p1", "p2")
    await send(notifications, "p1", "Sale ends tonight")
    before = await shown_value(device, p1)

    ticket = await notifications.Send(
        npb.SendRequest(
            target=npb.Target(template=npb.TemplateRef(template_id="loyalty")),
            content=npb.Content(header="Offer", body="Sale ends tonight"),
        )
    )
    await wait_terminal(notifications, ticket.id)

    after = await shown_value(device, p1)
    assert after != before and visible(after) == "Sale ends tonight"
    assert await shown_value(device, p2) == "Sale ends tonight"  # a new text, as sent
