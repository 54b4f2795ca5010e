"""The values passpush works with: states, targets, content and resources."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from passpush.domain.signing import AppleSigningPem


class Platform(enum.StrEnum):
    APPLE = "apple"
    GOOGLE = "google"


class PassStatus(enum.StrEnum):
    ACTIVE = "active"
    DRAFT = "draft"
    REVOKED = "revoked"
    EXPIRED = "expired"
    REMOVED = "removed"


class Operation(enum.StrEnum):
    SEND = "send"
    DELETE = "delete"


class TicketState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIALLY_FAILED = "partially_failed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self not in (TicketState.PENDING, TicketState.RUNNING)


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    # Google: the message is on the pass, shown without an alert (the pass had its 3
    # notifying messages of the last 24 h). Counted as delivered too.
    DELIVERED_WITHOUT_ALERT = "delivered_silent"
    FAILED = "failed"
    SKIPPED = "skipped"
    # Google: one of the passes a class message reaches (a Send to a whole Google template),
    # waiting for that one message to be added to the class; never claimed on its own.
    BY_CLASS = "by_class"

    @property
    def is_delivered(self) -> bool:
        return self in (DeliveryState.DELIVERED, DeliveryState.DELIVERED_WITHOUT_ALERT)


class DeliveryOutcome(enum.StrEnum):
    """What one attempt (or the decision not to attempt) came to: a delivery event."""

    DELIVERED = "delivered"
    DELIVERED_WITHOUT_ALERT = "delivered_silent"  # the value of its DeliveryState
    FAILED = "failed"
    SKIPPED = "skipped"
    RETRYING = "retrying"
    # Apple: the device fetched the pass version that the delivery pushed.
    FETCHED = "fetched"


def outcome_of(state: DeliveryState) -> DeliveryOutcome:
    """The event a delivery's new state makes: still PENDING after an attempt is a retry."""
    return {
        DeliveryState.DELIVERED: DeliveryOutcome.DELIVERED,
        DeliveryState.DELIVERED_WITHOUT_ALERT: DeliveryOutcome.DELIVERED_WITHOUT_ALERT,
        DeliveryState.FAILED: DeliveryOutcome.FAILED,
        DeliveryState.SKIPPED: DeliveryOutcome.SKIPPED,
        DeliveryState.PENDING: DeliveryOutcome.RETRYING,
    }[state]


def terminal_state(delivered: int, failed: int) -> TicketState:
    """The state of a ticket whose deliveries are all done.

    Skipped deliveries are not failures: a ticket that only skipped succeeded.
    """
    if failed == 0:
        return TicketState.SUCCEEDED
    if delivered == 0:
        return TicketState.FAILED
    return TicketState.PARTIALLY_FAILED


# Why a delivery was skipped rather than attempted.
SKIP_PASS_NOT_ACTIVE = "PassNotActive"
SKIP_NO_DEVICES = "NoRegisteredDevices"
# Why a Google message went without an alert: passpush counted the pass's 3 notifying
# messages of the last 24 h already, or Google refused a fourth.
NO_ALERT_PASS_QUOTA = "NotificationQuotaReached"
NO_ALERT_GOOGLE_QUOTA = "GoogleNotificationQuotaExceeded"
# Why a pass a class message was to reach failed: Google has no such class.
GOOGLE_CLASS_NOT_FOUND = "GoogleClassNotFound"
# Google's limit: notifying (TEXT_AND_NOTIFY) messages per pass in a sliding window.
GOOGLE_NOTIFYING_MESSAGES_PER_WINDOW = 3
GOOGLE_NOTIFYING_WINDOW = timedelta(hours=24)


# Targets: one class per kind of the proto's Target oneof.
@dataclass(frozen=True)
class PassTarget:
    pass_id: str


@dataclass(frozen=True)
class ExternalPassTarget:
    template_id: str
    pass_external_id: str


@dataclass(frozen=True)
class TemplateTarget:
    """A template by id, or (when template_id is empty) by its external id."""

    template_id: str = ""
    template_external_id: str = ""


@dataclass(frozen=True)
class GoogleClass:
    """A Google Wallet class: its passes' objects all show the messages added to it."""

    class_type: str  # "offerClass", ...
    class_id: str  # "issuerId.suffix"


@dataclass(frozen=True)
class TagTarget:
    tag: str
    template_id: str = ""


@dataclass(frozen=True)
class SegmentTarget:
    project_id: str
    segment_id: str
    template_id: str = ""


@dataclass(frozen=True)
class CampaignTarget:
    campaign_id: str


@dataclass(frozen=True)
class EntityTarget:
    entity_id: str
    group_tags: tuple[str, ...] = ()


Target = (
    PassTarget
    | ExternalPassTarget
    | TemplateTarget
    | TagTarget
    | SegmentTarget
    | CampaignTarget
    | EntityTarget
)


@dataclass(frozen=True)
class Content:
    header: str
    body: str
    display_start: datetime | None = None
    display_end: datetime | None = None


@dataclass(frozen=True)
class DeliveryCounts:
    total: int = 0
    pending: int = 0
    delivered: int = 0
    failed: int = 0
    skipped: int = 0
    # Of `delivered`: Google messages shown without an alert (the pass's quota was used up).
    delivered_without_alert: int = 0
    # Of `delivered`: Apple devices that then fetched the pass version with the notification.
    fetched: int = 0


