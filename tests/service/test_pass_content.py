"""SetPassContent, GetPassPackage and signing material: content imported as pass.json and
files or as a .pkpass, kept in the database, served re-signed; bad content refused with
the field at fault and nothing changed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from passpush.app import Application
from passpush.delivery.apple.gateway import ApnsGateway
from passpush.domain.model import Content, Pass, PassTarget, Platform, Template, TemplateTarget
from passpush.domain.passkit import PASS_JSON, PassPackageSource
from passpush.domain.signing import AppleSigningPem, load_signing
from passpush.service.notifications import NotificationCore
from passpush.service.passes import PassCore
from passpush.service.passkit import PassKitSettings, PassPackager
from passpush.store.projects import ProjectStore
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc
from passpush.v1 import passes_pb2 as ppb

from apple_passes import (
    AppleCerts,
    make_signing,
    notification_field,
    pass_document,
    pass_files,
    png,
    unzip,
    verified_pass,
    verify_signature,
    zip_of,
)
from support import TOPIC, channel_with_key, rich_error, upsert


@cache
def other_certs(pass_type_identifier: str = TOPIC, expired: bool = False) -> AppleCerts:
    return make_signing(pass_type_identifier, expires_in=timedelta(days=-1 if expired else 365))


async def apple_template(
    passes: passes_pb2_grpc.PassServiceStub,
    template_id: str,
    signing: AppleCerts | None,
    topic: str = TOPIC,
) -> ppb.Template:
    return await passes.CreateTemplate(
        ppb.CreateTemplateRequest(
            template_id=template_id,
            template=ppb.Template(
                project_id="acme",
                platform=ppb.PLATFORM_APPLE,
                pass_type_identifier=topic,
                apple_signing=signing.proto() if signing else None,
            ),
        )
    )


def content_request(pass_id: str, **overrides: object) -> ppb.SetPassContentRequest:
    fields: dict[str, object] = {
        "pass_json": json.dumps(pass_document()).encode(),
        "files": pass_files(),
    }
    fields.update(overrides)
    return ppb.SetPassContentRequest(pass_id=pass_id, **fields)  # type: ignore[arg-type]


async def package(passes: passes_pb2_grpc.PassServiceStub, pass_id: str) -> bytes:
    answer = await passes.GetPassPackage(ppb.GetPassPackageRequest(pass_id=pass_id))
    return answer.pkpass


async def test_content_given_as_pass_json_and_files_is_served_signed_with_the_notification(
    server: Application,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    apple_certs: AppleCerts,
    tmp_path: Path,
) -> None:
    template = await apple_template(passes, "loyalty", apple_certs)
    before = await passes.UpsertPass(upsert(id="p1", template_id="loyalty"))
    issued = pass_document(webServiceURL="https://old.example.com/passes")

    after = await passes.SetPassContent(
        content_request("p1", pass_json=json.dumps(issued).encode())
    )
    pkpass = await package(passes, "p1")

    assert template.apple_signing_expire_time.seconds > 0
    assert not template.HasField("apple_signing")  # write-only
    assert (before.has_content, after.has_content) == (False, True)
    assert after.update_tag > before.update_tag
    document = await verified_pass(pkpass, apple_certs, tmp_path / "first")
    assert document["webServiceURL"] == server.passkit.packager.web_service_url
    assert document["passTypeIdentifier"] == TOPIC
    assert document["serialNumber"] == "p1"
    assert len(document["authenticationToken"]) >= 16
    assert document["storeCard"] == issued["storeCard"]  # no notification yet
    files = unzip(pkpass)
    assert {n: files[n] for n in pass_files()} == pass_files()

    await notifications.Send(
        npb.SendRequest(
            target=npb.Target(pass_id="p1"), content=npb.Content(header="Offer", body="20% off")
        )
    )
    sent = await verified_pass(await package(passes, "p1"), apple_certs, tmp_path / "sent")
    await notifications.Delete(npb.DeleteRequest(target=npb.Target(pass_id="p1")))
    deleted = await verified_pass(await package(passes, "p1"), apple_certs, tmp_path / "deleted")

    assert sent["storeCard"]["backFields"][0] == {
        "key": "passpush.notification",
        "label": "Offer",
        "value": "20% off",
        "changeMessage": "%@",
    }
    assert sent["storeCard"]["backFields"][1:] == issued["storeCard"]["backFields"]
    assert sent["authenticationToken"] == document["authenticationToken"]
    assert deleted["storeCard"] == issued["storeCard"]


async def test_an_imported_pkpass_keeps_its_serial_number_and_token_and_is_signed_again(
    passes: passes_pb2_grpc.PassServiceStub, apple_certs: AppleCerts, tmp_path: Path
) -> None:
    await apple_template(passes, "loyalty", apple_certs)
    await passes.UpsertPass(upsert(id="p1", template_id="loyalty"))
    await passes.UpsertPass(upsert(id="p2", template_id="loyalty"))
    issued = pass_document(
        serialNumber="SN-0042",
        authenticationToken="imported-token-0123456789",
        passTypeIdentifier=TOPIC,
        webServiceURL="https://old.example.com/passes",
    )
    # As if passpush had served it before: its field goes, to be written anew.
    issued["storeCard"]["backFields"].append({"key": "passpush.notification", "value": "old"})
    existing = zip_of(
        {
            PASS_JSON: json.dumps(issued).encode(),
            **pass_files(),
            "manifest.json": b'{"pass.json": "0000"}',
            "signature": b"an old signature",
            "__MACOSX/._icon.png": b"Finder's",
            ".DS_Store": b"Finder's",
        }
    )

    imported = await passes.SetPassContent(ppb.SetPassContentRequest(pass_id="p1", pkpass=existing))
    pkpass = await package(passes, "p1")
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await passes.SetPassContent(ppb.SetPassContentRequest(pass_id="p2", pkpass=existing))

    assert imported.serial_number == "SN-0042"
    document = await verified_pass(pkpass, apple_certs, tmp_path)
    assert (document["serialNumber"], document["authenticationToken"]) == (
        "SN-0042",
        "imported-token-0123456789",
    )
    assert notification_field(document) is None
    assert set(unzip(pkpass)) == {PASS_JSON, "manifest.json", "signature", *pass_files()}
    error = rich_error(taken.value)
    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "SERIAL_NUMBER_TAKEN")
    assert not (await passes.GetPass(ppb.GetPassRequest(id="p2"))).has_content


def _bad_requests() -> list[tuple[str, dict[str, object], str]]:
    """(what is wrong, the request's content fields, the field the error names)."""
    good = json.dumps(pass_document()).encode()

    def pkpass(**files: bytes) -> bytes:
        return zip_of({PASS_JSON: good, "icon.png": png(), **files})

    def document(**changes: object) -> bytes:
        return json.dumps({**pass_document(), **changes}).encode()

    three_mib = 3 * 1024 * 1024
    bomb = zip_of({PASS_JSON: good, "icon.png": png(), "strip.png": bytes(three_mib)})
    no_org = pass_document()
    del no_org["organizationName"]
    return [
        ("not a zip", {"pkpass": b"PK\x03\x04 not really"}, "pkpass"),
        ("no pass.json", {"pkpass": zip_of({"icon.png": png()})}, "pkpass"),
        ("a path out of the pass", {"pkpass": pkpass(**{"../evil.png": png()})}, "pkpass"),
        ("an absolute path", {"pkpass": pkpass(**{"/etc/evil.png": png()})}, "pkpass"),
        ("a folder that is no lproj", {"pkpass": pkpass(**{"img/a.png": png()})}, "pkpass"),
        ("too big once unzipped", {"pkpass": bomb}, "pkpass"),
        ("a pkpass and files", {"pkpass": pkpass(), "pass_json": good}, "pkpass"),
        ("pass.json not JSON", {"pass_json": b"{not json", "files": pass_files()}, "pass_json"),
        ("pass.json not an object", {"pass_json": b"[1]", "files": pass_files()}, "pass_json"),
        (
            "no organizationName",
            {"pass_json": json.dumps(no_org).encode(), "files": pass_files()},
            "pass_json.organizationName",
        ),
        (
            "two pass styles",
            {"pass_json": document(coupon={}), "files": pass_files()},
            "pass_json",
        ),
        (
            "a short authenticationToken",
            {"pass_json": document(authenticationToken="short"), "files": pass_files()},
            "pass_json.authenticationToken",
        ),
        (
            "another pass type",
            {"pass_json": document(passTypeIdentifier="pass.com.other"), "files": pass_files()},
            "pass_json.passTypeIdentifier",
        ),
        ("no pass.json", {"files": pass_files()}, "pass_json"),
        ("no icon", {"pass_json": good, "files": {"logo.png": png()}}, "files"),
        (
            "a path out of the pass",
            {"pass_json": good, "files": {"icon.png": png(), "../x.png": png()}},
            "files[../x.png]",
        ),
        ("not a PNG", {"pass_json": good, "files": {"icon.png": b"GIF89a"}}, "files[icon.png]"),
        (
            "a manifest of its own",
            {"pass_json": good, "files": {"icon.png": png(), "manifest.json": b"{}"}},
            "files[manifest.json]",
        ),
        (
            "too big",
            {"pass_json": good, "files": {"icon.png": png(), "strip.png": bytes(three_mib)}},
            "files",
        ),
    ]


async def test_bad_content_is_refused_with_the_field_at_fault_and_changes_nothing(
    passes: passes_pb2_grpc.PassServiceStub, apple_certs: AppleCerts
) -> None:
    await apple_template(passes, "loyalty", apple_certs)
    await passes.UpsertPass(upsert(id="p1", template_id="loyalty"))
    before = await passes.SetPassContent(content_request("p1"))
    files_before = unzip(await package(passes, "p1"))

    for what, fields, field in _bad_requests():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await passes.SetPassContent(ppb.SetPassContentRequest(pass_id="p1", **fields))  # type: ignore[arg-type]
        error = rich_error(caught.value)
        assert (what, error.code, error.field_violations[:1]) == (
            what,
            grpc.StatusCode.INVALID_ARGUMENT,
            [field],
        ), caught.value.details()

    after = await passes.GetPass(ppb.GetPassRequest(id="p1"))
    files_after = unzip(await package(passes, "p1"))
    assert after == before
    for name in (*files_before, *files_after):
        if name != "signature":  # signed anew, at another time
            assert files_after[name] == files_before[name], name


async def test_signing_material_is_checked_when_given(
    passes: passes_pb2_grpc.PassServiceStub, apple_certs: AppleCerts
) -> None:
    other = other_certs()
    mixed = [
        (
            "another certificate's key",
            AppleCerts(
                apple_certs.certificate_pem,
                other.private_key_pem,
                apple_certs.wwdr_certificate_pem,
                "",
            ),
            "template.apple_signing.private_key_pem",
        ),
        (
            "a WWDR certificate that did not issue it",
            AppleCerts(
                apple_certs.certificate_pem,
                apple_certs.private_key_pem,
                other.wwdr_certificate_pem,
                "",
            ),
            "template.apple_signing.wwdr_certificate_pem",
        ),
        (
            "another pass type's",
            other_certs("pass.com.example.other"),
            "template.apple_signing.certificate_pem",
        ),
        ("expired", other_certs(expired=True), "template.apple_signing.certificate_pem"),
        (
            "not PEM",
            AppleCerts("junk", "junk", apple_certs.wwdr_certificate_pem, ""),
            "template.apple_signing.certificate_pem",
        ),
    ]
    for what, signing, field in mixed:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await apple_template(passes, "loyalty", signing)
        error = rich_error(caught.value)
        assert (what, error.code, error.field_violations[:1]) == (
            what,
            grpc.StatusCode.INVALID_ARGUMENT,
            [field],
        ), caught.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as google:
        await passes.CreateTemplate(
            ppb.CreateTemplateRequest(
                template_id="google",
                template=ppb.Template(
                    project_id="acme",
                    platform=ppb.PLATFORM_GOOGLE,
                    google_class_id="3388000000012345.loyalty",
                    google_object_type="loyaltyObject",
                    apple_signing=apple_certs.proto(),
                ),
            )
        )

    assert rich_error(google.value).field_violations == ["template.apple_signing"]
    for template_id in ("loyalty", "google"):
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await passes.GetTemplate(ppb.GetTemplateRequest(id=template_id))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_pass_takes_content_once_something_can_sign_it(
    passes: passes_pb2_grpc.PassServiceStub, apple_certs: AppleCerts, tmp_path: Path
) -> None:
    await apple_template(passes, "loyalty", None)  # and the server has no default material
    await passes.UpsertPass(upsert(id="p1", template_id="loyalty"))
    await passes.CreateTemplate(
        ppb.CreateTemplateRequest(
            template_id="google",
            template=ppb.Template(
                project_id="acme",
                platform=ppb.PLATFORM_GOOGLE,
                google_class_id="3388000000012345.loyalty",
                google_object_type="loyaltyObject",
            ),
        )
    )
    await passes.UpsertPass(upsert(id="g1", template_id="google", google_object_id="3388.g1"))

    async def refused(call: object) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call  # type: ignore[misc]
        error = rich_error(caught.value)
        return error.code, error.reason

    unsigned = await refused(passes.SetPassContent(content_request("p1")))
    no_content = await refused(passes.GetPassPackage(ppb.GetPassPackageRequest(pass_id="p1")))
    signed = await passes.SetTemplateSigning(
        ppb.SetTemplateSigningRequest(template_id="loyalty", apple_signing=apple_certs.proto())
    )
    content = await passes.SetPassContent(content_request("p1"))
    document = await verified_pass(await package(passes, "p1"), apple_certs, tmp_path)
    unset = await passes.SetTemplateSigning(ppb.SetTemplateSigningRequest(template_id="loyalty"))
    after_unset = await refused(passes.GetPassPackage(ppb.GetPassPackageRequest(pass_id="p1")))
    google = await refused(passes.SetPassContent(content_request("g1")))
    google_signing = await refused(
        passes.SetTemplateSigning(
            ppb.SetTemplateSigningRequest(template_id="google", apple_signing=apple_certs.proto())
        )
    )

    failed_precondition = grpc.StatusCode.FAILED_PRECONDITION
    assert unsigned == (failed_precondition, "SIGNING_NOT_CONFIGURED")
    assert no_content == (grpc.StatusCode.NOT_FOUND, "PASS_CONTENT_NOT_FOUND")
    assert signed.apple_signing_expire_time.ToDatetime(UTC) > datetime.now(UTC)
    assert content.has_content and document["serialNumber"] == "p1"
    assert not unset.HasField("apple_signing_expire_time")
    assert after_unset == (failed_precondition, "SIGNING_NOT_CONFIGURED")
    assert google == (failed_precondition, "NOT_AN_APPLE_PASS")
    assert google_signing == (failed_precondition, "NOT_AN_APPLE_TEMPLATE")


async def test_the_server_material_signs_templates_without_their_own(
    apple_certs: AppleCerts, tmp_path: Path
) -> None:
    def pem(certs: AppleCerts) -> AppleSigningPem:
        return AppleSigningPem(
            certs.certificate_pem, certs.private_key_pem, certs.wwdr_certificate_pem
        )

    default = load_signing(pem(apple_certs), field="apple_signing")
    packager = PassPackager(PassKitSettings("https://passes.example.com/passkit", default))
    source = PassPackageSource(
        project_id="acme",
        pass_id="p1",
        pass_type_identifier=TOPIC,
        serial_number="SN-1",
        authentication_token="a-token-of-sixteen-or-more",
        notification_header=None,
        notification_body="Doors open at six",
        update_tag=1,
        update_time=datetime.now(UTC),
        template_signing=None,
        files={PASS_JSON: json.dumps(pass_document()).encode(), "icon.png": png()},
    )
    other = other_certs()

    by_default = unzip(await packager.package(source))
    by_template = unzip(
        await packager.package(
            PassPackageSource(**{**vars(source), "template_signing": pem(other)})
        )
    )

    document = json.loads(by_default[PASS_JSON])
    await verify_signature(
        by_default["manifest.json"], by_default["signature"], apple_certs, tmp_path
    )
    await verify_signature(by_template["manifest.json"], by_template["signature"], other, tmp_path)
    with pytest.raises(AssertionError):  # the template's material, not the server's
        await verify_signature(
            by_template["manifest.json"], by_template["signature"], apple_certs, tmp_path
        )
    assert document["webServiceURL"] == "https://passes.example.com/passkit"
    assert notification_field(document) == {
        "key": "passpush.notification",
        "value": "Doors open at six",
        "changeMessage": "%@",
    }


async def test_update_tags_only_grow_even_when_the_clock_goes_back(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A device asks for the passes changed after the last tag it saw: a change stamped by
    a clock that went back (or a replica's slower one) must still count as later."""
    now = datetime.now(UTC)
    earlier = now - timedelta(hours=1)
    async with sessions.begin() as session:
        await ProjectStore(session, "acme").ensure_project(now)
    core = PassCore(engine, sessions, clock=lambda: now)
    late_core = PassCore(engine, sessions, clock=lambda: earlier)
    late_notifications = NotificationCore(engine, sessions, clock=lambda: earlier)
    await core.create_template(
        "acme", Template("loyalty", "acme", Platform.APPLE, pass_type_identifier=TOPIC)
    )
    first = await core.upsert_pass("acme", Pass("p1", "loyalty"))

    tags = [first.update_tag]
    for change in (
        late_notifications.send("acme", PassTarget("p1"), Content("", "one pass"), ""),
        late_notifications.send("acme", TemplateTarget("loyalty"), Content("", "broadcast"), ""),
        late_notifications.delete("acme", PassTarget("p1"), ""),
        late_core.upsert_pass("acme", Pass("p1", "loyalty")),
    ):
        await change
        tags.append((await core.get_pass("acme", "p1")).update_tag)

    assert tags == sorted(set(tags)), tags


async def test_a_message_over_the_grpc_limit_is_resource_exhausted(
    engine: AsyncEngine, apns_gateway: ApnsGateway, apple_certs: AppleCerts
) -> None:
    """PASSPUSH_GRPC_MAX_MESSAGE_BYTES bounds every request: a larger one is refused before
    the server takes it in, and one within it goes through."""
    server = Application(engine, apns_gateway, max_message_bytes=64 * 1024)
    await server.start()
    try:
        _, key = await server.keys.create_key("acme", "tests", ["all"], create_project=True)
        async with channel_with_key(server.port, key) as channel:
            passes = passes_pb2_grpc.PassServiceStub(channel)
            await apple_template(passes, "loyalty", apple_certs)
            await passes.UpsertPass(upsert(id="p1", template_id="loyalty"))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await passes.SetPassContent(
                    ppb.SetPassContentRequest(pass_id="p1", pkpass=b"x" * 65 * 1024)
                )
            within = await passes.SetPassContent(content_request("p1"))
    finally:
        await server.stop(grace=1.0)

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert within.id == "p1"
