"""The PassKit web service, driven as a Wallet device drives it: over real HTTP, at the
webServiceURL written in the pass, with the pass's ApplePass token; pushes arrive at the
fake APNs over HTTP/2."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.app import Application
from passpush.domain.clock import utcnow
from passpush.domain.update_tags import update_tag_at
from passpush.fakes.apns import FakeApns
from passpush.service.passkit import SettledTime, last_modified_of, modified_since
from passpush.store.models import PassRow
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc
from passpush.v1 import passes_pb2 as ppb

from apple_passes import (
    AppleCerts,
    notification_field,
    pass_document,
    pass_files,
    unzip,
    verified_pass,
)
from support import TOPIC, token, upsert, wait_terminal


@dataclass
class HeldPass:
    """A pass as a device holds it: what its pass.json says."""

    web_service_url: str
    pass_type_identifier: str
    serial_number: str
    authentication_token: str

    @classmethod
    def of(cls, pkpass: bytes) -> HeldPass:
        document = json.loads(unzip(pkpass)["pass.json"])
        return cls(
            document["webServiceURL"],
            document["passTypeIdentifier"],
            document["serialNumber"],
            document["authenticationToken"],
        )


@dataclass
class Device:
    """A Wallet device: its library identifier and push token, calling each pass's web
    service the way iOS does."""

    http: httpx.AsyncClient
    library_id: str
    push_token: str

    def _registration(self, held: HeldPass) -> str:
        return (
            f"{held.web_service_url}/v1/devices/{self.library_id}/registrations/"
            f"{held.pass_type_identifier}/{held.serial_number}"
        )

    @staticmethod
    def _auth(held: HeldPass, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"ApplePass {token or held.authentication_token}"}

    async def register(self, held: HeldPass, token: str | None = None) -> httpx.Response:
        return await self.http.post(
            self._registration(held),
            json={"pushToken": self.push_token},
            headers=self._auth(held, token),
        )

    async def unregister(self, held: HeldPass, token: str | None = None) -> httpx.Response:
        return await self.http.delete(self._registration(held), headers=self._auth(held, token))

    async def updated(self, held: HeldPass, since: str | None = None) -> httpx.Response:
        url = (
            f"{held.web_service_url}/v1/devices/{self.library_id}/registrations/"
            f"{held.pass_type_identifier}"
        )
        return await self.http.get(url, params={"passesUpdatedSince": since} if since else None)

    async def fetch(
        self, held: HeldPass, token: str | None = None, if_modified_since: str | None = None
    ) -> httpx.Response:
        headers = self._auth(held, token)
        if if_modified_since:
            headers["If-Modified-Since"] = if_modified_since
        return await self.http.get(
            f"{held.web_service_url}/v1/passes/{held.pass_type_identifier}/{held.serial_number}",
            headers=headers,
        )


@pytest.fixture
async def device(shim: str) -> Any:
    async with httpx.AsyncClient(timeout=30) as http:
        yield Device(http, "6b2f0d6b1c0e4d6f9a1b2c3d4e5f6a7b", token(0xD0))


async def issue_pass(
    passes: passes_pb2_grpc.PassServiceStub, certs: AppleCerts, *pass_ids: str
) -> list[HeldPass]:
    """An Apple template with its signing material, passes with content, and each pass's
    .pkpass as its holder receives it."""
    await passes.CreateTemplate(
        ppb.CreateTemplateRequest(
            template_id="loyalty",
            template=ppb.Template(
                project_id="acme",
                platform=ppb.PLATFORM_APPLE,
                pass_type_identifier=TOPIC,
                apple_signing=certs.proto(),
            ),
        )
    )
    held = []
    for pass_id in pass_ids:
        await passes.UpsertPass(upsert(id=pass_id, template_id="loyalty"))
        await passes.SetPassContent(
            ppb.SetPassContentRequest(
                pass_id=pass_id,
                pass_json=json.dumps(pass_document()).encode(),
                files=pass_files(),
            )
        )
        package = await passes.GetPassPackage(ppb.GetPassPackageRequest(pass_id=pass_id))
        held.append(HeldPass.of(package.pkpass))
    return held


async def send(
    notifications: notifications_pb2_grpc.NotificationServiceStub, pass_id: str, body: str
) -> npb.Ticket:
    ticket = await notifications.Send(
        npb.SendRequest(
            target=npb.Target(pass_id=pass_id), content=npb.Content(header="Offer", body=body)
        )
    )
    return await wait_terminal(notifications, ticket.id)


async def test_a_device_registers_gets_the_push_fetches_the_message_and_unregisters(
    shim: str,
    device: Device,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
    apple_certs: AppleCerts,
    tmp_path: Path,
) -> None:
    (held,) = await issue_pass(passes, apple_certs, "p1")
    assert held.web_service_url == f"{shim}/passkit"

    first, again = await device.register(held), await device.register(held)
    listed = await device.updated(held)
    tag = listed.json()["lastUpdated"]
    nothing_new = await device.updated(held, since=tag)
    sent = await send(notifications, "p1", "20% off today")
    pushes = list(fake_apns.received)
    changed = await device.updated(held, since=tag)
    fetched = await device.fetch(held, if_modified_since="Mon, 01 Jan 2001 00:00:00 GMT")
    current = await device.fetch(held, if_modified_since=format_datetime(utcnow(), True))

    assert (first.status_code, again.status_code) == (201, 200), first.text
    assert listed.status_code == 200
    assert listed.json()["serialNumbers"] == ["p1"] and isinstance(tag, str)
    assert nothing_new.status_code == 204
    assert (sent.state, sent.counts.delivered) == (npb.TICKET_STATE_SUCCEEDED, 1)
    assert [(p.device_token, p.topic, p.payload) for p in pushes] == [
        (device.push_token, TOPIC, b"{}")
    ]
    assert changed.status_code == 200
    assert changed.json()["serialNumbers"] == ["p1"]
    assert int(changed.json()["lastUpdated"]) > int(tag)
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "application/vnd.apple.pkpass"
    assert fetched.headers["last-modified"].endswith(" GMT")
    document = await verified_pass(fetched.content, apple_certs, tmp_path / "sent")
    assert notification_field(document) == {
        "key": "passpush.notification",
        "label": "Offer",
        "value": "20% off today",
        "changeMessage": "%@",
    }
    assert current.status_code == 304 and not current.content

    tag = changed.json()["lastUpdated"]
    deleted = await notifications.Delete(npb.DeleteRequest(target=npb.Target(pass_id="p1")))
    await wait_terminal(notifications, deleted.id)
    after_delete = await device.updated(held, since=tag)
    refetched = await device.fetch(held)
    wrong_unregister = await device.unregister(held, token="x" * 32)
    still_listed = await device.updated(held)
    unregistered = await device.unregister(held)
    unregistered_again = await device.unregister(held)
    gone = await device.updated(held)
    fake_apns.reset()
    after_unregister = await send(notifications, "p1", "Anyone there?")

    assert len(fake_apns.received) == 0
    assert after_delete.json()["serialNumbers"] == ["p1"]
    document = await verified_pass(refetched.content, apple_certs, tmp_path / "deleted")
    assert notification_field(document) is None
    assert wrong_unregister.status_code == 401
    assert still_listed.status_code == 200
    assert (unregistered.status_code, unregistered_again.status_code) == (200, 200)
    assert gone.status_code == 204
    assert (after_unregister.counts.delivered, after_unregister.counts.skipped) == (0, 1)


async def test_a_wrong_token_is_refused_and_changes_nothing(
    shim: str,
    device: Device,
    passes: passes_pb2_grpc.PassServiceStub,
    apple_certs: AppleCerts,
) -> None:
    p1, p2 = await issue_pass(passes, apple_certs, "p1", "p2")
    unknown = HeldPass(p1.web_service_url, TOPIC, "no-such-serial", p1.authentication_token)
    other_type = HeldPass(p1.web_service_url, "pass.com.other", "p1", p1.authentication_token)
    attempts = {
        "another pass's token": device.register(p1, token=p2.authentication_token),
        "a made-up token": device.register(p1, token="0123456789abcdef0123"),
        "an unknown serial": device.register(unknown),
        "another pass type": device.register(other_type),
        "fetch with another pass's token": device.fetch(p1, token=p2.authentication_token),
    }
    answers = {what: await call for what, call in attempts.items()}
    without = await device.http.post(
        f"{p1.web_service_url}/v1/devices/d1/registrations/{TOPIC}/p1",
        json={"pushToken": device.push_token},
    )
    bearer = await device.http.get(
        f"{p1.web_service_url}/v1/passes/{TOPIC}/p1",
        headers={"Authorization": f"Bearer {p1.authentication_token}"},
    )

    for what, answer in [*answers.items(), ("no header", without), ("Bearer", bearer)]:
        assert answer.status_code == 401, what
        assert answer.headers["www-authenticate"] == "ApplePass", what
        assert answer.json()["reason"] == "UNAUTHENTICATED", what
        assert p1.authentication_token not in answer.text, what
    assert (await device.updated(p1)).status_code == 204  # no registration was made
    registration = await passes.GetPass(ppb.GetPassRequest(id="p1"))
    assert registration.update_tag > 0  # the pass is still there, unchanged by the attempts


async def test_apns_calling_a_device_gone_removes_its_registration(
    shim: str,
    device: Device,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
    apple_certs: AppleCerts,
) -> None:
    (held,) = await issue_pass(passes, apple_certs, "p1")
    assert (await device.register(held)).status_code == 201
    fake_apns.respond(device.push_token, 410, "Unregistered")

    gone = await send(notifications, "p1", "Hello")
    listed = await device.updated(held)
    next_send = await send(notifications, "p1", "Hello again")
    registered_again = await device.register(held)

    assert (gone.counts.failed, len(fake_apns.received)) == (1, 1)
    assert listed.status_code == 204
    assert (next_send.counts.skipped, len(fake_apns.received)) == (1, 1)
    assert registered_again.status_code == 201


async def test_a_device_sees_only_its_own_changed_passes(
    shim: str,
    device: Device,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    apple_certs: AppleCerts,
) -> None:
    p1, p2, p3 = await issue_pass(passes, apple_certs, "p1", "p2", "p3")
    other = Device(device.http, "another-device", token(0xD1))
    for held in (p1, p2):
        assert (await device.register(held)).status_code == 201
    assert (await other.register(p3)).status_code == 201
    tag = (await device.updated(p1)).json()["lastUpdated"]

    await send(notifications, "p2", "Just for p2")
    await send(notifications, "p3", "Just for p3")
    mine = (await device.updated(p1, since=tag)).json()
    everything = (await device.updated(p1, since="not-a-tag-of-ours")).json()
    theirs = (await other.updated(p3)).json()
    huge = await device.updated(p1, since="9" * 40)

    assert mine["serialNumbers"] == ["p2"]
    assert everything["serialNumbers"] == ["p1", "p2"]
    assert theirs["serialNumbers"] == ["p3"]
    assert huge.status_code == 200 and huge.json()["serialNumbers"] == ["p1", "p2"]


# On SQLite the one writer commits its tags in order; on PostgreSQL they may not be.
# What is known of open writes is kept a moment (SettledTime); kept all along, the answer
# from before the broadcast began must still hold the device back.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("settled_for", [SettledTime.SETTLED_FOR, 3600.0], ids=["now", "kept"])
async def test_a_change_committed_after_a_later_one_still_reaches_the_device(
    settled_for: float,
    monkeypatch: pytest.MonkeyPatch,
    shim: str,
    device: Device,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    sessions: async_sessionmaker[AsyncSession],
    apple_certs: AppleCerts,
) -> None:
    monkeypatch.setattr(SettledTime, "SETTLED_FOR", settled_for)
    p1, p2 = await issue_pass(passes, apple_certs, "p1", "p2")
    for held in (p1, p2):
        assert (await device.register(held)).status_code == 201
    tag = (await device.updated(p1)).json()["lastUpdated"]

    # A long broadcast: it stamps p2's change now, and commits after a Send to p1.
    async with sessions.begin() as broadcast:
        await broadcast.execute(
            update(PassRow)
            .where(PassRow.project_id == "acme", PassRow.id == "p2")
            .values(update_tag=update_tag_at(utcnow()), notification_body="Late")
        )
        await send(notifications, "p1", "Early")
        before_it_commits = (await device.updated(p1, since=tag)).json()
    after_it_commits = await device.updated(p1, since=before_it_commits["lastUpdated"])

    assert before_it_commits["serialNumbers"] == ["p1"]
    assert after_it_commits.status_code == 200
    assert "p2" in after_it_commits.json()["serialNumbers"]


async def test_device_logs_are_logged_without_tokens(
    shim: str, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    push_token = token(0xABCDEF)
    line = f"Register task for device with token {push_token}\x1b[31m failed: ApplePass xyz"

    with caplog.at_level(logging.WARNING, logger="passpush.service.passkit"):
        logged = await client.post("/passkit/v1/log", json={"logs": [line, "second"]})
    refused = await client.post("/passkit/v1/log", json={"logs": "not a list"})

    assert logged.status_code == 200
    messages = [r.getMessage() for r in caplog.records if r.name == "passpush.service.passkit"]
    assert len(messages) == 2
    assert push_token[:8] in messages[0] and push_token not in messages[0]
    assert "\x1b" not in messages[0] and messages[1].endswith("second")
    assert refused.status_code == 400


async def test_a_pass_token_of_any_shape_is_never_logged_in_full(
    shim: str, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    pass_token = "x~y!z.w~q!r.s~t!u.v~w;"  # no hex, and marks no "token-like" pattern expects

    with caplog.at_level(logging.WARNING, logger="passpush.service.passkit"):
        logged = await client.post(
            "/passkit/v1/log", json={"logs": [f"Get pass failed: ApplePass {pass_token} (401)"]}
        )

    assert logged.status_code == 200
    (message,) = [r.getMessage() for r in caplog.records if r.name == "passpush.service.passkit"]
    assert pass_token not in message
    assert "Get pass failed" in message


OVERFLOWING_DATES = [
    "Mon, 01 Jan 99999999999999999999 00:00:00 GMT",
    "Mon, 01 Jan 2026 99999999999999999999:00:00 GMT",
    "Mon, 01 Jan 2026 00:00:00 +99999999999999999999",
    "Fri, 31 Dec 9999 23:59:59 -2359",  # past the last datetime once in UTC
]


async def test_bad_input_on_the_device_routes_is_a_client_error(
    shim: str,
    device: Device,
    passes: passes_pb2_grpc.PassServiceStub,
    apple_certs: AppleCerts,
) -> None:
    """NUL, invalid UTF-8 and overflowing dates in paths, headers and bodies: a 4xx (or the
    answer to no such value), never a 500."""
    (held,) = await issue_pass(passes, apple_certs, "p1")
    base, auth = held.web_service_url, {"Authorization": f"ApplePass {held.authentication_token}"}
    registration = f"{base}/v1/devices/d1/registrations/{TOPIC}/{held.serial_number}"
    http = device.http
    answers = {
        "NUL in the device id": (
            await http.post(
                f"{base}/v1/devices/d%001/registrations/{TOPIC}/{held.serial_number}",
                json={"pushToken": device.push_token},
                headers=auth,
            ),
            400,
        ),
        "NUL in the serial number": (
            await http.post(
                f"{base}/v1/devices/d1/registrations/{TOPIC}/p%001",
                json={"pushToken": device.push_token},
                headers=auth,
            ),
            401,
        ),
        "NUL in the pass type": (
            await http.get(f"{base}/v1/passes/pass.%00/{held.serial_number}", headers=auth),
            401,
        ),
        "bad UTF-8 in the device id": (
            await http.post(
                f"{base}/v1/devices/d%ED%A0%80/registrations/{TOPIC}/{held.serial_number}",
                json={"pushToken": device.push_token},
                headers=auth,
            ),
            400,
        ),
        "NUL in the push token": (
            await http.post(registration, json={"pushToken": "ab\x00cd"}, headers=auth),
            400,
        ),
        "a lone surrogate in the push token": (
            await http.post(
                registration,
                content=b'{"pushToken": "\\ud800"}',
                headers={**auth, "Content-Type": "application/json"},
            ),
            400,
        ),
        "NUL in the device's serials query": (
            await http.get(f"{base}/v1/devices/d%00/registrations/{TOPIC}?passesUpdatedSince=%00"),
            204,
        ),
        "a tag of 5,000 digits": (
            await http.get(
                f"{base}/v1/devices/d1/registrations/{TOPIC}?passesUpdatedSince={'9' * 5000}"
            ),
            204,
        ),
        "NUL in an unregistration": (
            await http.delete(
                f"{base}/v1/devices/d%00/registrations/{TOPIC}/{held.serial_number}", headers=auth
            ),
            200,
        ),
        "NUL in a device log": (await http.post(f"{base}/v1/log", json={"logs": ["a\x00b"]}), 400),
    }
    for date in OVERFLOWING_DATES:
        fetched = await device.fetch(held, if_modified_since=date)
        wrong_token = await device.fetch(
            held, token="wrong-token-0123456789", if_modified_since=date
        )
        answers[f"If-Modified-Since {date}"] = (fetched, 200)
        answers[f"If-Modified-Since {date}, wrong token"] = (wrong_token, 401)

    statuses = {what: answer.status_code for what, (answer, _) in answers.items()}
    assert statuses == {what: status for what, (_, status) in answers.items()}


def test_last_modified_never_hides_a_change_made_within_the_same_second() -> None:
    changed = datetime(2026, 11, 24, 12, 0, 0, 300_000, tzinfo=UTC)
    later_same_second = changed.replace(microsecond=700_000)

    during = last_modified_of(changed, now=changed + timedelta(milliseconds=100))
    after = last_modified_of(changed, now=changed + timedelta(seconds=1))

    # Fetched within the change's second, the copy's date is the second before: a second
    # change in that same second still reads as modified.
    assert modified_since(later_same_second, during)
    assert after == changed.replace(microsecond=0)
    assert not modified_since(changed, after)  # fetched later: the copy is current
    assert modified_since(changed + timedelta(seconds=1), after)


async def test_a_pass_version_is_signed_once_however_many_devices_fetch_it(
    shim: str,
    device: Device,
    server: Application,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    apple_certs: AppleCerts,
    tmp_path: Path,
) -> None:
    packager = server.passkit.packager
    signed_before = packager.signatures
    (held,) = await issue_pass(passes, apple_certs, "p1")  # GetPassPackage signs it once
    others = [Device(device.http, f"{n:032x}", token(0xE0 + n)) for n in range(5)]

    first = await device.fetch(held)
    at_once = await asyncio.gather(*(other.fetch(held) for other in others))
    after_one_version = packager.signatures - signed_before
    await send(notifications, "p1", "Double points")
    changed = await device.fetch(held)
    again = await device.fetch(held)

    assert after_one_version == 1
    assert packager.signatures - signed_before == 2
    assert {r.status_code for r in [first, *at_once, changed, again]} == {200}
    assert {r.content for r in [first, *at_once]} == {first.content}
    assert again.content == changed.content != first.content
    document = await verified_pass(again.content, apple_certs, tmp_path)
    assert notification_field(document)["value"] == "Double points"  # type: ignore[index]


async def test_devices_registering_at_once_are_each_told_whether_they_are_new(
    shim: str,
    device: Device,
    passes: passes_pb2_grpc.PassServiceStub,
    apple_certs: AppleCerts,
) -> None:
    """Registrations that arrive together are written together (one transaction), and
    each still gets its own answer: 201 for a new one, 200 for one registered already."""
    held = await issue_pass(passes, apple_certs, "p1", "p2")
    devices = [Device(device.http, f"{n:032x}", token(0x100 + n)) for n in range(40)]
    await devices[0].register(held[0])

    answers = await asyncio.gather(
        *(d.register(h) for d in devices for h in held),
        devices[1].register(held[1]),  # the same device and pass twice in one group
    )

    statuses = [a.status_code for a in answers]
    assert statuses[0] == 200  # devices[0] had registered for p1 before
    assert statuses[1:3] + statuses[4:80] == [201] * 78
    # The same registration twice: whichever is written first is the new one (the two
    # requests race: their reads may finish in either order).
    assert sorted([statuses[3], statuses[80]]) == [200, 201]
    listed = await devices[1].updated(held[1])
    assert listed.json()["serialNumbers"] == ["p1", "p2"]
