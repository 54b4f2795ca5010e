"""The OpenAPI document, and schemathesis fuzzing the shim against it.

Schemathesis generates requests from the document (valid and invalid: wrong types,
unknown fields, odd text, missing credentials) and checks every answer: never a 5xx,
a status the document declares, and a body matching its schema. Bounded by examples
per operation: about a minute, half of it the coverage phase (boundary
and wrong-type values of every parameter). One worker: several threads trip a CPython
3.11 AST bug inside hypothesis.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from passpush.v1 import passes_pb2 as ppb
from passpush.v1 import passes_pb2_grpc

from support import World

SCHEMATHESIS = Path(sys.executable).with_name("st")
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)
EXAMPLES_PER_OPERATION = 20
SECONDS = 180

VENDOR_PATHS = {
    ("post", "/v1/pass/{passId}/notify"),
    ("delete", "/v1/pass/{passId}/notify"),
    ("post", "/v1/pass/template/{templateId}/id/{passExternalId}/notify"),
    ("delete", "/v1/pass/template/{templateId}/id/{passExternalId}/notify"),
    ("post", "/v1/segments/{projectId}/{segmentId}/notify"),
    ("delete", "/v1/segments/{projectId}/{segmentId}/notify"),
    ("post", "/v1/tag/{tag}/notify"),
    ("delete", "/v1/tag/{tag}/notify"),
    ("post", "/v1/template/{templateId}/notify"),
    ("delete", "/v1/template/{templateId}/notify"),
    ("post", "/v1/template/id/{templateExternalId}/notify"),
    ("delete", "/v1/template/id/{templateExternalId}/notify"),
    ("get", "/v1/ticket/{ticketId}"),
    ("post", "/api/v1/passes/{id}/notification"),
    ("post", "/api/v1/entities/{id}/messaging/wallet"),
    ("get", "/api/v1/batches/{id}"),
    ("post", "/campaigns/{campaignId}/notifications"),
    ("post", "/campaigns/{campaignId}/notifications/schedule"),
    ("get", "/campaigns/{campaignId}/notifications/scheduled"),
    ("get", "/campaigns/{campaignId}/notifications/{notificationId}"),
    ("delete", "/campaigns/{campaignId}/notifications/{notificationId}"),
}


# Apple's PassKit web service, with the statuses each route answers (Apple's, and 400 for
# a malformed body, 404/409 for a pass that cannot be served).
_DEVICE_PASS = "/passkit/v1/devices/{deviceLibraryIdentifier}/registrations/{passTypeIdentifier}"
PASSKIT_PATHS = {
    ("post", _DEVICE_PASS + "/{serialNumber}"): {"200", "201", "400", "401"},
    ("delete", _DEVICE_PASS + "/{serialNumber}"): {"200", "401"},
    ("get", _DEVICE_PASS): {"200", "204"},
    ("get", "/passkit/v1/passes/{passTypeIdentifier}/{serialNumber}"): {
        "200",
        "304",
        "401",
        "404",
        "409",
    },
    ("post", "/passkit/v1/log"): {"200", "400"},
}

# On SQLite alone: the shim only translates HTTP onto the gRPC service, so the document and
# what the fuzzer probes (statuses, content types, schemas) do not depend on the database
# behind it, and the gRPC tests run on both. The fuzz cost about a minute a backend.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def test_the_document_lists_every_vendor_route_with_its_schemas(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()

    routes = {(m, p) for p, item in document["paths"].items() for m in item}
    assert routes == VENDOR_PATHS | set(PASSKIT_PATHS)
    for (method, path), statuses in PASSKIT_PATHS.items():
        operation = document["paths"][path][method]
        assert set(operation["responses"]) == statuses, (method, path)
        assert operation.get("requestBody", {"required": True})["required"] is True
    pkpass = document["paths"]["/passkit/v1/passes/{passTypeIdentifier}/{serialNumber}"]["get"]
    assert "application/vnd.apple.pkpass" in pkpass["responses"]["200"]["content"]
    for path, item in document["paths"].items():
        if path.startswith("/passkit/"):
            continue
        for method, operation in item.items():
            success = next(s for s in operation["responses"] if s.startswith("2"))
            assert "schema" in operation["responses"][success]["content"]["application/json"]
            for status in ("400", "401", "403", "404", "409", "429"):
                assert status in operation["responses"], (method, path, status)
            assert "422" not in operation["responses"], (method, path)
            if method == "post":
                assert operation["requestBody"]["required"] is True, (method, path)
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


async def test_schemathesis_finds_no_server_error_and_no_answer_off_schema(
    shim: str, api_key: str, passes: passes_pb2_grpc.PassServiceStub, tmp_path: Path
) -> None:
    world = World(passes)  # something for the fuzzer's ids to hit now and then
    await world.apple_template("0")
    await world.pass_("0", "0", tags=("0",))
    await passes.CreateCampaign(
        ppb.CreateCampaignRequest(campaign_id="0", campaign=ppb.Campaign(project_id="acme"))
    )
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "run",
        f"{shim}/openapi.json",
        f"--checks={CHECKS}",
        f"--max-examples={EXAMPLES_PER_OPERATION}",
        "--phases=examples,coverage,fuzzing",
        "--seed=8",
        "--workers=1",
        "--header",
        f"Authorization: Bearer {api_key}",
        "--request-timeout=20",
        f"--report-dir={tmp_path}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    async with asyncio.timeout(SECONDS):
        output, _ = await process.communicate()
    report = output.decode(errors="replace")
    assert process.returncode == 0, report
