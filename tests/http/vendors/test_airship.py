"""Airship Wallet: every example request of airship-wallet-push-notifications.md, sent as
written (the `<Base64 key>` placeholder replaced by a real key, and the display window moved
to tomorrow: the document's day has passed, and a window already over is refused), answers
as documented."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from google.protobuf import struct_pb2

from passpush.app import Application
from passpush.v1 import passes_pb2 as ppb
from passpush.v1 import passes_pb2_grpc

from shim_auth import basic, bearer
from support import World, channel_with_key

# On SQLite alone, like the fuzz: the shim only translates the vendor's HTTP onto the gRPC
# service, and what it calls there is tested on both databases by the gRPC tests.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

# The document's example requests, verbatim (trailing spaces and blank line included).
EXAMPLES = {
    "delete by pass": "DELETE /v1/pass/123/notify HTTP/1.1\nAuthorization: Basic <Base64 key>\n\n",
    "delete by external id": (
        "DELETE /v1/pass/template/12345/id/my_custom_pass_id/notify HTTP/1.1\n"
        "Authorization: Basic <Base64 key>\n\n"
    ),
    "delete by segment": (
        "DELETE /v1/segments/12345/3b13666df-e5b3-4e42-8919-f8d63bd7ce2a/notify?templateId=6789"
        " HTTP/1.1\nAuthorization: Basic <Base64 key>\n\n"
    ),
    "delete by tag": (
        "DELETE /v1/tag/campaign123/notify?templateId=12345 HTTP/1.1\n"
        "Authorization: Basic <Base64 key>\n\n"
    ),
    "delete by template": (
        "DELETE /v1/template/123/notify HTTP/1.1\nAuthorization: Basic <Base64 key>\n\n"
    ),
    "delete by template external id": (
        "DELETE /v1/template/id/12345/notify HTTP/1.1\nAuthorization: Basic <Base64 key>\n\n"
    ),
    "send by pass": """POST /v1/pass/123/notify HTTP/1.1
Content-Type: application/json
Authorization: Basic <Base64 key>

{
  "label": "Last Notification",
  "value": "20% off any one regular priced item",
  "startTime": "2026-03-26T12:00:00Z",
  "endTime": "2026-03-26T13:00:00Z"\x20\x20
}
""",
    "send by external id": """POST /v1/pass/template/12345/id/my_custom_pass_id/notify HTTP/1.1
Content-Type: application/json
Authorization: Basic <Base64 key>

{
  "label": "Last Notification",
  "value": "20% off any one regular priced item",
  "startTime": "2026-03-26T12:00:00Z",
  "endTime": "2026-03-26T13:00:00Z"
}
""",
    "send by segment": "POST /v1/segments/12345/3b13666df-e5b3-4e42-8919-f8d63bd7ce2a/notify"
    """?templateId=6789 HTTP/1.1
Content-Type: application/json
Authorization: Basic <Base64 key>

{
  "label": "Last Notification",
  "value": "20% off any one regular priced item",
  "startTime": "2026-03-26T12:00:00Z",
  "endTime": "2026-03-26T13:00:00Z"
}
""",
    "send by template": """POST /v1/template/123/notify HTTP/1.1
Content-Type: application/json
Authorization: Basic <Base64 key>

{
  "label": "Last Notification",
  "value": "20% off any one regular priced item"
}
""",
    "send by template external id": """POST /v1/template/id/12345/notify HTTP/1.1
Content-Type: application/json
Authorization: Basic <Base64 key>

{
  "label": "Last Notification",
  "value": "20% off any one regular priced item"
}
""",
}

# The document's tag example lacks a comma after "value": as written it is not JSON.
SEND_BY_TAG_AS_WRITTEN = """POST /v1/tag/campaign123/notify?templateId=12345 HTTP/1.1
Content-Type: application/json
Authorization: Basic <Base64 key>

