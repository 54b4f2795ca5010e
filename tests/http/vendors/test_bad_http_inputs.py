"""Bad inputs on every vendor route of the shim: each answers a 4xx in its vendor's error
shape, never a 500, and no Python exception text reaches the body.

BAD_HTTP_INPUTS is the HTTP half of the probe (tests/api/test_bad_inputs.py has the gRPC half).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from passpush.v1 import passes_pb2 as ppb
from passpush.v1 import passes_pb2_grpc

from support import World

# On SQLite alone, like the fuzz: the shim only translates the vendor's HTTP onto the gRPC
# service, and what it calls there is tested on both databases by the gRPC tests.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

NUL = "a\u0000b"
SURROGATE = b'"\\ud800"'  # JSON's escape of a lone surrogate: no UTF-8 can carry it
TOO_LATE = "9999-12-31T23:59:59Z"
OVERFLOW = "99999999999-01-01T00:00:00Z"


def json_with(fields: dict[str, Any], raw: dict[str, bytes] | None = None) -> bytes:
    """A JSON object; `raw` values are written as given (to carry escapes json.dumps would not
    write)."""
    import json

    parts = [json.dumps(k) + ": " + json.dumps(v) for k, v in fields.items()]
    parts += [json.dumps(k) + ": " + v.decode() for k, v in (raw or {}).items()]
    return ("{" + ", ".join(parts) + "}").encode()


# Each case: method, path, JSON body (or None), the status expected.
BAD_HTTP_INPUTS: dict[str, tuple[str, str, bytes | None, int]] = {
    # Airship Wallet
    "airship_nul_in_value": ("POST", "/v1/pass/p1/notify", json_with({"value": NUL}), 400),
    "airship_nul_in_label": (
        "POST",
        "/v1/pass/p1/notify",
        json_with({"value": "hi", "label": NUL}),
        400,
    ),
    "airship_surrogate_in_value": (
        "POST",
        "/v1/pass/p1/notify",
        json_with({}, {"value": SURROGATE}),
        400,
    ),
    "airship_nul_in_pass_id": ("POST", "/v1/pass/p%001/notify", json_with({"value": "hi"}), 400),
    "airship_nul_in_tag": ("DELETE", "/v1/tag/a%00b/notify?templateId=loyalty", None, 400),
    "airship_nul_in_template_query": ("DELETE", "/v1/tag/gold/notify?templateId=a%00b", None, 400),
    "airship_empty_template_query": ("DELETE", "/v1/tag/gold/notify?templateId=", None, 400),
    "airship_end_time_overflows": (
        "POST",
        "/v1/pass/p1/notify",
        json_with({"value": "hi", "endTime": OVERFLOW}),
        400,
    ),
    "airship_end_time_passed": (
        "POST",
        "/v1/pass/p1/notify",
        json_with({"value": "hi", "endTime": "2001-01-01T00:00:00Z"}),
        400,
    ),
    "airship_huge_ticket_id": ("GET", "/v1/ticket/99999999999999999999999999", None, 404),
    "airship_ticket_id_of_5000_digits": ("GET", "/v1/ticket/" + "9" * 5000, None, 400),
    "airship_deep_json": ("POST", "/v1/pass/p1/notify", b"[" * 100_000 + b"]" * 100_000, 400),
    # PassEntry
    "passentry_nul_in_message": (
        "POST",
        "/api/v1/passes/p1/notification",
        json_with({"notification": {"message": NUL}}),
        400,
    ),
    "passentry_nul_in_pass_id": (
        "POST",
        "/api/v1/passes/p%001/notification",
        json_with({"notification": {"message": "hi"}}),
        400,
    ),
    "passentry_nul_in_group_tag": (
        "POST",
        "/api/v1/entities/e1/messaging/wallet",
        json_with({"batch": {"message": "hi", "segments": [{"groupTag": NUL}]}}),
        400,
    ),
    "passentry_scheduled_at_overflows": (
        "POST",
        "/api/v1/entities/e1/messaging/wallet",
        json_with({"batch": {"message": "hi", "scheduledAt": OVERFLOW}}),
        400,
    ),
    "passentry_scheduled_at_too_far": (
        "POST",
        "/api/v1/entities/e1/messaging/wallet",
        json_with({"batch": {"message": "hi", "scheduledAt": TOO_LATE}}),
        400,
    ),
    "passentry_nul_in_batch_id": ("GET", "/api/v1/batches/a%00b", None, 400),
    "passentry_batch_id_of_5000_digits": ("GET", "/api/v1/batches/" + "9" * 5000, None, 400),
    "passentry_batch_id_superscript_digit": ("GET", "/api/v1/batches/%C2%B2", None, 400),
    # WalletWerk
    "walletwerk_nul_in_body": (
        "POST",
        "/campaigns/spring/notifications",
        json_with({"header": "h", "body": NUL}),
        400,
    ),
    "walletwerk_nul_in_campaign_id": (
        "POST",
        "/campaigns/spr%00ing/notifications",
        json_with({"header": "h", "body": "hi"}),
        400,
    ),
    "walletwerk_scheduled_for_overflows": (
        "POST",
        "/campaigns/spring/notifications/schedule",
        json_with({"header": "h", "body": "hi", "scheduledFor": OVERFLOW}),
        400,
    ),
    "walletwerk_scheduled_for_too_far": (
        "POST",
        "/campaigns/spring/notifications/schedule",
        json_with({"header": "h", "body": "hi", "scheduledFor": TOO_LATE}),
        400,
    ),
    "walletwerk_nul_in_notification_id": (
        "GET",
        "/campaigns/spring/notifications/a%00b",
        None,
        400,
    ),
    "walletwerk_unknown_status": (
        "GET",
        "/campaigns/spring/notifications/scheduled?status=%00",
        None,
        400,
    ),
}


@pytest.fixture
async def world(passes: passes_pb2_grpc.PassServiceStub) -> World:
    world = World(passes)
    await passes.CreateEntity(ppb.CreateEntityRequest(entity_id="e1"))
    await world.apple_template("loyalty", entity_id="e1")
    await world.pass_("p1", "loyalty", tags=("gold",))
    await passes.CreateCampaign(ppb.CreateCampaignRequest(campaign_id="spring"))
    return world


async def test_every_bad_input_on_the_shim_is_a_client_error_in_the_vendors_shape(
    world: World, client: httpx.AsyncClient, api_key: str
) -> None:
    """Each bad input in turn on one server (one each cost the suite half a minute); each
    wrong answer is named."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    wrong = {}
    for case, (method, path, body, status) in BAD_HTTP_INPUTS.items():
        response = await client.request(method, path, content=body, headers=headers)
        if not _in_the_vendors_shape(response, path, status):
            wrong[case] = f"{response.status_code}: {response.text[:300]}"
    assert wrong == {}


def _in_the_vendors_shape(response: httpx.Response, path: str, status: int) -> bool:
    """The client error `status`, in the shape of the vendor whose route `path` is."""
    if response.status_code != status or "Error" in response.text or "Traceback" in response.text:
        return False
    answer = response.json()
    if path.startswith("/v1/"):
        return answer["ok"] is False and answer["error_code"] == status * 100
    if path.startswith("/api/"):
        return bool(answer["errors"][0]["status"] == str(status))
    return answer["success"] is False and bool(answer["error"]["code"])
