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
            "SetTemplateContent",
            "SetTemplateSigning",
        )
    },
    **{
        _PASSES + m: Scope.PASSES_READ
        for m in ("GetTemplate", "ListTemplates", "GetPass", "ListPasses", "GetPassPackage")
    },
    **{_PASSES + m: Scope.CAMPAIGNS_WRITE for m in ("CreateCampaign", "AddCampaignMembers")},
    _PASSES + "CreateProject": Scope.ADMIN,
    **{_ADMIN + m: Scope.ADMIN for m in ("CreateApiKey", "ListApiKeys", "RevokeApiKey")},
}


# A campaigns key (WalletWerk's scopes) may also send, schedule, cancel and read the
# notifications of campaigns: a call whose request targets a campaign, or names a schedule
# by id (Cancel, GetScheduled), which the servicer lets through only for a campaign's.
CAMPAIGN_METHOD_SCOPES: dict[str, Scope] = {
    **{_NOTIFICATIONS + m: Scope.CAMPAIGNS_WRITE for m in ("Send", "Schedule", "Cancel")},
    **{_NOTIFICATIONS + m: Scope.CAMPAIGNS_READ for m in ("GetScheduled", "ListScheduled")},
}


def required_scope(method: str) -> Scope | None:
    """The scope `method` needs; None for a method no scope grants (refused to all)."""
    return METHOD_SCOPES.get(method)


def campaign_scope(method: str, request: object) -> Scope | None:
    """The campaigns scope that also grants this call, if any."""
    scope = CAMPAIGN_METHOD_SCOPES.get(method)
    if scope is None:
        return None
    target = getattr(request, "target", None)
    if target is None:  # Cancel and GetScheduled name a schedule by id
        return scope
    return scope if target.WhichOneof("target") == "campaign_id" else None