{
  "label": "Last Notification",
  "value": "20% off any one regular priced item"
  "startTime": "2026-03-26T12:00:00Z",
  "endTime": "2026-03-26T13:00:00Z"
}
"""

PROJECT = "12345"  # the segment example's projectId: the key belongs to it
EXAMPLE_DAY = "2026-03-26"  # the day of the examples' display windows


@pytest.fixture
async def key(server: Application) -> str:
    _, plaintext = await server.keys.create_key(PROJECT, "airship", ["wnot"], create_project=True)
    return plaintext


@pytest.fixture
async def world(server: Application) -> World:
    """The passes, templates, tag and segment the examples name, in project 12345."""
    _, admin = await server.keys.create_key(PROJECT, "setup", ["all"], create_project=True)
    channel = channel_with_key(server.port, admin)
    world = World(passes_pb2_grpc.PassServiceStub(channel), project_id=PROJECT)
    await world.apple_template("123")
    await world.apple_template("12345")
    await world.apple_template("6789", external_id="12345")
    await world.pass_("123", "123")
    await world.pass_("p-ext", "12345", external_id="my_custom_pass_id", tags=("campaign123",))
    await world.pass_("p-vip", "6789", tags=("vip",))
    criteria = struct_pb2.Struct()
    criteria.update({"tag": "vip"})
    await world.passes.CreateSegment(
        ppb.CreateSegmentRequest(
            segment_id="3b13666df-e5b3-4e42-8919-f8d63bd7ce2a",
            segment=ppb.Segment(project_id=PROJECT, criteria=criteria),
        )
    )
    return world


def request_of(example: str, authorization: str) -> tuple[str, str, dict[str, str], bytes]:
    """Method, target, headers and body of an HTTP/1.1 example, with real credentials."""
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    head, _, body = example.replace(EXAMPLE_DAY, tomorrow).partition("\n\n")
    request_line, *header_lines = head.split("\n")
    method, target, _ = request_line.split(" ")
    headers = dict(line.split(": ", 1) for line in header_lines)
    headers["Authorization"] = authorization
    return method, target, headers, body.encode()


async def send(client: httpx.AsyncClient, example: str, authorization: str) -> httpx.Response:
    method, target, headers, body = request_of(example, authorization)
    return await client.request(method, target, headers=headers, content=body)


@pytest.mark.parametrize("name", list(EXAMPLES))
async def test_each_example_answers_200_with_a_ticket_id(
    client: httpx.AsyncClient, world: World, key: str, name: str
) -> None:
    response = await send(client, EXAMPLES[name], basic(key))

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["ticketId"]
    assert isinstance(body["ticketId"], int) and body["ticketId"] > 0


async def test_the_tag_example_as_written_is_malformed_json_and_answers_400(
    client: httpx.AsyncClient, world: World, key: str
) -> None:
    response = await send(client, SEND_BY_TAG_AS_WRITTEN, basic(key))

    assert response.status_code == 400
    assert response.json()["ok"] is False
    assert response.json()["details"]["reason"] == "MALFORMED_JSON"

    fixed = SEND_BY_TAG_AS_WRITTEN.replace('item"\n', 'item",\n')
    response = await send(client, fixed, basic(key))
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["ticketId"], int)


async def test_bearer_works_like_basic(client: httpx.AsyncClient, world: World, key: str) -> None:
    response = await send(client, EXAMPLES["send by template"], bearer(key))

    assert response.status_code == 200, response.text


async def test_the_ticket_reads_completed_once_the_send_is_done(
    client: httpx.AsyncClient, world: World, key: str
) -> None:
    ticket_id = (await send(client, EXAMPLES["send by pass"], basic(key))).json()["ticketId"]

    async with asyncio.timeout(15):
        while True:
            response = await client.get(
                f"/v1/ticket/{ticket_id}", headers={"Authorization": basic(key)}
            )
            assert response.status_code == 200, response.text
            if response.json()["status"] == "COMPLETED":
                break
            await asyncio.sleep(0.1)
    body = response.json()
    assert list(body) == ["ID", "createdAt", "status", "children"]
    assert body["ID"] == ticket_id
    assert body["createdAt"].endswith("Z")
    assert body["children"] == []


NOT_THERE = [
    ("POST", "/v1/pass/nope/notify"),
    ("DELETE", "/v1/pass/nope/notify"),
    ("POST", "/v1/pass/template/12345/id/nope/notify"),
    ("POST", "/v1/segments/12345/nope/notify?templateId=6789"),
    ("POST", "/v1/template/nope/notify"),
    ("DELETE", "/v1/template/id/nope/notify"),
]


async def test_what_does_not_exist_answers_404(
    client: httpx.AsyncClient, world: World, key: str
) -> None:
    wrong = {}
    for method, path in NOT_THERE:
        body = {"value": "Hi"} if method == "POST" else None
        response = await client.request(
            method, path, json=body, headers={"Authorization": basic(key)}
        )
        if (
            response.status_code != 404
            or response.json()["error_code"] != 40400
            or response.json()["ok"] is not False
        ):
            wrong[f"{method} {path}"] = response.text
    assert wrong == {}


async def test_the_tickets_of_another_project_do_not_exist(
    client: httpx.AsyncClient, world: World, key: str, api_key: str
) -> None:
    ticket_id = (await send(client, EXAMPLES["send by pass"], basic(key))).json()["ticketId"]

    response = await client.get(
        f"/v1/ticket/{ticket_id}", headers={"Authorization": basic(api_key)}
    )

    assert response.status_code == 404


BAD_BODIES = [
    (b'{"label": "x"}', "value"),
    (b'{"value": 5}', "value"),
    (b'{"value": "x", "colour": "red"}', "colour"),
    (b'{"value": "x", "startTime": "tomorrow"}', "startTime"),
    (b'{"value": "' + b"x" * 501 + b'"}', "value"),
    (b'{"value": "   "}', "content.body"),
    (b"[1, 2]", "body"),
    (b"{", "body"),
]


async def test_a_bad_body_answers_400_naming_the_field(
    client: httpx.AsyncClient, world: World, key: str
) -> None:
    wrong = {}
    for body, field in BAD_BODIES:
        response = await client.post(
            "/v1/pass/123/notify",
            content=body,
            headers={"Authorization": basic(key), "Content-Type": "application/json"},
        )
        if not _refused(response, field):
            wrong[body[:40]] = response.text
    assert wrong == {}


def _refused(response: httpx.Response, field: str) -> bool:
    """A 400 in Airship's shape, naming `field`."""
    if response.status_code != 400:
        return False
    answer = response.json()
    return bool(
        answer["ok"] is False
        and answer["error_code"] == 40000
        and answer["details"]["field"] == field
    )


