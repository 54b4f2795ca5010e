"""Fetch confirmations: a ticket counts the Apple devices that fetched the pass version
carrying its notification, driven as Wallet devices drive the PassKit web service (real
HTTP), after a Send through gRPC to the fake APNs."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from test_passkit import Device, HeldPass, device, issue_pass, send

from passpush.app import Application
from passpush.domain.fetches import bucket_of, percentile
from passpush.fakes.apns import FakeApns
from passpush.service.fetches import FetchBatcher, FetchLedger, PassVersion
from passpush.store.fetches import FetchConfirmation, RecordedFetch
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc
from passpush.v1 import passes_pb2 as ppb

from apple_passes import AppleCerts, notification_field, unzip
from support import token, wait_terminal

__all__ = ["device"]  # the fixture, shared with test_passkit


async def fetched_events(
    notifications: notifications_pb2_grpc.NotificationServiceStub, ticket_id: int, count: int
) -> list[npb.DeliveryEvent]:
    """The ticket's first `count` FETCHED events (the stream itself never ends)."""
    request = npb.StreamDeliveryEventsRequest(
        ticket_id=ticket_id, outcomes=[npb.DELIVERY_OUTCOME_FETCHED]
    )
    events: list[npb.DeliveryEvent] = []
    stream = notifications.StreamDeliveryEvents(request)
    try:
        async with asyncio.timeout(10):
            async for event in stream:
                events.append(event)
                if len(events) == count:
                    break
    finally:
        stream.cancel()
    return events


def body_shown(pkpass: bytes) -> str | None:
    """The notification a downloaded pass shows on its back."""
    field = notification_field(json.loads(unzip(pkpass)["pass.json"]))
    return None if field is None else str(field["value"])


async def ticket_now(
    server: Application,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    ticket_id: int,
) -> npb.Ticket:
    """The ticket once every confirmation handed over so far is recorded."""
    await server.fetches.flush()
    return await notifications.GetTicket(npb.GetTicketRequest(id=ticket_id))


async def asks_then_downloads(device: Device, held: HeldPass, since: str) -> None:
    changed = await device.updated(held, since=since)
    assert changed.status_code == 200 and changed.json()["serialNumbers"] == [held.serial_number]
    assert (await device.fetch(held)).status_code == 200


async def registered(device: Device, held: HeldPass) -> str:
    """Registers the device; the update tag it then holds."""
    assert (await device.register(held)).status_code == 201
    tag: str = (await device.updated(held)).json()["lastUpdated"]
    return tag


async def test_a_device_that_asks_then_downloads_confirms_the_fetch_once(
    server: Application,
    device: Device,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    apple_certs: AppleCerts,
) -> None:
    (held,) = await issue_pass(passes, apple_certs, "p1")
    tag = await registered(device, held)
    sent = await send(notifications, "p1", "20% off today")

    await asks_then_downloads(device, held, tag)
    assert (await device.fetch(held)).status_code == 200  # the same device, again
    ticket = await ticket_now(server, notifications, sent.id)
    (event,) = await fetched_events(notifications, sent.id, 1)

    assert (ticket.counts.delivered, ticket.counts.fetched) == (1, 1)
    assert ticket.state == npb.TICKET_STATE_SUCCEEDED
    assert ticket.HasField("push_to_fetch_p50") and ticket.HasField("push_to_fetch_p95")
    assert ticket.push_to_fetch_p50.ToTimedelta() <= ticket.push_to_fetch_p95.ToTimedelta()
    assert ticket.push_to_fetch_p95.ToTimedelta() < timedelta(minutes=1)
    assert (event.pass_id, event.device_library_identifier) == ("p1", device.library_id)
    assert (event.platform, event.attempt) == (ppb.PLATFORM_APPLE, 1)
    assert event.HasField("push_to_fetch")
    assert timedelta(0) < event.push_to_fetch.ToTimedelta() < timedelta(minutes=1)
    assert not sent.HasField("push_to_fetch_p50")  # absent until a fetch


async def test_a_download_without_a_serials_query_first_is_not_counted(
    server: Application,
    device: Device,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    apple_certs: AppleCerts,
) -> None:
    (held,) = await issue_pass(passes, apple_certs, "p1")
    assert (await device.register(held)).status_code == 201
    sent = await send(notifications, "p1", "Hello")

    assert (await device.fetch(held)).status_code == 200
    ticket = await ticket_now(server, notifications, sent.id)

    assert (ticket.counts.delivered, ticket.counts.fetched) == (1, 0)
    assert ticket.state == npb.TICKET_STATE_SUCCEEDED  # a fetch is never waited for
    assert not ticket.HasField("push_to_fetch_p50")


