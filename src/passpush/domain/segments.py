"""Segment criteria in Airship's shape: {"tag"}, {"and": [...]}, {"or": [...]}, {"not": {...}}."""

from __future__ import annotations

from dataclasses import dataclass

from passpush.domain.errors import InvalidArgument
from passpush.domain.validation import check_tag

MAX_DEPTH = 10


@dataclass(frozen=True)
class HasTag:
    tag: str


@dataclass(frozen=True)
class AllOf:
    criteria: tuple[Criterion, ...]


@dataclass(frozen=True)
class AnyOf:
    criteria: tuple[Criterion, ...]


@dataclass(frozen=True)
class NoneOf:
    criterion: Criterion


Criterion = HasTag | AllOf | AnyOf | NoneOf


def parse_criteria(raw: object, field: str = "segment.criteria", depth: int = 0) -> Criterion:
    """Parses and validates a criteria document; InvalidArgument names the bad node."""
    if depth > MAX_DEPTH:
        raise InvalidArgument.field(field, f"is nested more than {MAX_DEPTH} deep")
    if not isinstance(raw, dict) or len(raw) != 1:
        raise InvalidArgument.field(
            field, 'must be an object with exactly one of "tag", "and", "or", "not"'
        )
    ((operator, operand),) = raw.items()
    if operator == "tag":
        if not isinstance(operand, str):
            raise InvalidArgument.field(f"{field}.tag", "must be a string")
        violations = check_tag(f"{field}.tag", operand)
        if violations:
            raise InvalidArgument(violations)
        return HasTag(operand)
    if operator in ("and", "or"):
        if not isinstance(operand, list) or not operand:
            raise InvalidArgument.field(f"{field}.{operator}", "must be a non-empty list")
        parts = tuple(
            parse_criteria(item, f"{field}.{operator}[{i}]", depth + 1)
            for i, item in enumerate(operand)
        )
        return AllOf(parts) if operator == "and" else AnyOf(parts)
    if operator == "not":
        return NoneOf(parse_criteria(operand, f"{field}.not", depth + 1))
    raise InvalidArgument.field(field, f'has unknown operator "{operator}"')
