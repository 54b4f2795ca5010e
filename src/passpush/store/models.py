"""The schema. Migrations in store/migrations are generated from and checked against it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID = String(128)
# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: the same on SQLite and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite inside INSERT ... SELECT copies
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


def table_of(model: type[Base]) -> Table:
    """A model's Core table, for executemany statements that bypass the ORM."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UtcDateTime()}


class ProjectRow(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime]


# Everything a project owns is keyed by (project_id, id): callers choose ids, and one
# project's ids must neither collide with nor reveal another's.
def _project_fk() -> Mapped[str]:
    return mapped_column(ForeignKey("projects.id"), primary_key=True)


class ApiKeyRow(Base):
    """An API key: its public id, and a salted hash of its secret (never the secret)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    scopes: Mapped[list[str]] = mapped_column(JSON)
    salt: Mapped[str] = mapped_column(String(64))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class EntityRow(Base):
    __tablename__ = "entities"

    project_id: Mapped[str] = _project_fk()
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime]


class TemplateRow(Base):
    __tablename__ = "templates"
    __table_args__ = (
        UniqueConstraint("project_id", "external_id"),
        ForeignKeyConstraint(["project_id", "entity_id"], ["entities.project_id", "entities.id"]),
    )

    project_id: Mapped[str] = _project_fk()
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    external_id: Mapped[str | None] = mapped_column(ID)
    platform: Mapped[str] = mapped_column(String(16))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    pass_type_identifier: Mapped[str] = mapped_column(String(255), default="")
    google_class_id: Mapped[str] = mapped_column(String(255), default="")
    google_object_type: Mapped[str] = mapped_column(String(64), default="")
    entity_id: Mapped[str | None] = mapped_column(ID)
    created_at: Mapped[datetime]
    # Apple: the template's own signing material (PEM), else the server's signs its passes.
    apple_certificate_pem: Mapped[str | None] = mapped_column(Text)
    apple_private_key_pem: Mapped[str | None] = mapped_column(Text)
    apple_wwdr_certificate_pem: Mapped[str | None] = mapped_column(Text)
    # Apple: whether template_files holds content its passes share (SetTemplateContent).
    has_content: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Apple: a new random value whenever its signing or shared content changes; a process
    # keeps what the template gives its passes' packages under it (store/passkit.py).
    package_version: Mapped[str | None] = mapped_column(String(32))


class PassRow(Base):
    __tablename__ = "passes"
    __table_args__ = (
        UniqueConstraint("project_id", "template_id", "external_id"),
        Index("ix_passes_project_external", "project_id", "external_id"),
        Index("ix_passes_project_template", "project_id", "template_id"),
        # A device names a pass by its pass type identifier and serial number only.
        Index("ix_passes_serial_number", "serial_number"),
        ForeignKeyConstraint(
            ["project_id", "template_id"], ["templates.project_id", "templates.id"]
        ),
    )

    project_id: Mapped[str] = _project_fk()
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    template_id: Mapped[str] = mapped_column(ID)
    external_id: Mapped[str | None] = mapped_column(ID)
    serial_number: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    authentication_token: Mapped[str] = mapped_column(String(128))
    google_object_id: Mapped[str] = mapped_column(String(255), default="")
    notification_header: Mapped[str | None] = mapped_column(String(100))
    notification_body: Mapped[str | None] = mapped_column(Text)
    notification_ticket_id: Mapped[int | None] = mapped_column(BigInteger)
    # Whether devices get the body with domain/passkit.py's REPEAT_MARK after it: set by a
    # Send whose body is the value the pass showed, so that the value changes and alerts.
    notification_marked: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    # The last ticket (Send or Delete) applied to the pass: a broadcast fanned out in chunks
    # reaches a pass after later tickets may have, and must not undo what they showed.
    last_ticket_id: Mapped[int | None] = mapped_column(BigInteger)
    # Microseconds since the epoch of the last change, and above every earlier tag of the
    # pass: Apple's update tag.
    update_tag: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # Apple: whether the pass has content of its own (pass_own_files: SetPassContent).
    has_content: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Apple: the pass's own values over its pass.json (barcodes, field values, other keys),
    # as JSON; NULL without.
    apple_values: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Apple: its own files as pass_own_files and content_files list them, [name, digest,
    # sha1] each, written with them; NULL without. A device's serials query reads them with
    # the pass for the download after it: the join to those two tables was three quarters
    # of that query's time on PostgreSQL (store/passkit.py).
    own_files: Mapped[list[list[str]] | None] = mapped_column(JSON)


def _pass_fk() -> ForeignKeyConstraint:
    return ForeignKeyConstraint(
        ["project_id", "pass_id"], ["passes.project_id", "passes.id"], ondelete="CASCADE"
    )


class ContentFileRow(Base):
    """One distinct file of Apple pass content (a pass.json, an image, a localization),
    stored once per project however many templates and passes use it. Content-addressed:
    `digest` is the SHA-256 of the bytes; `sha1` is what a pass's manifest.json lists."""

    __tablename__ = "content_files"

    project_id: Mapped[str] = _project_fk()
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha1: Mapped[str] = mapped_column(String(40))
    data: Mapped[bytes] = mapped_column(LargeBinary)


