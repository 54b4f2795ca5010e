"""Shared Apple content: a template's pass.json skeleton and images stored once, each pass
rendered from them with its own values; files stored once per distinct content however
many passes use them; bad values refused with the field at fault and nothing changed."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import secrets
import zipfile
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from passpush.domain.passkit import PassPackageSource, build_pkpass
from passpush.domain.signing import AppleSigningPem, load_signing
from passpush.store import migrate
from passpush.store.connectors.session import run_on_session
from passpush.store.content import CONTENT_CACHE
from passpush.store.db import make_engine
from passpush.store.models import ContentFileRow, PassOwnFileRow
from passpush.store.passkit import TemplatePartsCache, package_source
from passpush.v1 import passes_pb2 as ppb
from passpush.v1 import passes_pb2_grpc

from apple_passes import AppleCerts, pass_document, pass_files, png, unzip, verified_pass
from support import TOPIC, rich_error, statements_run, upsert

SKELETON = pass_document(
    storeCard={
        "primaryFields": [{"key": "points", "label": "Points", "value": 0}],
        "secondaryFields": [{"key": "member", "label": "Member", "value": ""}],
        "backFields": [{"key": "terms", "label": "Terms", "value": "Be nice."}],
    },
    barcodes=[{"format": "PKBarcodeFormatQR", "message": "template", "messageEncoding": "utf-8"}],
)


async def apple_template(
    passes: passes_pb2_grpc.PassServiceStub, certs: AppleCerts, template_id: str = "loyalty"
) -> None:
    await passes.CreateTemplate(
        ppb.CreateTemplateRequest(
            template_id=template_id,
            template=ppb.Template(
                project_id="acme",
                platform=ppb.PLATFORM_APPLE,
                pass_type_identifier=TOPIC,
                apple_signing=certs.proto(),
            ),
        )
    )


def template_content(
    template_id: str = "loyalty", files: dict[str, bytes] | None = None, **document: Any
) -> ppb.SetTemplateContentRequest:
    return ppb.SetTemplateContentRequest(
        template_id=template_id,
        pass_json=json.dumps({**SKELETON, **document}).encode(),
        files=pass_files() if files is None else files,
    )


def values(
    field_values: dict[str, Any] | None = None,
    pass_json: dict[str, Any] | None = None,
    barcodes: list[ppb.AppleBarcode] | None = None,
) -> ppb.ApplePassValues:
    message = ppb.ApplePassValues(barcodes=barcodes or [])
    for key, value in (field_values or {}).items():
        message.field_values[key].CopyFrom(struct_pb2.Value(**_kind(value)))
    if pass_json:
        message.pass_json.update(pass_json)
    return message


def _kind(value: Any) -> dict[str, Any]:
    return {"string_value": value} if isinstance(value, str) else {"number_value": value}


def member(pass_id: str, name: str, points: int) -> ppb.UpsertPassRequest:
    return upsert(
        id=pass_id,
        template_id="loyalty",
        serial_number=f"SN-{pass_id}",
        apple_values=values(
            {"points": points, "member": name},
            {"relevantDate": "2026-12-24T10:00:00Z"},
            [
                ppb.AppleBarcode(
                    format=ppb.APPLE_BARCODE_FORMAT_QR,
                    message=f"card:{pass_id}",
                    message_encoding="iso-8859-1",
                )
            ],
        ),
    )


async def package(passes: passes_pb2_grpc.PassServiceStub, pass_id: str) -> bytes:
    return (await passes.GetPassPackage(ppb.GetPassPackageRequest(pass_id=pass_id))).pkpass


async def stored_files(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return await session.scalar(select(func.count()).select_from(ContentFileRow)) or 0


async def test_passes_render_as_the_template_skeleton_with_their_own_values(
    passes: passes_pb2_grpc.PassServiceStub, apple_certs: AppleCerts, tmp_path: Path
) -> None:
    await apple_template(passes, apple_certs)
    await passes.SetTemplateContent(template_content())
    given = await passes.UpsertPass(member("p1", "Ada", 120))
    plain = await passes.UpsertPass(upsert(id="p2", template_id="loyalty"))

    document = await verified_pass(await package(passes, "p1"), apple_certs, tmp_path / "p1")
    bare = await verified_pass(await package(passes, "p2"), apple_certs, tmp_path / "p2")
    files = unzip(await package(passes, "p1"))

    assert (given.has_content, plain.has_content) == (True, True)
    assert given.apple_values == getattr(member("p1", "Ada", 120), "pass").apple_values
    assert document["serialNumber"] == "SN-p1"
    assert document["storeCard"]["primaryFields"] == [
        {"key": "points", "label": "Points", "value": 120}
    ]
    assert document["storeCard"]["secondaryFields"][0]["value"] == "Ada"
    assert document["barcodes"] == [
        {"format": "PKBarcodeFormatQR", "message": "card:p1", "messageEncoding": "iso-8859-1"}
    ]
    assert document["relevantDate"] == "2026-12-24T10:00:00Z"
    assert {n: files[n] for n in pass_files()} == pass_files()
    # No values of its own: the skeleton as it is, with the pass's serial number.
    assert bare["serialNumber"] == "p2"
    assert bare["storeCard"] == SKELETON["storeCard"]
    assert bare["barcodes"] == SKELETON["barcodes"]


async def test_passes_sharing_images_store_each_file_once(
    passes: passes_pb2_grpc.PassServiceStub,
    apple_certs: AppleCerts,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await apple_template(passes, apple_certs)
    await passes.SetTemplateContent(template_content())
    after_template = await stored_files(sessions)
    for i in range(5):
        await passes.UpsertPass(member(f"p{i}", f"Member {i}", i))
    after_passes = await stored_files(sessions)

    # SetPassContent: each pass its own pass.json, the same images as the template's.
    for pass_id in ("p0", "p1"):
        await passes.SetPassContent(
            ppb.SetPassContentRequest(
                pass_id=pass_id,
                pass_json=json.dumps({**SKELETON, "logoText": f"For {pass_id}"}).encode(),
                files=pass_files(),
            )
        )

    assert after_template == 1 + len(pass_files())  # the skeleton and each file
    assert after_passes == after_template  # values are no files
    assert await stored_files(sessions) == after_template + 2  # two pass.json, no image again


async def test_set_pass_content_still_works_with_its_own_files_over_the_template(
    passes: passes_pb2_grpc.PassServiceStub,
    apple_certs: AppleCerts,
    sessions: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    await apple_template(passes, apple_certs)
    await passes.SetTemplateContent(template_content())
    await passes.UpsertPass(upsert(id="p1", template_id="loyalty"))
    own_logo = png(7, 7)

    after = await passes.SetPassContent(
        ppb.SetPassContentRequest(
            pass_id="p1",
            pass_json=json.dumps(pass_document(logoText="Own")).encode(),
            files={"icon.png": pass_files()["icon.png"], "logo.png": own_logo},
        )
    )
    document = await verified_pass(await package(passes, "p1"), apple_certs, tmp_path)
    files = unzip(await package(passes, "p1"))

    assert after.has_content
    assert document["logoText"] == "Own"
    assert files["logo.png"] == own_logo  # its own over the template's
    assert files["icon@2x.png"] == pass_files()["icon@2x.png"]  # the template's
    async with sessions() as session:
        own = (await session.scalars(select(PassOwnFileRow.name))).all()
    assert sorted(own) == ["icon.png", "logo.png", "pass.json"]


def _bad_values() -> list[tuple[str, ppb.ApplePassValues, str]]:
    qr = ppb.APPLE_BARCODE_FORMAT_QR
    return [
        ("unknown field", values({"nope": 1}), "pass.apple_values.field_values[nope]"),
        (
            "reserved key",
            values(pass_json={"serialNumber": "x"}),
            "pass.apple_values.pass_json.serialNumber",
        ),
        ("style key", values(pass_json={"storeCard": {}}), "pass.apple_values.pass_json.storeCard"),
        (
            "blank description",
            values(pass_json={"description": " "}),
            "pass.apple_values.pass_json.description",
        ),
        (
            "barcode without format",
            values(barcodes=[ppb.AppleBarcode(message="x")]),
            "pass.apple_values.barcodes[0].format",
        ),
        (
            "empty barcode message",
            values(barcodes=[ppb.AppleBarcode(format=qr)]),
            "pass.apple_values.barcodes[0].message",
        ),
        (
            "too many barcodes",
            values(barcodes=[ppb.AppleBarcode(format=qr, message="x")] * 11),
            "pass.apple_values.barcodes",
        ),
        (
            "a field value that is a list",
            _list_value(),
            "pass.apple_values.field_values[points]",
        ),
        ("too large", values(pass_json={"userInfo": {"a": "x" * 20000}}), "pass.apple_values"),
    ]


def _list_value() -> ppb.ApplePassValues:
    message = ppb.ApplePassValues()
    message.field_values["points"].list_value.values.add().number_value = 1
    return message


async def test_bad_values_are_refused_with_the_field_at_fault_and_change_nothing(
    passes: passes_pb2_grpc.PassServiceStub, apple_certs: AppleCerts
) -> None:
    await apple_template(passes, apple_certs)
    await passes.SetTemplateContent(template_content())
    before = await passes.UpsertPass(member("p1", "Ada", 120))
    package_before = json.loads(unzip(await package(passes, "p1"))["pass.json"])

    for what, bad, field in _bad_values():
        request = upsert(id="p1", template_id="loyalty", status=ppb.PASS_STATUS_REVOKED)
        getattr(request, "pass").apple_values.CopyFrom(bad)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await passes.UpsertPass(request)
        error = rich_error(caught.value)
        assert (what, error.code, error.field_violations[:1]) == (
            what,
            grpc.StatusCode.INVALID_ARGUMENT,
            [field],
        ), caught.value.details()

    async def requests() -> Any:
        for _, bad, _ in _bad_values():
            request = ppb.ImportPassesRequest(
                **{"pass": ppb.Pass(id="p1", template_id="loyalty", apple_values=bad)}  # type: ignore[arg-type]
            )
            yield request

    summary = await passes.ImportPasses(requests())
    after = await passes.GetPass(ppb.GetPassRequest(id="p1"))
    package_after = json.loads(unzip(await package(passes, "p1"))["pass.json"])

    assert (summary.created, summary.updated, summary.failed) == (0, 0, len(_bad_values()))
    assert after == before
    assert package_after == package_before


async def test_template_content_names_no_pass_and_is_for_apple_templates(
    passes: passes_pb2_grpc.PassServiceStub, apple_certs: AppleCerts
) -> None:
    await apple_template(passes, apple_certs)
    await passes.CreateTemplate(
        ppb.CreateTemplateRequest(
            template_id="google",
            template=ppb.Template(
                project_id="acme",
                platform=ppb.PLATFORM_GOOGLE,
                google_class_id="3388000000022.loyalty",
                google_object_type="loyaltyObject",
            ),
        )
    )

    with pytest.raises(grpc.aio.AioRpcError) as serial:
        await passes.SetTemplateContent(template_content(serialNumber="SN-1"))
    with pytest.raises(grpc.aio.AioRpcError) as google:
        await passes.SetTemplateContent(template_content("google"))
    with pytest.raises(grpc.aio.AioRpcError) as no_icon:
        await passes.SetTemplateContent(template_content(files={}))

    assert rich_error(serial.value).field_violations == ["pass_json.serialNumber"]
    assert google.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rich_error(no_icon.value).field_violations == ["files"]


async def test_replaced_content_leaves_no_file_unused(
    passes: passes_pb2_grpc.PassServiceStub,
    apple_certs: AppleCerts,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await apple_template(passes, apple_certs)
    await passes.SetTemplateContent(template_content())
    first = await stored_files(sessions)
    before = await passes.UpsertPass(upsert(id="p1", template_id="loyalty"))

    await passes.SetTemplateContent(
        template_content(files={**pass_files(), "logo.png": png(9, 9)}, logoText="New")
    )
    after = await passes.GetPass(ppb.GetPassRequest(id="p1"))
    await passes.SetPassContent(
        ppb.SetPassContentRequest(
            pass_id="p1", pass_json=json.dumps(pass_document()).encode(), files={"icon.png": png()}
        )
    )
    await passes.SetPassContent(
        ppb.SetPassContentRequest(
            pass_id="p1",
            pass_json=json.dumps(pass_document(logoText="Two")).encode(),
            files={"icon.png": png()},
        )
    )

    assert after.update_tag > before.update_tag  # devices see the template's new content
    # New skeleton and logo in, the old ones out; the pass's own first pass.json out too.
    assert await stored_files(sessions) == first + 1


async def test_shared_files_and_the_templates_parts_are_read_from_the_database_once(
    passes: passes_pb2_grpc.PassServiceStub,
    apple_certs: AppleCerts,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Serving many passes of a template reads its images, its signing and its list of
    files once: then from the caches."""
    await apple_template(passes, apple_certs)
    strip = png(secrets.randbelow(10_000) + 10, 3)  # bytes no earlier test has cached
    await passes.SetTemplateContent(template_content(files={**pass_files(), "strip.png": strip}))
    for i in range(3):
        await passes.UpsertPass(member(f"p{i}", f"Member {i}", i))
    templates = TemplatePartsCache()
    with statements_run(engine) as statements:
        sources, reads_after = [], []
        for i in range(3):
            sources.append(await package_source_of(sessions, f"p{i}", templates))
            reads_after.append(counted(statements))

    # Each file not cached yet is read once, for the first pass; the others read none.
    assert 1 <= reads_after[0]["content_files.data"] == reads_after[2]["content_files.data"]
    assert reads_after[2]["content_files.data"] <= len(pass_files()) + 2
    assert reads_after[0]["FROM template_files"] == reads_after[2]["FROM template_files"] == 1
    assert reads_after[2]["apple_private_key_pem"] == 1
    assert all(source.files["strip.png"] == strip for source in sources)
    assert sources[0].stored["strip.png"].sha1 == hashlib.sha1(strip).hexdigest()


