"""The device-pull benchmark's devices (benchmarks/device_client.c) against the real
PassKit web service: they count what a device would, and a run of wrong answers is an
error, never a figure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.device_client import Device, run_devices
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc
from passpush.v1 import passes_pb2 as ppb

from apple_passes import AppleCerts, pass_document, pass_files
from support import TOPIC, token, upsert, wait_terminal

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")

PASSES = 3


async def devices_with_passes(
    passes: passes_pb2_grpc.PassServiceStub, certs: AppleCerts
) -> list[Device]:
    """A template with signing material and passes with content; a device holding each,
    whose tag is its pass's before the content was set."""
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
    devices = []
    for i in range(PASSES):
        secret = f"device-token-{i:04d}-0123456789"
        made = await passes.UpsertPass(
            upsert(id=f"p{i}", template_id="loyalty", authentication_token=secret)
        )
        await passes.SetPassContent(
            ppb.SetPassContentRequest(
                pass_id=f"p{i}", pass_json=json.dumps(pass_document()).encode(), files=pass_files()
            )
        )
        tag = str(made.update_tag)
        devices.append(Device(f"device-{i}", f"p{i}", secret, token(0xB0 + i), tag))
    return devices


async def test_devices_register_ask_and_fetch_counting_every_answer(
    shim: str,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    apple_certs: AppleCerts,
    tmp_path: Path,
) -> None:
    devices = await devices_with_passes(passes, apple_certs)
    where = {"prefix": "/passkit", "pass_type": TOPIC}

    registered = await run_devices("register", shim, devices, tmp_path, **where, connections=2)
    registered.check("register")
    assert (registered.requests, registered.statuses) == (PASSES, {201: PASSES})

    serials = await run_devices(
        "serials", shim, devices, tmp_path, **where, rounds=2, connections=2
    )
    serials.check("serials")
    assert (serials.requests, serials.statuses) == (2 * PASSES, {200: 2 * PASSES})
    assert set(serials.tags) == {d.library_id for d in devices}

    # After a Send each device, asking since the tag it was answered, finds its pass changed.
    sent = await notifications.Send(
        npb.SendRequest(
            target=npb.Target(template=npb.TemplateRef(template_id="loyalty")),
            content=npb.Content(header="News", body="Hello"),
        )
    )
    await wait_terminal(notifications, sent.id)
    told = [
        Device(d.library_id, d.serial, d.token, d.push_token, serials.tags[d.library_id])
        for d in devices
    ]
    pulled = await run_devices("pull", shim, told, tmp_path, **where, connections=2)
    pulled.check("pull")
    assert (pulled.requests, pulled.statuses) == (2 * PASSES, {200: 2 * PASSES})
    assert len(pulled.latencies_us) == 2 * PASSES
    assert pulled.last_us > pulled.first_us


async def test_wrong_answers_are_an_error_not_a_figure(
    shim: str, passes: passes_pb2_grpc.PassServiceStub, apple_certs: AppleCerts, tmp_path: Path
) -> None:
    devices = await devices_with_passes(passes, apple_certs)
    where = {"prefix": "/passkit", "pass_type": TOPIC}
    wrong = [
        Device(d.library_id, d.serial, "not-the-token-0123456789", d.push_token) for d in devices
    ]

    refused = await run_devices("register", shim, wrong, tmp_path, **where, connections=2)
    with pytest.raises(RuntimeError, match=f"{PASSES} wrong responses"):
        refused.check("register")
    assert refused.statuses == {401: PASSES}

    # Not registered: no serials to list, so no pass to fetch.
    unregistered = await run_devices("pull", shim, devices, tmp_path, **where, connections=2)
    with pytest.raises(RuntimeError, match="wrong responses"):
        unregistered.check("pull")
    assert unregistered.statuses == {204: PASSES}
