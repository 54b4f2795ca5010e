"""With the gRPC server gone, every vendor answers 503 in its own shape, never a bare 500."""

from __future__ import annotations

import httpx

from passpush.http.app import HttpServer, create_app

from processes import free_port


async def test_each_vendor_answers_503_when_the_grpc_server_is_unreachable() -> None:
    http = HttpServer(create_app(f"127.0.0.1:{free_port()}"), "127.0.0.1:0")  # nothing there
    await http.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http.port}") as client:
            headers = {"Authorization": "Bearer ppk_0123456789abcdef.secret"}
            airship = await client.post("/v1/pass/1/notify", json={"value": "x"}, headers=headers)
            passentry = await client.get("/api/v1/batches/abc", headers=headers)
            walletwerk = await client.get("/campaigns/c/notifications/scheduled", headers=headers)
    finally:
        await http.stop(grace=1.0)

    assert airship.status_code == 503, airship.text
    assert airship.json()["ok"] is False
    assert passentry.status_code == 503, passentry.text
    assert passentry.json()["errors"][0]["status"] == "503"
    assert walletwerk.status_code == 503, walletwerk.text
    assert walletwerk.json()["error"]["code"] == "UNAVAILABLE"
    assert "Traceback" not in airship.text + passentry.text + walletwerk.text
