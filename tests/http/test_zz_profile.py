"""Throwaway: CPU per PassKit request through the ASGI app (not committed)."""
import cProfile, time, json
import httpx
from passpush.http.app import create_app
from passpush.v1 import notifications_pb2 as npb, passes_pb2 as ppb
from apple_passes import pass_document, png
from support import TOPIC, token, upsert, wait_terminal
import os

N = 300

async def test_profile(server, passes, notifications, apple_certs, database_url):
    backend = database_url.split(":")[0]
    app = create_app(f"127.0.0.1:{server.port}", server.passkit)
    await passes.CreateTemplate(ppb.CreateTemplateRequest(template_id="loyalty", template=ppb.Template(
        project_id="acme", platform=ppb.PLATFORM_APPLE, pass_type_identifier=TOPIC, apple_signing=apple_certs.proto())))
    files = {"icon.png": png() + os.urandom(20000), "logo.png": png(3, 1) + os.urandom(40000)}
    for i in range(N):
        await passes.UpsertPass(upsert(id=f"p{i}", template_id="loyalty", authentication_token=f"tok{i:020d}"))
        await passes.SetPassContent(ppb.SetPassContentRequest(pass_id=f"p{i}", pass_json=json.dumps(pass_document()).encode(), files=files))
    pref = "http://t/passkit"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), timeout=30) as http:
        async def timed(label, calls):
            prof = cProfile.Profile()
            cpu = time.process_time(); prof.enable()
            for c in calls:
                r = await c()
                assert r.status_code in (200, 201, 204), (label, r.status_code, r.text)
            prof.disable()
            print(f"\n{backend} {label}: {(time.process_time()-cpu)/len(calls)*1e6:.0f} us CPU per request")
            prof.dump_stats(f"/tmp/prof/{backend}-{label}.prof")
        tags = {}
        await timed("noop", [lambda: http.get("http://t/openapi.json")] * 50)
        await timed("register", [
            (lambda i=i: http.post(f"{pref}/v1/devices/dev{i:06d}/registrations/{TOPIC}/p{i}", json={"pushToken": token(i)}, headers={"Authorization": f"ApplePass tok{i:020d}"}))
            for i in range(N)])
        for i in range(N):
            tags[i] = (await http.get(f"{pref}/v1/devices/dev{i:06d}/registrations/{TOPIC}")).json()["lastUpdated"]
        t = await notifications.Send(npb.SendRequest(target=npb.Target(template=npb.TemplateRef(template_id="loyalty")), content=npb.Content(body="hello")))
        await wait_terminal(notifications, t.id, 60)
        await timed("serials", [
            (lambda i=i: http.get(f"{pref}/v1/devices/dev{i:06d}/registrations/{TOPIC}", params={"passesUpdatedSince": tags[i]})) for i in range(N)])
        await timed("pass", [
            (lambda i=i: http.get(f"{pref}/v1/passes/{TOPIC}/p{i}", headers={"Authorization": f"ApplePass tok{i:020d}"})) for i in range(N)])
        await timed("pass-again", [
            (lambda i=i: http.get(f"{pref}/v1/passes/{TOPIC}/p{i}", headers={"Authorization": f"ApplePass tok{i:020d}"})) for i in range(N)])
