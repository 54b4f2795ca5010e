"""Checks on what callers send. Each returns field violations; the caller raises."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sized
from datetime import datetime, timedelta

from passpush.domain.errors import FieldViolation, InvalidArgument
from passpush.domain.model import (
    CampaignTarget,
    Content,
    EntityTarget,
    ExternalPassTarget,
    Pass,
    PassTarget,
    Platform,
    SegmentTarget,
    TagTarget,
    Target,
    Template,
    TemplateTarget,
)

HEADER_MAX = 100
BODY_MAX = 500
REQUEST_ID_MAX = 128
TAG_MAX = 128
AUTH_TOKEN_MIN = 16
GOOGLE_OBJECT_TYPES = frozenset(
    {
        "genericObject",
        "loyaltyObject",
        "offerObject",
        "eventTicketObject",
        "flightObject",
        "giftCardObject",
        "transitObject",
    }
)
_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def google_class_type(object_type: str) -> str:
    """The type of the class an object type's objects belong to: offerObject -> offerClass."""
    return object_type.removesuffix("Object") + "Class"


GOOGLE_CLASS_TYPES = frozenset(google_class_type(t) for t in GOOGLE_OBJECT_TYPES)


# Strings: what the databases can store, and how long each may be ------------------
# Every string a caller sends has a maximum, stated in its proto comment and docs/api.md's
# table of limits; most are the width of the column that stores it.
DISPLAY_NAME_MAX = 200  # project, template, segment, campaign, entity and API key names
PASS_TYPE_IDENTIFIER_MAX = 255
GOOGLE_ID_MAX = 255  # google_class_id, google_object_id
SERIAL_NUMBER_MAX = 128
AUTH_TOKEN_MAX = 128
PEM_MAX = 65_536  # each of a template's certificate, key and WWDR certificate
# PostgreSQL text cannot hold U+0000, and a lone surrogate is no UTF-8 at all (protobuf never
# decodes one, but a JSON body's `\ud800` escape does).
_SURROGATE = re.compile("[\ud800-\udfff]")


def unstorable(value: str) -> str:
    """Why the databases cannot store `value`, or "" when they can."""
    if "\x00" in value:
        return "must not contain NUL"
    if not value.isascii() and _SURROGATE.search(value):  # ASCII first: the common case
        return "must be valid Unicode text"
    return ""


def check_text(field: str, value: str, max_chars: int) -> list[FieldViolation]:
    """Free text (a name, an opaque id of another system): storable and not too long."""
    if len(value) > max_chars:
        return [FieldViolation(field, f"must be at most {max_chars} characters")]
    problem = unstorable(value)
    return [FieldViolation(field, problem)] if problem else []


def raise_if_any(violations: Iterable[FieldViolation]) -> None:
    found = list(violations)
    if found:
        raise InvalidArgument(found)


def check_id(field: str, value: str, *, required: bool = True) -> list[FieldViolation]:
    if not value:
        return [FieldViolation(field, "is required")] if required else []
    if not _ID.fullmatch(value):
        return [
            FieldViolation(
                field, "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'"
            )
        ]
    return []


def check_content(content: Content | None, prefix: str = "content") -> list[FieldViolation]:
    if content is None:
        return [FieldViolation(prefix, "is required")]
    found = check_text(f"{prefix}.header", content.header, HEADER_MAX)
    if not content.body.strip():
        found.append(FieldViolation(f"{prefix}.body", "is required"))
    else:
        found += check_text(f"{prefix}.body", content.body, BODY_MAX)
    start, end = content.display_start, content.display_end
    if start and end and end <= start:
        found.append(FieldViolation(f"{prefix}.display_end", "must be after display_start"))
    return found


def check_display_window(
    content: Content, shown_from: datetime, *, when: str, prefix: str = "content"
) -> list[FieldViolation]:
    """A display window must still be open when the message goes (`when` says when that is):
    one already over would only end as a failed delivery."""
    if content.display_end is not None and content.display_end <= shown_from:
        return [FieldViolation(f"{prefix}.display_end", f"must be after {when}")]
    return []


def check_request_id(value: str, field: str = "request_id") -> list[FieldViolation]:
    return check_text(field, value, REQUEST_ID_MAX)


MAX_SCHEDULE_AHEAD = timedelta(days=30)


