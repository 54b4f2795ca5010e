"""PassEntry: the examples of passentry-pass-notification.txt and
passentry-entity-wallet-messaging.txt, sent as written with a real key and real ids."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from passpush.app import Application
from passpush.domain.validation import ENTITY_GROUP_TAGS_MAX
from passpush.v1 import passes_pb2 as ppb
from passpush.v1 import passes_pb2_grpc

from shim_auth import bearer
from support import World

# On SQLite alone, like the fuzz: the shim only translates the vendor's HTTP onto the gRPC
# service, and what it calls there is tested on both databases by the gRPC tests.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

PASS_NOTIFICATION = b"""
{
  "notification": {
    "message": "Use code PASSENTRY2024 for 10% off!"
  }
}
"""

WALLET_MESSAGE = b"""{
"batch": {
"message": "Hello, World!",
"segments": [
{
"groupTag": "summerPromotion"
}
],
"scheduledAt": "2030-03-31T13:16:26Z"
}
}"""


@pytest.fixture
async def world(passes: passes_pb2_grpc.PassServiceStub) -> World:
    world = World(passes)
    await passes.CreateEntity(
        ppb.CreateEntityRequest(entity_id="brand", entity=ppb.Entity(project_id="acme"))
    )
    await world.apple_template("loyalty", entity_id="brand")
    await world.pass_(
        "2f6c1b7e-0d59-4d1a-9a53-6f1c0e9f7a11",
        "loyalty",
        external_id="member-42",
        group_tags=("summerPromotion",),
    )
    await world.pass_("p-winter", "loyalty", group_tags=("winter",))
    return world


def headers(key: str) -> dict[str, str]:
    return {"Authorization": bearer(key), "Content-Type": "application/json"}


@pytest.mark.parametrize("pass_id", ["2f6c1b7e-0d59-4d1a-9a53-6f1c0e9f7a11", "member-42"])
async def test_a_pass_notification_answers_the_pass_with_its_delivery_status(
    client: httpx.AsyncClient, world: World, api_key: str, pass_id: str
) -> None:
    response = await client.post(
        f"/api/v1/passes/{pass_id}/notification",
        content=PASS_NOTIFICATION,
        headers=headers(api_key),
    )

    assert response.status_code == 200, response.text
    document = response.json()
    assert list(document) == ["data", "meta"]
    assert document["data"]["id"] == "2f6c1b7e-0d59-4d1a-9a53-6f1c0e9f7a11"
    assert document["data"]["type"] == "pass"
    attributes = document["data"]["attributes"]
    assert attributes["extId"] == "member-42"
    assert attributes["status"] == "issued"
    assert attributes["deviceType"] == "apple"
    assert attributes["groupTags"] == ["summerPromotion"]
    assert attributes["passTemplateUuid"] == "loyalty"
    assert attributes["latestMessage"] == "Use code PASSENTRY2024 for 10% off!"
    assert document["meta"]["notifications"]["status"] == "delivered"
    assert document["meta"]["notifications"]["message"]


async def test_an_unknown_pass_answers_a_json_api_404(
    client: httpx.AsyncClient, world: World, api_key: str
) -> None:
    response = await client.post(
        "/api/v1/passes/nope/notification", content=PASS_NOTIFICATION, headers=headers(api_key)
    )

    assert response.status_code == 404
    [error] = response.json()["errors"]
    assert error["status"] == "404"
    assert error["code"] == "PASS_NOT_FOUND" or error["code"].endswith("NOT_FOUND")


async def test_the_wallet_message_example_is_refused_for_its_date_beyond_30_days(
    client: httpx.AsyncClient, world: World, api_key: str
) -> None:
    # As written, the example schedules for 2030: passpush schedules at most 30 days ahead.
    response = await client.post(
        "/api/v1/entities/brand/messaging/wallet", content=WALLET_MESSAGE, headers=headers(api_key)
    )

    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert error["status"] == "400"
    assert "scheduledAt" in error["source"]["pointer"] or "send_time" in error["source"]["pointer"]


async def test_the_wallet_message_example_within_30_days_answers_202_validating(
    client: httpx.AsyncClient, world: World, api_key: str
) -> None:
    soon = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    body = WALLET_MESSAGE.replace(
        b"2030-03-31T13:16:26Z", soon.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    )

    response = await client.post(
        "/api/v1/entities/brand/messaging/wallet", content=body, headers=headers(api_key)
    )

    assert response.status_code == 202, response.text
    document = response.json()
    assert list(document) == ["data", "links"]
    batch = document["data"]
    assert batch["type"] == "walletMessaging"
    assert batch["attributes"]["status"] == "validating"
    assert batch["attributes"]["content"] == "Hello, World!"
    assert batch["attributes"]["tag"] is None
    assert batch["attributes"]["scheduledAt"] == soon.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert document["links"]["self"] == f"{client.base_url}/api/v1/batches/{batch['id']}"

    followed = await client.get(document["links"]["self"], headers=headers(api_key))
    assert followed.status_code == 200, followed.text
    assert followed.json()["data"]["attributes"]["status"] == "scheduled"
    assert followed.json()["data"]["id"] == batch["id"]


async def test_a_batch_sent_now_goes_from_sending_to_successful(
    client: httpx.AsyncClient, world: World, api_key: str
) -> None:
    body = b'{"batch": {"message": "Now", "segments": [{"groupTag": "summerPromotion"}]}}'

    response = await client.post(
        "/api/v1/entities/brand/messaging/wallet", content=body, headers=headers(api_key)
    )

    assert response.status_code == 202, response.text
    assert response.json()["data"]["attributes"]["status"] == "validating"
    assert response.json()["data"]["attributes"]["scheduledAt"] is None
    async with asyncio.timeout(15):
        while True:
            batch = await client.get(response.json()["links"]["self"], headers=headers(api_key))
            assert batch.status_code == 200, batch.text
            status = batch.json()["data"]["attributes"]["status"]
            if status != "sending":
                break
            await asyncio.sleep(0.1)
    assert status == "successful"


async def test_an_unknown_batch_answers_404(
    client: httpx.AsyncClient, world: World, api_key: str
) -> None:
    for batch_id in ("999999", "no-such-batch"):
        response = await client.get(f"/api/v1/batches/{batch_id}", headers=headers(api_key))
        assert response.status_code == 404, response.text
        assert response.json()["errors"][0]["status"] == "404"


BAD_BODIES = [
    (b'{"notification": {}}', "/notification/message"),
    (b'{"notification": {"message": 7}}', "/notification/message"),
    (b'{"notification": {"message": "x", "title": "y"}}', "/notification/title"),
    (b'{"message": "x"}', "/notification"),
    (b'{"notification": ', "/body"),
]


async def test_a_bad_body_answers_400_pointing_at_the_field(
    client: httpx.AsyncClient, world: World, api_key: str
) -> None:
    """Each bad body in turn on one world; each wrong answer is named."""
    wrong = {}
    for body, pointer in BAD_BODIES:
        response = await client.post(
            "/api/v1/passes/member-42/notification", content=body, headers=headers(api_key)
        )
        errors = response.json().get("errors", [])
        pointers = [error["source"]["pointer"] for error in errors]
        if response.status_code != 400 or pointers != [pointer]:
            wrong[body] = response.text
    assert wrong == {}


async def test_basic_auth_is_not_passentry_s_and_answers_401(
    client: httpx.AsyncClient, world: World, api_key: str
) -> None:
    response = await client.post(
        "/api/v1/passes/member-42/notification",
        content=PASS_NOTIFICATION,
        headers={"Authorization": "Basic Zm9vOmJhcg==", "Content-Type": "application/json"},
    )

    assert response.status_code == 401
    assert response.json()["errors"][0]["status"] == "401"


async def test_a_key_that_cannot_read_passes_is_refused_before_anything_is_sent(
    client: httpx.AsyncClient, world: World, server: Application
) -> None:
    _, key = await server.keys.create_key("acme", "writer", ["notifications:write"])

    response = await client.post(
        "/api/v1/passes/member-42/notification", content=PASS_NOTIFICATION, headers=headers(key)
    )

    assert response.status_code == 403, response.text
    assert response.json()["errors"][0]["code"] == "MISSING_SCOPE"
    the_pass = await world.passes.GetPass(ppb.GetPassRequest(id="member-42"))
    assert not the_pass.HasField("notification")


async def test_a_batch_over_the_group_tag_limit_answers_400_and_sends_nothing(
    client: httpx.AsyncClient, world: World, api_key: str
) -> None:
    segments = [{"groupTag": f"g{i}"} for i in range(ENTITY_GROUP_TAGS_MAX + 1)]
    body = json.dumps({"batch": {"message": "Now", "segments": segments}})

    response = await client.post(
        "/api/v1/entities/brand/messaging/wallet", content=body, headers=headers(api_key)
    )

    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert error["source"]["pointer"] == "/batch/segments"
    assert str(ENTITY_GROUP_TAGS_MAX) in error["detail"]
