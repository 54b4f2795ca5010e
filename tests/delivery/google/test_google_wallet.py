"""Google Wallet delivery against a fake Google Wallet API (a real HTTP server on loopback
with a token endpoint that checks the service account's signed assertion)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from passpush.app import Application
from passpush.delivery.apple.gateway import ApnsGateway
from passpush.delivery.google.gateway import GoogleWalletConfig, GoogleWalletGateway
from passpush.delivery.worker import DeliveryWorker, WorkerSettings
from passpush.domain.outcomes import RetryPolicy
from passpush.fakes.apns import FakeApns
from passpush.fakes.google import FakeGoogleWallet, ServiceAccount, make_service_account
from passpush.outbox import class_messages
from passpush.store.db import make_engine
from passpush.store.google_messages import GoogleMessageLog
from passpush.store.models import GoogleMessageRow
from passpush.store.request_turns import SharedRequestTurns
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc
from passpush.v1 import passes_pb2 as ppb

from support import GOOGLE_ISSUER, World, wait_terminal

Notifications = notifications_pb2_grpc.NotificationServiceStub


@pytest.fixture(scope="session")
def google_account(tmp_path_factory: pytest.TempPathFactory) -> ServiceAccount:
    return make_service_account(tmp_path_factory.mktemp("google"))


@pytest.fixture
async def fake_google(google_account: ServiceAccount) -> AsyncIterator[FakeGoogleWallet]:
    async with FakeGoogleWallet(google_account) as fake:
        yield fake


@pytest.fixture
def google_rate() -> float:
    return 500.0  # out of the way, but for the test of the rate itself


@pytest.fixture
def google_timeout() -> float:
    return 10.0  # seconds per request


def _gateway_config(
    fake_google: FakeGoogleWallet, rate: float, timeout: float = 10.0
) -> GoogleWalletConfig:
    return GoogleWalletConfig(
        credentials_file=str(fake_google.account.key_file),
        api_base=fake_google.api_base,
        token_url=fake_google.token_url,
        rate=rate,
        request_timeout=timeout,
    )


@pytest.fixture
async def google_gateway(
    fake_google: FakeGoogleWallet,
    google_rate: float,
    google_timeout: float,
    engine: AsyncEngine,
) -> AsyncIterator[GoogleWalletGateway]:
    # As `passpush serve`: on PostgreSQL the replicas share each issuer's turns.
    shared = None if engine.dialect.name == "sqlite" else SharedRequestTurns(engine, google_rate)
    gateway = GoogleWalletGateway(_gateway_config(fake_google, google_rate, google_timeout), shared)
    yield gateway
    await gateway.close()


@pytest.fixture
def worker_settings() -> WorkerSettings:
    return WorkerSettings(poll_interval=0.05)


@pytest.fixture
async def server(
    engine: AsyncEngine,
    apns_gateway: ApnsGateway,
    google_gateway: GoogleWalletGateway,
    worker_settings: WorkerSettings,
) -> AsyncIterator[Application]:
    server = Application(engine, apns_gateway, google_gateway, worker_settings=worker_settings)
    await server.start()
    yield server
    await server.stop(grace=1.0)


@pytest.fixture
async def world(passes: passes_pb2_grpc.PassServiceStub) -> World:
    world = World(passes)
    await world.google_template("offers", object_type="offerObject")
    return world


async def google_pass(
    world: World,
    fake: FakeGoogleWallet,
    pass_id: str,
    *,
    tags: tuple[str, ...] = (),
    messages: list[dict[str, Any]] | None = None,
    notified_today: int = 0,
) -> str:
    """A Google pass whose object the issuer inserted (the fake knows it)."""
    object_id = await world.google_pass(pass_id, "offers", tags=tags)
    fake.add_object("offerObject", object_id, messages, notified_today=notified_today)
    return object_id


async def send(
    notifications: Notifications, target: npb.Target, body: str, **content: object
) -> npb.Ticket:
    accepted = await notifications.Send(
        npb.SendRequest(target=target, content=npb.Content(body=body, **content))  # type: ignore[arg-type]
    )
    return await wait_terminal(notifications, accepted.id)


async def events_of(notifications: Notifications, ticket_id: int) -> list[npb.DeliveryEvent]:
    request = npb.StreamDeliveryEventsRequest(ticket_id=ticket_id)
    return [event async for event in notifications.StreamDeliveryEvents(request)]


def one_pass(pass_id: str) -> npb.Target:
    return npb.Target(pass_id=pass_id)


async def test_a_broadcast_over_apple_and_google_templates_reaches_both(
    world: World,
    notifications: Notifications,
    fake_apns: FakeApns,
    fake_google: FakeGoogleWallet,
) -> None:
    await world.apple_template("loyalty")
    for pass_id in ("a1", "a2"):
        await world.pass_(pass_id, "loyalty", tags=("vip",))
    objects = [await google_pass(world, fake_google, p, tags=("vip",)) for p in ("g1", "g2")]

    before = datetime.now(UTC).replace(microsecond=0)
    ticket = await send(
        notifications, npb.Target(tag=npb.TagRef(tag="vip")), "20% off today", header="Offer"
    )

    assert ticket.state == npb.TICKET_STATE_SUCCEEDED
    assert (ticket.counts.total, ticket.counts.delivered) == (4, 4)
    assert ticket.counts.delivered_without_alert == 0
    assert sorted(fake_apns.tokens()) == world.tokens_of("a1", "a2")
    for object_id in objects:
        [message] = fake_google.messages(object_id)
        assert message["id"] == f"passpush-{ticket.id}"
        assert (message["header"], message["body"]) == ("Offer", "20% off today")
        assert message["messageType"] == "TEXT_AND_NOTIFY"
        start = datetime.fromisoformat(message["displayInterval"]["start"]["date"])
        end = datetime.fromisoformat(message["displayInterval"]["end"]["date"])
        assert before <= start <= datetime.now(UTC) and end - start == timedelta(hours=1)
    assert sorted(r.path for r in fake_google.received("addMessage")) == [
        f"/walletobjects/v1/offerObject/{object_id}/addMessage" for object_id in objects
    ]
    events = await events_of(notifications, ticket.id)
    google_events = [e for e in events if e.google_object_id]
    assert sorted(e.google_object_id for e in google_events) == objects
    assert {e.outcome for e in events} == {npb.DELIVERY_OUTCOME_DELIVERED}

    # The token is cached; one Google no longer takes is replaced once, and the send goes on.
    assert fake_google.token_grants == 1
    fake_google.expire_tokens()
    again = await send(notifications, one_pass("g1"), "Still 20% off")
    assert again.counts.delivered == 1
    assert fake_google.token_grants == 2
    assert [r.status for r in fake_google.received("addMessage")][-2:] == [401, 200]


async def test_the_fourth_notification_in_24_hours_goes_without_an_alert(
    world: World, notifications: Notifications, fake_google: FakeGoogleWallet
) -> None:
    object_id = await google_pass(world, fake_google, "g1")
    start = datetime.now(UTC) + timedelta(minutes=5)
    window = {
        "display_start": timestamp_pb2.Timestamp(seconds=int(start.timestamp())),
        "display_end": timestamp_pb2.Timestamp(seconds=int(start.timestamp()) + 7200),
    }

    tickets = [await send(notifications, one_pass("g1"), f"News {n}", **window) for n in range(4)]

    assert [m["messageType"] for m in fake_google.messages(object_id)] == [
        *["TEXT_AND_NOTIFY"] * 3,
        "TEXT",
    ]
    assert len(fake_google.received("addMessage")) == 4  # passpush counted: no refusal needed
    interval = fake_google.messages(object_id)[0]["displayInterval"]
    assert datetime.fromisoformat(interval["start"]["date"]) == start.replace(microsecond=0)
    assert datetime.fromisoformat(interval["end"]["date"]) == start.replace(
        microsecond=0
    ) + timedelta(hours=2)
    fourth = tickets[-1]
    assert fourth.state == npb.TICKET_STATE_SUCCEEDED
    assert (fourth.counts.delivered, fourth.counts.delivered_without_alert) == (1, 1)
    assert [t.counts.delivered_without_alert for t in tickets[:3]] == [0, 0, 0]
    [event] = await events_of(notifications, fourth.id)
    assert event.outcome == npb.DELIVERY_OUTCOME_DELIVERED_WITHOUT_ALERT
    assert event.reason == "NotificationQuotaReached"


async def test_googles_own_quota_refusal_is_sent_again_as_text(
    world: World, notifications: Notifications, fake_google: FakeGoogleWallet
) -> None:
    # Three notifications reached the pass from elsewhere: passpush's count cannot know.
    object_id = await google_pass(world, fake_google, "g1", notified_today=3)

    ticket = await send(notifications, one_pass("g1"), "Doors open at six")

    answers = [(r.body["message"]["messageType"], r.status) for r in fake_google.received()]
    assert answers == [("TEXT_AND_NOTIFY", 403), ("TEXT", 200)]
    assert [m["messageType"] for m in fake_google.messages(object_id)] == ["TEXT"]
    assert (ticket.counts.delivered, ticket.counts.delivered_without_alert) == (1, 1)
    [event] = await events_of(notifications, ticket.id)
    assert event.outcome == npb.DELIVERY_OUTCOME_DELIVERED_WITHOUT_ALERT
    assert event.reason == "GoogleNotificationQuotaExceeded"


async def test_delete_removes_only_passpushs_messages(
    world: World, notifications: Notifications, fake_google: FakeGoogleWallet
) -> None:
    theirs = {"id": "issuer-welcome", "header": "Welcome", "body": "Thanks for joining"}
    object_id = await google_pass(world, fake_google, "g1", messages=[theirs])
    for body in ("First", "Second"):
        await send(notifications, one_pass("g1"), body)
    assert len(fake_google.messages(object_id)) == 3

    deleted = await notifications.Delete(npb.DeleteRequest(target=one_pass("g1")))
    ticket = await wait_terminal(notifications, deleted.id)

    assert (ticket.state, ticket.counts.delivered) == (npb.TICKET_STATE_SUCCEEDED, 1)
    assert fake_google.messages(object_id) == [theirs]
    [patch] = fake_google.received("patch")
    assert patch.body == {"messages": [theirs]}

    # Nothing of passpush's left: a second Delete reads the object and changes nothing.
    again = await notifications.Delete(npb.DeleteRequest(target=one_pass("g1")))
    assert (await wait_terminal(notifications, again.id)).counts.delivered == 1
    assert len(fake_google.received("patch")) == 1


async def test_429_and_503_are_retried_with_backoff_and_add_the_message_once(
    world: World, notifications: Notifications, fake_google: FakeGoogleWallet
) -> None:
    throttled = await google_pass(world, fake_google, "g1", tags=("t",))
    flaky = await google_pass(world, fake_google, "g2", tags=("t",))
    fake_google.respond(429, "rateLimitExceeded", times=1, object_id=throttled)
    fake_google.respond(503, "backendError", times=1, object_id=flaky)

    ticket = await send(notifications, npb.Target(tag=npb.TagRef(tag="t")), "Hello")

    assert (ticket.state, ticket.counts.delivered) == (npb.TICKET_STATE_SUCCEEDED, 2)
    for object_id in (throttled, flaky):
        assert len(fake_google.messages(object_id)) == 1
        statuses = [
            r.status for r in fake_google.received("addMessage") if r.object_id == object_id
        ]
        assert statuses[0] in (429, 503) and statuses[-1] == 200
    events = await events_of(notifications, ticket.id)
    retries = sorted(e.reason for e in events if e.outcome == npb.DELIVERY_OUTCOME_RETRYING)
    assert retries == ["Google 429 rateLimitExceeded", "Google 503 backendError"]
    assert {e.attempt for e in events if e.outcome == npb.DELIVERY_OUTCOME_DELIVERED} == {2}


@pytest.mark.parametrize(
    "worker_settings",
    [
        WorkerSettings(
            poll_interval=0.05, retry=RetryPolicy(budget=60.0, backoff_base=0.1, backoff_cap=0.5)
        )
    ],
)
async def test_a_google_outage_then_errors_fail_nothing_and_add_each_message_once(
    world: World, notifications: Notifications, fake_google: FakeGoogleWallet
) -> None:
    """A Google Wallet outage longer than a few retries cover, then 30% of calls answered
    429/503, costs time, not deliveries: each object gets its message, once."""
    objects = [await google_pass(world, fake_google, f"g{n}", tags=("t",)) for n in range(10)]
    fake_google.outage(3.0)  # five attempts 0.1-0.5 s apart cover about a second
    fake_google.faults(errors=0.3, seed=16)

    accepted = await notifications.Send(
        npb.SendRequest(target=npb.Target(tag=npb.TagRef(tag="t")), content=npb.Content(body="Hi"))
    )
    ticket = await wait_terminal(notifications, accepted.id, seconds=60)

    assert (ticket.state, ticket.counts.delivered) == (npb.TICKET_STATE_SUCCEEDED, 10), ticket
    for object_id in objects:
        assert [m["body"] for m in fake_google.messages(object_id)] == ["Hi"]
    assert {r.status for r in fake_google.received()} >= {200, 503}


async def test_a_missing_object_and_refused_credentials_fail_without_retry(
    world: World,
    notifications: Notifications,
    fake_google: FakeGoogleWallet,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await world.google_pass("gone", "offers", tags=("t",))  # the issuer never inserted it
    refused = await google_pass(world, fake_google, "g1", tags=("t",))
    fake_google.respond(403, "permissionDenied", object_id=refused)

    with caplog.at_level(logging.ERROR, logger="passpush"):
        ticket = await send(notifications, npb.Target(tag=npb.TagRef(tag="t")), "Hello")

    assert (ticket.state, ticket.counts.failed) == (npb.TICKET_STATE_FAILED, 2)
    assert sorted((e.reason, e.count) for e in ticket.errors) == [
        ("Google 403 permissionDenied", 1),
        ("GoogleObjectNotFound", 1),
    ]
    assert len(fake_google.received("addMessage")) == 2  # no retry of either
    [alarm] = [r for r in caplog.records if "refused passpush's service account" in r.message]
    assert alarm.levelno == logging.ERROR and "permissionDenied" in alarm.message
    assert "ya29." not in caplog.text  # no token in the logs

    # A message whose display window is over before it is sent would never show. (A window
    # already over when asked is refused at once: this one ends a microsecond after its
    # scheduled send time, so it is over by the time the delivery goes.)
    send_time = timestamp_pb2.Timestamp(
        seconds=int((datetime.now(UTC) + timedelta(seconds=1)).timestamp())
    )
    display_end = timestamp_pb2.Timestamp(seconds=send_time.seconds, nanos=1_000)
    scheduled = await notifications.Schedule(
        npb.ScheduleRequest(
            target=one_pass("gone"),
            content=npb.Content(body="Happy hour", display_end=display_end),
            send_time=send_time,
        )
    )
    async with asyncio.timeout(15):
        while not scheduled.ticket_id:
            await asyncio.sleep(0.05)
            scheduled = await notifications.GetScheduled(npb.GetScheduledRequest(id=scheduled.id))
    late = await wait_terminal(notifications, scheduled.ticket_id)
    assert [(e.reason, e.count) for e in late.errors] == [("DisplayWindowEnded", 1)]
    assert len(fake_google.received()) == 2


@pytest.mark.parametrize("google_timeout", [1.0])
async def test_a_retry_after_a_lost_answer_does_not_add_the_message_twice(
    world: World, notifications: Notifications, fake_google: FakeGoogleWallet
) -> None:
    object_id = await google_pass(world, fake_google, "g1")
    # passpush holds its access token first: fetched within the Send, the token took over
    # the timeout on a loaded machine, and that attempt, not the addMessage, was the lost one.
    await google_pass(world, fake_google, "g0")
    await send(notifications, one_pass("g0"), "Hi")
    fake_google.reset()
    fake_google.answer_late(3.0)  # added, but passpush stops waiting after 1 s

    ticket = await send(notifications, one_pass("g1"), "Hello")

    assert (ticket.state, ticket.counts.delivered) == (npb.TICKET_STATE_SUCCEEDED, 1)
    assert [m["body"] for m in fake_google.messages(object_id)] == ["Hello"]
    assert [r.action for r in fake_google.received()] == ["addMessage", "get"]
    events = await events_of(notifications, ticket.id)
    assert [(e.outcome, e.reason) for e in events] == [
        (npb.DELIVERY_OUTCOME_RETRYING, "Google Timeout"),
        (npb.DELIVERY_OUTCOME_DELIVERED, ""),
    ]


async def test_a_key_the_token_endpoint_refuses_is_an_authentication_failure(
    fake_google: FakeGoogleWallet, tmp_path: Path
) -> None:
    stranger = make_service_account(tmp_path, client_email="someone@elsewhere.example")
    gateway = GoogleWalletGateway(
        GoogleWalletConfig(
            credentials_file=str(stranger.key_file),
            api_base=fake_google.api_base,
            token_url=fake_google.token_url,
        )
    )
    try:
        answer = await gateway.get_object("offerObject", "3388000000022222222.g1")
    finally:
        await gateway.close()

    assert (answer.status, answer.reason) == (401, "TokenRefused")
    assert "invalid_grant" in answer.message
    assert fake_google.received() == []  # no API call without a token


@pytest.mark.parametrize("google_rate", [20.0])
async def test_the_request_rate_is_respected_and_apple_does_not_wait_for_it(
    world: World,
    notifications: Notifications,
    fake_apns: FakeApns,
    fake_google: FakeGoogleWallet,
    google_rate: float,
) -> None:
    await world.apple_template("loyalty")
    for n in range(20):
        await world.pass_(f"a{n}", "loyalty", tags=("all",))
    count = 30
    for n in range(count):
        await google_pass(world, fake_google, f"g{n}", tags=("all",))

    ticket = await send(notifications, npb.Target(tag=npb.TagRef(tag="all")), "Hello")

    assert ticket.counts.delivered == 20 + count
    times = sorted(r.received_at for r in fake_google.received())
    assert len(times) == count
    # Paced one request per 1/rate s, so the whole takes (count - 1) / rate at least, less
    # what the first request's own time on the way (a connection to open) takes off here.
    # That no second holds more than the rate is tests/delivery/google/test_google_pacer.py's to
    # show: arrival times here move with the machine's load, the pacer's turns do not.
    assert times[-1] - times[0] >= 0.5 * (count - 1) / google_rate
    # Apple's pushes went out beside Google's paced requests, not behind them.
    assert max(p.received_at for p in fake_apns.received) < times[-5]


async def test_two_replicas_cannot_both_take_a_passs_last_notifying_place(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        await session.execute(
            insert(GoogleMessageRow),
            [
                {
                    "delivery_id": n,
                    "project_id": "acme",
                    "pass_id": "g1",
                    "notifying": True,
                    "sent_at": now - timedelta(hours=hours),
                }
                for n, hours in ((1, 1), (2, 2), (3, 25))  # the third is out of the window
            ],
        )

    async def take(delivery_id: int) -> bool:
        async with sessions.begin() as session:
            log = GoogleMessageLog(session)
            taken = await log.take_place(delivery_id, "acme", "g1", now)
            await asyncio.sleep(0.05)  # hold the transaction: the others must wait, not count
            return taken

    taken = await asyncio.gather(*(take(10 + n) for n in range(4)))

    assert sorted(taken) == [False, False, False, True]
    async with sessions.begin() as session:
        assert await GoogleMessageLog(session).take_place(11, "acme", "g1", now) == taken[1]
        assert await GoogleMessageLog(session).purge(now) == 1  # the 25-hour-old one


def test_the_bundled_service_account_key_is_reused(tmp_path: Path) -> None:
    first = make_service_account(tmp_path)
    assert make_service_account(tmp_path).public_key_pem == first.public_key_pem
    assert oct(first.key_file.stat().st_mode & 0o777) == "0o600"


ISSUER = "3388000000012345678"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_replicas_on_one_postgresql_take_an_issuers_turns_one_interval_apart(
    database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Two replicas asking at once get turns 1/rate apart on the database's clock, or later
    only when the queue had run out (a loaded machine asks more slowly than the rate: the
    turn is then the moment it asked); another issuer's turns are its own."""
    engines = [make_engine(database_url) for _ in range(2)]
    try:
        replicas = [SharedRequestTurns(engine, 20.0) for engine in engines]
        taken = await asyncio.gather(*(replicas[n % 2].take_turn(ISSUER) for n in range(40)))
        other_turn, other_now = await replicas[0].take_turn("another-issuer")
    finally:
        for engine in engines:
            await engine.dispose()

    interval, close = 1 / 20.0, 1e-4  # float8 seconds since the epoch: ~0.2 µs apart
    turns = sorted(taken)
    for (earlier, _), (later, asked_by) in itertools.pairwise(turns):
        assert later - earlier >= interval - close  # never two in one interval
        if later - earlier > interval + close:
            assert later <= asked_by + close  # a gap only where no turn was waiting
    assert turns[-1][0] - turns[0][0] >= 39 * interval - close
    assert other_turn <= other_now  # not behind the first issuer's queue


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_two_replicas_together_stay_within_the_google_rate(
    fake_google: FakeGoogleWallet, engine: AsyncEngine
) -> None:
    """Each replica pacing itself alone sent twice the rate between them."""
    rate, each = 10.0, 10
    replicas = [
        GoogleWalletGateway(_gateway_config(fake_google, rate), SharedRequestTurns(engine, rate))
        for _ in range(2)
    ]
    try:
        await asyncio.gather(
            *(
                replica.get_object("genericObject", f"{ISSUER}.pass-{r}-{n}")
                for r, replica in enumerate(replicas)
                for n in range(each)
            )
        )
    finally:
        for replica in replicas:
            await replica.close()

    times = sorted(request.received_at for request in fake_google.received())
    assert len(times) == 2 * each
    # Paced together, 20 requests span 19 intervals (1.9 s); apart, each replica's 10 went
    # beside the other's (0.9 s). A loaded machine only spaces them further.
    assert times[-1] - times[0] >= 0.75 * (2 * each - 1) / rate