EMPTY_TEMPLATE_ID = [
    ("POST", "/v1/tag/vip/notify?templateId="),
    ("DELETE", "/v1/tag/vip/notify?templateId="),
    ("POST", f"/v1/segments/{PROJECT}/3b13666df-e5b3-4e42-8919-f8d63bd7ce2a/notify?templateId="),
    ("DELETE", f"/v1/segments/{PROJECT}/3b13666df-e5b3-4e42-8919-f8d63bd7ce2a/notify?templateId="),
]


async def test_an_empty_template_id_is_refused_not_widened_to_every_template(
    client: httpx.AsyncClient, world: World, key: str
) -> None:
    wrong = {}
    for method, path in EMPTY_TEMPLATE_ID:
        response = await client.request(
            method,
            path,
            json={"value": "hi"} if method == "POST" else None,
            headers={"Authorization": basic(key)},
        )
        if not _refused(response, "templateId"):
            wrong[f"{method} {path}"] = response.text
    assert wrong == {}


async def test_a_display_window_already_over_is_refused(
    client: httpx.AsyncClient, world: World, key: str
) -> None:
    response = await client.post(
        "/v1/pass/123/notify",
        json={"value": "hi", "endTime": "2020-01-01T00:00:00Z"},
        headers={"Authorization": basic(key)},
    )

    assert response.status_code == 400, response.text
    assert response.json()["details"]["field"] == "content.display_end"


async def test_without_a_valid_key_answers_401(client: httpx.AsyncClient, world: World) -> None:
    wrong = {}
    for authorization in (None, "Basic bm9wZTpub3Bl", "Bearer ppk_0000.bad"):
        headers = {"Authorization": authorization} if authorization else {}
        response = await client.delete("/v1/pass/123/notify", headers=headers)
        if response.status_code != 401 or response.json()["ok"] is not False:
            wrong[authorization] = response.text
    assert wrong == {}


async def test_a_key_without_the_scope_answers_403(
    client: httpx.AsyncClient, server: Application, world: World
) -> None:
    _, reader = await server.keys.create_key(PROJECT, "reader", ["passes:read"])

    response = await client.delete("/v1/pass/123/notify", headers={"Authorization": basic(reader)})

    assert response.status_code == 403, response.text
    assert response.json()["details"]["reason"] == "MISSING_SCOPE"


async def test_the_send_reaches_the_pass_through_grpc(
    client: httpx.AsyncClient, world: World, key: str
) -> None:
    await send(client, EXAMPLES["send by pass"], basic(key))

    the_pass = await world.passes.GetPass(ppb.GetPassRequest(id="123"))
    assert the_pass.notification.header == "Last Notification"
    assert the_pass.notification.body == "20% off any one regular priced item"
