"""WalletWerk campaigns: each route of walletwerk-campaign-notifications.txt, its scopes,
its error shape and its lifetime cap of 3 (429 NOTIFICATION_LIMIT_EXCEEDED)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from passpush.app import Application
from passpush.v1 import passes_pb2 as ppb
from passpush.v1 import passes_pb2_grpc

from shim_auth import bearer
from support import World

# On SQLite alone, like the fuzz: the shim only translates the vendor's HTTP onto the gRPC
# service, and what it calls there is tested on both databases by the gRPC tests.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
async def world(passes: passes_pb2_grpc.PassServiceStub) -> World:
    world = World(passes)
    await world.apple_template("loyalty")
    await world.pass_("p1", "loyalty")
    await world.pass_("p2", "loyalty", status=ppb.PASS_STATUS_REVOKED)
    for campaign_id in ("spring", "autumn"):
        await passes.CreateCampaign(
            ppb.CreateCampaignRequest(
                campaign_id=campaign_id, campaign=ppb.Campaign(project_id="acme")
            )
        )
        await passes.AddCampaignMembers(
            ppb.AddCampaignMembersRequest(campaign_id=campaign_id, pass_ids=["p1", "p2"])
        )
    return world


@pytest.fixture
async def writer(server: Application) -> dict[str, str]:
    """Headers with a key that has only campaigns:write and campaigns:read."""
    _, key = await server.keys.create_key("acme", "werk", ["campaigns:write", "campaigns:read"])
    return {"Authorization": bearer(key)}


def in_days(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


NEWS = {"header": "Spring sale", "body": "20% off until Sunday"}


async def test_send_answers_success_with_the_ticket(
    client: httpx.AsyncClient, world: World, writer: dict[str, str]
) -> None:
    response = await client.post("/campaigns/spring/notifications", json=NEWS, headers=writer)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["data"]["campaignId"] == "spring"
    assert body["data"]["header"] == "Spring sale"
    assert isinstance(body["data"]["ticketId"], int)


async def test_schedule_get_list_and_cancel(
    client: httpx.AsyncClient, world: World, writer: dict[str, str]
) -> None:
    scheduled_for = in_days(1)
    created = await client.post(
        "/campaigns/spring/notifications/schedule",
        json={**NEWS, "scheduledFor": scheduled_for},
        headers=writer,
    )
    assert created.status_code == 201, created.text
    notification = created.json()["data"]
    assert notification["status"] == "pending"
    assert notification["scheduledFor"] == scheduled_for
    path = f"/campaigns/spring/notifications/{notification['id']}"

    got = await client.get(path, headers=writer)
    assert got.status_code == 200, got.text
    assert got.json() == {"success": True, "data": notification}

    listed = await client.get("/campaigns/spring/notifications/scheduled", headers=writer)
    assert [n["id"] for n in listed.json()["data"]] == [notification["id"]]
    pending = await client.get(
        "/campaigns/spring/notifications/scheduled?status=pending", headers=writer
    )
    assert [n["id"] for n in pending.json()["data"]] == [notification["id"]]
    other = await client.get("/campaigns/autumn/notifications/scheduled", headers=writer)
    assert other.json() == {"success": True, "data": []}

    cancelled = await client.delete(path, headers=writer)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["data"]["status"] == "cancelled"
    by_status = await client.get(
        "/campaigns/spring/notifications/scheduled?status=cancelled", headers=writer
    )
    assert [n["id"] for n in by_status.json()["data"]] == [notification["id"]]

    again = await client.delete(path, headers=writer)
    assert again.status_code == 409, again.text
    assert again.json()["success"] is False
    assert again.json()["error"]["code"]


async def test_a_notification_of_another_campaign_is_not_found_under_this_one(
    client: httpx.AsyncClient, world: World, writer: dict[str, str]
) -> None:
    created = await client.post(
        "/campaigns/spring/notifications/schedule",
        json={**NEWS, "scheduledFor": in_days(1)},
        headers=writer,
    )
    notification_id = created.json()["data"]["id"]

    for method in ("GET", "DELETE"):
        response = await client.request(
            method, f"/campaigns/autumn/notifications/{notification_id}", headers=writer
        )
        assert response.status_code == 404, response.text
        assert response.json()["success"] is False


async def test_the_fourth_notification_answers_429_notification_limit_exceeded(
    client: httpx.AsyncClient, world: World, writer: dict[str, str]
) -> None:
    for _ in range(2):
        sent = await client.post("/campaigns/spring/notifications", json=NEWS, headers=writer)
        assert sent.status_code == 200, sent.text
    scheduled = await client.post(
        "/campaigns/spring/notifications/schedule",
        json={**NEWS, "scheduledFor": in_days(2)},
        headers=writer,
    )
    assert scheduled.status_code == 201, scheduled.text

    response = await client.post("/campaigns/spring/notifications", json=NEWS, headers=writer)

    assert response.status_code == 429, response.text
    assert response.json() == {
        "success": False,
        "error": {
            "code": "NOTIFICATION_LIMIT_EXCEEDED",
            "message": response.json()["error"]["message"],
        },
    }


@pytest.mark.parametrize(
    ("scheduled_for", "field"),
    [(in_days(-1), "send_time"), (in_days(31), "send_time"), ("soon", "scheduledFor")],
    ids=["past", "past-30-days", "not-a-time"],
)
async def test_a_schedule_out_of_its_window_answers_400(
    client: httpx.AsyncClient, world: World, writer: dict[str, str], scheduled_for: str, field: str
) -> None:
    response = await client.post(
        "/campaigns/spring/notifications/schedule",
        json={**NEWS, "scheduledFor": scheduled_for},
        headers=writer,
    )

    assert response.status_code == 400, response.text
    assert response.json()["success"] is False
    assert field in response.json()["error"]["message"]


BAD_BODIES: list[dict[str, object]] = [
    {"body": "no header"},
    {"header": "no body"},
    {"header": "x" * 101, "body": "too long a header"},
    {"header": "h", "body": "x" * 501},
    {"header": "h", "body": "b", "priority": "high"},
    {"header": 1, "body": "b"},
]


async def test_a_bad_body_answers_400_in_walletwerk_s_shape(
    client: httpx.AsyncClient, world: World, writer: dict[str, str]
) -> None:
    """Each bad body in turn on one world; each wrong answer is named."""
    wrong = {}
    for body in BAD_BODIES:
        response = await client.post("/campaigns/spring/notifications", json=body, headers=writer)
        answer = response.json()
        refused = response.status_code == 400 and answer["success"] is False
        if not refused or set(answer["error"]) != {"code", "message"}:
            wrong[str(body)[:60]] = response.text
    assert wrong == {}


async def test_a_read_only_key_cannot_send_but_can_list(
    client: httpx.AsyncClient, world: World, server: Application
) -> None:
    _, key = await server.keys.create_key("acme", "reader", ["campaigns:read"])
    reader = {"Authorization": bearer(key)}

    sent = await client.post("/campaigns/spring/notifications", json=NEWS, headers=reader)
    listed = await client.get("/campaigns/spring/notifications/scheduled", headers=reader)

    assert sent.status_code == 403, sent.text
    assert sent.json()["error"]["code"] == "MISSING_SCOPE"
    assert listed.status_code == 200, listed.text


async def test_a_campaigns_key_cannot_send_to_other_targets(
    client: httpx.AsyncClient, world: World, writer: dict[str, str]
) -> None:
    response = await client.post(
        "/v1/template/loyalty/notify", json={"value": "Hi"}, headers=writer
    )

    assert response.status_code == 403, response.text


async def test_without_a_key_answers_401(client: httpx.AsyncClient, world: World) -> None:
    response = await client.post("/campaigns/spring/notifications", json=NEWS)

    assert response.status_code == 401
    assert response.json()["success"] is False
    assert response.json()["error"]["code"] == "MISSING_CREDENTIALS"


async def test_an_unknown_campaign_answers_404(
    client: httpx.AsyncClient, world: World, writer: dict[str, str]
) -> None:
    response = await client.post("/campaigns/winter/notifications", json=NEWS, headers=writer)

    assert response.status_code == 404, response.text
    assert response.json()["success"] is False