async def test_a_templates_new_content_and_signing_reach_the_next_package_past_the_cache(
    passes: passes_pb2_grpc.PassServiceStub,
    apple_certs: AppleCerts,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A process keeps a template's parts under its package version: SetTemplateContent
    and SetTemplateSigning each give the template a new one, so the next package has the
    new files and the new signing, not the kept ones."""
    await apple_template(passes, apple_certs)
    await passes.SetTemplateContent(template_content())
    await passes.UpsertPass(member("p1", "Member 1", 1))
    templates = TemplatePartsCache()
    first = await package_source_of(sessions, "p1", templates)
    strip = png(secrets.randbelow(10_000) + 10, 4)
    await passes.SetTemplateContent(template_content(files={**pass_files(), "strip.png": strip}))
    with_strip = await package_source_of(sessions, "p1", templates)
    await passes.SetTemplateSigning(ppb.SetTemplateSigningRequest(template_id="loyalty"))
    unsigned = await package_source_of(sessions, "p1", templates)

    assert "strip.png" not in first.files and first.template_signing is not None
    assert with_strip.files["strip.png"] == strip
    assert with_strip.template_signing == first.template_signing
    assert unsigned.template_signing is None and unsigned.files == with_strip.files


async def package_source_of(
    sessions: async_sessionmaker[AsyncSession], pass_id: str, templates: TemplatePartsCache
) -> PassPackageSource:
    async with sessions() as session:
        source = await run_on_session(
            session, package_source("acme", pass_id, CONTENT_CACHE, templates)
        )
    assert source is not None
    return source


def counted(statements: list[str]) -> Counter[str]:
    """How many of the statements name each of a few columns and tables."""
    names = ("content_files.data", "FROM template_files", "apple_private_key_pem")
    return Counter(name for statement in statements for name in names if name in statement)


def test_png_files_are_stored_and_the_rest_deflated(apple_certs: AppleCerts) -> None:
    signing = load_signing(
        AppleSigningPem(
            apple_certs.certificate_pem,
            apple_certs.private_key_pem,
            apple_certs.wwdr_certificate_pem,
        ),
        field="signing",
    )
    files = {"pass.json": json.dumps(pass_document()).encode(), **pass_files()}

    pkpass = build_pkpass(files, signing)

    with zipfile.ZipFile(io.BytesIO(pkpass)) as archive:
        methods = {entry.filename: entry.compress_type for entry in archive.infolist()}
    assert methods == {
        "en.lproj/pass.strings": zipfile.ZIP_DEFLATED,
        "icon.png": zipfile.ZIP_STORED,
        "icon@2x.png": zipfile.ZIP_STORED,
        "logo.png": zipfile.ZIP_STORED,
        "pass.json": zipfile.ZIP_DEFLATED,
        "manifest.json": zipfile.ZIP_DEFLATED,
        "signature": zipfile.ZIP_DEFLATED,
    }


CREATED = datetime(2026, 12, 1)  # naive UTC, as stored


def as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value  # SQLite's is text


def content_digest(content: list[tuple[Any, ...]], data: bytes) -> str:
    return next(str(digest) for digest, _, stored in content if bytes(stored) == data)


def test_migration_moves_pass_files_to_shared_storage_and_back(database_url: str) -> None:
    """Existing content (pass_files) survives 0013 up and down; an image two passes share is
    stored once; each pass lists its own files, with their digests and SHA-1s (0017)."""
    image, own = png(4, 4), b'{"description": "x"}'
    migrate.downgrade(database_url, "0012")

    async def seed() -> None:
        engine = make_engine(database_url)
        async with engine.begin() as connection:
            await connection.execute(
                text("INSERT INTO projects (id, display_name, created_at) VALUES ('acme', '', :t)"),
                {"t": CREATED},
            )
            await connection.execute(
                text(
                    "INSERT INTO templates (project_id, id, platform, display_name, "
                    "pass_type_identifier, google_class_id, google_object_type, created_at) "
                    "VALUES ('acme', 't', 'APPLE', '', :topic, '', '', :t)"
                ),
                {"topic": TOPIC, "t": CREATED},
            )
            for pass_id in ("p1", "p2"):
                await connection.execute(
                    text(
                        "INSERT INTO passes (project_id, id, template_id, serial_number, status, "
                        "authentication_token, google_object_id, update_tag, created_at, "
                        "updated_at, has_content) VALUES ('acme', :id, 't', :id, 'ACTIVE', "
                        "'a-token-of-sixteen-chars', '', 1, :t, :t, true)"
                    ),
                    {"id": pass_id, "t": CREATED},
                )
                for name, data in (("icon.png", image), ("pass.json", own + pass_id.encode())):
                    await connection.execute(
                        text(
                            "INSERT INTO pass_files (project_id, pass_id, name, data) "
                            "VALUES ('acme', :p, :n, :d)"
                        ),
                        {"p": pass_id, "n": name, "d": data},
                    )
        await engine.dispose()

    async def rows(sql: str) -> list[tuple[Any, ...]]:
        engine = make_engine(database_url)
        async with engine.connect() as connection:
            found = [tuple(r) for r in await connection.execute(text(sql))]
        await engine.dispose()
        return sorted(found)

    asyncio.run(seed())
    migrate.upgrade(database_url)
    content = asyncio.run(rows("SELECT digest, sha1, data FROM content_files"))
    own_files = asyncio.run(rows("SELECT pass_id, name FROM pass_own_files"))
    listed = asyncio.run(rows("SELECT id, own_files FROM passes"))
    migrate.downgrade(database_url, "0012")
    back = asyncio.run(rows("SELECT pass_id, name, data FROM pass_files"))
    migrate.upgrade(database_url)

    assert len(content) == 3  # the shared image once, each pass.json
    assert [bytes(data) for _, _, data in content].count(image) == 1
    assert own_files == [
        ("p1", "icon.png"),
        ("p1", "pass.json"),
        ("p2", "icon.png"),
        ("p2", "pass.json"),
    ]
    assert {pass_id: [name for name, _, _ in as_json(files)] for pass_id, files in listed} == {
        "p1": ["icon.png", "pass.json"],
        "p2": ["icon.png", "pass.json"],
    }
    image_sha1 = hashlib.sha1(image).hexdigest()
    assert all(
        as_json(files)[0][1:] == [content_digest(content, image), image_sha1] for _, files in listed
    )
    assert [(p, n, bytes(d)) for p, n, d in back] == [
        ("p1", "icon.png", image),
        ("p1", "pass.json", own + b"p1"),
        ("p2", "icon.png", image),
        ("p2", "pass.json", own + b"p2"),
    ]


async def test_imported_passes_take_their_values_as_upserted_ones_do(
    passes: passes_pb2_grpc.PassServiceStub, apple_certs: AppleCerts, tmp_path: Path
) -> None:
    await apple_template(passes, apple_certs)
    await passes.SetTemplateContent(template_content())

    async def imported(*requests: ppb.UpsertPassRequest) -> ppb.ImportPassesResponse:
        async def stream() -> Any:
            entries = [ppb.ImportEntry(**{"pass": getattr(r, "pass")}) for r in requests]  # type: ignore[arg-type]
            yield ppb.ImportPassesRequest(entries=entries)

        return await passes.ImportPasses(stream())

    first = await imported(*(member(f"p{n}", "Ada", n) for n in range(3)))
    # Again: p1 with other values, p2 with none given (it keeps its own).
    again = await imported(member("p1", "Grace", 500), upsert(id="p2", template_id="loyalty"))

    assert (first.created, first.failed, again.updated, again.failed) == (3, 0, 2, 0)
    for pass_id, name, points in (("p0", "Ada", 0), ("p1", "Grace", 500), ("p2", "Ada", 2)):
        document = await verified_pass(
            await package(passes, pass_id), apple_certs, tmp_path / pass_id
        )
        store_card = document["storeCard"]
        assert store_card["primaryFields"][0]["value"] == points, pass_id
        assert store_card["secondaryFields"][0]["value"] == name, pass_id
        assert document["barcodes"][0]["message"] == f"card:{pass_id}"
    got = await passes.GetPass(ppb.GetPassRequest(id="p1"))
    assert got.apple_values == getattr(member("p1", "Grace", 500), "pass").apple_values
