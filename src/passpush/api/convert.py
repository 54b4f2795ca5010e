"""Proto messages to domain values and back. No rules here: only translation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from passpush.domain import model
from passpush.domain.errors import InvalidArgument
from passpush.domain.signing import AppleSigningPem
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import passes_pb2 as ppb

_PLATFORMS = {ppb.PLATFORM_APPLE: model.Platform.APPLE, ppb.PLATFORM_GOOGLE: model.Platform.GOOGLE}
_PASS_STATUSES = {
    ppb.PASS_STATUS_UNSPECIFIED: model.PassStatus.ACTIVE,
    ppb.PASS_STATUS_ACTIVE: model.PassStatus.ACTIVE,
    ppb.PASS_STATUS_DRAFT: model.PassStatus.DRAFT,
    ppb.PASS_STATUS_REVOKED: model.PassStatus.REVOKED,
    ppb.PASS_STATUS_EXPIRED: model.PassStatus.EXPIRED,
    ppb.PASS_STATUS_REMOVED: model.PassStatus.REMOVED,
}
_TICKET_STATES = {
    model.TicketState.PENDING: npb.TICKET_STATE_PENDING,
    model.TicketState.RUNNING: npb.TICKET_STATE_RUNNING,
    model.TicketState.SUCCEEDED: npb.TICKET_STATE_SUCCEEDED,
    model.TicketState.PARTIALLY_FAILED: npb.TICKET_STATE_PARTIALLY_FAILED,
    model.TicketState.FAILED: npb.TICKET_STATE_FAILED,
    model.TicketState.CANCELLED: npb.TICKET_STATE_CANCELLED,
}
_OPERATIONS = {
    model.Operation.SEND: npb.OPERATION_SEND,
    model.Operation.DELETE: npb.OPERATION_DELETE,
}
_OUTCOMES = {
    model.DeliveryOutcome.DELIVERED: npb.DELIVERY_OUTCOME_DELIVERED,
    model.DeliveryOutcome.DELIVERED_WITHOUT_ALERT: npb.DELIVERY_OUTCOME_DELIVERED_WITHOUT_ALERT,
    model.DeliveryOutcome.FAILED: npb.DELIVERY_OUTCOME_FAILED,
    model.DeliveryOutcome.SKIPPED: npb.DELIVERY_OUTCOME_SKIPPED,
    model.DeliveryOutcome.RETRYING: npb.DELIVERY_OUTCOME_RETRYING,
    model.DeliveryOutcome.FETCHED: npb.DELIVERY_OUTCOME_FETCHED,
}
_OUTCOMES_FROM_PROTO: dict[int, model.DeliveryOutcome] = {
    value: outcome for outcome, value in _OUTCOMES.items()
}
_PLATFORMS_TO_PROTO = {platform: value for value, platform in _PLATFORMS.items()}
_SCHEDULE_STATES = {
    model.ScheduleState.PENDING: npb.SCHEDULED_NOTIFICATION_STATE_PENDING,
    model.ScheduleState.PROCESSING: npb.SCHEDULED_NOTIFICATION_STATE_PROCESSING,
    model.ScheduleState.SENT: npb.SCHEDULED_NOTIFICATION_STATE_SENT,
    model.ScheduleState.CANCELLED: npb.SCHEDULED_NOTIFICATION_STATE_CANCELLED,
    model.ScheduleState.FAILED: npb.SCHEDULED_NOTIFICATION_STATE_FAILED,
}
_SCHEDULE_STATES_FROM_PROTO: dict[int, model.ScheduleState] = {
    value: state for state, value in _SCHEDULE_STATES.items()
}


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


# What google.protobuf.Timestamp can hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_TIMESTAMP_SECONDS = range(-62_135_596_800, 253_402_300_800)
_NANOS = range(1_000_000_000)


def datetime_of(message: object, field: str, path: str = "") -> datetime | None:
    """The timestamp `field` of `message`; one out of Timestamp's range is the caller's
    mistake, named by `path` (the field's path in the request)."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    ts: timestamp_pb2.Timestamp = getattr(message, field)
    if ts.seconds not in _TIMESTAMP_SECONDS or ts.nanos not in _NANOS:
        raise InvalidArgument.field(
            path or field,
            "must be a timestamp from 0001-01-01 to 9999-12-31 (nanos 0 to 999,999,999)",
        )
    return ts.ToDatetime(tzinfo=UTC)


# Targets and content ------------------------------------------------------
def target_from_proto(message: npb.Target, present: bool = True) -> model.Target | None:
    kind = message.WhichOneof("target") if present else None
    match kind:
        case "pass_id":
            return model.PassTarget(message.pass_id)
        case "external_pass":
            ref = message.external_pass
            return model.ExternalPassTarget(ref.template_id, ref.pass_external_id)
        case "template":
            return model.TemplateTarget(
                message.template.template_id, message.template.template_external_id
            )
        case "tag":
            return model.TagTarget(message.tag.tag, message.tag.template_id)
        case "segment":
            s = message.segment
            return model.SegmentTarget(s.project_id, s.segment_id, s.template_id)
        case "campaign_id":
            return model.CampaignTarget(message.campaign_id)
        case "entity":
            return model.EntityTarget(message.entity.entity_id, tuple(message.entity.group_tags))
    return None


def target_to_proto(target: model.Target) -> npb.Target:
    match target:
        case model.PassTarget(pass_id):
            return npb.Target(pass_id=pass_id)
        case model.ExternalPassTarget(template_id, external_id):
            return npb.Target(
                external_pass=npb.ExternalPass(
                    template_id=template_id, pass_external_id=external_id
                )
            )
        case model.TemplateTarget(template_id, external_id):
            ref = (
                npb.TemplateRef(template_id=template_id)
                if template_id
                else npb.TemplateRef(template_external_id=external_id)
            )
            return npb.Target(template=ref)
        case model.TagTarget(tag, template_id):
            return npb.Target(tag=npb.TagRef(tag=tag, template_id=template_id))
        case model.SegmentTarget(project_id, segment_id, template_id):
            return npb.Target(
                segment=npb.SegmentRef(
                    project_id=project_id, segment_id=segment_id, template_id=template_id
                )
            )
        case model.CampaignTarget(campaign_id):
            return npb.Target(campaign_id=campaign_id)
        case model.EntityTarget(entity_id, group_tags):
            return npb.Target(entity=npb.EntityRef(entity_id=entity_id, group_tags=group_tags))
    raise AssertionError(f"unknown target {target!r}")  # pragma: no cover


def content_from_proto(message: npb.Content, present: bool = True) -> model.Content | None:
    if not present:
        return None
    return model.Content(
        header=message.header,
        body=message.body,
        display_start=datetime_of(message, "display_start", "content.display_start"),
        display_end=datetime_of(message, "display_end", "content.display_end"),
    )


def content_to_proto(content: model.Content) -> npb.Content:
    return npb.Content(
        header=content.header,
        body=content.body,
        display_start=timestamp(content.display_start),
        display_end=timestamp(content.display_end),
    )


def ticket_to_proto(ticket: model.Ticket) -> npb.Ticket:
    c = ticket.counts
    return npb.Ticket(
        id=ticket.id,
        operation=_OPERATIONS[ticket.operation],
        target=target_to_proto(ticket.target),
        content=content_to_proto(ticket.content) if ticket.content else None,
        state=_TICKET_STATES[ticket.state],
        counts=npb.DeliveryCounts(
            total=c.total,
            pending=c.pending,
            delivered=c.delivered,
            failed=c.failed,
            skipped=c.skipped,
            delivered_without_alert=c.delivered_without_alert,
            fetched=c.fetched,
        ),
        create_time=timestamp(ticket.create_time),
        update_time=timestamp(ticket.update_time),
        complete_time=timestamp(ticket.complete_time),
        errors=[npb.DeliveryError(reason=r, count=n) for r, n in ticket.errors],
        request_id=ticket.request_id,
        project_id=ticket.project_id,
        scheduled_notification_id=ticket.scheduled_notification_id,
        late_by=duration(ticket.late_by),
        push_to_fetch_p50=duration(ticket.push_to_fetch_p50),
        push_to_fetch_p95=duration(ticket.push_to_fetch_p95),
    )


def duration(value: timedelta | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    d = duration_pb2.Duration()
    d.FromTimedelta(max(value, timedelta(0)))
    return d


def schedule_state_from_proto(value: int) -> model.ScheduleState | None:
    """None for UNSPECIFIED (every state) or a number this release does not know."""
    return _SCHEDULE_STATES_FROM_PROTO.get(value)


def scheduled_to_proto(s: model.ScheduledNotification) -> npb.ScheduledNotification:
    return npb.ScheduledNotification(
        id=s.id,
        target=target_to_proto(s.target),
        content=content_to_proto(s.content),
        send_time=timestamp(s.send_time),
        state=_SCHEDULE_STATES[s.state],
        ticket_id=s.ticket_id,
        failure_reason=s.failure_reason,
        create_time=timestamp(s.create_time),
        update_time=timestamp(s.update_time),
        request_id=s.request_id,
    )


def outcome_from_proto(value: int) -> model.DeliveryOutcome | None:
    """None for UNSPECIFIED or a number this release does not know."""
    return _OUTCOMES_FROM_PROTO.get(value)


def event_to_proto(event: model.DeliveryEvent) -> npb.DeliveryEvent:
    return npb.DeliveryEvent(
        sequence=event.sequence,
        ticket_id=event.ticket_id,
        pass_id=event.pass_id,
        device_library_identifier=event.device_library_identifier,
        google_object_id=event.google_object_id,
        platform=_PLATFORMS_TO_PROTO[event.platform],
        outcome=_OUTCOMES[event.outcome],
        reason=event.reason,
        attempt=event.attempt,
        event_time=timestamp(event.time),
        push_to_fetch=duration(event.push_to_fetch),
    )


# Pass-side resources ------------------------------------------------------
def project_to_proto(project: model.Project) -> ppb.Project:
    return ppb.Project(
        id=project.id,
        display_name=project.display_name,
        create_time=timestamp(project.create_time),
    )


def template_from_proto(template_id: str, message: ppb.Template) -> model.Template:
    return model.Template(
        id=template_id,
        project_id=message.project_id,
        platform=_PLATFORMS.get(message.platform),
        external_id=message.external_id,
        display_name=message.display_name,
        pass_type_identifier=message.pass_type_identifier,
        google_class_id=message.google_class_id,
        google_object_type=message.google_object_type,
        entity_id=message.entity_id,
        apple_signing=(
            apple_signing_from_proto(message.apple_signing)
            if message.HasField("apple_signing")
            else None
        ),
    )


def apple_signing_from_proto(message: ppb.AppleSigning) -> AppleSigningPem:
    return AppleSigningPem(
        certificate_pem=message.certificate_pem,
        private_key_pem=message.private_key_pem,
        wwdr_certificate_pem=message.wwdr_certificate_pem,
    )


def template_to_proto(template: model.Template) -> ppb.Template:
    platform = next(k for k, v in _PLATFORMS.items() if v is template.platform)
    return ppb.Template(
        id=template.id,
        project_id=template.project_id,
        external_id=template.external_id,
        platform=platform,
        pass_type_identifier=template.pass_type_identifier,
        google_class_id=template.google_class_id,
        google_object_type=template.google_object_type,
        entity_id=template.entity_id,
        display_name=template.display_name,
        create_time=timestamp(template.create_time),
        apple_signing_expire_time=timestamp(template.apple_signing_expire_time),
    )


def pass_from_proto(message: ppb.Pass) -> model.Pass:
    return model.Pass(
        id=message.id,
        template_id=message.template_id,
        external_id=message.external_id,
        serial_number=message.serial_number,
        status=_PASS_STATUSES.get(message.status),
        tags=tuple(message.tags),
        group_tags=tuple(message.group_tags),
        google_object_id=message.google_object_id,
        authentication_token=message.authentication_token,
        apple_values=(
            apple_values_from_proto(message.apple_values)
            if message.HasField("apple_values")
            else None
        ),
    )


_BARCODE_FORMATS = {
    ppb.APPLE_BARCODE_FORMAT_QR: "PKBarcodeFormatQR",
    ppb.APPLE_BARCODE_FORMAT_PDF417: "PKBarcodeFormatPDF417",
    ppb.APPLE_BARCODE_FORMAT_AZTEC: "PKBarcodeFormatAztec",
    ppb.APPLE_BARCODE_FORMAT_CODE128: "PKBarcodeFormatCode128",
}


def apple_values_from_proto(message: ppb.ApplePassValues) -> model.PassValues:
    """In pass.json's own shape; a format this server does not know is left empty, which
    validation refuses."""
    barcodes = []
    for barcode in message.barcodes:
        entry = {
            "format": _BARCODE_FORMATS.get(barcode.format, ""),
            "message": barcode.message,
            "messageEncoding": barcode.message_encoding or "iso-8859-1",
        }
        if barcode.alt_text:
            entry["altText"] = barcode.alt_text
        barcodes.append(entry)
    return model.PassValues(
        barcodes=tuple(barcodes),
        field_values={
            key: json_format.MessageToDict(value) for key, value in message.field_values.items()
        },
        keys=json_format.MessageToDict(message.pass_json),
    )


def apple_values_to_proto(values: model.PassValues) -> ppb.ApplePassValues:
    formats = {v: k for k, v in _BARCODE_FORMATS.items()}
    message = ppb.ApplePassValues(
        barcodes=[
            ppb.AppleBarcode(
                format=formats.get(b.get("format", ""), ppb.APPLE_BARCODE_FORMAT_UNSPECIFIED),
                message=b.get("message", ""),
                message_encoding=b.get("messageEncoding", ""),
                alt_text=b.get("altText", ""),
            )
            for b in values.barcodes
        ],
        pass_json=json_format.ParseDict(values.keys, struct_pb2.Struct()),
    )
    for key, value in values.field_values.items():
        json_format.ParseDict(value, message.field_values[key])
    return message


def pass_to_proto(p: model.Pass) -> ppb.Pass:
    status = next(k for k, v in _PASS_STATUSES.items() if v is p.status and k)
    notification = None
    if p.notification_body is not None:
        notification = ppb.PassNotification(
            header=p.notification_header or "",
            body=p.notification_body,
            ticket_id=p.notification_ticket_id or 0,
        )
    return ppb.Pass(
        id=p.id,
        template_id=p.template_id,
        external_id=p.external_id,
        serial_number=p.serial_number,
        status=status,
        tags=p.tags,
        group_tags=p.group_tags,
        google_object_id=p.google_object_id,
        notification=notification,
        update_tag=p.update_tag,
        create_time=timestamp(p.create_time),
        update_time=timestamp(p.update_time),
        has_content=p.has_content,
        apple_values=apple_values_to_proto(p.apple_values) if p.apple_values else None,
    )


def segment_from_proto(segment_id: str, message: ppb.Segment) -> model.Segment:
    return model.Segment(
        id=segment_id,
        project_id=message.project_id,
        display_name=message.display_name,
        criteria=json_format.MessageToDict(message.criteria),
    )


def segment_to_proto(segment: model.Segment) -> ppb.Segment:
    criteria = json_format.ParseDict(segment.criteria, struct_pb2.Struct())
    return ppb.Segment(
        id=segment.id,
        project_id=segment.project_id,
        display_name=segment.display_name,
        criteria=criteria,
        create_time=timestamp(segment.create_time),
    )


def campaign_from_proto(campaign_id: str, message: ppb.Campaign) -> model.Campaign:
    return model.Campaign(
        id=campaign_id,
        project_id=message.project_id,
        name=message.name,
        notification_limit=message.notification_limit,
    )


def campaign_to_proto(campaign: model.Campaign) -> ppb.Campaign:
    return ppb.Campaign(
        id=campaign.id,
        project_id=campaign.project_id,
        name=campaign.name,
        notification_limit=campaign.notification_limit,
        member_count=campaign.member_count,
        create_time=timestamp(campaign.create_time),
    )


def entity_to_proto(entity: model.Entity) -> ppb.Entity:
    return ppb.Entity(
        id=entity.id,
        project_id=entity.project_id,
        name=entity.name,
        create_time=timestamp(entity.create_time),
    )


def registration_to_proto(registration: model.DeviceRegistration) -> ppb.DeviceRegistration:
    return ppb.DeviceRegistration(
        pass_id=registration.pass_id,
        device_library_identifier=registration.device_library_identifier,
        create_time=timestamp(registration.create_time),
    )