def _content_fk() -> ForeignKeyConstraint:
    return ForeignKeyConstraint(
        ["project_id", "digest"], ["content_files.project_id", "content_files.digest"]
    )


class TemplateFileRow(Base):
    """A file of an Apple template's content, shared by its passes: pass.json (the skeleton)
    and the images, by name."""

    __tablename__ = "template_files"
    __table_args__ = (
        ForeignKeyConstraint(
            ["project_id", "template_id"],
            ["templates.project_id", "templates.id"],
            ondelete="CASCADE",
        ),
        _content_fk(),
        Index("ix_template_files_digest", "project_id", "digest"),
    )

    project_id: Mapped[str] = mapped_column(ID, primary_key=True)
    template_id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))


class PassOwnFileRow(Base):
    """A file of an Apple pass's own content (SetPassContent), over its template's: its
    pass.json replaces the template's skeleton; its other files add to or replace the
    template's of the same name."""

    __tablename__ = "pass_own_files"
    __table_args__ = (
        _pass_fk(),
        _content_fk(),
        Index("ix_pass_own_files_digest", "project_id", "digest"),
    )

    project_id: Mapped[str] = mapped_column(ID, primary_key=True)
    pass_id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))


class PassTagRow(Base):
    __tablename__ = "pass_tags"
    __table_args__ = (Index("ix_pass_tags_tag", "project_id", "tag", "pass_id"), _pass_fk())

    project_id: Mapped[str] = mapped_column(ID, primary_key=True)
    pass_id: Mapped[str] = mapped_column(ID, primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)


class PassGroupTagRow(Base):
    __tablename__ = "pass_group_tags"
    __table_args__ = (
        Index("ix_pass_group_tags_tag", "project_id", "tag", "pass_id"),
        _pass_fk(),
    )

    project_id: Mapped[str] = mapped_column(ID, primary_key=True)
    pass_id: Mapped[str] = mapped_column(ID, primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)


class SegmentRow(Base):
    __tablename__ = "segments"

    project_id: Mapped[str] = _project_fk()
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    criteria: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]


class CampaignRow(Base):
    __tablename__ = "campaigns"

    project_id: Mapped[str] = _project_fk()
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    notification_limit: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]


class CampaignMemberRow(Base):
    __tablename__ = "campaign_members"
    __table_args__ = (
        ForeignKeyConstraint(
            ["project_id", "campaign_id"],
            ["campaigns.project_id", "campaigns.id"],
            ondelete="CASCADE",
        ),
        _pass_fk(),
        Index("ix_campaign_members_pass", "project_id", "pass_id"),
    )

    project_id: Mapped[str] = mapped_column(ID, primary_key=True)
    campaign_id: Mapped[str] = mapped_column(ID, primary_key=True)
    pass_id: Mapped[str] = mapped_column(ID, primary_key=True)