async def test_a_request_without_a_turn_is_not_made_and_is_tried_again(
    fake_google: FakeGoogleWallet,
) -> None:
    """The database that hands out the turns unreachable: no request goes (it could break
    the rate), and the answer is none, which the worker tries again later."""
    unreachable = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/postgres")
    gateway = GoogleWalletGateway(
        _gateway_config(fake_google, 10.0), SharedRequestTurns(unreachable, 10.0)
    )
    try:
        answer = await gateway.get_object("genericObject", f"{ISSUER}.pass")
    finally:
        await gateway.close()
        await unreachable.dispose()

    assert (answer.status, answer.reason) == (0, "RequestTurnUnavailable")
    assert fake_google.received() == []


# -- class messages: a Send to a whole Google template ------------------------------------------

OFFERS_CLASS = f"{GOOGLE_ISSUER}.offers"
CLASS_ADD = f"/walletobjects/v1/offerClass/{OFFERS_CLASS}/addMessage"


def whole_template() -> npb.Target:
    return npb.Target(template=npb.TemplateRef(template_id="offers"))


async def ledger_of(sessions: async_sessionmaker[AsyncSession]) -> dict[str, list[bool]]:
    """Each pass's places in the notifying-messages ledger, in the order taken."""
    async with sessions() as session:
        rows = await session.execute(
            select(GoogleMessageRow.pass_id, GoogleMessageRow.notifying).order_by(
                GoogleMessageRow.delivery_id
            )
        )
        ledger: dict[str, list[bool]] = {}
        for pass_id, notifying in rows:
            ledger.setdefault(pass_id, []).append(notifying)
        return ledger


