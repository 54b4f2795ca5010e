"""What a ticket writes: its deliveries into the outbox, and the notification field of each
pass it reaches. Statements over an audience condition (set-based: an audience is never
loaded into Python), shared by one-pass tickets and broadcasts' chunks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Insert,
    Select,
    Text,
    Update,
    and_,
    bindparam,
    case,
    false,
    insert,
    literal,
    not_,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.sql.elements import BindParameter

from passpush.domain.model import (
    SKIP_NO_DEVICES,
    SKIP_PASS_NOT_ACTIVE,
    Content,
    DeliveryState,
    Operation,
    PassStatus,
    Platform,
)
from passpush.domain.passkit import REPEAT_MARK
from passpush.domain.update_tags import update_tag_at
from passpush.store.models import (
    DeliveryRow,
    DeviceRegistrationRow,
    PassRow,
    TemplateRow,
    table_of,
)

_passes = table_of(PassRow)
_deliveries = table_of(DeliveryRow)
DELIVERY_COLUMNS = [
    "ticket_id",
    "project_id",
    "pass_id",
    "registration_id",
    "platform",
    "state",
    "reason",
    "attempts",
    "next_attempt_at",
    "updated_at",
]
PASS_CHANGE_PARAMS: dict[str, BindParameter[Any]] = {
    name: bindparam(f"new_{name}", type_=BigInteger if name == "update_tag" else None)
    for name in (
        "update_tag",
        "updated_at",
        "notification_header",
        "notification_body",
        "notification_ticket_id",
        "last_ticket_id",
    )
}

# The one pass a one-pass ticket changes (parameters of_project, of_pass).
ONE_PASS = and_(PassRow.project_id == bindparam("of_project"), PassRow.id == bindparam("of_pass"))


def pass_change(
    ticket_id: int, operation: Operation, content: Content | None, now: datetime
) -> dict[str, Any]:
    """Sets (Send) or clears (Delete) the notification field of a pass."""
    sending = sends_notification(operation, content)
    return pass_shown(operation, content, now) | {
        "notification_ticket_id": ticket_id if sending else None,
        "last_ticket_id": ticket_id,
    }


def pass_shown(operation: Operation, content: Content | None, now: datetime) -> dict[str, Any]:
    """The part of pass_change that does not name the ticket: its tag and what it shows."""
    sending = sends_notification(operation, content)
    return {
        "update_tag": update_tag_at(now),
        "updated_at": now,
        "notification_header": content.header if sending and content else None,
        "notification_body": content.body if sending and content else None,
    }


def sends_notification(operation: Operation, content: Content | None) -> bool:
    """Whether a ticket sets its passes' notification (a Send), or clears it."""
    return operation is Operation.SEND and content is not None


def as_params(change: dict[str, Any]) -> dict[str, Any]:
    """A pass change as the parameters of PASS_CHANGE_PARAMS."""
    return {f"new_{name}": value for name, value in change.items()}


def update_active_passes(
    audience: Any, values: dict[str, Any], *, older_than: int | None = None
) -> Update:
    """Changes the audience's active passes (the inactive ones get nothing), but those that
    a ticket after `older_than` changed already, if given: a broadcast's chunk may reach a
    pass after a later Send did, and the last notification to a pass is the one it shows.

    The update tag is the time's, but above the pass's previous one whatever the clock
    did (store/passes.py next_update_tag): a device that saw a tag sees later changes.
    """
    values = dict(values)
    new_tag = values.pop("update_tag")
    if not isinstance(new_tag, BindParameter):  # a broadcast's value: a 64-bit bind
        new_tag = literal(new_tag, BigInteger)
    tag = case((PassRow.update_tag >= new_tag, PassRow.update_tag + 1), else_=new_tag)
    # A body equal to the value the pass shows now is marked (domain/passkit.py REPEAT_MARK):
    # Wallet alerts only on a changed value. Comparing with the value shown, mark included,
    # makes the next value differ whatever the body; a Delete (NULL) unmarks.
    body = values["notification_body"]
    if not isinstance(body, BindParameter):
        body = literal(body, Text)
    shown = PassRow.notification_body + case((PassRow.notification_marked, REPEAT_MARK), else_="")
    values["notification_marked"] = case((shown == body, true()), else_=false())
    conditions = [audience, PassRow.status == PassStatus.ACTIVE.value]
    if older_than is not None:
        last = PassRow.last_ticket_id
        conditions.append(or_(last.is_(None), last < older_than))
    return update(_passes).where(*conditions).values(update_tag=tag, **values)


def deliveries_of(
    audience: Any, *, ticket_id: Any = None, at: Any = None, by_class: bool = False
) -> Select[Any]:
    """The deliveries of an audience, in one pass over it: project_id, pass_id,
    registration_id, platform, state, reason (with `ticket_id` first and attempts,
    next_attempt_at and updated_at last when given, as DELIVERY_COLUMNS).

    Apple: one pending delivery per active registered device of each active
    pass. Google: one per active pass (waiting for the class message if `by_class`). A
    pass that gets nothing (not active, or an Apple pass without devices) is one skipped
    delivery with a reason.
    """
    active = PassRow.status == PassStatus.ACTIVE.value
    apple = TemplateRow.platform == Platform.APPLE.value
    # Only an active Apple pass is joined to its devices: any other pass stays one row.
    device = and_(
        DeviceRegistrationRow.project_id == PassRow.project_id,
        DeviceRegistrationRow.pass_id == PassRow.id,
        DeviceRegistrationRow.active,
        active,
        apple,
    )
    no_device = and_(apple, DeviceRegistrationRow.id.is_(None))
    skipped = DeliveryState.SKIPPED.value
    waiting = DeliveryState.BY_CLASS if by_class else DeliveryState.PENDING
    columns: list[Any] = [
        PassRow.project_id,
        PassRow.id,
        DeviceRegistrationRow.id,
        TemplateRow.platform,
        case((not_(active), skipped), (no_device, skipped), else_=waiting.value),
        case((not_(active), SKIP_PASS_NOT_ACTIVE), (no_device, SKIP_NO_DEVICES), else_=""),
    ]
    if ticket_id is not None:
        columns = [ticket_id, *columns, literal(0), at, at]
    return (
        select(*columns)
        .select_from(PassRow)
        .join(
            TemplateRow,
            and_(
                TemplateRow.project_id == PassRow.project_id,
                TemplateRow.id == PassRow.template_id,
            ),
        )
        .outerjoin(DeviceRegistrationRow, device)
        .where(audience)
    )


def insert_deliveries(ticket_id: Any, audience: Any, *, by_class: bool = False) -> Insert:
    """One INSERT ... SELECT of a ticket's deliveries; the parameter `at` is the Send's time."""
    at = bindparam("at", type_=DeliveryRow.next_attempt_at.type)
    rows = deliveries_of(audience, ticket_id=ticket_id, at=at, by_class=by_class)
    return insert(_deliveries).from_select(DELIVERY_COLUMNS, rows)
