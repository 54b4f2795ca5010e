"""Which scope each RPC needs. A passpush method missing here is refused to everyone."""

from __future__ import annotations

from passpush.domain.auth import Scope

PASSPUSH_PREFIX = "/passpush.v1."

_NOTIFICATIONS = "/passpush.v1.NotificationService/"
_PASSES = "/passpush.v1.PassService/"
_ADMIN = "/passpush.v1.AdminService/"

METHOD_SCOPES: dict[str, Scope] = {
    **{
        _NOTIFICATIONS + m: Scope.NOTIFICATIONS_WRITE
        for m in ("Send", "Delete", "Schedule", "Cancel")
    },
    **{
        _NOTIFICATIONS + m: Scope.NOTIFICATIONS_READ
        for m in (
            "GetTicket",
            "WatchTicket",
            "StreamDeliveryEvents",
            "GetScheduled",
            "ListScheduled",
        )
    },
    **{
        _PASSES + m: Scope.PASSES_WRITE
        for m in (
            "CreateTemplate",
            "UpsertPass",
            "ImportPasses",
            "CreateSegment",
            "CreateEntity",
            "RegisterDevice",
            "UnregisterDevice",
            "SetPassContent",
        )
    },
    **{
        _PASSES + m: Scope.PASSES_READ
        for m in ("GetTemplate", "ListTemplates", "GetPass", "ListPasses")
    },
    **{_PASSES + m: Scope.CAMPAIGNS_WRITE for m in ("CreateCampaign", "AddCampaignMembers")},
    _PASSES + "CreateProject": Scope.ADMIN,
    **{_ADMIN + m: Scope.ADMIN for m in ("CreateApiKey", "ListApiKeys", "RevokeApiKey")},
}


def required_scope(method: str) -> Scope | None:
    """The scope `method` needs; None for a method no scope grants (refused to all)."""
    return METHOD_SCOPES.get(method)
