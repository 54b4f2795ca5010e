"""The PassKit web service serves a pass made of its template's shared content and its own
values, as a device fetches it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from service.test_shared_content import apple_template, member, package, template_content

from passpush.v1 import passes_pb2_grpc

from apple_passes import AppleCerts, unzip, verified_pass
from support import TOPIC


async def test_the_passkit_web_service_serves_the_merged_pass(
    passes: passes_pb2_grpc.PassServiceStub,
    apple_certs: AppleCerts,
    shim: str,
    tmp_path: Path,
) -> None:
    await apple_template(passes, apple_certs)
    await passes.SetTemplateContent(template_content())
    await passes.UpsertPass(member("p1", "Ada", 120))
    held = json.loads(unzip(await package(passes, "p1"))["pass.json"])

    async with httpx.AsyncClient(timeout=30) as http:
        registered = await http.post(
            f"{held['webServiceURL']}/v1/devices/d1/registrations/{TOPIC}/SN-p1",
            json={"pushToken": "a" * 64},
            headers={"Authorization": f"ApplePass {held['authenticationToken']}"},
        )
        # The pass has no content of its own: its template's counts as its content.
        listed = await http.get(f"{held['webServiceURL']}/v1/devices/d1/registrations/{TOPIC}")
        answer = await http.get(
            f"{held['webServiceURL']}/v1/passes/{TOPIC}/SN-p1",
            headers={"Authorization": f"ApplePass {held['authenticationToken']}"},
        )

    assert registered.status_code == 201, registered.text
    assert listed.status_code == 200 and listed.json()["serialNumbers"] == ["SN-p1"]
    assert answer.status_code == 200, answer.text
    document = await verified_pass(answer.content, apple_certs, tmp_path)
    assert document["storeCard"]["primaryFields"][0]["value"] == 120
    assert document["barcodes"][0]["message"] == "card:p1"