def check_send_time(send_time: datetime | None, now: datetime) -> list[FieldViolation]:
    """A schedule's time: in the future, and at most 30 days away."""
    if send_time is None:
        return [FieldViolation("send_time", "is required")]
    if send_time <= now:
        return [FieldViolation("send_time", "must be in the future")]
    if send_time > now + MAX_SCHEDULE_AHEAD:
        return [FieldViolation("send_time", "must be at most 30 days from now")]
    return []


def check_target(target: Target | None, prefix: str = "target") -> list[FieldViolation]:
    match target:
        case None:
            return [FieldViolation(prefix, "is required: set one kind of target")]
        case PassTarget(pass_id):
            return check_id(f"{prefix}.pass_id", pass_id)
        case ExternalPassTarget(template_id, external_id):
            return [
                *check_id(f"{prefix}.external_pass.template_id", template_id),
                *check_id(f"{prefix}.external_pass.pass_external_id", external_id),
            ]
        case TemplateTarget(template_id, external_id):
            if template_id:
                return check_id(f"{prefix}.template.template_id", template_id)
            return check_id(f"{prefix}.template.template_external_id", external_id)
        case TagTarget(tag, template_id):
            found = check_tag(f"{prefix}.tag.tag", tag)
            return found + check_id(f"{prefix}.tag.template_id", template_id, required=False)
        case SegmentTarget(project_id, segment_id, template_id):
            return [
                *check_id(f"{prefix}.segment.project_id", project_id),
                *check_id(f"{prefix}.segment.segment_id", segment_id),
                *check_id(f"{prefix}.segment.template_id", template_id, required=False),
            ]
        case CampaignTarget(campaign_id):
            return check_id(f"{prefix}.campaign_id", campaign_id)
        case EntityTarget(entity_id, group_tags):
            found = check_id(f"{prefix}.entity.entity_id", entity_id)
            if too_long := check_entity_group_tags(f"{prefix}.entity.group_tags", group_tags):
                return found + too_long
            for i, tag in enumerate(group_tags):
                found += check_tag(f"{prefix}.entity.group_tags[{i}]", tag)
            return found
    raise AssertionError(f"unknown target {target!r}")  # pragma: no cover


def check_tag(field: str, tag: str) -> list[FieldViolation]:
    if not tag.strip():
        return [FieldViolation(field, "must not be empty")]
    return check_text(field, tag, TAG_MAX)


def check_template(template: Template, prefix: str = "template") -> list[FieldViolation]:
    found = check_id(f"{prefix}.project_id", template.project_id)
    found += check_id(f"{prefix}.external_id", template.external_id, required=False)
    found += check_id(f"{prefix}.entity_id", template.entity_id, required=False)
    found += check_text(f"{prefix}.display_name", template.display_name, DISPLAY_NAME_MAX)
    if template.platform is None:
        found.append(
            FieldViolation(f"{prefix}.platform", "must be PLATFORM_APPLE or PLATFORM_GOOGLE")
        )
    elif template.platform is Platform.APPLE:
        if not template.pass_type_identifier:
            found.append(
                FieldViolation(f"{prefix}.pass_type_identifier", "is required for Apple templates")
            )
        elif len(template.pass_type_identifier) > PASS_TYPE_IDENTIFIER_MAX:
            found.append(
                FieldViolation(
                    f"{prefix}.pass_type_identifier",
                    f"must be at most {PASS_TYPE_IDENTIFIER_MAX} characters",
                )
            )
        elif not re.fullmatch(r"pass(\.[A-Za-z0-9\-]+)+", template.pass_type_identifier):
            found.append(
                FieldViolation(
                    f"{prefix}.pass_type_identifier",
                    "must look like pass.com.example.name",
                )
            )
    elif template.platform is Platform.GOOGLE:
        if not template.google_class_id:
            found.append(
                FieldViolation(f"{prefix}.google_class_id", "is required for Google templates")
            )
        found += check_text(f"{prefix}.google_class_id", template.google_class_id, GOOGLE_ID_MAX)
        if template.google_object_type not in GOOGLE_OBJECT_TYPES:
            found.append(
                FieldViolation(
                    f"{prefix}.google_object_type",
                    "must be one of " + ", ".join(sorted(GOOGLE_OBJECT_TYPES)),
                )
            )
    return found


