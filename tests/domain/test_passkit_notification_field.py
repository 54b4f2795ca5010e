"""The notification back field as render_pass_json writes it into pass.json."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime
from typing import Any

from passpush.domain.passkit import (
    NOTIFICATION_FIELD_KEY,
    PASS_JSON,
    REPEAT_MARK,
    PassPackageSource,
    render_pass_json,
)

from apple_passes import pass_document


def rendered_field(*, marked: bool) -> dict[str, Any]:
    source = PassPackageSource(
        project_id="acme",
        pass_id="p1",
        pass_type_identifier="pass.com.example",
        serial_number="SN-1",
        authentication_token="a-token-of-sixteen-or-more",
        notification_header="Offer",
        notification_body="Doors open at six",
        update_tag=1,
        update_time=datetime.now(UTC),
        template_signing=None,
        files={PASS_JSON: json.dumps(pass_document()).encode()},
        notification_marked=marked,
    )
    document = json.loads(render_pass_json(source, "https://passes.example.com/passkit"))
    field: dict[str, Any] = document["storeCard"]["backFields"][0]
    assert field["key"] == NOTIFICATION_FIELD_KEY
    return field


def test_the_change_message_shows_the_new_value() -> None:
    # Without `%@` the lock screen says only that the pass changed, not the message.
    assert "%@" in rendered_field(marked=False)["changeMessage"]


def test_a_marked_notification_differs_only_by_an_invisible_character() -> None:
    plain, marked = rendered_field(marked=False), rendered_field(marked=True)

    assert plain["value"] == "Doors open at six"
    assert marked["value"] == "Doors open at six" + REPEAT_MARK != plain["value"]
    assert unicodedata.category(REPEAT_MARK) == "Cf"  # a format character: nothing to see
    assert marked["changeMessage"] == plain["changeMessage"]
