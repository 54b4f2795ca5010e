"""Segment criteria in Airship's shape: {"tag"}, {"and": [...]}, {"or": [...]}, {"not": {...}}."""

from __future__ import annotations

from dataclasses import dataclass

from passpush.domain.errors import InvalidArgument
from passpush.domain.validation import check_tag

MAX_DEPTH = 10
# A segment's size: its tags (leaves), and its operators (and/or/not). The SQL of a segment
# grows with its operators only (store/audience.py binds each operator's tags as one list),
# so a few hundred tags cost what a few do; SQLite's expression depth (1,000) stays far off.
SEGMENT_TAGS_MAX = 500
SEGMENT_OPERATORS_MAX = 50


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


def parse_criteria(raw: object, field: str = "segment.criteria") -> Criterion:
    """Parses and validates a criteria document; InvalidArgument names the bad node, or the
    whole document when it is over a size limit."""
    size = _Size()
    criterion = _parse(raw, field, 0, size)
    if size.tags > SEGMENT_TAGS_MAX:
        raise InvalidArgument.field(field, f"must have at most {SEGMENT_TAGS_MAX} tags")
    if size.operators > SEGMENT_OPERATORS_MAX:
        raise InvalidArgument.field(
            field, f"must have at most {SEGMENT_OPERATORS_MAX} operators (and, or, not)"
        )
    return criterion


@dataclass
class _Size:
    tags: int = 0
    operators: int = 0

    def over(self) -> bool:
        return self.tags > SEGMENT_TAGS_MAX or self.operators > SEGMENT_OPERATORS_MAX


def _parse(raw: object, field: str, depth: int, size: _Size) -> Criterion:
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
        size.tags += 1
        return HasTag(operand)
    if operator not in ("and", "or", "not"):
        raise InvalidArgument.field(field, f'has unknown operator "{operator}"')
    size.operators += 1
    if operator == "not":
        return NoneOf(_parse(operand, f"{field}.not", depth + 1, size))
    if not isinstance(operand, list) or not operand:
        raise InvalidArgument.field(f"{field}.{operator}", "must be a non-empty list")
    parts = []
    for i, item in enumerate(operand):
        if size.over():  # the rest is not worth reading: the whole is refused
            break
        parts.append(_parse(item, f"{field}.{operator}[{i}]", depth + 1, size))
    return AllOf(tuple(parts)) if operator == "and" else AnyOf(tuple(parts))
