"""What a process keeps of a serials query for the downloads after it: each listed pass
once, for its own token, for a few seconds, a bounded number of them."""

from __future__ import annotations

from datetime import UTC, datetime

from passpush.service.listed_passes import ListedPasses
from passpush.store.passkit import NamedPass, PassPackageState

TYPE = "pass.com.example.listed"


def state(
    serial: str, token: str = "token-of-sixteen-chars", project: str = "acme"
) -> PassPackageState:
    named = NamedPass(project, f"id-{serial}", token, 7, datetime(2026, 12, 4, tzinfo=UTC), True)
    return PassPackageState(
        named=named,
        template_id="loyalty",
        template_version="v1",
        own_content=False,
        pass_type_identifier=TYPE,
        serial_number=serial,
        notification_header=None,
        notification_body=None,
        notification_marked=False,
        notification_ticket_id=None,
        stored_own_files=None,
        stored_values=None,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_listed_pass_serves_one_download_with_its_own_token() -> None:
    listed = ListedPasses()
    listed.keep(TYPE, [state("s1"), state("s2")])

    wrong = listed.take(TYPE, "s1", b"another-token-of-16-chars")
    after_wrong = listed.take(TYPE, "s1", b"token-of-sixteen-chars")
    first = listed.take(TYPE, "s2", b"token-of-sixteen-chars")
    again = listed.take(TYPE, "s2", b"token-of-sixteen-chars")

    # A wrong token takes the entry too: the download then reads and refuses it.
    assert (wrong, after_wrong) == (None, None)
    assert first is not None and first.serial_number == "s2"
    assert again is None
    assert listed.take("pass.com.example.other", "s1", b"token-of-sixteen-chars") is None


def test_projects_sharing_a_pass_type_each_keep_their_pass() -> None:
    listed = ListedPasses()
    listed.keep(
        TYPE, [state("s1", "token-of-project-a", "a"), state("s1", "token-of-project-b", "b")]
    )

    found = listed.take(TYPE, "s1", b"token-of-project-b")

    assert found is not None and found.named.project_id == "b"


def test_listed_passes_leave_after_the_ttl_and_beyond_the_bound_oldest_first() -> None:
    clock = Clock()
    listed = ListedPasses(max_passes=3, ttl_seconds=10, clock=clock)
    listed.keep(TYPE, [state("old")])
    clock.now += 9.9
    listed.keep(TYPE, [state("a"), state("b")])
    kept_before_expiry = len(listed)
    clock.now += 0.2
    expired = listed.take(TYPE, "old", b"token-of-sixteen-chars")
    listed.keep(TYPE, [state("c"), state("d")])

    assert kept_before_expiry == 3 and expired is None
    assert len(listed) == 3  # a, b, c, d: a went first
    assert listed.take(TYPE, "a", b"token-of-sixteen-chars") is None
    assert listed.take(TYPE, "d", b"token-of-sixteen-chars") is not None


def test_a_pass_listed_again_is_kept_as_read_the_second_time() -> None:
    listed = ListedPasses()
    listed.keep(TYPE, [state("s1")])
    newer = state("s1")
    listed.keep(TYPE, [newer])

    assert listed.take(TYPE, "s1", b"token-of-sixteen-chars") is newer