async def test_a_send_to_a_whole_google_template_is_one_message_on_its_class(
    world: World,
    notifications: Notifications,
    fake_google: FakeGoogleWallet,
    sessions: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(class_messages, "RECORD_CHUNK", 2)  # recorded over several chunks
    fake_google.add_class("offerClass", OFFERS_CLASS)
    objects = [await google_pass(world, fake_google, p) for p in ("g1", "g2", "g3", "g4")]
    await world.google_pass("g5", "offers", status=ppb.PASS_STATUS_REVOKED)
    for n in range(3):  # g4 had its 3 notifying messages of the day from passpush
        await send(notifications, one_pass("g4"), f"Earlier {n}")
    fake_google.reset()

    ticket = await send(notifications, whole_template(), "Double points today", header="Offer")

    assert [r.path for r in fake_google.received()] == [CLASS_ADD]
    [message] = fake_google.class_messages(OFFERS_CLASS)
    assert message["id"] == f"passpush-{ticket.id}"
    assert (message["header"], message["body"]) == ("Offer", "Double points today")
    assert message["messageType"] == "TEXT_AND_NOTIFY"
    assert all(len(fake_google.messages(o)) == (3 if o.endswith("g4") else 0) for o in objects)
    # Every pass it reached is counted; the inactive one is skipped, as it is for objects.
    assert ticket.state == npb.TICKET_STATE_SUCCEEDED
    counts = ticket.counts
    assert (counts.total, counts.delivered, counts.skipped) == (5, 4, 1)
    assert counts.delivered_without_alert == 1
    events = {e.pass_id: e for e in await events_of(notifications, ticket.id)}
    assert {p: e.outcome for p, e in events.items()} == {
        "g1": npb.DELIVERY_OUTCOME_DELIVERED,
        "g2": npb.DELIVERY_OUTCOME_DELIVERED,
        "g3": npb.DELIVERY_OUTCOME_DELIVERED,
        "g4": npb.DELIVERY_OUTCOME_DELIVERED_WITHOUT_ALERT,
        "g5": npb.DELIVERY_OUTCOME_SKIPPED,
    }
    assert events["g4"].reason == "NotificationQuotaReached"
    assert events["g1"].google_object_id == objects[0]
    # The ledger counts the class message on every pass it notified.
    assert await ledger_of(sessions) == {
        "g1": [True],
        "g2": [True],
        "g3": [True],
        "g4": [True, True, True, False],
    }


async def test_googles_refusal_to_notify_for_a_class_sends_it_again_as_text(
    world: World, notifications: Notifications, fake_google: FakeGoogleWallet
) -> None:
    fake_google.add_class("offerClass", OFFERS_CLASS)
    for pass_id in ("g1", "g2"):
        await google_pass(world, fake_google, pass_id)
    fake_google.respond(403, "quotaExceeded", times=1, object_id=OFFERS_CLASS)

    ticket = await send(notifications, whole_template(), "Doors open at six")

    sent = [(r.body["message"]["messageType"], r.status) for r in fake_google.received()]
    assert sent == [("TEXT_AND_NOTIFY", 403), ("TEXT", 200)]
    assert (ticket.counts.delivered, ticket.counts.delivered_without_alert) == (2, 2)
    events = await events_of(notifications, ticket.id)
    assert {(e.outcome, e.reason) for e in events} == {
        (npb.DELIVERY_OUTCOME_DELIVERED_WITHOUT_ALERT, "GoogleNotificationQuotaExceeded")
    }


async def test_a_class_message_is_retried_and_added_once_or_fails_every_pass(
    world: World, notifications: Notifications, fake_google: FakeGoogleWallet
) -> None:
    fake_google.add_class("offerClass", OFFERS_CLASS)
    for pass_id in ("g1", "g2"):
        await google_pass(world, fake_google, pass_id)
    fake_google.respond(503, "backendError", times=2, object_id=OFFERS_CLASS)

    ticket = await send(notifications, whole_template(), "Back in stock")

    assert ticket.state == npb.TICKET_STATE_SUCCEEDED
    assert len(fake_google.class_messages(OFFERS_CLASS)) == 1
    # A retry looks first whether an earlier attempt added it.
    assert [r.action for r in fake_google.received()] == ["addMessage", "get", "get", "addMessage"]

    # A class Google does not know fails each pass of the ticket, with the reason.
    await world.google_template("gone")
    await google_pass_of(world, fake_google, "g9", "gone")
    failed = await send(
        notifications, npb.Target(template=npb.TemplateRef(template_id="gone")), "Hello"
    )
    assert (failed.state, failed.counts.failed) == (npb.TICKET_STATE_FAILED, 1)
    assert [(e.outcome, e.reason) for e in await events_of(notifications, failed.id)] == [
        (npb.DELIVERY_OUTCOME_FAILED, "GoogleClassNotFound")
    ]


async def google_pass_of(world: World, fake: FakeGoogleWallet, pass_id: str, template: str) -> None:
    object_id = await world.google_pass(pass_id, template)
    fake.add_object("loyaltyObject", object_id)


async def test_a_delete_to_a_whole_template_removes_class_and_object_messages(
    world: World, notifications: Notifications, fake_google: FakeGoogleWallet
) -> None:
    theirs = {"id": "issuer-welcome", "header": "Welcome", "body": "Thanks for joining"}
    fake_google.add_class("offerClass", OFFERS_CLASS, [theirs])
    g1 = await google_pass(world, fake_google, "g1", messages=[theirs])
    await google_pass(world, fake_google, "g2")
    await send(notifications, whole_template(), "For everyone")
    await send(notifications, one_pass("g1"), "For you")
    assert len(fake_google.class_messages(OFFERS_CLASS)) == 2
    assert len(fake_google.messages(g1)) == 2

    deleted = await notifications.Delete(npb.DeleteRequest(target=whole_template()))
    ticket = await wait_terminal(notifications, deleted.id)

    assert (ticket.state, ticket.counts.delivered) == (npb.TICKET_STATE_SUCCEEDED, 2)
    assert fake_google.class_messages(OFFERS_CLASS) == [theirs]
    assert fake_google.messages(g1) == [theirs]


async def test_a_class_message_left_by_a_stopped_worker_is_carried_out_by_another(
    world: World,
    notifications: Notifications,
    fake_google: FakeGoogleWallet,
    server: Application,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    apns_gateway: ApnsGateway,
    google_gateway: GoogleWalletGateway,
) -> None:
    fake_google.add_class("offerClass", OFFERS_CLASS)
    for pass_id in ("g1", "g2"):
        await google_pass(world, fake_google, pass_id)
    fake_google.outage(math.inf)
    accepted = await notifications.Send(
        npb.SendRequest(target=whole_template(), content=npb.Content(body="Flash sale"))
    )
    await fake_google.wait_for(1)  # its first attempt met the outage: tried again later
    await server.worker.stop(grace=1.0)  # as if its process stopped
    fake_google.end_outage()

    replica = DeliveryWorker(
        engine,
        sessions,
        apns_gateway,
        google_gateway,
        clock=lambda: datetime.now(UTC),
        settings=WorkerSettings(poll_interval=0.05),
    )
    replica.start()
    try:
        ticket = await wait_terminal(notifications, accepted.id)
    finally:
        await replica.stop(grace=1.0)

    assert (ticket.state, ticket.counts.delivered) == (npb.TICKET_STATE_SUCCEEDED, 2)
    assert [m["body"] for m in fake_google.class_messages(OFFERS_CLASS)] == ["Flash sale"]


async def test_a_send_to_a_template_with_no_active_pass_asks_nothing_of_the_class(
    world: World,
    notifications: Notifications,
    fake_google: FakeGoogleWallet,
) -> None:
    """The class message would show only on passes the Send did not mean (inactive ones,
    or objects passpush does not know)."""
    fake_google.add_class("offerClass", OFFERS_CLASS)
    await world.google_pass("g1", "offers", status=ppb.PASS_STATUS_REVOKED)

    ticket = await send(notifications, whole_template(), "Anyone there?")
    # Once the class message is done, a second Send's goes (the messages go in order).
    await google_pass(world, fake_google, "g2")
    after = await send(notifications, whole_template(), "Now there is")

    assert (ticket.counts.total, ticket.counts.skipped) == (1, 1)
    assert after.counts.delivered == 1
    assert [m["body"] for m in fake_google.class_messages(OFFERS_CLASS)] == ["Now there is"]