@dataclass(frozen=True)
class Ticket:
    id: int
    project_id: str
    operation: Operation
    target: Target
    content: Content | None
    state: TicketState
    counts: DeliveryCounts
    request_id: str
    create_time: datetime
    update_time: datetime
    complete_time: datetime | None
    errors: list[tuple[str, int]] = field(default_factory=list)
    # Set when a scheduled notification made this ticket: which, and how late it went out.
    scheduled_notification_id: str = ""
    late_by: timedelta | None = None
    # A broadcast whose deliveries are still being written, a chunk of passes at a time.
    fanning_out: bool = False
    # From the pushes' answers to the devices' fetches: None until a device fetched.
    push_to_fetch_p50: timedelta | None = None
    push_to_fetch_p95: timedelta | None = None


class ScheduleState(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    SENT = "sent"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True)
class ScheduledNotification:
    id: str
    project_id: str
    target: Target
    content: Content
    send_time: datetime
    state: ScheduleState
    ticket_id: int  # 0 until SENT
    failure_reason: str
    request_id: str
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class DeliveryEvent:
    """One delivery's outcome, numbered in the order it was recorded."""

    sequence: int
    ticket_id: int
    pass_id: str
    device_library_identifier: str  # Apple
    google_object_id: str  # Google
    platform: Platform
    outcome: DeliveryOutcome
    reason: str
    attempt: int  # from 1; 0 for a skipped delivery, never attempted
    time: datetime
    # FETCHED: from the push's answer to the device's fetch.
    push_to_fetch: timedelta | None = None


@dataclass(frozen=True)
class Project:
    id: str
    display_name: str
    create_time: datetime


@dataclass(frozen=True)
class Template:
    id: str
    project_id: str
    platform: Platform | None  # None only in a request, where validation refuses it
    external_id: str = ""
    display_name: str = ""
    pass_type_identifier: str = ""
    google_class_id: str = ""
    google_object_type: str = ""
    entity_id: str = ""
    create_time: datetime | None = None
    # Apple: the template's own signing material (input, and internal: never returned),
    # and when its certificate expires (output).
    apple_signing: AppleSigningPem | None = None
    apple_signing_expire_time: datetime | None = None


@dataclass(frozen=True)
class PassValues:
    """A pass's own values over its pass.json: barcodes (replacing the document's),
    values of its fields by key, and other top-level keys."""

    barcodes: tuple[dict[str, str], ...] = ()
    field_values: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "barcodes": list(self.barcodes),
            "fieldValues": self.field_values,
            "keys": self.keys,
        }

    @classmethod
    def from_json(cls, stored: Mapping[str, Any] | None) -> PassValues:
        stored = stored or {}
        return cls(
            tuple(stored.get("barcodes", ())),
            dict(stored.get("fieldValues", {})),
            dict(stored.get("keys", {})),
        )

    def __bool__(self) -> bool:
        return bool(self.barcodes or self.field_values or self.keys)


@dataclass(frozen=True)
class Pass:
    """A pass as the caller gives it (upsert) or reads it back."""

    id: str
    template_id: str
    external_id: str = ""
    serial_number: str = ""
    # None only in a request: a status this server does not know, which validation refuses.
    status: PassStatus | None = PassStatus.ACTIVE
    tags: tuple[str, ...] = ()
    group_tags: tuple[str, ...] = ()
    google_object_id: str = ""
    authentication_token: str = ""
    notification_header: str | None = None
    notification_body: str | None = None
    notification_ticket_id: int | None = None
    update_tag: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None
    # Apple: it has content, its own (SetPassContent) or its template's (SetTemplateContent).
    has_content: bool = False
    # Apple: its own values over its pass.json; None in a request leaves them as they are.
    apple_values: PassValues | None = None


@dataclass(frozen=True)
class Segment:
    id: str
    project_id: str
    display_name: str
    criteria: dict[str, object]
    create_time: datetime | None = None


@dataclass(frozen=True)
class Campaign:
    id: str
    project_id: str
    name: str
    notification_limit: int
    member_count: int = 0
    create_time: datetime | None = None


@dataclass(frozen=True)
class Entity:
    id: str
    project_id: str
    name: str
    create_time: datetime | None = None


@dataclass(frozen=True)
class DeviceRegistration:
    pass_id: str
    device_library_identifier: str
    create_time: datetime


_TARGET_KINDS: dict[str, type[Target]] = {
    "pass": PassTarget,
    "external_pass": ExternalPassTarget,
    "template": TemplateTarget,
    "tag": TagTarget,
    "segment": SegmentTarget,
    "campaign": CampaignTarget,
    "entity": EntityTarget,
}


def target_to_dict(target: Target) -> dict[str, object]:
    """A JSON-ready form of a target, for storing it with its ticket."""
    kind = next(k for k, cls in _TARGET_KINDS.items() if isinstance(target, cls))
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(target).items()}
    return {"kind": kind, **fields}


def target_from_dict(data: dict[str, object]) -> Target:
    fields = dict(data)
    cls = _TARGET_KINDS[str(fields.pop("kind"))]
    if cls is EntityTarget:
        fields["group_tags"] = tuple(fields.get("group_tags") or ())  # type: ignore[arg-type]
    return cls(**fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ImportedPass:
    """One pass of an import (ImportPasses), with the devices to register for it."""

    index: int  # its place in the stream, for the failures report
    pass_: Pass
    devices: tuple[tuple[str, str], ...] = ()  # (device library identifier, push token)
