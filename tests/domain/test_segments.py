"""Segment criteria in Airship's shape."""

from __future__ import annotations

import pytest

from passpush.domain.errors import InvalidArgument
from passpush.domain.segments import AllOf, AnyOf, HasTag, NoneOf, parse_criteria


def test_nested_criteria_parse() -> None:
    parsed = parse_criteria({"and": [{"tag": "a"}, {"or": [{"tag": "b"}, {"not": {"tag": "c"}}]}]})
    assert parsed == AllOf((HasTag("a"), AnyOf((HasTag("b"), NoneOf(HasTag("c"))))))


@pytest.mark.parametrize(
    ("criteria", "field"),
    [
        ({}, "segment.criteria"),
        ({"tag": "a", "and": []}, "segment.criteria"),
        ({"xor": []}, "segment.criteria"),
        ({"tag": 3}, "segment.criteria.tag"),
        ({"and": []}, "segment.criteria.and"),
        ({"or": [{"tag": "a"}, {"nope": 1}]}, "segment.criteria.or[1]"),
        ({"not": {"tag": ""}}, "segment.criteria.not.tag"),
    ],
)
def test_bad_criteria_name_the_bad_node(criteria: object, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_criteria(criteria)
    assert [v.field for v in raised.value.violations] == [field]


def test_depth_is_bounded() -> None:
    criteria: dict[str, object] = {"tag": "a"}
    for _ in range(12):
        criteria = {"not": criteria}
    with pytest.raises(InvalidArgument):
        parse_criteria(criteria)
