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
    found = []
    if len(content.header) > HEADER_MAX:
        found.append(FieldViolation(f"{prefix}.header", f"must be at most {HEADER_MAX} characters"))
    if not content.body.strip():
        found.append(FieldViolation(f"{prefix}.body", "is required"))
    elif len(content.body) > BODY_MAX:
        found.append(FieldViolation(f"{prefix}.body", f"must be at most {BODY_MAX} characters"))
    start, end = content.display_start, content.display_end
    if start and end and end <= start:
        found.append(FieldViolation(f"{prefix}.display_end", "must be after display_start"))
    return found


def check_request_id(value: str, field: str = "request_id") -> list[FieldViolation]:
    if len(value) > REQUEST_ID_MAX:
        return [FieldViolation(field, f"must be at most {REQUEST_ID_MAX} characters")]
    return []


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
    if len(tag) > TAG_MAX:
        return [FieldViolation(field, f"must be at most {TAG_MAX} characters")]
    return []


def check_template(template: Template, prefix: str = "template") -> list[FieldViolation]:
    found = check_id(f"{prefix}.project_id", template.project_id)
    found += check_id(f"{prefix}.external_id", template.external_id, required=False)
    found += check_id(f"{prefix}.entity_id", template.entity_id, required=False)
    if template.platform is None:
        found.append(
            FieldViolation(f"{prefix}.platform", "is required: PLATFORM_APPLE or PLATFORM_GOOGLE")
        )
    elif template.platform is Platform.APPLE:
        if not template.pass_type_identifier:
            found.append(
                FieldViolation(f"{prefix}.pass_type_identifier", "is required for Apple templates")
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
    if len(p.serial_number) > 128:
        found.append(FieldViolation(f"{prefix}.serial_number", "must be at most 128 characters"))
    if p.authentication_token and len(p.authentication_token) < AUTH_TOKEN_MIN:
        found.append(
            FieldViolation(
                f"{prefix}.authentication_token", f"must be at least {AUTH_TOKEN_MIN} characters"
            )
        )
    if too_long := check_pass_tag_lists(p, prefix):
        return found + too_long
    for i, tag in enumerate(p.tags):
        found += check_tag(f"{prefix}.tags[{i}]", tag)
    for i, tag in enumerate(p.group_tags):
        found += check_tag(f"{prefix}.group_tags[{i}]", tag)
    return found


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