class DeviceRegistrationRow(Base):
    __tablename__ = "device_registrations"
    __table_args__ = (
        UniqueConstraint("project_id", "pass_id", "device_library_identifier"),
        # The PassKit web service lists a device's passes, whatever their project.
        Index("ix_device_registrations_device", "device_library_identifier"),
        _pass_fk(),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(ID)
    pass_id: Mapped[str] = mapped_column(ID)
    device_library_identifier: Mapped[str] = mapped_column(String(255))
    push_token: Mapped[str] = mapped_column(String(400))
    # False once APNs called the token bad; a new registration revives it.
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class TicketRow(Base):
    __tablename__ = "tickets"
    __table_args__ = (
        UniqueConstraint("project_id", "request_id"),
        # A campaign's notifications are counted against its cap.
        Index("ix_tickets_project_campaign", "project_id", "campaign_id"),
        # The broadcasts whose fan-out is under way, found without reading every ticket.
        Index(
            "ix_tickets_fanning_out",
            "id",
            postgresql_where=text("fanout_after IS NOT NULL"),
            sqlite_where=text("fanout_after IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    operation: Mapped[str] = mapped_column(String(16))
    target: Mapped[dict[str, Any]] = mapped_column(JSON)
    content_header: Mapped[str] = mapped_column(String(100), default="")
    content_body: Mapped[str] = mapped_column(Text, default="")
    display_start: Mapped[datetime | None]
    display_end: Mapped[datetime | None]
    state: Mapped[str] = mapped_column(String(24))
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    pending: Mapped[int] = mapped_column(BigInteger, default=0)
    delivered: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    skipped: Mapped[int] = mapped_column(BigInteger, default=0)
    # Of `delivered`: Google messages shown without an alert (the pass's quota was used up).
    delivered_without_alert: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Apple devices that fetched the pass version carrying this ticket's notification (of
    # `delivered`; service/fetches.py), and their push-to-fetch latencies as a histogram
    # (domain/fetches.py): {bucket: count}, NULL before the first fetch.
    fetched: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    fetch_latency: Mapped[dict[str, int] | None] = mapped_column(JSON)
    request_id: Mapped[str | None] = mapped_column(String(128))
    # A digest of the request, so that a reused request_id with another body is refused.
    request_fingerprint: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    # The target's campaign, when it is one (copied out of `target` to count and find).
    campaign_id: Mapped[str | None] = mapped_column(String(128))
    # Set when a scheduled notification made this ticket.
    scheduled_notification_id: Mapped[str | None] = mapped_column(String(64))
    scheduled_send_time: Mapped[datetime | None]
    # A broadcast's fan-out in chunks (outbox/fanout_chunks.py): the last pass id fanned out
    # ("" before the first chunk), NULL once every pass of the audience has its deliveries.
    fanout_after: Mapped[str | None] = mapped_column(ID)


class DeliveryRow(Base):
    """One push to one device (Apple) or one message to one object (Google)."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_ticket_state", "ticket_id", "state"),
        # A claim takes one platform's due deliveries (Google's are paced, Apple's are not),
        # and its ORDER BY (next_attempt_at, id) is an index range read, not a sort of every
        # pending delivery.
        Index("ix_deliveries_due", "state", "platform", "next_attempt_at", "id"),
        # A fetch confirmation names the device's registration and the ticket.
        Index("ix_deliveries_registration_ticket", "registration_id", "ticket_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # No foreign key: a broadcast inserts a million rows at once, and a per-row check of
    # the ticket it was just inserted with cost seconds of it.
    ticket_id: Mapped[int] = mapped_column(BigId)
    project_id: Mapped[str] = mapped_column(ID)
    pass_id: Mapped[str] = mapped_column(ID)
    # No foreign key: a registration APNs called gone is deleted, its deliveries stay.
    registration_id: Mapped[int | None] = mapped_column(BigInteger)
    platform: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(128), default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    # Set by the first claim: transient failures are retried for a budget from there.
    first_attempt_at: Mapped[datetime | None]
    # Apple: when the device fetched the pass version this delivery pushed (at most once).
    # `updated_at` stays the time the push was answered: the latency is measured from it.
    fetched_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class DeliveryEventRow(Base):
    """One delivery outcome, numbered in commit order: what StreamDeliveryEvents resumes on.

    The device is copied in, not referenced: APNs may have had its registration
    deleted since. Kept for the configured retention, then purged.
    """

    __tablename__ = "delivery_events"
    __table_args__ = (
        Index("ix_delivery_events_project_sequence", "project_id", "sequence"),
        Index("ix_delivery_events_ticket_sequence", "ticket_id", "sequence"),
    )

    sequence: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(ID)
    ticket_id: Mapped[int] = mapped_column(BigId)
    pass_id: Mapped[str] = mapped_column(ID)
    device_library_identifier: Mapped[str] = mapped_column(String(255), default="")
    google_object_id: Mapped[str] = mapped_column(String(255), default="")
    platform: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(128), default="")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    # A FETCHED event: microseconds from the push's answer to the device's fetch.
    push_to_fetch_us: Mapped[int | None] = mapped_column(BigInteger)


class ScheduledNotificationRow(Base):
    """A notification waiting for its send time; a scheduler claims it when due."""

    __tablename__ = "scheduled_notifications"
    __table_args__ = (
        UniqueConstraint("project_id", "request_id"),
        Index("ix_scheduled_notifications_due", "state", "send_time"),
        Index("ix_scheduled_notifications_project_campaign", "project_id", "campaign_id"),
    )

    project_id: Mapped[str] = _project_fk()
    # Ordered by creation: a listing is newest first by id.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    target: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The target as canonical JSON, to list the schedules of exactly one target.
    target_key: Mapped[str] = mapped_column(String(1024))
    campaign_id: Mapped[str | None] = mapped_column(String(128))
    content_header: Mapped[str] = mapped_column(String(100), default="")
    content_body: Mapped[str] = mapped_column(Text)
    display_start: Mapped[datetime | None]
    display_end: Mapped[datetime | None]
    send_time: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(16))
    ticket_id: Mapped[int | None] = mapped_column(BigInteger)
    failure_reason: Mapped[str] = mapped_column(String(500), default="")
    request_id: Mapped[str | None] = mapped_column(String(128))
    request_fingerprint: Mapped[str] = mapped_column(String(64), default="")
    # Who is sending it, and until when: a scheduler that dies leaves it to another.
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None]
    # How many times a scheduler took it on: a schedule is given up (FAILED) after a few,
    # whatever kept failing, so that it is never claimed for ever.
    send_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class GoogleMessageRow(Base):
    """A message passpush added (or is adding) to a Google Wallet object, kept for 24 hours.

    Google lets a pass take 3 notifying messages (TEXT_AND_NOTIFY) in 24 hours; this is
    where passpush counts them, in the database so that replicas agree. One row per
    delivery: its retries reuse the decision taken for its first attempt.
    """

    __tablename__ = "google_messages"
    __table_args__ = (Index("ix_google_messages_pass", "project_id", "pass_id", "sent_at"),)

    delivery_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    project_id: Mapped[str] = mapped_column(ID)
    pass_id: Mapped[str] = mapped_column(ID)
    # TEXT_AND_NOTIFY (True) or TEXT (False).
    notifying: Mapped[bool] = mapped_column(Boolean)
    sent_at: Mapped[datetime]


class GoogleRequestTurnRow(Base):
    """The next free turn for a request to the Google Wallet API, per issuer, shared by the
    replicas on one PostgreSQL database (store/request_turns.py): together they stay within
    the rate Google allows an issuer."""

    __tablename__ = "google_request_turns"

    issuer: Mapped[str] = mapped_column(String(255), primary_key=True)
    # Seconds since the epoch, on the database's clock: every replica reads the same one.
    next_turn: Mapped[float] = mapped_column(Float)


class GoogleClassMessageRow(Base):
    """The one message a Send to a whole Google template adds to the template's class (or a
    Delete removes from it), for every pass of the ticket at once.

    The ticket's passes wait as deliveries in state `by_class`; once Google answered, they
    are recorded with that answer a chunk at a time (`outcome`), and then it is `done`.
    """

    __tablename__ = "google_class_messages"
    __table_args__ = (Index("ix_google_class_messages_due", "state", "next_attempt_at"),)

    ticket_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    project_id: Mapped[str] = mapped_column(ID)
    class_type: Mapped[str] = mapped_column(String(64))  # "offerClass", ...
    class_id: Mapped[str] = mapped_column(String(255))
    # "pending" (Google to be asked), "answered" (its deliveries being recorded), "done".
    state: Mapped[str] = mapped_column(String(16))
    # Once answered: the state its deliveries get (pending again for a Delete's per-object
    # removal), why, and whether the message notifies.
    outcome: Mapped[str] = mapped_column(String(16), default="")
    reason: Mapped[str] = mapped_column(String(128), default="")
    notifying: Mapped[bool] = mapped_column(Boolean, default=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    first_attempt_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    updated_at: Mapped[datetime]