async def test_each_device_of_a_pass_counts_and_one_that_never_fetches_holds_nothing_up(
    server: Application,
    device: Device,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    apple_certs: AppleCerts,
) -> None:
    (held,) = await issue_pass(passes, apple_certs, "p1")
    other = Device(device.http, "a-second-device-of-the-holder", token(0xD2))
    tags = [await registered(d, held) for d in (device, other)]
    sent = await send(notifications, "p1", "Two phones")

    await asks_then_downloads(device, held, tags[0])
    one_fetched = await ticket_now(server, notifications, sent.id)
    await asks_then_downloads(other, held, tags[1])
    both_fetched = await ticket_now(server, notifications, sent.id)
    events = await fetched_events(notifications, sent.id, 2)

    assert (one_fetched.counts.delivered, one_fetched.counts.fetched) == (2, 1)
    assert one_fetched.state == npb.TICKET_STATE_SUCCEEDED
    assert both_fetched.counts.fetched == 2
    assert {e.device_library_identifier for e in events} == {device.library_id, other.library_id}


async def test_a_version_told_before_a_newer_notification_does_not_count_for_it(
    server: Application,
    device: Device,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    apple_certs: AppleCerts,
) -> None:
    (held,) = await issue_pass(passes, apple_certs, "p1")
    tag = await registered(device, held)
    first = await send(notifications, "p1", "First")
    told = await device.updated(held, since=tag)  # told of the first version
    second = await send(notifications, "p1", "Second")

    # The download after the serials query gets the version it listed; the next one (a
    # refresh: no serials query before it) the pass as it is now.
    listed = await device.fetch(held)
    refreshed = await device.fetch(held)
    before_told = [await ticket_now(server, notifications, t.id) for t in (first, second)]
    await asks_then_downloads(device, held, told.json()["lastUpdated"])
    counted = await ticket_now(server, notifications, second.id)

    assert [body_shown(r.content) for r in (listed, refreshed)] == ["First", "Second"]
    assert [t.counts.fetched for t in before_told] == [1, 0]
    assert counted.counts.fetched == 1


async def test_a_delivery_is_counted_once_whatever_the_batches_say(
    server: Application,
    device: Device,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    apple_certs: AppleCerts,
) -> None:
    """As when two processes each matched a download to the device: the database keeps one."""
    (held,) = await issue_pass(passes, apple_certs, "p1")
    await registered(device, held)
    sent = await send(notifications, "p1", "Once")
    at = datetime.now(UTC)
    confirmation = FetchConfirmation("acme", "p1", device.library_id, 1, sent.id, at)
    unknown_device = FetchConfirmation("acme", "p1", "never-registered", 1, sent.id, at)

    first = await server.fetch_recorder.record([confirmation, confirmation, unknown_device])
    again = await server.fetch_recorder.record([confirmation])
    ticket = await notifications.GetTicket(npb.GetTicketRequest(id=sent.id))

    assert [r.device_library_identifier for r in first] == [device.library_id]
    assert again == []
    assert ticket.counts.fetched == 1


async def test_a_fetch_confirmed_before_its_push_is_recorded_delivered_counts_once_it_is(
    server: Application,
    device: Device,
    passes: passes_pb2_grpc.PassServiceStub,
    notifications: notifications_pb2_grpc.NotificationServiceStub,
    fake_apns: FakeApns,
    apple_certs: AppleCerts,
) -> None:
    """A device can fetch before the worker wrote that APNs took its push (here: APNs said
    503 first, and the delivery waits for its retry): the confirmation is tried again."""
    (held,) = await issue_pass(passes, apple_certs, "p1")
    await registered(device, held)
    fake_apns.respond(device.push_token, 503, "ServiceUnavailable", times=1)
    accepted = await notifications.Send(
        npb.SendRequest(target=npb.Target(pass_id="p1"), content=npb.Content(body="Early"))
    )
    at = datetime.now(UTC)

    server.fetches.add(FetchConfirmation("acme", "p1", device.library_id, 1, accepted.id, at))
    await server.fetches.flush()
    too_early = await notifications.GetTicket(npb.GetTicketRequest(id=accepted.id))
    delivered = await wait_terminal(notifications, accepted.id)
    counted = await wait_fetched(notifications, accepted.id, 1)

    assert (too_early.counts.delivered, too_early.counts.fetched) == (0, 0)
    assert delivered.counts.delivered == 1
    assert counted.counts.fetched == 1


async def wait_fetched(
    notifications: notifications_pb2_grpc.NotificationServiceStub, ticket_id: int, count: int
) -> npb.Ticket:
    """The ticket once it counts `count` fetches (AssertionError after 20 s)."""
    ticket = npb.Ticket()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(20):
            while ticket.counts.fetched < count:
                ticket = await notifications.GetTicket(npb.GetTicketRequest(id=ticket_id))
                await asyncio.sleep(0.05)
    assert ticket.counts.fetched == count, ticket
    return ticket


