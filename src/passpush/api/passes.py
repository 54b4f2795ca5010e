"""PassService: translate, delegate to the core, translate back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from passpush.api import convert
from passpush.api.interceptors import current_project
from passpush.domain.errors import InvalidArgument
from passpush.domain.model import Entity, ImportedPass
from passpush.service.passes import MAX_IMPORT_ENTRIES, PassCore
from passpush.v1 import passes_pb2 as pb
from passpush.v1 import passes_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class PassServicer(pb_grpc.PassServiceServicer):
    def __init__(self, core: PassCore) -> None:
        self._core = core

    async def CreateProject(self, request: pb.CreateProjectRequest, context: Context) -> pb.Project:
        project = await self._core.create_project(
            current_project(), request.project_id, request.project.display_name
        )
        return convert.project_to_proto(project)

    async def CreateTemplate(
        self, request: pb.CreateTemplateRequest, context: Context
    ) -> pb.Template:
        template = convert.template_from_proto(request.template_id, request.template)
        return convert.template_to_proto(
            await self._core.create_template(current_project(), template)
        )

    async def GetTemplate(self, request: pb.GetTemplateRequest, context: Context) -> pb.Template:
        return convert.template_to_proto(
            await self._core.get_template(current_project(), request.id)
        )

    async def ListTemplates(
        self, request: pb.ListTemplatesRequest, context: Context
    ) -> pb.ListTemplatesResponse:
        page = await self._core.list_templates(
            current_project(), request.project_id, request.page_size, request.page_token
        )
        return pb.ListTemplatesResponse(
            templates=[convert.template_to_proto(t) for t in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpsertPass(self, request: pb.UpsertPassRequest, context: Context) -> pb.Pass:
        p = await self._core.upsert_pass(
            current_project(), convert.pass_from_proto(_pass_field(request))
        )
        return convert.pass_to_proto(p)

    async def GetPass(self, request: pb.GetPassRequest, context: Context) -> pb.Pass:
        return convert.pass_to_proto(await self._core.get_pass(current_project(), request.id))

    async def ListPasses(
        self, request: pb.ListPassesRequest, context: Context
    ) -> pb.ListPassesResponse:
        page = await self._core.list_passes(
            current_project(), request.template_id, request.page_size, request.page_token
        )
        return pb.ListPassesResponse(
            passes=[convert.pass_to_proto(p) for p in page.items],
            next_page_token=page.next_page_token,
        )

    async def ImportPasses(  # type: ignore[override]
        self, request_iterator: AsyncIterator[pb.ImportPassesRequest], context: Context
    ) -> pb.ImportPassesResponse:
        async def passes() -> AsyncIterator[ImportedPass]:
            index = 0
            async for request in request_iterator:
                if len(request.entries) > MAX_IMPORT_ENTRIES:
                    raise InvalidArgument.field(
                        "entries", f"at most {MAX_IMPORT_ENTRIES:,} passes a message"
                    )
                entries: list[pb.ImportPassesRequest | pb.ImportEntry] = list(request.entries)
                if request.HasField("pass"):
                    entries.insert(0, request)
                for entry in entries:
                    devices = tuple(
                        (d.device_library_identifier, d.push_token) for d in entry.devices
                    )
                    yield ImportedPass(index, convert.pass_from_proto(_pass_field(entry)), devices)
                    index += 1

        summary = await self._core.import_passes(current_project(), passes())
        return pb.ImportPassesResponse(
            created=summary.created,
            updated=summary.updated,
            failed=summary.failed,
            failures=[pb.ImportFailure(index=i, message=m) for i, m in summary.failures],
        )

    async def CreateSegment(self, request: pb.CreateSegmentRequest, context: Context) -> pb.Segment:
        segment = convert.segment_from_proto(request.segment_id, request.segment)
        return convert.segment_to_proto(await self._core.create_segment(current_project(), segment))

    async def CreateCampaign(
        self, request: pb.CreateCampaignRequest, context: Context
    ) -> pb.Campaign:
        campaign = convert.campaign_from_proto(request.campaign_id, request.campaign)
        return convert.campaign_to_proto(
            await self._core.create_campaign(current_project(), campaign)
        )

    async def AddCampaignMembers(
        self, request: pb.AddCampaignMembersRequest, context: Context
    ) -> pb.Campaign:
        campaign = await self._core.add_campaign_members(
            current_project(), request.campaign_id, request.pass_ids
        )
        return convert.campaign_to_proto(campaign)

    async def CreateEntity(self, request: pb.CreateEntityRequest, context: Context) -> pb.Entity:
        entity = Entity(request.entity_id, request.entity.project_id, request.entity.name)
        return convert.entity_to_proto(await self._core.create_entity(current_project(), entity))

    async def RegisterDevice(
        self, request: pb.RegisterDeviceRequest, context: Context
    ) -> pb.DeviceRegistration:
        registration = await self._core.register_device(
            current_project(),
            request.pass_id,
            request.device_library_identifier,
            request.push_token,
        )
        return convert.registration_to_proto(registration)

    async def UnregisterDevice(
        self, request: pb.UnregisterDeviceRequest, context: Context
    ) -> pb.UnregisterDeviceResponse:
        await self._core.unregister_device(
            current_project(), request.pass_id, request.device_library_identifier
        )
        return pb.UnregisterDeviceResponse()

    async def SetPassContent(self, request: pb.SetPassContentRequest, context: Context) -> pb.Pass:
        p = await self._core.set_pass_content(
            current_project(),
            request.pass_id,
            pkpass=request.pkpass,
            pass_json=request.pass_json,
            files=dict(request.files),
        )
        return convert.pass_to_proto(p)

    async def SetTemplateContent(
        self, request: pb.SetTemplateContentRequest, context: Context
    ) -> pb.Template:
        template = await self._core.set_template_content(
            current_project(),
            request.template_id,
            pkpass=request.pkpass,
            pass_json=request.pass_json,
            files=dict(request.files),
        )
        return convert.template_to_proto(template)

    async def GetPassPackage(
        self, request: pb.GetPassPackageRequest, context: Context
    ) -> pb.PassPackage:
        pkpass, update_tag = await self._core.get_pass_package(current_project(), request.pass_id)
        return pb.PassPackage(pkpass=pkpass, update_tag=update_tag)

    async def SetTemplateSigning(
        self, request: pb.SetTemplateSigningRequest, context: Context
    ) -> pb.Template:
        signing = (
            convert.apple_signing_from_proto(request.apple_signing)
            if request.HasField("apple_signing")
            else None
        )
        template = await self._core.set_template_signing(
            current_project(), request.template_id, signing
        )
        return convert.template_to_proto(template)


def _pass_field(
    request: pb.UpsertPassRequest | pb.ImportPassesRequest | pb.ImportEntry,
) -> pb.Pass:
    # The contract names the field `pass`, a Python keyword: protobuf offers it by getattr.
    message: pb.Pass = getattr(request, "pass")
    return message