def check_pass(p: Pass, prefix: str = "pass") -> list[FieldViolation]:
    found = check_id(f"{prefix}.id", p.id, required=False)
    found += check_id(f"{prefix}.template_id", p.template_id)
    found += check_id(f"{prefix}.external_id", p.external_id, required=False)
    found += check_text(f"{prefix}.serial_number", p.serial_number, SERIAL_NUMBER_MAX)
    if p.status is None:
        found.append(
            FieldViolation(f"{prefix}.status", "must be ACTIVE, DRAFT, REVOKED, EXPIRED or REMOVED")
        )
    found += check_authentication_token(f"{prefix}.authentication_token", p.authentication_token)
    found += check_text(f"{prefix}.google_object_id", p.google_object_id, GOOGLE_ID_MAX)
    if too_long := check_pass_tag_lists(p, prefix):
        return found + too_long
    for i, tag in enumerate(p.tags):
        found += check_tag(f"{prefix}.tags[{i}]", tag)
    for i, tag in enumerate(p.group_tags):
        found += check_tag(f"{prefix}.group_tags[{i}]", tag)
    return found


def check_authentication_token(field: str, token: str) -> list[FieldViolation]:
    """A pass's PassKit token (optional: passpush makes one). A device sends it in an HTTP
    header, so it has no whitespace or control characters."""
    if not token:
        return []
    if not AUTH_TOKEN_MIN <= len(token) <= AUTH_TOKEN_MAX:
        return [FieldViolation(field, f"must be {AUTH_TOKEN_MIN}-{AUTH_TOKEN_MAX} characters")]
    if not token.isprintable() or any(c.isspace() for c in token):
        return [FieldViolation(field, "must have no spaces or control characters")]
    return []


def check_display_name(field: str, value: str) -> list[FieldViolation]:
    return check_text(field, value, DISPLAY_NAME_MAX)


def check_signing_pems(
    field: str, certificate_pem: str, private_key_pem: str, wwdr_certificate_pem: str
) -> list[FieldViolation]:
    return [
        *check_text(f"{field}.certificate_pem", certificate_pem, PEM_MAX),
        *check_text(f"{field}.private_key_pem", private_key_pem, PEM_MAX),
        *check_text(f"{field}.wwdr_certificate_pem", wwdr_certificate_pem, PEM_MAX),
    ]


def check_push_token(field: str, token: str) -> list[FieldViolation]:
    # APNs device tokens are hex strings (32 bytes today; Apple says the length may grow).
    if not re.fullmatch(r"[0-9A-Fa-f]{16,400}", token):
        return [FieldViolation(field, "must be the device's APNs token in hex")]
    return []


# List limits --------------------------------------------------------------
# Every list a caller sends has a documented bound, checked before its items (a list over
# it is refused whole, with one violation). The audience lists are bound into SQL as one
# parameter each (store/db.py `one_of_values`), so these bounds keep the work per request
# in reason rather than the statement size.

# An entity target's group tags: a brand with a tag per store or region.
ENTITY_GROUP_TAGS_MAX = 1_000
# A pass's tags, and its group tags.
PASS_TAGS_MAX = 100
PASS_GROUP_TAGS_MAX = 100
# Pass ids per AddCampaignMembers call.
MEMBERS_PER_CALL_MAX = 10_000
# Outcomes in a StreamDeliveryEvents filter, and scopes of an API key (each a small set).
OUTCOMES_MAX = 10
SCOPES_MAX = 20


def check_list_length(field: str, items: Sized, maximum: int, noun: str) -> list[FieldViolation]:
    if len(items) > maximum:
        return [FieldViolation(field, f"must have at most {maximum} {noun} (it has {len(items)})")]
    return []


def check_entity_group_tags(field: str, group_tags: Sized) -> list[FieldViolation]:
    return check_list_length(field, group_tags, ENTITY_GROUP_TAGS_MAX, "group tags")


def check_pass_tag_lists(p: Pass, prefix: str = "pass") -> list[FieldViolation]:
    return [
        *check_list_length(f"{prefix}.tags", p.tags, PASS_TAGS_MAX, "tags"),
        *check_list_length(f"{prefix}.group_tags", p.group_tags, PASS_GROUP_TAGS_MAX, "group tags"),
    ]