def test_the_ledger_matches_the_device_told_last_and_forgets_old_and_excess_answers() -> None:
    now = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
    version = PassVersion("acme", "p1", 7)
    ledger = FetchLedger(max_age=timedelta(minutes=15), max_entries=3)
    ledger.told("a", [version], now)
    ledger.told("b", [version], now + timedelta(seconds=1))

    newer = ledger.fetched("acme", "p1", 8, 1, now)  # another version: nobody was told
    to_b = ledger.fetched("acme", "p1", 7, 1, now + timedelta(seconds=2))
    to_a = ledger.fetched("acme", "p1", 7, 1, now + timedelta(seconds=3))
    nobody_left = ledger.fetched("acme", "p1", 7, 1, now + timedelta(seconds=4))
    ledger.told("c", [version], now)
    too_late = ledger.fetched("acme", "p1", 7, 1, now + timedelta(minutes=16))
    for i in range(5):
        ledger.told(f"d{i}", [PassVersion("acme", f"q{i}", 1)], now)

    assert newer is None and nobody_left is None and too_late is None
    assert to_b is not None and to_b.device_library_identifier == "b"
    assert to_a is not None and to_a.device_library_identifier == "a"
    assert len(ledger) == 3
    assert ledger.fetched("acme", "q0", 1, 1, now) is None  # the oldest went first
    assert ledger.fetched("acme", "q4", 1, 1, now) is not None


@pytest.mark.parametrize(
    ("latencies_ms", "p50_ms", "p95_ms"),
    [([500], 500, 500), ([100] * 50 + [2000] * 50, 100, 2000), ([0, 10, 10, 10], 10, 10)],
)
def test_percentiles_from_the_histogram_are_within_a_tenth(
    latencies_ms: list[int], p50_ms: int, p95_ms: int
) -> None:
    histogram: dict[str, int] = {}
    for ms in latencies_ms:
        key = str(bucket_of(timedelta(milliseconds=ms)))
        histogram[key] = histogram.get(key, 0) + 1

    p50, p95 = percentile(histogram, 0.5), percentile(histogram, 0.95)

    assert p50 is not None and p95 is not None
    assert abs(p50 / timedelta(milliseconds=p50_ms) - 1) < 0.1
    assert abs(p95 / timedelta(milliseconds=p95_ms) - 1) < 0.1
    assert percentile({}, 0.5) is None


async def test_downloading_a_fetched_version_again_writes_nothing_and_is_not_retried() -> None:
    """A device refreshing a pass it fetched already confirms nothing new: the batcher
    leaves it out, instead of writing it and trying it again five times as unmatched."""
    batches: list[list[FetchConfirmation]] = []

    async def record(confirmations: list[FetchConfirmation]) -> list[RecordedFetch]:
        batches.append(confirmations)
        if len(batches) > 1:
            return []  # the delivery is marked fetched already
        c = confirmations[0]
        return [
            RecordedFetch(
                1, c.ticket_id, c.project_id, c.pass_id, c.device_library_identifier, 1,
                c.fetched_at, timedelta(seconds=1),
            )
        ]  # fmt: skip

    batcher = FetchBatcher(record, interval=3600)
    confirmation = FetchConfirmation("acme", "p1", "d1", 1, 7, datetime.now(UTC))
    batcher.add(confirmation)
    await batcher.flush()
    for _ in range(3):
        batcher.add(confirmation)
    await batcher.flush()
    await batcher.stop()

    assert batches == [[confirmation]]


async def test_downloads_again_before_the_first_is_recorded_are_written_once() -> None:
    """A device fetching one version again and again while its first confirmation waits
    (for the next batch, or to be tried again as unmatched: its push not yet recorded as
    delivered) adds nothing: one confirmation a delivery is written, the first. In a fetch
    storm each of them was written, and the batches held SQLite's writer from the Sends."""
    batches: list[list[FetchConfirmation]] = []

    async def record(confirmations: list[FetchConfirmation]) -> list[RecordedFetch]:
        batches.append(confirmations)
        return []  # unmatched: the worker has not recorded the push as delivered yet

    batcher = FetchBatcher(record, interval=3600)
    first = FetchConfirmation("acme", "p1", "d1", 1, 7, datetime.now(UTC))
    again = [replace(first, fetched_at=first.fetched_at + timedelta(seconds=s)) for s in (1, 2)]
    other = replace(first, device_library_identifier="d2")
    for confirmation in (first, *again, other):
        batcher.add(confirmation)
    await batcher.flush()
    for confirmation in again:  # while the first waits to be tried again
        batcher.add(confirmation)
    await batcher.flush()
    await batcher.stop()

    assert batches == [[first, other]]
